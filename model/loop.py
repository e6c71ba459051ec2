"""The generation loop: the one thread that owns the model. It takes jobs from the queue
(model/scheduler.py), runs batched ones in the engine (model/engine.py) step by step and solo ones
alone, and writes each job's encoded audio into that job's own buffer, so the model moves on however
slowly a client reads.

The loop outlives any error. One that a stream can be blamed for ends that stream (the engine's
business); any other ends every job it touched (the batch, and those being admitted), each with a
broken transfer, and the loop goes on with a clean engine. Only if that keeps failing, or the engine
cannot be made clean, does the loop stop: then `stopped` says why, the health route answers 503 (so
the platform restarts the replica), every job still here ends, and new requests get a 503.
"""

from __future__ import annotations

import logging
import threading

from model.engine import Engine
from model.job import Job, StreamAborted
from model.scheduler import Scheduler

logger = logging.getLogger(__name__)

# The loop stops for good after this many unexpected errors with no round between them that went
# through: a fault that repeats (a device in a sticky error state) would otherwise fail every request
# while the health route says all is well.
MAX_ERRORS_IN_A_ROW = 3
SHUTTING_DOWN = "the server is shutting down"


class GenerationLoop:
    def __init__(self, scheduler: Scheduler, engine: Engine | None, name: str = "generation"):
        self.scheduler = scheduler
        self.engine = engine
        self._admitting: list[Job] = []  # taken from the queue, not yet in the engine
        self._solo: Job | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False once the loop has stopped (or was closed): what the health route answers."""
        return self.scheduler.stopped is None

    @property
    def stopped(self) -> str | None:
        return self.scheduler.stopped

    def run_now(self, job: Job) -> None:
        """Run one batched job to its end on the calling thread, before `start()` (warm-up). Raises
        what ended it, if anything did: a pipeline that cannot serve (a dtype a part does not take)
        fails the load, not a client's stream."""
        self.engine.join(job)
        while self.engine.streams:
            self.engine.step()
        for _, error in self.engine.take_left():
            if error is not None:
                raise RuntimeError(f"warm-up failed: {type(error).__name__}: {error}") from error
        job.complete(None)
        job.wait_delivered()
        if job.ended != "done":
            raise RuntimeError(f"warm-up failed: {job.ended}")

    def close(self) -> None:
        """Stop the loop and end every job, running, being admitted or waiting, as stopped by shutdown."""
        waiting = self.scheduler.close(SHUTTING_DOWN)
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._end(waiting, StreamAborted(SHUTTING_DOWN))

    def _work(self) -> None:
        failures = 0  # unexpected errors since the last round that went through
        try:
            while (work := self.scheduler.take(self._free(), block=self._idle())) is not None:
                try:
                    self._round(*work)
                    failures = 0
                except Exception as exc:
                    failures += 1
                    logger.exception("generation: unexpected error %d in a row; ending the jobs it touched", failures)
                    self._end_touched(exc)
                    if failures >= MAX_ERRORS_IN_A_ROW:
                        raise RuntimeError(f"{failures} unexpected errors in a row, the last: {type(exc).__name__}: {exc}") from exc
            self._end_touched(StreamAborted(SHUTTING_DOWN))
        except BaseException as exc:  # the loop cannot go on: say so, and leave nobody waiting
            why = str(exc) if isinstance(exc, RuntimeError) and "in a row" in str(exc) else f"the generation loop failed ({type(exc).__name__}: {exc})"
            logger.critical("generation has stopped on this replica: %s; the health route now answers 503", why, exc_info=exc)
            waiting = self.scheduler.close(why)
            error = exc if isinstance(exc, Exception) else RuntimeError(why)
            try:
                self._end_touched(error)
            finally:
                self._end(waiting, error)

    def _free(self) -> int:
        return 0 if self.engine is None else self.engine.max_streams - len(self.engine.streams)

    def _idle(self) -> bool:
        return self.engine is None or not self.engine.streams

    def _round(self, batched: list[Job], solo: Job | None) -> None:
        if solo is not None:
            self._solo = solo
            error = self._run_alone(solo)
            self._solo = None
            self._finish([(solo, error)])
            return
        self._admitting = list(batched)
        for job in batched:
            self.engine.join(job)
            self._admitting.remove(job)
        self.engine.step()
        self._finish(self.engine.take_left())

    def _finish(self, ended: list[tuple[Job, BaseException | None]]) -> None:
        """Free the places, then tell the clients."""
        self.scheduler.finished(ended)
        for job, error in ended:
            if job.ended is None:
                job.complete(error)

    def _end_touched(self, error: BaseException) -> None:
        """End every job the interrupted round touched and make the engine clean. An error here means
        the engine cannot be trusted: it stops the loop."""
        touched, self._admitting = self._admitting, []
        if self._solo is not None:
            touched.append(self._solo)
            self._solo = None
        ended = [(job, error) for job in touched]
        if self.engine is not None:
            ended += self.engine.take_left()  # those that ended before the error struck, as they ended
            self.engine.abort(error)
            ended += self.engine.take_left()
        self._finish(ended)

    def _end(self, jobs: list[Job], error: BaseException) -> None:
        self._finish([(job, error) for job in jobs])

    def _run_alone(self, job: Job) -> BaseException | None:
        """XTTS's own streamer, alone on the model; the error it ended with, if any."""
        if job.cancelled is not None:  # cancelled between the queue and here: it never reaches the model
            return None
        chunks = None
        try:
            chunks = job.chunks()
            for chunk in chunks:
                job.deliver(chunk)
                if job.cancelled:
                    break
        except Exception as exc:  # the client sees a broken transfer; the next job still runs
            logger.error("request %s: generation failed", job.id, exc_info=exc)
            return exc
        finally:
            if chunks is not None:
                chunks.close()  # frees the model's per-stream state now, not at garbage collection
        return None
