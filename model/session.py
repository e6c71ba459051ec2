"""The realtime session: text in as an LLM streams it, audio out as each segment is made (README
"Realtime protocol"), turn after turn on one socket. This is the I/O shell: model/messages.py parses
each message, model/book.py keeps the segments, turns and what is owed to the client, and this module
reads, checks text off the event loop, submits jobs and sends.

Each segment is one Job, submitted to the engine the moment the segment is cut (at most one ahead of
the segment being sent), so its generation runs while the one before it streams; audio goes out
strictly in segment order. Text that arrives later only ever makes later segments. Two tasks share the
socket: one reads the client's messages, one sends audio; a lock keeps their frames whole and lets
`cancel` know that no audio of a cancelled segment follows its `cancelled` event, and a close, once
decided, that no audio follows its `error`.

MP3 is one stream over the session's segments: their jobs make PCM, and one LAME encoder here encodes it
in segment order, so no encoder delay and padding fall between two segments (README "Realtime protocol").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import ValidationError

from model import language, messages, segmenter
from model.audio import SAMPLE_RATE
from model.book import DONE, FLUSH, Book, Segment
from model.encoders import Encoder, encoder_for, mp3_frame
from model.job import Job, StreamAborted
from model.scheduler import Scheduler, Unavailable
from model.schema import AUTO, MAX_CLIP_BYTES, RequestError, SynthesisRequest, b64decode, session_config
from model.voices import Resolved, Voices

logger = logging.getLogger(__name__)

# Session limits, overridable in config.realtime.yaml's model_metadata (README "Realtime limits").
DEFAULTS = {
    "max_sessions": 8,  # open at once; past it a new one is closed with 1013 at once
    "idle_timeout_s": 60.0,  # no client message while nothing is being spoken: closed with 1008
    "max_session_s": 3600.0,  # closed with 1008 however busy (Baseten keeps a connection at least an hour)
    "max_buffered_text_chars": 4000,  # received but not yet generating (HTTP's text limit): closed with 1008
    # One client message; a larger one is closed with 1009 before it is parsed. Between turns (nothing
    # buffered or generating) it may also carry clips: schema.MAX_CLIP_BYTES of base64 more.
    "max_message_chars": 65536,  # between turns, a session.config or voice.add may also carry a clip
    "first_clause_chars": 24,  # the first segment may end at a clause once this long; 0: sentences only
    # At SIGTERM, open sessions finish the segments already generating, then close with 1012; the
    # runtime's shutdown waits for them at most this long (model/shutdown.py).
    "shutdown_drain_s": 60.0,
}

CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_RESTART, CLOSE_TRY_LATER = 1000, 1008, 1009, 1011, 1012, 1013
SHUTDOWN = "the server is shutting down: the segments already generating were sent; reconnect to go on"
POLL_SECONDS = 0.5
SEGMENTS_AHEAD = 1  # jobs submitted beyond the one being sent: enough for no gap, without hogging the queue


class Service(Protocol):
    """What a session needs of model/service.py's Service, so tests can give it a fake model."""

    scheduler: Scheduler
    voices: Voices

    def check(self, request: SynthesisRequest) -> list[str]: ...
    def resolve(self, request: SynthesisRequest) -> Resolved: ...
    def job(self, request: SynthesisRequest, voice: Any, sentences: list[str], arrived: float) -> Job: ...
    def max_chars(self, language: str) -> int: ...


class Socket(Protocol):
    """The part of starlette's WebSocket a session uses (accepted already: truss accepts it)."""

    async def receive(self) -> dict: ...
    async def send_text(self, data: str) -> None: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass
class _Mp3:
    """The session's MP3 stream: one encoder over consecutive segments' PCM. LAME keeps its latest frames
    back until more audio comes; at a segment's end they stay there (no padding, no restarted encoder
    delay at the join) while the client still has audio to play, and are flushed, ending the stream,
    when it would otherwise run out (`dry_at`), at a flush, at input.done or when the server closes."""

    encoder: Encoder
    rate: int
    started: float | None = None  # when its first bytes left
    fed: int = 0  # samples in
    held: bool = False  # a segment ended and the next one's audio has not come yet

    def dry_at(self) -> float:
        """When a client playing from the first byte has played all but what LAME still holds."""
        held = 3 * mp3_frame(self.rate)
        return (self.started or 0.0) + (self.fed - held) / self.rate


class _Gone(Exception):
    """The client has gone: nothing more can be sent."""


class _Closing(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(eq=False)  # a session is itself: kept in a set while open (model/shutdown.py)
class Session:
    ws: Socket
    service: Service
    limits: dict
    stall_timeout: float = 30.0
    clock: Callable[[], float] = time.monotonic
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self.config: SynthesisRequest | None = None
        self.voice: Resolved | None = None
        self.language: str | None = None  # the last segment's, when config.language is "auto"
        self.book = Book()
        self.started = self.clock()
        self.last_active = self.started  # the last client message or audio sent: what idle counts from
        self.draining = False  # the server is shutting down: finish what generates, then close with 1012
        self.dropped = False  # text the shutdown left unspoken
        self.turns = 0
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closing: _Closing | None = None  # decided: no audio frame leaves after this is set
        self._mp3: _Mp3 | None = None
        self._cancels = 0  # audio encoded before a cancel is never sent after it

    # The session ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Turn after turn, until session.close, the client leaves, or a limit closes the session."""
        logger.info("session %s: open", self.id)
        tasks = [asyncio.create_task(coro) for coro in (self._read(), self._speak(), self._watch())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if isinstance(error, _Closing):
                    self._decide(error.code, error.reason)
                elif error is not None and not isinstance(error, _Gone):
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            # Withdrawn before waiting: a task slow to take its cancel finds nothing left to send.
            self._stop_all(self._closing.reason if self._closing else "the client disconnected")
            await asyncio.gather(*tasks, return_exceptions=True)
            logger.info(
                "session %s: closed (%s) after %.1f s: %d turns, %d segments, %.2f s of audio",
                self.id, self._closing.reason if self._closing else "client gone", self.clock() - self.started,
                self.turns, self.book.sent_segments, self.book.sent_samples / self.rate,
            )
        if self._closing is not None and self._closing.code != CLOSE_NORMAL:
            await self._close(self._closing.code, self._closing.reason)

    def drain(self) -> None:
        """The server is shutting down: the segments already submitted are generated and sent, nothing
        else is, then the session closes with 1012 (model/shutdown.py)."""
        self.draining = True
        self.dropped = self.book.drop_waiting()
        self._changed.set()

    @property
    def rate(self) -> int:
        return self.config.sample_rate if self.config else SAMPLE_RATE

    def _decide(self, code: int, reason: str) -> _Closing:
        """The session ends: from now on no audio frame leaves (only the error that says why). The first
        decision holds."""
        if self._closing is None:
            self._closing = _Closing(code, reason)
        return self._closing

    async def _close(self, code: int, reason: str) -> None:
        try:
            # A close frame's reason holds at most 123 bytes of UTF-8.
            short = reason.encode()[:123].decode(errors="ignore")
            async with asyncio.timeout(self.stall_timeout):
                await self.ws.close(code, short)
        except Exception:  # already closed, or a client that reads nothing: either way it is over
            pass

    async def _send(self, event: dict | bytes) -> None:
        """One frame, whole; a client that takes nothing for stall_timeout seconds is dropped.

        asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result of a send that completed
        just as a cancel came, swallowing the cancel, and the session then spoke on after its close."""
        try:
            async with asyncio.timeout(self.stall_timeout):
                if isinstance(event, bytes):
                    await self.ws.send_bytes(event)
                else:
                    await self.ws.send_text(json.dumps(event))
        except TimeoutError:
            raise self._decide(CLOSE_POLICY, f"the client read nothing for {self.stall_timeout:g} s") from None
        except Exception as exc:  # starlette and uvicorn differ in what a send to a closed socket raises
            raise _Gone(str(exc)) from None

    async def _event(self, event: dict) -> None:
        async with self._send_lock:
            self._open()
            await self._send(event)

    async def _error(self, field_name: str | None, message: str) -> None:
        await self._event({"type": "error", "field": field_name, "message": message})

    async def _fail(self, code: int, field_name: str | None, message: str) -> None:
        """An error event, then the close that ends the session with the same reason. No audio leaves
        from the moment it is decided, and the session's generation stops."""
        closing = self._decide(code, message)
        self._stop_all(message)
        try:
            async with self._send_lock:
                await self._send({"type": "error", "field": field_name, "message": message})
        finally:
            raise closing

    def _open(self) -> None:
        """Under the send lock, before any frame but a close's own error: raises once the session is closing."""
        if self._closing is not None:
            raise self._closing

    # Reading -------------------------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.last_active = self.clock()
            if message.get("bytes") is not None:
                await self._error(None, "binary frames are not part of the protocol: send JSON text messages")
                continue
            raw = message.get("text") or ""
            limit = self.limits["max_message_chars"] + (MAX_CLIP_BYTES if self.book.idle else 0)
            if len(raw) > limit:
                await self._fail(CLOSE_TOO_BIG, None, f"a message of {len(raw)} characters is over the {limit} limit")
            try:
                # A message between turns may carry 10 MB of clips: parsed off the event loop.
                kind, fields = messages.parse(raw) if len(raw) <= 65536 else await asyncio.to_thread(messages.parse, raw)
            except messages.MessageError as exc:
                await self._error(exc.field, str(exc))
                continue
            await self._handlers[kind](self, fields)

    async def _on_config(self, fields: dict) -> None:
        if not self.book.idle:
            await self._error("type", "session.config comes between turns: text is buffered or being spoken; "
                              "send it after this turn's session.done")
            return

        def configure() -> tuple[SynthesisRequest, Resolved]:
            # Off the event loop (base64 clips, cloning's latents), so other sessions keep streaming meanwhile.
            config = session_config(messages.config_fields(fields))
            return config, self.service.resolve(config)

        try:
            config, voice = await asyncio.to_thread(configure)
        except messages.MessageError as exc:
            await self._error(exc.field, str(exc))
            return
        except ValidationError as exc:
            error = messages.validation_error(exc)
            await self._error(messages.sent_name(error.field, fields), str(error))
            return
        except RequestError as exc:
            await self._error(messages.sent_name(exc.field, fields), str(exc))
            return
        await self._end_mp3()  # an MP3 stream held over from the last turn is in the old settings
        self.config, self.voice, self.language = config, voice, None
        await self._ready()

    async def _ready(self) -> None:
        event = {"type": "session.ready", "format": self.config.format, "sample_rate": self.config.sample_rate}
        if self.voice.voice_id is not None:
            event["voice_id"] = self.voice.voice_id
        await self._event(event)

    async def _defaults(self) -> None:
        if self.config is None:
            self.config = session_config({})
            self.voice = await asyncio.to_thread(self.service.resolve, self.config)
            await self._ready()

    def _policy(self) -> segmenter.Policy:
        first = self.limits["first_clause_chars"] or None
        spoken = self.config.language if self.config.language != AUTO else self.language or language.FALLBACK
        return segmenter.Policy(self.service.max_chars(spoken), first)

    async def _on_text(self, fields: dict) -> None:
        text = fields["text"]
        queued = self.book.queued_chars(text)
        if queued > self.limits["max_buffered_text_chars"]:
            await self._fail(
                CLOSE_POLICY, "text",
                f"{queued} characters would wait to be spoken; the limit is {self.limits['max_buffered_text_chars']}",
            )
        await self._defaults()
        await self._add(self.book.take(text, self._policy()))

    async def _on_flush(self, fields: dict) -> None:
        await self._defaults()
        await self._add(self.book.take_all(self._policy()))
        self.book.mark(FLUSH)
        await self._answer_due()

    async def _on_done(self, fields: dict) -> None:
        """The turn's end: what is buffered is spoken, then session.done; the session stays open."""
        if self.config is not None:
            await self._add(self.book.take_all(self._policy()))
        self.book.mark(DONE)
        await self._answer_due()

    async def _on_cancel(self, fields: dict) -> None:
        async with self._send_lock:  # no audio frame of these segments after `cancelled`
            stopped = self._stop_all("cancelled by the client")
            # The MP3 encoder's held samples are the cancelled audio's: a new stream starts with the next segment.
            self._mp3 = None
            self._cancels += 1
            await self._send({"type": "cancelled", "segments": stopped})
        self._changed.set()

    async def _on_close(self, fields: dict) -> None:
        """session.close: the session ends with 1000; run() withdraws anything generating on the way out."""
        raise self._decide(CLOSE_NORMAL, "session.close")

    async def _on_voice_add(self, fields: dict) -> None:
        """LiveKit's register_voice: clone the clip and register it by name (model/voices.py), answered
        with `success` and `voice`, or an error naming `name` or `audio_data`."""
        def register() -> Resolved:
            try:
                clip = b64decode(fields["audio_data"])
            except ValueError:  # binascii.Error is one
                raise RequestError("audio_data", "not valid base64 (or a data: URL of it)") from None
            return self.service.voices.register(fields["name"], [clip], name_field="name", clip_field="audio_data")

        try:
            voice = await asyncio.to_thread(register)  # decoding and cloning: off the event loop
        except RequestError as exc:
            await self._error(exc.field, str(exc))
            return
        await self._event({
            "type": "voice.registered", "success": True,
            "voice": {"name": voice.name, "voice_id": voice.voice_id, "stored": voice.stored},
        })

    async def _on_voice_list(self, fields: dict) -> None:
        """LiveKit's list_voices: `voices` are the studio and bundled speakers, `uploaded_voices` the
        registered names (the store's may take up to a second to list: off the event loop)."""
        registered = await asyncio.to_thread(self.service.voices.registered)
        await self._event({
            "type": "voice.list", "voices": list(self.service.voices.library.names), "uploaded_voices": registered,
        })

    _handlers: ClassVar[dict[str, Callable]] = {
        "session.config": _on_config,
        "input.text": _on_text,
        "input.flush": _on_flush,
        "input.done": _on_done,
        "cancel": _on_cancel,
        "session.close": _on_close,
        "voice.add": _on_voice_add,
        "voice.list": _on_voice_list,
    }

    # Segments and the engine ---------------------------------------------------------------------

    async def _add(self, texts: list[str]) -> None:
        """Check each cut segment as HTTP text is checked (its language detected first, for "auto"),
        number it, and start what can start."""
        for text in texts:
            # An MP3 session's segments make PCM: the session encodes them as one stream (_Mp3).
            update = {"text": text, **({"format": "pcm"} if self.config.format == "mp3" else {})}
            request = self.config.model_copy(update=update)

            def check(request: SynthesisRequest = request) -> tuple[SynthesisRequest, list[str]]:
                request = language.resolved(request, self.language)
                return request, self.service.check(request)

            try:
                # Off the event loop: a language's first text loads its tools (jieba took about 1 s).
                request, sentences = await asyncio.to_thread(check)
            except RequestError as exc:
                if "nothing to speak" not in str(exc):  # punctuation alone is left out silently, as over HTTP
                    await self._error(exc.field, f"segment {text[:40]!r} is left out: {exc}")
                continue
            if self.config.language == AUTO:
                self.language = request.language
            self.book.number(text, sentences, request)
        await self._submit()

    async def _submit(self) -> None:
        while not self.draining and self._closing is None and (segment := self.book.next_to_submit(SEGMENTS_AHEAD)):
            segment.job = self.service.job(segment.request, self.voice.voice, segment.sentences, time.perf_counter())
            try:
                self.service.scheduler.submit(segment.job)
            except Unavailable as exc:  # a full queue, or generation stopped on this replica
                await self._fail(CLOSE_TRY_LATER, exc.field, f"the server is busy: {exc}")
            logger.info(
                "session %s: segment %d is request %s (%d chars, %s)",
                self.id, segment.number, segment.job.id, len(segment.text), segment.request.language,
            )
        self._changed.set()

    def _stop_all(self, why: str) -> list[int]:
        """Withdraw every job of this session and drop what waits; the segment numbers stopped."""
        stopped = self.book.cancel()
        for segment in stopped:
            if segment.job is not None:
                self.service.scheduler.withdraw(segment.job, why)
                segment.job.output.clear()
        return [segment.number for segment in stopped]

    async def _answer_due(self) -> None:
        """flush.done and session.done for each input.flush and input.done whose segments have all been
        sent; a held MP3 stream ends first, so the answer follows all of its audio."""
        if not self.book.marks or self.book.marks[0].last > self.book.last_sent:
            return
        if not self.book.flowing:
            await self._end_mp3()
        for kind, segments, samples in self.book.due():
            if kind == FLUSH:
                await self._event({"type": "flush.done"})
            else:
                self.turns += 1
                await self._event({"type": "session.done", "segments": segments, "audio_seconds": round(samples / self.rate, 3)})

    # Sending -------------------------------------------------------------------------------------

    async def _speak(self) -> None:
        while True:
            self._changed.clear()
            if self.book.flowing:
                await self._send_segment(self.book.flowing[0])
                continue
            if self.draining:
                await self._end_mp3()
                await self._fail(CLOSE_RESTART, None, SHUTDOWN)
            await self._until(self._changed.wait())

    async def _until(self, *waits: Any) -> None:
        """Until one of `waits` ends, or, while the MP3 stream holds a finished segment's last frames, until
        its client would run dry: then the stream ends."""
        futures = [asyncio.ensure_future(wait) for wait in waits]
        dry_at = self._mp3.dry_at() if self._mp3 is not None and self._mp3.held else None
        try:
            timeout = None if dry_at is None else max(0.0, dry_at - self.clock())
            done, _ = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in futures:
                future.cancel()
        if not done:
            await self._end_mp3()

    async def _send_segment(self, segment: Segment) -> None:
        output = segment.job.output
        async with self._send_lock:
            self._open()
            if segment.cancelled:
                return
            await self._send({
                "type": "audio.start", "segment": segment.number, "text": segment.text, "request_id": segment.job.id,
                "sample_rate": self.rate,
            })
        while True:
            try:
                data = output.take()
            except StreamAborted as exc:
                if not segment.cancelled:
                    await self._fail(CLOSE_ERROR, None, f"segment {segment.number}: generation stopped: {exc}")
                return
            if data is None:
                break
            if not data:
                # Until audio comes, or a cancel: the next segment's audio must not wait for this one's
                # generation to notice that it was withdrawn.
                await self._until(output.wait(POLL_SECONDS), segment.stopped.wait())
                if segment.cancelled:
                    return
                continue
            await self._audio(segment, data)
            if segment.cancelled:
                return
        if self._mp3 is not None:
            if self._ends_mp3(segment):
                await self._end_mp3()
            else:
                self._mp3.held = True
        async with self._send_lock:
            self._open()
            if segment.cancelled:
                return
            samples = round(segment.job.generated_samples * self.rate / SAMPLE_RATE)
            self.book.sent(segment, samples)
            await self._send({"type": "audio.done", "segment": segment.number, "samples": samples})
        await self._answer_due()
        await self._submit()

    async def _audio(self, segment: Segment, data: bytes) -> None:
        """One chunk of a segment's audio to the client (through the session's MP3 stream for mp3)."""
        if self.config.format == "mp3":
            if self._mp3 is None:
                self._mp3 = _Mp3(encoder_for("mp3", self.rate, source_rate=self.rate), self.rate)
            mp3 = self._mp3
            mp3.fed, mp3.held = mp3.fed + len(data) // 2, False
            data = await asyncio.to_thread(mp3.encoder.encode_pcm, data)  # LAME's CPU, off the event loop
            if mp3.started is None and data:
                mp3.started = self.clock()
        async with self._send_lock:
            self._open()
            if segment.cancelled or not data:  # cancelled while it waited for the lock: dropped
                return
            await self._send(data)

    def _ends_mp3(self, segment: Segment) -> bool:
        """Whether the MP3 stream ends with this segment: an input.done or input.flush covers it, or the
        server is shutting down and nothing follows it. Otherwise LAME's frames wait for the next segment's
        audio, at once if it has come already, else while the client still has audio to play (_until)."""
        last = len(self.book.flowing) == 1 and not self.book.pending
        return (last and self.draining) or self.book.covered(segment)

    async def _end_mp3(self) -> None:
        """Flush the MP3 stream: LAME's last frames, and padding to a whole frame. The next audio starts a
        new stream (its decoder delay is where this one's client ran dry anyway)."""
        mp3, self._mp3 = self._mp3, None
        if mp3 is None or not mp3.fed:
            return
        cancels = self._cancels
        tail = await asyncio.to_thread(mp3.encoder.finish)
        async with self._send_lock:
            self._open()
            if tail and cancels == self._cancels:
                await self._send(tail)

    # Limits --------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            now = self.clock()
            if now - self.started >= self.limits["max_session_s"]:
                await self._fail(CLOSE_POLICY, None, f"the session reached its maximum length of {self.limits['max_session_s']:g} s")
            if self.book.busy:
                self.last_active = now
            elif now - self.last_active >= self.limits["idle_timeout_s"]:
                await self._fail(CLOSE_POLICY, None, f"idle for {self.limits['idle_timeout_s']:g} s: no message and nothing to speak")
            await asyncio.sleep(min(1.0, self.limits["idle_timeout_s"] / 4, self.limits["max_session_s"] / 4))
