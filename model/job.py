"""A request on its way through generation: the Job (what to say, how to encode it, where its audio
goes, how it ended), and the bounded buffer that carries its encoded audio from the generation thread
to the client, who reads at its own pace.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from model.encoders import Encoder
from model.encoding import EncodeWorker, to_host
from model.schema import SynthesisRequest
from model.voices import Voice

logger = logging.getLogger(__name__)


class StreamAborted(RuntimeError):
    """Generation stopped before the end of the utterance: the body must end as a broken transfer."""


class ChunkBuffer:
    """Encoded audio on its way from the generation thread to one client. Bounded in bytes: a client
    that falls further behind than `limit` is dropped rather than holding the model or memory."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: deque[bytes] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._finished = False
        self._error: str | None = None
        self._wake: Callable[[], None] | None = None

    @property
    def size(self) -> int:
        return self._size

    def put(self, data: bytes) -> bool:
        """Queue `data`; False if that would pass the limit (nothing is queued then)."""
        with self._lock:
            if self._size + len(data) > self.limit:
                return False
            self._items.append(data)
            self._size += len(data)
            wake = self._wake
        if wake is not None:
            wake()
        return True

    def finish(self, error: BaseException | None = None) -> None:
        """No more data; `error` is raised to the reader (as StreamAborted) once what came before it is read."""
        # Only its text is kept: the exception's traceback would hold frames, and through them this
        # buffer and the HTTP response, in a cycle that outlives the request until a garbage collection.
        message = None if error is None else str(error) if isinstance(error, StreamAborted) else f"{type(error).__name__}: {error}"
        with self._lock:
            self._finished, self._error = True, message
            wake = self._wake
        if wake is not None:
            wake()

    def clear(self) -> int:
        """Drop what is queued (the client has gone); returns the bytes freed."""
        with self._lock:
            freed, self._size = self._size, 0
            self._items.clear()
        return freed

    def take(self) -> bytes | None:
        """The oldest piece (one chunk's bytes); b"" if nothing yet; None at the end. Raises the
        producer's error at the end."""
        with self._lock:
            if self._items:
                data = self._items.popleft()
                self._size -= len(data)
                return data
            if not self._finished:
                return b""
            error = self._error
        if error is not None:
            raise StreamAborted(error)
        return None

    async def wait(self, timeout: float) -> None:
        """Until something is queued, the end comes, or `timeout` seconds pass."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        with self._lock:
            if self._items or self._finished:
                return
            self._wake = lambda: loop.call_soon_threadsafe(ready.set)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
            # arrives as the inner wait completes, and the reader would carry on after being cancelled.
            async with asyncio.timeout(timeout):
                await ready.wait()
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._wake = None


@dataclass(eq=False)  # a job is itself: compared and hashed by identity
class Job:
    """One request from admission to the end of its generation. Times are seconds since `arrived`.

    A job with `chunks` runs alone on the model (the upstream streamer: XTTS keeps per-stream state on
    the model); one with `request`, `voice` and `sentences` joins the engine's batch."""

    encoder: Encoder  # called on the generation thread, or on `worker`: never on the event loop
    output: ChunkBuffer
    chunks: Callable[[], Iterator[torch.Tensor]] | None = None  # starts a solo stream, on the generation thread
    request: SynthesisRequest | None = None
    voice: Voice | None = None
    sentences: list[str] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    arrived: float = field(default_factory=time.perf_counter)
    position: int = 0  # streams that must end before this one starts (0: it starts now)
    waited: float | None = None  # arrival to generation start: the whole wait, validation included
    first_chunk: float | None = None
    generated_chunks: int = 0
    generated_samples: int = 0
    tokens: list[list[int]] = field(default_factory=list)  # per sentence, the GPT's tokens (engine jobs)
    ended: str | None = None
    worker: EncodeWorker | None = None  # encodes off the generation thread (model/encoding.py); None: on it
    _cancelled: str | None = None
    _failed: Exception | None = None  # the encoder's error, on the worker: the job's end reports it
    _completing: bool = False

    def cancel(self, why: str) -> None:
        """Stop generating at the next step (or never start); safe from any thread, idempotent."""
        if self._cancelled is None:
            self._cancelled = why

    @property
    def cancelled(self) -> str | None:
        return self._cancelled

    def deliver(self, chunk: torch.Tensor) -> None:
        """Encode one chunk of 24 kHz audio into the client's buffer: now, or on the worker (after the
        chunk's copy to the host), in order. On the worker an encoder error cancels the job, which the
        engine sees at its next step, and the job's end reports the error."""
        if not chunk.numel():
            return
        if self.worker is None:
            self._encode(chunk)
            return
        host, copied = to_host(chunk)
        self.worker.submit(lambda: self._encode_later(host, copied))

    def _encode_later(self, chunk: torch.Tensor, copied) -> None:
        if self._failed is not None or self._cancelled is not None:
            return
        if copied is not None:
            copied.synchronize()
        try:
            self._encode(chunk)
        except Exception as exc:
            self._failed = exc
            self.cancel(f"encoding failed ({type(exc).__name__}: {exc})")

    def _encode(self, chunk: torch.Tensor) -> None:
        data = self.encoder.encode(chunk)
        self.first_chunk = self.first_chunk or time.perf_counter() - self.arrived
        self.generated_chunks += 1
        self.generated_samples += chunk.numel()
        self._put(data)

    def complete(self, error: BaseException | None) -> None:
        """Generation is over: flush the encoder if all went well, log, and let the client read the end.
        A StreamAborted `error` (shutdown) ends the job as stopped, not failed. With a worker, after the
        chunks still being encoded."""
        if self._completing:
            return
        self._completing = True
        if self.worker is None:
            self._complete(error)
        else:
            self.worker.submit(lambda: self._complete(error))

    def wait_delivered(self) -> None:
        """Until what this job handed the worker so far is encoded (warm-up, tests)."""
        if self.worker is not None:
            self.worker.drain()

    def _complete(self, error: BaseException | None) -> None:
        if error is None and self._failed is not None:
            error = self._failed
        if isinstance(error, StreamAborted):
            self.cancel(str(error))
            error = None
        if error is None and self._cancelled is None:
            try:
                self._put(self.encoder.finish())
            except Exception as exc:
                error = exc
        if error is not None:
            self.end(f"failed after {self.generated_chunks} chunks ({type(error).__name__}: {error})", logging.ERROR)
        elif self._cancelled is not None:
            error = StreamAborted(self._cancelled)
            self.end(f"stopped: {self._cancelled}")
        else:
            self.end("done")
        self.output.finish(error)

    def _put(self, data: bytes) -> None:
        if data and not self.output.put(data):
            self.cancel(f"the client fell {self.output.size} bytes behind (limit {self.output.limit})")

    def end(self, how: str, level: int = logging.INFO) -> None:
        if self.ended is not None:
            return
        self.ended = how
        ms = lambda t: "-" if t is None else f"{t * 1000:.0f} ms"  # noqa: E731
        logger.log(
            level,
            "request %s %s: queued %s (position %d), first chunk %s, %d chunks, %.2f s of audio in %.2f s",
            self.id, how, ms(self.waited), self.position, ms(self.first_chunk), self.generated_chunks,
            self.generated_samples / 24000, time.perf_counter() - self.arrived,
        )
