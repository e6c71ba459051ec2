"""The generation loop: with fake solo streams (no model), then on the real engine with faults injected."""

import threading

import pytest
import torch
from fakes import Source, job, read_all, wait_until

from model import decoding
from model import engine as engine_module
from model.checkpoint import load_xtts
from model.encoders import PcmEncoder, encoder_for
from model.engine import Engine
from model.job import ChunkBuffer, Job, StreamAborted
from model.loop import MAX_ERRORS_IN_A_ROW, GenerationLoop
from model.packing import pack_gpt
from model.scheduler import GenerationStopped, Scheduler
from model.schema import SynthesisRequest
from model.voices import Voice


class Loop(GenerationLoop):
    """A started loop with its scheduler at hand, as the service builds it."""

    def __init__(self, engine: Engine | None = None, max_waiting: int = 4):
        super().__init__(Scheduler(engine.max_streams if engine else 1, max_waiting), engine)
        self.start()

    def submit(self, job: Job) -> None:
        self.scheduler.submit(job)


@pytest.fixture()
def solo_loop():
    loop = Loop()
    yield loop
    loop.close()


def test_generation_runs_to_the_end_without_any_reader(solo_loop):
    """The model moves on when an utterance is made, however slowly (here: never) its client reads."""
    first, second = job(Source([10] * 20)), job(Source([10] * 3))
    solo_loop.submit(first)
    solo_loop.submit(second)
    wait_until(lambda: second.ended == "done")
    assert first.ended == "done" and first.generated_chunks == 20
    assert len(read_all(first.output)) == 20 * 10 * 2  # and it is all still there for the reader


def test_jobs_run_first_come_first_served_and_know_their_position(solo_loop):
    gate = threading.Event()
    jobs = [job(Source([10], gate=gate)), job(Source([10])), job(Source([10]))]
    for j in jobs:
        solo_loop.submit(j)
    assert [j.position for j in jobs] == [0, 1, 2]
    gate.set()
    wait_until(lambda: all(j.ended for j in jobs))
    assert [j.waited for j in jobs] == sorted(j.waited for j in jobs)


def test_a_job_withdrawn_mid_stream_stops_at_the_next_chunk_and_the_body_ends_broken(solo_loop):
    source = Source([10] * 50, delay=0.02)
    j = job(source)
    solo_loop.submit(j)
    wait_until(lambda: source.made >= 2)
    solo_loop.scheduler.withdraw(j, "the client disconnected")
    wait_until(lambda: j.ended is not None)
    assert source.made < 50 and source.closed
    assert j.ended == "stopped: the client disconnected"
    with pytest.raises(StreamAborted):
        read_all(j.output)


def test_a_reader_too_far_behind_is_cut_off_instead_of_holding_memory(solo_loop):
    source = Source([100] * 50)
    j = job(source, limit=1000)  # 5 chunks of s16
    solo_loop.submit(j)
    wait_until(lambda: j.ended is not None)
    assert source.made < 50 and j.ended.startswith("stopped: the client fell")
    assert j.output.size <= 1000
    with pytest.raises(StreamAborted):
        read_all(j.output)


def test_a_failing_stream_breaks_its_body_and_the_next_one_runs(solo_loop):
    failing, next_one = job(Source([10] * 5, fail_at=2)), job(Source([10] * 2))
    solo_loop.submit(failing)
    solo_loop.submit(next_one)
    wait_until(lambda: next_one.ended == "done")
    assert failing.ended == "failed after 2 chunks (RuntimeError: the GPU fell over)"
    assert failing.chunks.closed
    with pytest.raises(RuntimeError, match="fell over"):
        read_all(failing.output)
    assert len(read_all(next_one.output)) == 40


def test_chunks_are_encoded_on_the_generation_thread_never_the_event_loop(solo_loop):
    """Encoding holds the device-to-host copy (a GPU sync on CUDA): on the event loop it would stall
    every other request and the health route."""
    threads = set()

    class Recording(PcmEncoder):
        def encode(self, chunk):
            threads.add(threading.current_thread().name)
            return super().encode(chunk)

    j = job(Source([10] * 3))
    j.encoder = Recording(24000, wav=False)
    solo_loop.submit(j)
    assert len(read_all(j.output)) == 60  # read on this thread's event loop
    assert threads == {"generation"}


# The loop on the real engine, with faults injected ---------------------------------------------------
# Three streams generate at once on the tiny checkpoint (every sentence is TOKENS tokens) while a
# fault is injected into one place; every job must end (none waits for ever), each with its audio or a
# broken transfer, and the loop must go on with an engine as clean as a new one: a job after the fault
# gets the very tokens it gets on a fresh engine.


@pytest.fixture(scope="module")
def xtts(tiny_checkpoint):
    model = load_xtts(tiny_checkpoint, torch.device("cpu"))
    pack_gpt(model.gpt, mapped=False)  # as the server runs it on CPU
    return model


def engine_job(xtts, seed: int, text: str = "A stream of the crowd.") -> Job:
    speaker = xtts.speaker_manager.speakers["Ana Florence"]
    request = SynthesisRequest(text=text, seed=seed, chunk_size=10, first_chunk_size=2)
    voice = Voice(speaker["gpt_cond_latent"], speaker["speaker_embedding"])
    return Job(encoder_for("pcm", 24000), ChunkBuffer(1 << 24), request=request, voice=voice, sentences=[text])


@pytest.fixture(scope="module")
def solo_tokens(xtts):
    """Each seed's tokens from a fresh engine, alone."""
    memo = {}

    def tokens(seed: int) -> list[list[int]]:
        if seed not in memo:
            alone = GenerationLoop(Scheduler(1, 1), Engine(xtts, 1))
            alone.run_now(job := engine_job(xtts, seed))
            memo[seed] = job.tokens
        return memo[seed]

    return tokens


class Fault:
    """Raises once `armed` is set and `when()` holds, `times` times (forever with None)."""

    def __init__(self, when=lambda: True, times: int | None = 1):
        self.when, self.left, self.armed, self.fired = when, times, threading.Event(), 0

    def __call__(self, where: str) -> None:
        if self.armed.is_set() and self.when() and (self.left is None or self.left > 0):
            self.fired += 1
            if self.left is not None:
                self.left -= 1
            raise RuntimeError(f"fault injected into {where}")


@pytest.fixture()
def loop(xtts):
    loop = Loop(Engine(xtts, 3))
    yield loop
    loop.close()


def start_crowd(loop, xtts, seeds, chunks: int = 1) -> list[Job]:
    """Submit a job per seed and wait until every one has sent `chunks` chunks (all generating)."""
    jobs = [engine_job(xtts, seed) for seed in seeds]
    for j in jobs:
        loop.submit(j)
    wait_until(lambda: all(j.generated_chunks >= chunks for j in jobs[: loop.scheduler.capacity]))
    return jobs


def outcome(j: Job) -> str:
    """'done', or the error the client's read ends with (a broken transfer)."""
    try:
        read_all(j.output, timeout=60)
    except StreamAborted as exc:
        return f"broken: {exc}"
    return j.ended


def assert_goes_on_clean(loop, xtts, solo_tokens, seed: int = 77) -> None:
    after = engine_job(xtts, seed)
    loop.submit(after)
    assert outcome(after) == "done" and after.tokens == solo_tokens(seed)
    assert loop.healthy and loop._thread.is_alive()
    # The job's end reaches its reader a moment before the loop frees the cache behind it.
    wait_until(lambda: not loop.engine.streams and not any(loop.engine.table.generators))
    assert not any(loop.engine.table.lengths)


def test_a_fault_in_batched_sampling_ends_the_batch_and_the_loop_goes_on(loop, xtts, solo_tokens, monkeypatch):
    fault = Fault()
    sample = decoding._sample

    def failing(scores, *args):
        if len(scores) == 3:  # a step of the three
            fault("sampling")
        return sample(scores, *args)

    monkeypatch.setattr(decoding, "_sample", failing)
    jobs = start_crowd(loop, xtts, [1, 2, 3, 4])  # the fourth waits for a slot
    fault.armed.set()
    results = [outcome(j) for j in jobs]
    assert fault.fired == 1
    assert results[:3] == ["broken: RuntimeError: fault injected into sampling"] * 3, results
    # It waited in the queue, untouched: it runs after the fault, as if on a fresh engine.
    assert results[3] == "done" and jobs[3].tokens == solo_tokens(4)
    assert_goes_on_clean(loop, xtts, solo_tokens)


def test_a_fault_in_the_vocoder_ends_that_stream_only(loop, xtts, solo_tokens, monkeypatch):
    victim = []
    fault = Fault()
    decode = engine_module.decode

    def failing(model, window):
        if victim and window.owner is victim[0].windowed:
            fault("the vocoder")
        return decode(model, window)

    monkeypatch.setattr(engine_module, "decode", failing)
    jobs = start_crowd(loop, xtts, [1, 2, 3])
    victim.append(next(s for s in loop.engine.streams if s.job is jobs[1]))
    fault.armed.set()
    results = [outcome(j) for j in jobs]
    assert fault.fired == 1 and results[1] == "broken: RuntimeError: fault injected into the vocoder"
    assert results[0] == results[2] == "done"  # each window is vocoded alone (CPU)
    assert jobs[0].tokens == solo_tokens(1) and jobs[2].tokens == solo_tokens(3)
    assert_goes_on_clean(loop, xtts, solo_tokens)


def test_a_fault_in_one_encoder_ends_that_stream_only(loop, xtts, solo_tokens):
    jobs = [engine_job(xtts, seed) for seed in (1, 2, 3)]

    class Failing(type(jobs[0].encoder)):
        def encode(self, chunk):
            if jobs[1].generated_chunks == 2:
                raise RuntimeError("fault injected into the encoder")
            return super().encode(chunk)

    jobs[1].encoder = Failing(24000, wav=False)
    for j in jobs:
        loop.submit(j)
    results = [outcome(j) for j in jobs]
    assert results == ["done", "broken: RuntimeError: fault injected into the encoder", "done"]
    assert jobs[1].generated_chunks == 2
    assert jobs[0].tokens == solo_tokens(1) and jobs[2].tokens == solo_tokens(3)
    assert_goes_on_clean(loop, xtts, solo_tokens)


def test_a_fault_in_the_loop_mid_step_ends_the_jobs_it_touched_and_the_loop_goes_on(loop, xtts, solo_tokens, monkeypatch):
    """An error no stream owns (here, the loop's own bookkeeping of a sampled token), with three
    streams in the batch and one waiting: before, the loop's clean-up itself raised (the KV cache is
    inference tensors) and the generation thread died with every job in it."""
    fault = Fault(when=lambda: len(loop.engine.streams) == 3)
    accept = engine_module.Sequence.accept
    monkeypatch.setattr(engine_module.Sequence, "accept", lambda self, *a: fault("the loop") or accept(self, *a))
    jobs = start_crowd(loop, xtts, [1, 2, 3, 4])
    fault.armed.set()
    results = [outcome(j) for j in jobs]
    assert results[:3] == ["broken: RuntimeError: fault injected into the loop"] * 3, results
    assert results[3] == "done" and jobs[3].tokens == solo_tokens(4)
    assert_goes_on_clean(loop, xtts, solo_tokens)


def test_a_fault_while_admitting_ends_the_jobs_being_admitted(loop, xtts, solo_tokens, monkeypatch):
    """Three jobs taken from the queue together; admitting the second fails: the first is in the
    batch, the second and third not yet. All three end; none is left waiting for ever."""
    fault = Fault(when=lambda: len(loop.engine.streams) == 1)
    join = loop.engine.join
    monkeypatch.setattr(loop.engine, "join", lambda job: fault("admission") or join(job))
    fault.armed.set()
    with loop.scheduler._cond:  # queued while the loop is held, so that it takes all three in one round
        jobs = [engine_job(xtts, seed) for seed in (1, 2, 3)]
        for j in jobs:
            loop.scheduler._waiting.append(j)
        loop.scheduler._cond.notify()
    results = [outcome(j) for j in jobs]
    assert results == ["broken: RuntimeError: fault injected into admission"] * 3, results
    assert_goes_on_clean(loop, xtts, solo_tokens)


def test_a_fault_that_repeats_stops_the_loop_and_the_replica_says_so(xtts, monkeypatch):
    """A device in a sticky error state fails every step. After MAX_ERRORS_IN_A_ROW rounds the loop
    stops for good: health False (the route answers 503), every job still here ends, new ones get 503."""
    failing = Fault(times=None)
    failing.armed.set()
    monkeypatch.setattr(engine_module.Decoder, "step", lambda *a: failing("the GPT forward"))
    loop = Loop(Engine(xtts, 2), max_waiting=8)
    try:
        jobs = [engine_job(xtts, seed) for seed in range(8)]
        for j in jobs:
            loop.submit(j)
        results = [outcome(j) for j in jobs]
        loop._thread.join(10)  # it ends every job, then returns
        assert not loop.healthy and not loop._thread.is_alive()
        assert failing.fired == MAX_ERRORS_IN_A_ROW
        assert all(r.startswith("broken: ") for r in results), results
        assert f"{MAX_ERRORS_IN_A_ROW} unexpected errors in a row" in loop.stopped
        with pytest.raises(GenerationStopped) as refused:
            loop.submit(engine_job(xtts, 9))
        assert refused.value.status == 503 and refused.value.retry_after >= 1
    finally:
        loop.close()


def test_shutdown_ends_every_job_running_or_waiting_as_stopped(xtts):
    loop = Loop(Engine(xtts, 2))
    jobs = start_crowd(loop, xtts, [1, 2, 3, 4])
    loop.close()
    assert not loop._thread.is_alive() and not loop.healthy
    assert [outcome(j) for j in jobs] == ["broken: the server is shutting down"] * 4
    assert [j.ended for j in jobs] == ["stopped: the server is shutting down"] * 4
    assert not any(loop.engine.table.lengths) and not any(loop.engine.table.generators)


def test_a_solo_job_cancelled_before_it_starts_never_reaches_the_model(solo_loop):
    gate = threading.Event()
    running, cancelled = job(Source([10], gate=gate)), job(Source([10]))
    solo_loop.submit(running)
    wait_until(lambda: running.waited is not None)
    solo_loop.submit(cancelled)
    # As when the loop has just taken it from the queue: withdraw no longer finds it, only the cancel lands.
    cancelled.cancel("the client disconnected")
    gate.set()
    wait_until(lambda: cancelled.ended is not None)
    assert not cancelled.chunks.started and cancelled.ended == "stopped: the client disconnected"
