"""Stand-ins shared by the queue and loop tests: a fake synthesis stream, and a client that reads a job's buffer."""

from __future__ import annotations

import asyncio
import threading
import time

import torch

from model.encoders import encoder_for
from model.job import ChunkBuffer, Job
from model.loop import GenerationLoop
from model.scheduler import Scheduler


class Source:
    """A synthesis stream stand-in: `sizes` chunks, optionally held at a gate or failing at one."""

    def __init__(self, sizes, fail_at=None, gate: threading.Event | None = None, delay: float = 0.0):
        self.sizes, self.fail_at, self.gate, self.delay = sizes, fail_at, gate, delay
        self.made, self.started, self.closed = 0, False, False

    def __call__(self):
        self.started = True
        return self._chunks()

    def _chunks(self):
        try:
            for i, size in enumerate(self.sizes):
                if self.gate is not None:
                    self.gate.wait(10)
                if i == self.fail_at:
                    raise RuntimeError("the GPU fell over")
                time.sleep(self.delay)
                self.made += 1
                yield torch.full((size,), 0.25)
        finally:
            self.closed = True


def job(source=None, limit=1 << 20) -> Job:
    """A solo job on `source`, or without one a batched job (for the queue, which never runs it)."""
    return Job(chunks=source, encoder=encoder_for("pcm", 24000), output=ChunkBuffer(limit))


def read_all(output: ChunkBuffer, timeout=10) -> bytes:
    async def drain():
        data = bytearray()
        deadline = time.monotonic() + timeout
        while (piece := output.take()) is not None:
            data += piece
            if not piece:
                assert time.monotonic() < deadline, "the stream never ended"
                await output.wait(0.05)
        return bytes(data)

    return asyncio.run(drain())


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class SoloQueue(Scheduler):
    """A queue with a generation loop of its own, for solo jobs on fake streams (no model)."""

    def __init__(self, max_waiting: int, name: str = "generation"):
        super().__init__(capacity=1, max_waiting=max_waiting)
        self.loop = GenerationLoop(self, None, name)
        self.loop.start()

    def stop(self) -> None:
        self.loop.close()
