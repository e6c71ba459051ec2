"""Admission: requests wait in our own queue, first come first served, bounded, and leave it for the
generation loop (model/loop.py) in order. Batched requests start while the engine has places; an
upstream request starts once nothing else runs, and runs alone. Past the bound a request is refused at
once with a 503 and a Retry-After learnt from the generations that finished.

Truss's `predict_concurrency` cannot be this queue: its semaphore is held until a streamed response is
fully sent, and a request waiting for it gets no headers, not even one that would fail validation.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable

from model.job import Job, StreamAborted
from model.schema import RequestError

logger = logging.getLogger(__name__)


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


class Scheduler:
    """The queue: `capacity` jobs run at once (the engine's places), `max_waiting` more may wait.

    Any thread submits and withdraws; the generation loop takes what to start and reports what ended.
    """

    def __init__(self, capacity: int, max_waiting: int):
        self.capacity = capacity
        self.max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._running: set[Job] = set()  # taken by the loop and not yet ended
        self._solo = False  # a solo job is among them: nothing else may start
        self._cond = threading.Condition()
        self._closed = False
        self.stopped: str | None = None  # why no job is taken any more; None while open
        self.started = 0  # generations taken: a job withdrawn while waiting never counts
        # Seconds per generation, smoothed: what a refused request is told to wait.
        self._typical_seconds = 5.0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Jobs taken by the loop that have not ended."""
        return len(self._running)

    def submit(self, job: Job) -> None:
        """Queue `job` behind the ones already here, or raise Unavailable (nothing was queued)."""
        with self._cond:
            if self.stopped is not None:
                raise GenerationStopped(self.stopped)
            # Counted with those running, so that a job the loop has not taken yet (it was idle a
            # moment ago) does not count against the waiting room.
            ahead = len(self._waiting) + len(self._running)
            if ahead >= self.capacity + self.max_waiting:
                raise QueueFull(len(self._waiting), max(1, math.ceil(self._typical_seconds)))
            job.position = max(0, ahead - self.capacity + 1)
            self._waiting.append(job)
            self._cond.notify()

    def withdraw(self, job: Job, why: str) -> None:
        """The client has gone: a waiting job leaves the queue without touching the model, a running
        one stops at its next step (the loop sees the cancel)."""
        job.cancel(why)
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return
        job.output.finish(StreamAborted(why))
        job.end(f"stopped: {why} while queued")

    def take(self, free: int, block: bool) -> tuple[list[Job], Job | None] | None:
        """For the loop: the batched jobs to start now (at most `free`, in order), or one solo job once
        nothing runs. With `block`, waits until there is something to start. None once closed."""
        with self._cond:
            while block and not self._closed and not self._startable(free):
                self._cond.wait()
            if self._closed:
                return None
            batched: list[Job] = []
            while self._waiting and not self._solo:
                job = self._waiting[0]
                if job.chunks is not None:  # solo: once nothing else runs
                    if batched or self._running:
                        break
                    self._solo = True
                    return [], self._start(self._waiting.popleft())
                if len(batched) >= free:
                    break
                batched.append(self._start(self._waiting.popleft()))
            return batched, None

    def finished(self, ended: Iterable[tuple[Job, BaseException | None]]) -> None:
        """For the loop, before it tells the clients: these jobs have ended (with these errors, None
        for success); their places are free. A request sent the moment a client reads its end is
        never told it waits behind it. Those that finished well teach the Retry-After."""
        with self._cond:
            for job, error in ended:
                self._running.discard(job)
                if job.chunks is not None:
                    self._solo = False
                if error is None and job.cancelled is None and job.waited is not None:
                    seconds = time.perf_counter() - job.arrived - job.waited
                    self._typical_seconds = 0.8 * self._typical_seconds + 0.2 * seconds
            self._cond.notify_all()

    def close(self, why: str) -> list[Job]:
        """No more jobs are taken or queued (`why` is what new requests are told); the ones still
        waiting are removed and returned for the caller to end."""
        with self._cond:
            self._closed = True
            self.stopped = self.stopped or why
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        return waiting

    def _startable(self, free: int) -> bool:
        if not self._waiting or self._solo:
            return False
        return not self._running if self._waiting[0].chunks is not None else free > 0

    def _start(self, job: Job) -> Job:
        job.waited = time.perf_counter() - job.arrived
        self.started += 1
        self._running.add(job)
        logger.info("request %s: generation %d started after %.0f ms", job.id, self.started, job.waited * 1000)
        return job
