"""The admission queue and the generation thread, with fake streams: no model, no HTTP."""

import asyncio
import threading
import time

import pytest
import torch

from model.encoders import PcmEncoder, encoder_for
from model.scheduler import ChunkBuffer, Job, QueueFull, Scheduler, StreamAborted


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


def job(source, limit=1 << 20) -> Job:
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


@pytest.fixture()
def scheduler():
    s = Scheduler(max_waiting=4)
    yield s
    s.close()


def test_generation_runs_to_the_end_without_any_reader(scheduler):
    """The model moves on when an utterance is made, however slowly (here: never) its client reads."""
    first, second = job(Source([10] * 20)), job(Source([10] * 3))
    scheduler.submit(first)
    scheduler.submit(second)
    wait_until(lambda: second.ended == "done")
    assert first.ended == "done" and first.generated_chunks == 20
    assert len(read_all(first.output)) == 20 * 10 * 2  # and it is all still there for the reader


def test_jobs_run_first_come_first_served_and_know_their_position(scheduler):
    gate = threading.Event()
    jobs = [job(Source([10], gate=gate)), job(Source([10])), job(Source([10]))]
    for j in jobs:
        scheduler.submit(j)
    assert [j.position for j in jobs] == [0, 1, 2]
    gate.set()
    wait_until(lambda: all(j.ended for j in jobs))
    assert [j.waited for j in jobs] == sorted(j.waited for j in jobs)


def test_past_the_bound_a_request_is_refused_with_a_retry_time_and_nothing_queued():
    scheduler, gate = Scheduler(max_waiting=2), threading.Event()
    try:
        running = job(Source([10], gate=gate))
        scheduler.submit(running)
        wait_until(lambda: running.waited is not None)
        scheduler.submit(job(Source([10])))
        scheduler.submit(job(Source([10])))
        with pytest.raises(QueueFull) as refused:
            scheduler.submit(job(Source([10])))
        assert refused.value.status == 503 and refused.value.retry_after >= 1
        assert scheduler.waiting == 2
    finally:
        gate.set()
        scheduler.close()


def test_a_job_withdrawn_while_waiting_never_touches_the_model(scheduler):
    gate = threading.Event()
    running, leaving, after = job(Source([10], gate=gate)), job(Source([10])), job(Source([10]))
    for j in (running, leaving, after):
        scheduler.submit(j)
    scheduler.withdraw(leaving, "the client disconnected")
    gate.set()
    wait_until(lambda: after.ended == "done")
    assert not leaving.chunks.started and leaving.generated_chunks == 0
    assert leaving.ended == "stopped: the client disconnected while queued"
    assert scheduler.started == 2  # the model's own count: running and after, never leaving


def test_a_job_withdrawn_mid_stream_stops_at_the_next_chunk_and_the_body_ends_broken(scheduler):
    source = Source([10] * 50, delay=0.02)
    j = job(source)
    scheduler.submit(j)
    wait_until(lambda: source.made >= 2)
    scheduler.withdraw(j, "the client disconnected")
    wait_until(lambda: j.ended is not None)
    assert source.made < 50 and source.closed
    assert j.ended == "stopped: the client disconnected"
    with pytest.raises(StreamAborted):
        read_all(j.output)


def test_a_reader_too_far_behind_is_cut_off_instead_of_holding_memory(scheduler):
    source = Source([100] * 50)
    j = job(source, limit=1000)  # 5 chunks of s16
    scheduler.submit(j)
    wait_until(lambda: j.ended is not None)
    assert source.made < 50 and j.ended.startswith("stopped: the client fell")
    assert j.output.size <= 1000
    with pytest.raises(StreamAborted):
        read_all(j.output)


def test_a_failing_stream_breaks_its_body_and_the_next_one_runs(scheduler):
    failing, next_one = job(Source([10] * 5, fail_at=2)), job(Source([10] * 2))
    scheduler.submit(failing)
    scheduler.submit(next_one)
    wait_until(lambda: next_one.ended == "done")
    assert failing.ended == "failed after 2 chunks (RuntimeError: the GPU fell over)"
    assert failing.chunks.closed
    with pytest.raises(RuntimeError, match="fell over"):
        read_all(failing.output)
    assert len(read_all(next_one.output)) == 40


def test_the_buffer_wakes_a_waiting_reader_from_another_thread():
    output = ChunkBuffer(1 << 10)

    async def first_piece():
        threading.Timer(0.2, output.put, args=(b"ab",)).start()
        started = time.perf_counter()
        await output.wait(5)
        return output.take(), time.perf_counter() - started

    piece, waited = asyncio.run(first_piece())
    assert piece == b"ab" and 0.1 < waited < 2


def test_chunks_are_encoded_on_the_generation_thread_never_the_event_loop(scheduler):
    """Encoding holds the device-to-host copy (a GPU sync on CUDA): on the event loop it would stall
    every other request and the health route."""
    threads = set()

    class Recording(PcmEncoder):
        def encode(self, chunk):
            threads.add(threading.current_thread().name)
            return super().encode(chunk)

    j = job(Source([10] * 3))
    j.encoder = Recording(24000, wav=False)
    scheduler.submit(j)
    assert len(read_all(j.output)) == 60  # read on this thread's event loop
    assert threads == {"generation"}


def test_retry_after_learns_from_batched_jobs_that_finish():
    s = Scheduler(max_waiting=0, start=False)  # no thread: the first job stays queued
    s.submit(job(Source([1])))
    with pytest.raises(QueueFull) as before:
        s.submit(job(Source([1])))
    finished = job(Source([1]))
    finished.arrived, finished.waited, finished.ended = time.perf_counter() - 41.5, 2.0, "done"
    s._learn([finished])  # what the engine hands over after a step: a 39.5 s generation
    with pytest.raises(QueueFull) as after:
        s.submit(job(Source([1])))
    assert before.value.retry_after == 5 and after.value.retry_after == 12  # 0.8 * 5 + 0.2 * 39.5, rounded up


class GatedEngine:
    """An engine stand-in whose prefill (`start`) waits at a gate; its streams never end."""

    def __init__(self, max_streams: int):
        self.max_streams, self.streams, self.left = max_streams, [], []
        self.gate, self.starting = threading.Event(), threading.Event()

    def admit(self, job):
        self.streams.append(job)
        return job

    def start(self, stream):
        self.starting.set()
        self.gate.wait(10)

    def step(self):
        time.sleep(0.01)

    def cancel_all(self, why):
        self.streams.clear()


def test_a_job_being_prefilled_counts_once_against_the_queue_bound():
    engine = GatedEngine(max_streams=1)
    s = Scheduler(max_waiting=1, engine=engine)
    try:
        s.submit(job(None))
        assert engine.starting.wait(10)  # taken from the queue, in the batch, prefilling
        second = job(None)
        s.submit(second)  # one in the batch, none waiting: room for one more
        assert second.position == 1
        with pytest.raises(QueueFull):
            s.submit(job(None))
    finally:
        engine.gate.set()
        s.close()
