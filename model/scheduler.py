"""Admission and generation: requests wait in our own queue, first come first served, and one generation
thread owns the model. Windowed requests join the batched engine (model/engine.py) while it has room;
an upstream request waits for the batch to empty and runs alone. The thread writes each request's
encoded audio into a buffer of that request's own, so the model moves on however slowly a client reads.

Truss's `predict_concurrency` cannot be this queue: its semaphore is held until a streamed response is
fully sent, and a request waiting for it gets no headers, not even one that would fail validation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from model.encoders import Encoder
from model.schema import RequestError, SynthesisRequest

if TYPE_CHECKING:
    from model.engine import Engine
    from model.voices import Voice

logger = logging.getLogger(__name__)


# The loop stops for good after this many unexpected errors with no round between them that went
# through: a fault that repeats (a device in a sticky error state) would otherwise fail every request
# while the health route says all is well.
MAX_ERRORS_IN_A_ROW = 3
SHUTTING_DOWN = "the server is shutting down"


class Unavailable(RequestError):
    """503 before any audio, with `retry_after` in whole seconds: try again later, or another replica."""

    status = 503

    def __init__(self, field: str, message: str, retry_after: int):
        super().__init__(field, message)
        self.retry_after = retry_after


class QueueFull(Unavailable):
    """The queue is at its bound."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__("queue", f"{waiting} requests are already waiting; retry in about {retry_after} s", retry_after)


class GenerationStopped(Unavailable):
    """The generation loop has stopped for good on this replica (the health route answers 503)."""

    def __init__(self, why: str):
        super().__init__("queue", f"generation has stopped on this replica ({why}); retry on another", 1)


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
            await asyncio.wait_for(ready.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._wake = None


@dataclass
class Job:
    """One request from admission to the end of its generation. Times are seconds since `arrived`.

    A job with `chunks` runs alone on the model (the upstream streamer: XTTS keeps per-stream state on
    the model); one with `request`, `voice` and `sentences` joins the engine's batch."""

    encoder: Encoder  # called on the generation thread: its device-to-host copy never blocks the event loop
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
    _cancelled: str | None = None

    def cancel(self, why: str) -> None:
        """Stop generating at the next step (or never start); safe from any thread, idempotent."""
        if self._cancelled is None:
            self._cancelled = why

    @property
    def cancelled(self) -> str | None:
        return self._cancelled

    def deliver(self, chunk: torch.Tensor) -> None:
        """Encode one chunk of 24 kHz audio into the client's buffer (on the generation thread)."""
        if not chunk.numel():
            return
        data = self.encoder.encode(chunk)
        self.first_chunk = self.first_chunk or time.perf_counter() - self.arrived
        self.generated_chunks += 1
        self.generated_samples += chunk.numel()
        self._put(data)

    def complete(self, error: BaseException | None) -> None:
        """Generation is over: flush the encoder if all went well, log, and let the client read the end.
        A StreamAborted `error` (shutdown) ends the job as stopped, not failed."""
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


class Scheduler:
    """A FIFO of jobs and the one thread that runs them on the model: batched jobs in `engine` (up to its
    `max_streams` at once), solo jobs alone. Without an engine every job must be a solo one.

    The thread outlives any error. One that a stream can be blamed for ends that stream (the engine's
    business); any other ends every job it touched (the batch, and those being admitted), each with a
    broken transfer, and the loop goes on with a clean engine. Only if that keeps failing, or the engine
    cannot be made clean, does the loop stop: then `stopped` says why, the health route answers 503 (so
    the platform restarts the replica), every job still here ends, and new requests get a 503.
    """

    def __init__(self, max_waiting: int, engine: Engine | None = None, name: str = "generation", start: bool = True):
        self.max_waiting = max_waiting
        self.engine = engine
        self.capacity = engine.max_streams if engine is not None else 1
        self._waiting: deque[Job] = deque()
        self._admitting: list[Job] = []  # taken from the queue, not yet in the engine
        self._solo: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.stopped: str | None = None  # why the loop has stopped for good; None while it runs
        self.started = 0  # generations the model ran: a job cancelled while waiting never counts
        # Seconds per generation, smoothed: what a rejected request is told to wait.
        self._typical_seconds = 5.0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False once the loop has stopped (or was closed): what the health route answers."""
        return self.stopped is None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Streams generating now (or about to: taken from the queue)."""
        streams = len(self.engine.streams) if self.engine is not None else 0
        return streams + len(self._admitting) + (self._solo is not None)

    def submit(self, job: Job) -> None:
        """Admit `job` behind the ones already here, or raise Unavailable (nothing was queued)."""
        with self._cond:
            if self.stopped is not None:
                raise GenerationStopped(self.stopped)
            # Counted with those generating, so that a job the thread has not picked up yet (it was
            # idle a moment ago) does not count against the waiting room.
            ahead = len(self._waiting) + self.active
            if ahead >= self.capacity + self.max_waiting:
                raise QueueFull(len(self._waiting), self._retry_after())
            job.position = max(0, ahead - self.capacity + 1)
            self._waiting.append(job)
            self._cond.notify()

    def withdraw(self, job: Job, why: str) -> None:
        """The client has gone: a waiting job leaves the queue without touching the model, a running
        one stops at its next step."""
        job.cancel(why)
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running or finished: the generation thread sees the cancel
        job.output.finish(StreamAborted(why))
        job.end(f"stopped: {why} while queued")

    def run_now(self, job: Job) -> None:
        """Run one batched job to its end on the calling thread, before `start()` (warm-up)."""
        self.engine.join(job)
        while self.engine.streams:
            self.engine.step()

    def close(self) -> None:
        """Stop the loop and end every job, running, being admitted or waiting, as stopped by shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        else:  # never started: nothing else will end what waits
            self._end_everything(StreamAborted(SHUTTING_DOWN), SHUTTING_DOWN)

    def _work(self) -> None:
        failures = 0  # unexpected errors since the last round that went through
        try:
            while (work := self._take()) is not None:
                try:
                    self._run(*work)
                    failures = 0
                except Exception as exc:
                    failures += 1
                    logger.exception("generation: unexpected error %d in a row; ending the jobs it touched", failures)
                    self._recover(exc)
                    if failures >= MAX_ERRORS_IN_A_ROW:
                        raise GenerationStopped(f"{failures} unexpected errors in a row, the last: {type(exc).__name__}: {exc}") from exc
            self._end_everything(StreamAborted(SHUTTING_DOWN), SHUTTING_DOWN)
        except BaseException as exc:  # the loop cannot go on: say so, and leave nobody waiting
            why = str(exc) if isinstance(exc, GenerationStopped) else f"the generation loop failed ({type(exc).__name__}: {exc})"
            logger.critical("generation has stopped on this replica: %s; the health route now answers 503", why, exc_info=exc)
            self._end_everything(exc if isinstance(exc, Exception) else RuntimeError(why), why)

    def _run(self, admitting: list[Job], solo: Job | None) -> None:
        if solo is not None:
            self._run_alone(solo)
            return
        for job in admitting:
            self._starting(job)
            # Counted once, in the queue bound, from the queue to the batch: never twice.
            with self._cond:
                stream = self.engine.admit(job)
                self._admitting.remove(job)
            self.engine.start(stream)
        self.engine.step()
        self._learn(self.engine.left)

    def _recover(self, error: Exception) -> None:
        """End every job the failed round touched, and make the engine clean for the next one. An error
        here means the engine cannot be trusted: it stops the loop (raised to `_work`)."""
        with self._cond:
            touched, self._admitting = self._admitting, []
            solo, self._solo = self._solo, None
        if self.engine is not None:
            self.engine.abort(error)
            self.engine.left.clear()
        for job in [*touched, *([solo] if solo is not None else [])]:
            if job.ended is None:
                job.complete(error)

    def _end_everything(self, error: BaseException, why: str) -> None:
        """The loop is over (shutdown, or a fault it cannot get past): every job still here ends."""
        with self._cond:
            self.stopped = self.stopped or why
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            touched, self._admitting = self._admitting, []
            solo, self._solo = self._solo, None
        try:
            if self.engine is not None:
                self.engine.abort(error)  # its jobs end first, then its state is cleared
        except Exception:
            logger.exception("generation: the engine could not be cleared")
        for job in [*touched, *([solo] if solo is not None else []), *waiting]:
            if job.ended is None:
                job.complete(error)

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._typical_seconds))

    def _learn(self, ended: list[Job]) -> None:
        """Smooth the time a generation takes (what a 503's Retry-After says) over jobs that finished."""
        for job in ended:
            if job.ended == "done" and job.waited is not None:
                seconds = time.perf_counter() - job.arrived - job.waited
                self._typical_seconds = 0.8 * self._typical_seconds + 0.2 * seconds
        ended.clear()

    def _take(self) -> tuple[list[Job], Job | None] | None:
        """What to start now: batched jobs that fit, or one solo job once the batch is empty. Waits while
        there is nothing to do; None once closed."""
        with self._cond:
            while not self._closed and not self._waiting and not self.active:
                self._cond.wait()
            if self._closed:
                return None
            admitting: list[Job] = []
            while self._waiting:
                if self._waiting[0].chunks is not None:  # a solo job: once nothing else runs
                    if not admitting and not self.active:
                        self._solo = self._waiting.popleft()
                    break
                if self.engine is None or len(self.engine.streams) + len(admitting) >= self.capacity:
                    break
                admitting.append(self._waiting.popleft())
            self._admitting = list(admitting)
            return admitting, self._solo

    def _starting(self, job: Job) -> None:
        job.waited = time.perf_counter() - job.arrived
        self.started += 1
        logger.info("request %s: generation %d started after %.0f ms", job.id, self.started, job.waited * 1000)

    def _run_alone(self, job: Job) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        if job.cancelled is None:  # cancelled between the queue and here: it never reaches the model
            self._starting(job)
            chunks = None
            try:
                chunks = job.chunks()
                for chunk in chunks:
                    job.deliver(chunk)
                    if job.cancelled:
                        break
            except Exception as exc:  # the client sees a broken transfer; the next job still runs
                logger.error("request %s: generation failed", job.id, exc_info=exc)
                error = exc
            finally:
                if chunks is not None:
                    chunks.close()  # frees the model's per-stream state now, not at garbage collection
            if error is None:
                self._typical_seconds = 0.8 * self._typical_seconds + 0.2 * (time.perf_counter() - started)
        # The model is free before the client learns the end: a request admitted after this one
        # finished is never told it waits behind it.
        with self._cond:
            self._solo = None
        job.complete(error)
