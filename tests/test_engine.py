"""The batched engine on the tiny checkpoint: a stream's output does not depend on what else runs.

Every crowded stream is compared with its solo run: the same GPT tokens, the same chunks, and the same
audio bit for bit (packed linear kernels, attention per stream, prompts cut at the same places, each
window vocoded alone: model/decoding.py). Streams differ in length, voice, language, chunk sizes and
sampling settings, join at different steps and leave at different steps (an early stop, a cancel, a
failure). The solo run is checked in turn against XTTS's own sampling driving the windowed vocoder
(tests/reference.py), which tests/test_vocoder.py checks against upstream XTTS.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from conftest import sharpen_attention
from torch.utils._python_dispatch import TorchDispatchMode

from reference import inference_stream

from model import engine as engine_module
from model.checkpoint import load_xtts
from model.encoding import EncodeWorker
from model.engine import Engine
from model.job import ChunkBuffer, Job, StreamAborted
from model.packing import pack_gpt
from model.schema import SynthesisRequest
from model.voices import Voice
from model.vocoder import CONTEXT_FRAMES

SPEAKERS = ["Claribel Dervla", "Ana Florence", "Viktor Eka"]
# Added to the stop token's logit: random weights then stop after 1 to about 20 tokens, depending on
# the seed, instead of always at the cap (make_checkpoint.py's default bias is -1e4).
EARLY_STOP_BIAS = 2.0


@pytest.fixture(scope="module")
def xtts(tiny_checkpoint):
    """A model of this module's own: the early-stop tests change its stop bias; attention sharpened;
    packed as the server packs it on CPU."""
    model = load_xtts(tiny_checkpoint, torch.device("cpu"))
    sharpen_attention(model)
    pack_gpt(model.gpt, mapped=False)
    # Sentences of at most SENTENCE_TOKENS: the vocoder is nearly all of these tests' time, and the
    # crowd still overlaps (joins at steps 0 to 15, leaves at different steps).
    model.gpt.max_gen_mel_tokens = SENTENCE_TOKENS
    return model


@contextmanager
def logit_bias(xtts, token: int, bias: float):
    before = xtts.gpt.mel_head.bias[token].item()
    with torch.no_grad():
        xtts.gpt.mel_head.bias[token] = bias
    try:
        yield
    finally:
        with torch.no_grad():
            xtts.gpt.mel_head.bias[token] = before


def stop_bias(xtts, bias: float):
    return logit_bias(xtts, xtts.gpt.stop_audio_token, bias)


class Capture:
    """An encoder that keeps the float chunks, and fails at chunk `fail_at` if asked."""

    media_type, sample_rate = "audio/x-test", 24000

    def __init__(self, fail_at: int | None = None):
        self.chunks: list[torch.Tensor] = []
        self.fail_at = fail_at

    def encode(self, chunk: torch.Tensor) -> bytes:
        if len(self.chunks) == self.fail_at:
            raise RuntimeError("the encoder fell over")
        self.chunks.append(chunk.clone())
        return b"x"

    def finish(self) -> bytes:
        return b""


def voice(xtts, name: str) -> Voice:
    speaker = xtts.speaker_manager.speakers[name]
    return Voice(speaker["gpt_cond_latent"], speaker["speaker_embedding"])


def make_job(xtts, sentences: list[str], speaker: str = SPEAKERS[0], fail_at: int | None = None, **fields) -> Job:
    request = SynthesisRequest(text=" ".join(sentences), **fields)
    return Job(Capture(fail_at), ChunkBuffer(1 << 30), request=request, voice=voice(xtts, speaker), sentences=sentences)


# Five requests that differ in everything a stream carries.
CROWD = [
    dict(sentences=["Hello there, this is the first stream.", "It has a second sentence."], seed=0, chunk_size=8, first_chunk_size=2),
    dict(sentences=["Bonjour, voici le deuxième flux."], speaker=SPEAKERS[1], language="fr", seed=1, chunk_size=20,
         temperature=0.5, top_k=10, top_p=0.7, repetition_penalty=2.0),
    dict(sentences=["Guten Tag.", "Das ist der dritte Strom."], speaker=SPEAKERS[2], language="de",
         seed=3, chunk_size=13, speed=1.5, temperature=1.0, top_p=1.0),
    dict(sentences=["Hola, este es el cuarto."], language="es", seed=6, chunk_size=10, top_k=1, repetition_penalty=1.0),
    dict(sentences=["The fifth joins late."], speaker=SPEAKERS[1], seed=11, chunk_size=12, speed=0.75),
]
JOIN_AT = [0, 0, 3, 9, 15]  # the engine step at which each joins
SENTENCE_TOKENS = 24


def run_crowd(xtts, specs: list[dict], join_at: list[int], max_streams: int = 8, on_step=None, engine=None) -> list[Job]:
    engine = engine or Engine(xtts, max_streams)
    jobs = [make_job(xtts, **spec) for spec in specs]
    step = 0
    while step <= max(join_at) or engine.streams:
        for job, at in zip(jobs, join_at, strict=True):
            if at == step:
                engine.join(job)
        if on_step is not None:
            on_step(step, jobs)
        engine.step()
        finish(engine)
        for job in jobs:
            if job.ended and not hasattr(job, "left_at"):
                job.left_at = step
        step += 1
        assert step < 10_000
    finish(engine)
    assert not any(engine.table.lengths) and not any(engine.table.generators)  # every slot freed
    return jobs


def finish(engine: Engine) -> None:
    """What the generation loop does after each step: tell the jobs that left how they ended."""
    for job, error in engine.take_left():
        job.complete(error)


_solo_runs: dict[tuple[str, float], Job] = {}


def solo(xtts, spec: dict) -> Job:
    """The spec's stream alone on an engine (memoized: the suite's time is mostly the vocoder's)."""
    key = (repr(spec), xtts.gpt.mel_head.bias[xtts.gpt.stop_audio_token].item())
    if key not in _solo_runs:
        _solo_runs[key] = run_crowd(xtts, [spec], [0])[0]
    return _solo_runs[key]


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (reference - other).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(reference.pow(2).sum().item() / noise)


def assert_same_stream(got: Job, expected: Job, exact: bool = True) -> None:
    assert got.ended == expected.ended == "done"
    assert got.tokens == expected.tokens
    assert [len(c) for c in got.encoder.chunks] == [len(c) for c in expected.encoder.chunks]
    a, b = torch.cat(expected.encoder.chunks), torch.cat(got.encoder.chunks)
    if exact:
        assert torch.equal(a, b), (a - b).abs().max().item()
    else:  # windows vocoded together: HiFiGAN's batched convolutions round differently
        assert (a - b).abs().max().item() <= 1e-3 or snr_db(a, b) >= 40


@pytest.mark.parametrize(
    "bias,prefill_rows", [(None, 0), (EARLY_STOP_BIAS, 16)],
    ids=["every sentence to the cap", "early stops, prompts over several steps"],
)
def test_each_crowded_stream_matches_its_solo_run(xtts, bias, prefill_rows, monkeypatch):
    # With a cap on prompt rows a step, a joiner's prompt spreads over steps beside the others' tokens.
    with stop_bias(xtts, bias) if bias is not None else contextmanager(lambda: (yield))():
        engine = Engine(xtts, 8, prefill_rows=prefill_rows)
        unfinished = []  # steps that left a prompt with rows to prefill
        pieces = engine._pieces
        engine._pieces = lambda generating: (result := pieces(generating), unfinished.append(bool(engine._joining)))[0]
        crowd = run_crowd(xtts, CROWD, JOIN_AT, engine=engine)
        alone = [solo(xtts, spec) for spec in CROWD]
    assert any(unfinished) == bool(prefill_rows)
    left_at = [job.left_at for job in crowd]
    assert len(set(left_at)) == len(crowd), left_at
    if bias is not None:
        assert any(len(t) < xtts.gpt.max_gen_mel_tokens for job in crowd for t in job.tokens), "no early stop"
    for got, expected in zip(crowd, alone, strict=True):
        assert_same_stream(got, expected)


def test_a_seeded_stream_gives_the_same_tokens_whatever_else_runs(xtts):
    """The same request in two different crowds, at different slots and steps."""
    spec = CROWD[0]
    with stop_bias(xtts, EARLY_STOP_BIAS):
        first = run_crowd(xtts, [CROWD[1], spec, CROWD[3]], [0, 2, 5])[1]
        second = run_crowd(xtts, [CROWD[4], CROWD[2], spec], [0, 0, 7])[2]
        other_seed = run_crowd(xtts, [dict(spec, seed=99)], [0])[0]
    assert_same_stream(first, second)
    assert other_seed.tokens != first.tokens


def vocoder_calls(monkeypatch) -> list[list]:
    """Every HiFiGAN call the engine makes, as the list of windows it decoded."""
    calls = []
    decode, decode_batch = engine_module.decode, engine_module.decode_batch
    monkeypatch.setattr(engine_module, "decode", lambda model, w: calls.append([w]) or decode(model, w))
    monkeypatch.setattr(engine_module, "decode_batch", lambda model, ws: calls.append(list(ws)) or decode_batch(model, ws))
    return calls


# Due together at tokens 2, 12, 22 and 32 with windows of different lengths (chunk 10 against chunk 5).
DUE_TOGETHER = [dict(CROWD[0], chunk_size=10), dict(CROWD[1], chunk_size=5, first_chunk_size=2),
                dict(CROWD[3], chunk_size=5, first_chunk_size=2)]


@pytest.mark.parametrize("batch_vocoder", [False, True], ids=["alone", "batched"])
def test_no_window_decodes_more_than_its_own_chunk_and_context(xtts, monkeypatch, batch_vocoder):
    """A short window due beside a long one decodes its own frames only: alone (the default, bit for
    bit its solo audio), or batched with windows of exactly its length (within float rounding)."""
    calls = vocoder_calls(monkeypatch)
    crowd = run_crowd(xtts, DUE_TOGETHER, [0, 0, 0], engine=Engine(xtts, 4, batch_vocoder=batch_vocoder))
    hop = xtts.hifigan_decoder.output_hop_length
    for windows in calls:
        assert len({w.frames for w in windows}) == 1
        for w in windows:  # from CONTEXT_FRAMES before the first sample the chunk (and its crossfade tail) needs
            needed = min(w.plan.chunk[0], w.plan.tail[0]) if not (w.plan.final or w.plan.short) else w.plan.chunk[0]
            assert w.frames <= -(-(w.plan.full_len - needed) // hop) + CONTEXT_FRAMES + 1
    assert (max(map(len, calls)) > 1) == batch_vocoder  # windows of one length share a call only when batched
    monkeypatch.undo()
    for got, spec in zip(crowd, DUE_TOGETHER, strict=True):
        assert_same_stream(got, solo(xtts, spec), exact=not batch_vocoder)


def test_a_cancelled_and_a_failing_stream_leave_and_the_others_finish_intact(xtts):
    specs = [CROWD[0], dict(CROWD[1], fail_at=1), CROWD[2], CROWD[3]]

    made_when_cancelled = []

    def cancel_third(step, jobs):
        if step == 12:
            jobs[2].cancel("the client went away")
            made_when_cancelled.append(sum(map(len, jobs[2].tokens)))

    crowd = run_crowd(xtts, specs, [0, 0, 1, 2], on_step=cancel_third)
    ok, failed, cancelled, ok2 = crowd
    assert failed.ended.startswith("failed after 1 chunks (RuntimeError: the encoder fell over")
    with pytest.raises(StreamAborted, match="the encoder fell over"):
        while failed.output.take() is not None:
            pass
    assert cancelled.ended == "stopped: the client went away"
    assert sum(map(len, cancelled.tokens)) == made_when_cancelled[0]  # it left before the next step
    with pytest.raises(StreamAborted, match="went away"):
        while cancelled.output.take() is not None:
            pass
    assert_same_stream(ok, solo(xtts, CROWD[0]))
    assert_same_stream(ok2, solo(xtts, CROWD[3]))


def test_more_jobs_than_slots_take_turns_in_the_cache(xtts):
    """Two slots, four streams joining as slots free: compaction moves caches between slots."""
    with stop_bias(xtts, EARLY_STOP_BIAS):
        jobs = take_turns(xtts, CROWD[:4])
        alone = [solo(xtts, spec) for spec in CROWD[:4]]
    for job, expected in zip(jobs, alone, strict=True):
        assert_same_stream(job, expected)


def take_turns(xtts, specs: list[dict]) -> list[Job]:
    engine = Engine(xtts, 2)
    jobs = [make_job(xtts, **spec) for spec in specs]
    waiting = list(jobs)
    moves = []
    move = engine.table.move
    engine.table.move = lambda src, dst: moves.append((src, dst)) or move(src, dst)
    while waiting or engine.streams:
        while waiting and not engine.full:
            engine.join(waiting.pop(0))
        engine.step()
        finish(engine)
    assert moves  # a stream left slot 0 while slot 1 was still generating
    return jobs


@pytest.mark.parametrize("spec", [CROWD[0], CROWD[2], CROWD[4]], ids=["two sentences", "speed 1.5", "speed 0.75"])
def test_a_solo_stream_matches_the_hf_driven_windowed_streamer(xtts, spec):
    """Same seed: our decode step and sampling give HF generate's tokens, so the same chunks."""
    assert_same_as_hf(xtts, solo(xtts, spec))


def assert_same_as_hf(xtts, job: Job) -> None:
    request = job.request
    torch.manual_seed(request.seed)
    expected = list(inference_stream(
        xtts, job.sentences, request.language, job.voice.gpt_cond_latent, job.voice.speaker_embedding,
        stream_chunk_size=request.chunk_size, first_chunk_size=request.first_chunk_size or min(4, request.chunk_size),
        temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
        repetition_penalty=request.repetition_penalty, speed=request.speed,
    ))
    assert [len(c) for c in job.encoder.chunks] == [len(c) for c in expected]
    assert (torch.cat(job.encoder.chunks) - torch.cat(expected)).abs().max().item() <= 1e-4


def test_a_voice_used_again_prefills_only_its_text_and_speaks_the_same(xtts):
    """The second stream of a voice copies the voice's conditioning positions from the prefix cache:
    32 prompt rows fewer for each of its sentences, and the very stream a fresh engine makes."""
    engine = Engine(xtts, 4)
    first, again = CROWD[3], CROWD[0]  # both in SPEAKERS[0]'s voice
    text_rows = lambda spec: [len(xtts.tokenizer.encode(s.strip().lower(), lang=spec.get("language", "en"))) + 3  # noqa: E731
                              for s in spec["sentences"]]  # the text between its start and stop tokens, then the start of audio
    conditioning = xtts.speaker_manager.speakers[SPEAKERS[0]]["gpt_cond_latent"].shape[1]
    got_first = run_crowd(xtts, [first], [0], engine=engine)[0]
    assert engine.timings.prefill_rows == conditioning + sum(text_rows(first))
    got_again = run_crowd(xtts, [again], [0], engine=engine)[0]
    assert engine.timings.prefill_rows == conditioning + sum(text_rows(first)) + sum(text_rows(again))
    assert_same_stream(got_first, solo(xtts, first))
    assert_same_stream(got_again, solo(xtts, again))


def test_max_new_tokens_caps_each_sentence(xtts):
    job = run_crowd(xtts, [dict(CROWD[0], max_new_tokens=5)], [0])[0]
    assert job.ended == "done" and [len(t) for t in job.tokens] == [5, 5]


def test_the_first_token_is_penalized_for_the_prompts_1s_as_hf_penalizes_its_input_ids(xtts):
    """HF's repetition penalty covers the input ids, which hold the prompt's placeholder 1s before the
    start token: so must the first step's. With token 1's logit raised by 14, greedy decoding picks 1
    unless it is penalized; HF does not."""
    spec = dict(sentences=["Hello there, this is the first stream."], seed=0, chunk_size=8, first_chunk_size=2, top_k=1)
    with logit_bias(xtts, 1, xtts.gpt.mel_head.bias[1].item() + 14.0):
        job = run_crowd(xtts, [spec], [0])[0]
        assert job.tokens[0][0] != 1
        assert_same_as_hf(xtts, job)


class HostSyncs(TorchDispatchMode):
    """Counts what would stall a GPU step's host on the device, seen from CPU: a tensor's value read
    back (`int()`, `bool()`, `.item()`: aten._local_scalar_dense, or under inference mode aten.item and
    aten.is_nonzero) and a Python value made into a tensor (`torch.tensor(list)`, `t[i] = True`:
    aten.lift_fresh, on CUDA a blocking copy from pageable memory). `.tolist()` dispatches nothing on
    CPU: the step's one read back, and its one upload, go through the decoder's Uploads, which counts
    them."""

    COUNTED = (
        torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default, torch.ops.aten.is_nonzero.default,
        torch.ops.aten.lift_fresh.default,
    )

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.COUNTED
        return func(*args, **(kwargs or {}))


# A decode step's syncs with the host, at most: the one upload and the one read back (before issue 24:
# 8 + one per stream, README "Sizing").
SYNCS_PER_STEP = 2


def test_a_step_syncs_with_the_host_once_each_way_whatever_the_batch(xtts, monkeypatch):
    """Every step of a crowd (streams generating, joining in pieces, ending) counted: one upload, one
    read back, nothing else that would wait for the device. (The vocoder, no part of the step, is
    left out: silence of the window's length.)"""
    monkeypatch.setattr(engine_module, "decode", lambda m, w: torch.zeros(w.frames * m.hifigan_decoder.output_hop_length))
    engine = Engine(xtts, 8, prefill_rows=16)
    counts = []
    step = engine.decoder.step

    def counted(slots, tokens, positions, pieces, sampled):
        before = engine.decoder.uploads.transfers
        with HostSyncs() as syncs:
            result = step(slots, tokens, positions, pieces, sampled)
        counts.append((len(slots), len(pieces), syncs.count, engine.decoder.uploads.transfers - before))
        return result

    engine.decoder.step = counted
    run_crowd(xtts, CROWD[:4], [0, 0, 2, 5], engine=engine)
    assert any(n >= 3 and pieces for n, pieces, _, _ in counts), counts  # a crowd, with prompts joining
    assert all(syncs == 0 for _, _, syncs, _ in counts), counts
    assert max(syncs + transfers for _, _, syncs, transfers in counts) == SYNCS_PER_STEP, counts


def test_the_static_step_speaks_as_the_per_stream_step_does(xtts):
    """The static-buffer path (what CUDA graphs capture; run eagerly on CPU): pure decode steps padded
    to a batch bucket, attention over every slot at once. Not bit-identical to attention per stream, so
    compared with a tolerance: the share of tokens that agree with the exact path, and the audio where
    they agree."""
    engine = Engine(xtts, 8, static=True)
    used = []
    static_forward = engine.decoder.static_forward
    engine.decoder.static_forward = lambda bucket, *a: used.append(bucket) or static_forward(bucket, *a)
    crowd = run_crowd(xtts, CROWD, JOIN_AT, engine=engine)
    alone = [solo(xtts, spec) for spec in CROWD]
    assert {1, 2, 4, 8} >= set(used) and {2, 4} <= set(used), set(used)  # padded buckets ran (3 streams: 4)
    flat = lambda job: [t for sentence in job.tokens for t in sentence]  # noqa: E731
    pairs = [(a, b) for got, expected in zip(crowd, alone, strict=True) for a, b in zip(flat(got), flat(expected), strict=True)]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    assert len(pairs) >= 150 and agreement >= 0.95, agreement
    same = [(got, expected) for got, expected in zip(crowd, alone, strict=True) if got.tokens == expected.tokens]
    assert len(same) >= 3
    for got, expected in same:
        assert_same_stream(got, expected, exact=False)


def test_encoding_on_the_worker_keeps_each_streams_order_audio_and_failures(xtts):
    """Chunks handed to the encoding worker (model/encoding.py) reach each encoder in order and bit for
    bit as encoded on the generation thread; an encoder that fails there ends its own stream, as failed,
    and the others finish."""
    worker = EncodeWorker()
    try:
        specs = [CROWD[0], dict(CROWD[1], fail_at=1), CROWD[3]]
        engine = Engine(xtts, 8)
        jobs = [make_job(xtts, **spec) for spec in specs]
        for job in jobs:
            job.worker = worker
            engine.join(job)
        while engine.streams:
            engine.step()
            finish(engine)
        finish(engine)
        worker.drain()
    finally:
        worker.close()
    ok, failed, ok2 = jobs
    assert failed.ended.startswith("failed after 1 chunks (RuntimeError: the encoder fell over)"), failed.ended
    for got, spec in ((ok, specs[0]), (ok2, specs[2])):
        assert_same_stream(got, solo(xtts, spec))
