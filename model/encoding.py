"""The encoding worker: audio leaves the model thread.

Resampling (soxr) and encoding (PyAV: Opus, MP3, G.711) are CPU work, about 28 ms per second of audio for
MP3 at 48 kHz. On the generation thread they keep the GPU idle meanwhile. With a worker, the generation
thread hands each chunk over and moves on: on CUDA the chunk is first copied to pinned host memory
behind a CUDA event (a non-blocking copy; the worker waits for the event, not the model thread).

One worker thread and one FIFO queue for every job, so a job's chunks are encoded in the order they
were made, and its end (`Job.complete`) comes after its last chunk. The byte bound of each job's buffer
is applied where it always was, as the bytes go in (model/job.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)


class EncodeWorker:
    def __init__(self, name: str = "encoding"):
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        self._queue.put(work)

    def drain(self) -> None:
        """Until everything submitted so far has run."""
        done = threading.Event()
        self._queue.put(done.set)
        done.wait()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                work()
            except Exception:  # a job's own errors are its business (Job._encode); this is a bug
                logger.exception("encoding worker: unexpected error")


def to_host(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """The chunk on the host: on CUDA a non-blocking copy into pinned memory and the event the copy
    completes at; on CPU the chunk itself (each is a fresh tensor the engine never writes again)."""
    if chunk.device.type != "cuda":
        return chunk, None
    host = torch.empty(chunk.shape, dtype=chunk.dtype, pin_memory=True)
    host.copy_(chunk, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event
