"""The realtime session: text in as an LLM streams it, audio out as each segment is made (README
"Realtime protocol").

Each segment is one Job, submitted to the engine the moment the segment is cut (at most one ahead of
the segment being sent), so its generation runs while the one before it streams; audio goes out
strictly in segment order. Text that arrives later only ever makes later segments. Two tasks share the
socket: one reads the client's messages, one sends audio; a lock keeps their frames whole and lets
`cancel` know that no audio of a cancelled segment follows its `cancelled` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import ValidationError

from model import segmenter
from model.audio import SAMPLE_RATE
from model.job import Job, StreamAborted
from model.scheduler import Scheduler, Unavailable
from model.schema import MAX_CLIP_BYTES, RequestError, SynthesisRequest, session_config
from model.text import TextError
from model.voices import Resolved

logger = logging.getLogger(__name__)

# Session limits, overridable in config.realtime.yaml's model_metadata (README "Realtime limits").
DEFAULTS = {
    "max_sessions": 8,  # open at once; past it a new one is closed with 1013 at once
    "idle_timeout_s": 60.0,  # no client message while nothing is being spoken: closed with 1008
    "max_session_s": 3600.0,  # closed with 1008 however busy (Baseten keeps a connection at least an hour)
    "max_buffered_text_chars": 4000,  # received but not yet generating (HTTP's text limit): closed with 1008
    # One client message after the first; a larger one is closed with 1009 before it is parsed. The first
    # may be a session.config carrying speaker_wav clips (schema.MAX_CLIP_BYTES of base64).
    "max_message_chars": 65536,
    "first_clause_chars": 24,  # the first segment may end at a clause once this long; 0: sentences only
}

CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1008, 1009, 1011, 1013
POLL_SECONDS = 0.5
SEGMENTS_AHEAD = 1  # jobs submitted beyond the one being sent: enough for no gap, without hogging the queue


class Engine(Protocol):
    """What a session needs of the loaded service (model/service.py), so tests can give it a fake model."""

    scheduler: Scheduler

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
class Segment:
    number: int
    text: str
    sentences: list[str]
    request: SynthesisRequest
    job: Job | None = None
    cancelled: bool = False
    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # wakes the sender at once on cancel


class _Gone(Exception):
    """The client has gone: nothing more can be sent."""


class _Closing(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class Session:
    ws: Socket
    engine: Engine
    limits: dict
    stall_timeout: float = 30.0
    clock: Callable[[], float] = time.monotonic
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self.config: SynthesisRequest | None = None
        self.voice: Resolved | None = None
        self.buffer = ""
        self.cut_any = False  # a segment was cut since the start or the last cancel: no more clause cuts
        self.done = False
        self.numbered = 0  # segments numbered so far
        self.pending: deque[Segment] = deque()  # checked, not yet submitted
        self.flowing: deque[Segment] = deque()  # submitted; the first one's audio is being sent
        self.flushes: deque[int] = deque()  # per input.flush, the last segment it covers
        self.finished_segments = 0
        self.samples = 0
        self.started = self.clock()
        self.last_active = self.started  # the last client message or audio sent: what idle counts from
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closing: _Closing | None = None

    # The session ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until input.done has been spoken, the client leaves, or a limit closes the session."""
        logger.info("session %s: open", self.id)
        tasks = [asyncio.create_task(coro) for coro in (self._read(), self._speak(), self._watch())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if isinstance(error, _Closing):
                    self._closing = error
                elif error is not None and not isinstance(error, _Gone):
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._stop_all(self._closing.reason if self._closing else "the client disconnected")
            logger.info(
                "session %s: closed (%s) after %.1f s: %d segments, %.2f s of audio",
                self.id, self._closing.reason if self._closing else "client gone or done", self.clock() - self.started,
                self.finished_segments, self.samples / self.rate,
            )
        if self._closing is not None and self._closing.code != CLOSE_NORMAL:
            await self._close(self._closing.code, self._closing.reason)

    @property
    def rate(self) -> int:
        return self.config.sample_rate if self.config else SAMPLE_RATE

    async def _close(self, code: int, reason: str) -> None:
        try:
            # A close frame's reason holds at most 123 bytes of UTF-8.
            short = reason.encode()[:123].decode(errors="ignore")
            await asyncio.wait_for(self.ws.close(code, short), self.stall_timeout)
        except Exception:  # already closed, or a client that reads nothing: either way it is over
            pass

    async def _send(self, event: dict | bytes) -> None:
        """One frame, whole; a client that takes nothing for stall_timeout seconds is dropped."""
        frame = self.ws.send_bytes(event) if isinstance(event, bytes) else self.ws.send_text(json.dumps(event))
        try:
            await asyncio.wait_for(frame, self.stall_timeout)
        except TimeoutError:
            raise _Closing(CLOSE_POLICY, f"the client read nothing for {self.stall_timeout:g} s") from None
        except Exception as exc:  # starlette and uvicorn differ in what a send to a closed socket raises
            raise _Gone(str(exc)) from None

    async def _event(self, event: dict) -> None:
        async with self._send_lock:
            await self._send(event)

    async def _error(self, field_name: str | None, message: str) -> None:
        await self._event({"type": "error", "field": field_name, "message": message})

    async def _fail(self, code: int, field_name: str | None, message: str) -> None:
        """An error event, then the close that ends the session with the same reason."""
        try:
            await self._error(field_name, message)
        finally:
            raise _Closing(code, message)

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
            limit = self.limits["max_message_chars"] + (MAX_CLIP_BYTES if self.config is None else 0)
            if len(raw) > limit:
                await self._fail(CLOSE_TOO_BIG, None, f"a message of {len(raw)} characters is over the {limit} limit")
            try:
                data = json.loads(raw)
            except ValueError as exc:
                await self._error(None, f"not JSON: {exc}")
                continue
            if not isinstance(data, dict):
                await self._error(None, "a message is a JSON object with a `type`")
                continue
            handler = self._handlers.get(data.get("type")) if isinstance(data.get("type"), str) else None
            if handler is None:
                await self._error("type", f"unknown type {str(data.get('type'))[:40]!r}; send one of {', '.join(self._handlers)}")
                continue
            fields = {k: v for k, v in data.items() if k != "type"}
            if self.done and data["type"] != "cancel":
                await self._error("type", f"{data['type']} after input.done: the input has ended")
                continue
            allowed = self._fields.get(data["type"])
            if allowed is not None and (extra := sorted(set(fields) - allowed)):
                await self._error(extra[0], f"{data['type']} takes {' and '.join(f'`{f}`' for f in allowed) or 'no fields'}")
                continue
            await handler(self, fields)

    async def _on_config(self, fields: dict) -> None:
        if self.config is not None:
            why = "it was already applied" if self.numbered == 0 and not self.buffer else "text has already arrived"
            await self._error("type", f"session.config comes at most once, before the first input.text: {why}")
            return
        try:
            # Off the event loop (base64 clips, cloning's latents), so other sessions keep streaming meanwhile.
            config = await asyncio.to_thread(session_config, fields)
            voice = await asyncio.to_thread(self.engine.resolve, config)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = ".".join(str(part) for part in first["loc"]) or None
            await self._error(name, first["msg"])
            return
        except RequestError as exc:
            await self._error(exc.field, str(exc))
            return
        self.config, self.voice = config, voice
        await self._ready()

    async def _ready(self) -> None:
        event = {"type": "session.ready", "format": self.config.format, "sample_rate": self.config.sample_rate}
        if self.voice.voice_id is not None:
            event["voice_id"] = self.voice.voice_id
        await self._event(event)

    async def _defaults(self) -> None:
        if self.config is None:
            self.config = session_config({})
            self.voice = await asyncio.to_thread(self.engine.resolve, self.config)
            await self._ready()

    def _policy(self) -> segmenter.Policy:
        first = self.limits["first_clause_chars"] or None
        return segmenter.Policy(self.engine.max_chars(self.config.language), first)

    async def _on_text(self, fields: dict) -> None:
        text = fields.get("text")
        if not isinstance(text, str):
            await self._error("text", "input.text needs `text`, a string")
            return
        queued = len(self.buffer) + sum(len(s.text) for s in self.pending) + len(text)
        if queued > self.limits["max_buffered_text_chars"]:
            await self._fail(
                CLOSE_POLICY, "text",
                f"{queued} characters would wait to be spoken; the limit is {self.limits['max_buffered_text_chars']}",
            )
        await self._defaults()
        self.buffer += text
        segments, self.buffer = segmenter.cut(self.buffer, self._policy(), first=not self.cut_any)
        await self._add(segments)

    async def _speak_buffer(self) -> None:
        await self._defaults()
        text, self.buffer = self.buffer, ""
        await self._add(segmenter.flush(text, self._policy()))

    async def _on_flush(self, fields: dict) -> None:
        await self._speak_buffer()
        self.flushes.append(self.numbered)
        await self._flushed()

    async def _on_done(self, fields: dict) -> None:
        await self._speak_buffer()
        self.done = True
        self._changed.set()

    async def _on_cancel(self, fields: dict) -> None:
        async with self._send_lock:  # no audio frame of these segments after `cancelled`
            stopped = self._stop_all("cancelled by the client")
            self.buffer, self.cut_any = "", False
            self.flushes.clear()
            await self._send({"type": "cancelled", "segments": stopped})
        self._changed.set()

    _handlers: ClassVar[dict[str, Callable]] = {
        "session.config": _on_config,
        "input.text": _on_text,
        "input.flush": _on_flush,
        "input.done": _on_done,
        "cancel": _on_cancel,
    }
    # The fields each message may carry (session.config's are the schema's to judge).
    _fields: ClassVar[dict[str, set[str]]] = {"input.text": {"text"}, "input.flush": set(), "input.done": set(), "cancel": set()}

    # Segments and the engine ---------------------------------------------------------------------

    async def _add(self, texts: list[str]) -> None:
        """Check each cut segment as HTTP text is checked, number it, and start what can start."""
        for text in texts:
            self.cut_any = True
            request = self.config.model_copy(update={"text": text})
            try:
                sentences = self.engine.check(request)
            except TextError as exc:
                if "nothing to speak" not in str(exc):  # punctuation alone is left out silently, as over HTTP
                    await self._error("text", f"segment {text[:40]!r} is left out: {exc}")
                continue
            self.numbered += 1
            self.pending.append(Segment(self.numbered, text, sentences, request))
        await self._submit()

    async def _submit(self) -> None:
        while self.pending and len(self.flowing) <= SEGMENTS_AHEAD:
            segment = self.pending.popleft()
            segment.job = self.engine.job(segment.request, self.voice.voice, segment.sentences, time.perf_counter())
            try:
                self.engine.scheduler.submit(segment.job)
            except Unavailable as exc:  # a full queue, or generation stopped on this replica
                await self._fail(CLOSE_TRY_LATER, exc.field, f"the server is busy: {exc}")
            logger.info("session %s: segment %d is request %s (%d chars)", self.id, segment.number, segment.job.id, len(segment.text))
            self.flowing.append(segment)
        self._changed.set()

    def _stop_all(self, why: str) -> list[int]:
        """Withdraw every job of this session and drop what waits; the segment numbers stopped."""
        stopped = [segment.number for segment in (*self.flowing, *self.pending)]
        for segment in self.flowing:
            segment.cancelled = True
            segment.stopped.set()
            self.engine.scheduler.withdraw(segment.job, why)
            segment.job.output.clear()
        self.flowing.clear()
        self.pending.clear()
        return stopped

    # Sending -------------------------------------------------------------------------------------

    async def _speak(self) -> None:
        while True:
            self._changed.clear()
            if self.flowing:
                await self._send_segment(self.flowing[0])
                continue
            if self.done and not self.pending:
                async with self._send_lock:
                    await self._send({
                        "type": "session.done", "segments": self.finished_segments,
                        "audio_seconds": round(self.samples / self.rate, 3),
                    })
                raise _Closing(CLOSE_NORMAL, "input.done: all spoken")
            await self._changed.wait()

    async def _send_segment(self, segment: Segment) -> None:
        output = segment.job.output
        async with self._send_lock:
            if segment.cancelled:
                return
            await self._send({"type": "audio.start", "segment": segment.number, "text": segment.text, "request_id": segment.job.id})
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
                waits = [asyncio.ensure_future(output.wait(POLL_SECONDS)), asyncio.ensure_future(segment.stopped.wait())]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
                if segment.cancelled:
                    return
                continue
            async with self._send_lock:
                if segment.cancelled:
                    return
                await self._send(data)
        async with self._send_lock:
            if segment.cancelled:
                return
            samples = round(segment.job.generated_samples * self.rate / SAMPLE_RATE)
            self.samples += samples
            self.finished_segments += 1
            await self._send({"type": "audio.done", "segment": segment.number, "samples": samples})
            self.flowing.popleft()
        await self._flushed()
        await self._submit()

    async def _flushed(self) -> None:
        """flush.done for each input.flush whose segments have all been sent."""
        last_sent = self.flowing[0].number - 1 if self.flowing else self.pending[0].number - 1 if self.pending else self.numbered
        while self.flushes and self.flushes[0] <= last_sent:
            self.flushes.popleft()
            await self._event({"type": "flush.done"})

    # Limits --------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            now = self.clock()
            if now - self.started >= self.limits["max_session_s"]:
                await self._fail(CLOSE_POLICY, None, f"the session reached its maximum length of {self.limits['max_session_s']:g} s")
            if self.flowing or self.pending:
                self.last_active = now
            elif now - self.last_active >= self.limits["idle_timeout_s"]:
                await self._fail(CLOSE_POLICY, None, f"idle for {self.limits['idle_timeout_s']:g} s: no message and nothing to speak")
            await asyncio.sleep(min(1.0, self.limits["idle_timeout_s"] / 4, self.limits["max_session_s"] / 4))
