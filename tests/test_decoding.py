"""model/decoding.py against HF: the sampling processors, and the forward against XTTS's own generator;
and a stream's numbers against themselves in a crowd."""

from __future__ import annotations

import pytest
import torch
from conftest import sharpen_attention
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from model.checkpoint import load_xtts
from model.decoding import Decoder, Piece, sample
from model.engine import PREFILL_PIECE
from model.packing import pack_gpt
from model.slots import Sampling, SlotTable

SETTINGS = [
    Sampling(),  # XTTS's defaults
    Sampling(temperature=1.0, top_p=1.0, top_k=1024, repetition_penalty=1.0),  # HF leaves every processor out
    Sampling(temperature=0.3, top_p=0.5, top_k=5, repetition_penalty=2.0),
    Sampling(temperature=1.7, top_p=0.99, top_k=1, repetition_penalty=50.0),
]


def hf_scores(logits: torch.Tensor, input_ids: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The processors HF's generate builds for XTTS's settings, in its order (generation/utils.py)."""
    processors = LogitsProcessorList()
    if s.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if s.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(s.temperature))
    processors.append(TopKLogitsWarper(top_k=s.top_k))
    if s.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=s.top_p))
    return processors(input_ids, logits.clone())


def table_of(settings: list[Sampling], vocab: int, seeds: list[int]) -> SlotTable:
    """A slot table with only what sampling reads: one slot per setting, each with its generator."""
    table = SlotTable(len(settings), layers=1, heads=1, head_dim=1, vocab=vocab, device=torch.device("cpu"), dtype=torch.float32)
    for slot, (s, seed) in enumerate(zip(settings, seeds, strict=True)):
        table.assign(slot, s, torch.Generator().manual_seed(seed))
    return table


def test_each_row_samples_what_hf_would_with_the_same_generator():
    torch.manual_seed(0)
    vocab = 1026
    logits = torch.randn(len(SETTINGS), vocab) * 3
    input_ids = [torch.randint(0, vocab, (1, n)) for n in (40, 1, 200, 7)]

    for draw in range(20):
        table = table_of(SETTINGS, vocab, [draw * 10 + i for i in range(len(SETTINGS))])
        for row, ids in enumerate(input_ids):
            table.seen[row, ids[0]] = True
        # Slots in another order than the rows: row i samples with slot order[i]'s settings.
        order = [2, 0, 3, 1]
        ours = sample(logits[order], table, order)
        for row, slot in enumerate(order):
            s = SETTINGS[slot]
            probs = hf_scores(logits[slot : slot + 1], input_ids[slot], s).softmax(-1)
            expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(draw * 10 + slot))
            assert ours[row] == int(expected), (draw, slot, s)
            assert table.seen[slot, ours[row]]  # the token joins the slot's input ids


def test_per_row_settings_are_applied_to_their_own_row_only():
    """Greedy (top_k 1) on one row, wide sampling on the other: each row keeps its own."""
    logits = torch.randn(2, 50)
    greedy, wide = Sampling(top_k=1, repetition_penalty=1.0), Sampling(temperature=2.0, top_p=1.0, top_k=50, repetition_penalty=1.0)
    draws = [sample(logits, table_of([greedy, wide], 50, [i, i]), [0, 1]) for i in range(30)]
    assert {d[0] for d in draws} == {int(logits[0].argmax())}
    assert len({d[1] for d in draws}) > 5


def test_a_rows_token_does_not_depend_on_the_other_rows():
    """The same row and generator state, alone and among others: the same token, every draw."""
    vocab = 1026
    logits = torch.randn(4, vocab) * 3
    for draw in range(20):
        crowd = sample(logits, table_of(SETTINGS, vocab, [draw] * 4), [0, 1, 2, 3])
        for slot in range(4):
            alone = sample(logits[slot : slot + 1], table_of([SETTINGS[slot]], vocab, [draw]), [0])
            assert alone == [crowd[slot]]


@pytest.fixture(scope="module")
def xtts(tiny_checkpoint):
    model = load_xtts(tiny_checkpoint, torch.device("cpu"))
    sharpen_attention(model)
    pack_gpt(model.gpt, mapped=False)
    return model


def prompt_of(xtts, text: str = "hello there, this is a test.", speaker: str = "Claribel Dervla"):
    cond = xtts.speaker_manager.speakers[speaker]["gpt_cond_latent"]
    return cond, torch.IntTensor(xtts.tokenizer.encode(text, lang="en")).unsqueeze(0)


def decode_alone(decoder: Decoder, slot: int, prompt: torch.Tensor, tokens: list[int]):
    """Prefill `prompt` in pieces into `slot`, then feed `tokens`: every (latent, logits) pair."""
    out = []
    for start in range(0, len(prompt), PREFILL_PIECE):
        latents, logits = decoder.forward([], [], [], [Piece(slot, prompt[start : start + PREFILL_PIECE])])
    out.append((latents[0], logits[0]))
    for position, token in enumerate(tokens, start=1):
        latents, logits = decoder.forward([slot], [token], [position], [])
        out.append((latents[0], logits[0]))
    return out


@pytest.mark.parametrize("seed", [5, 77])
def test_the_decoder_gives_xtts_generators_tokens_and_latents(xtts, seed):
    """Prefill in pieces and decode steps over the loaded weights, against `GPT.get_generator` (HF generate)."""
    cond, text = prompt_of(xtts)
    settings = Sampling()
    with torch.inference_mode():
        torch.manual_seed(seed)
        generator = xtts.gpt.get_generator(
            fake_inputs=xtts.gpt.compute_embeddings(cond, text), top_k=settings.top_k, top_p=settings.top_p,
            temperature=settings.temperature, repetition_penalty=settings.repetition_penalty, do_sample=True,
            num_beams=1, num_return_sequences=1, length_penalty=1.0, output_attentions=False,
            output_hidden_states=True, return_dict_in_generate=True,
        )
        expected = [(int(token), latent[0]) for token, latent in generator]

        decoder = Decoder.for_model(xtts.gpt, slots=3)
        slot = 2  # any slot: the others stay empty
        decoder.table.assign(slot, settings, torch.Generator().manual_seed(seed))
        decoder.table.restart(slot, [1, xtts.gpt.start_audio_token])
        prompt = decoder.prompt(cond, text)
        for start in range(0, len(prompt), PREFILL_PIECE):
            latents, logits = decoder.forward([], [], [], [Piece(slot, prompt[start : start + PREFILL_PIECE])])
        got = []
        while len(got) < len(expected):
            token = sample(logits[:1], decoder.table, [slot])[0]
            got.append((token, latents[0]))
            latents, logits = decoder.forward([slot], [token], [len(got)], [])

    assert [t for t, _ in got] == [t for t, _ in expected]
    assert max((a - b).abs().max().item() for (_, a), (_, b) in zip(got, expected, strict=True)) <= 1e-5


def test_a_streams_numbers_are_the_same_bits_whatever_else_runs(xtts):
    """One stream alone, then the same stream in a forward with other streams' tokens and prompt pieces,
    at another slot, in a KV cache of another capacity: every latent and logit bit for bit (the
    packed linear kernels' rows do not depend on the other rows; attention runs per stream)."""
    cond, text = prompt_of(xtts)
    tokens = [17, 902, 5, 33, 640, 1, 88]
    with torch.inference_mode():
        alone = Decoder.for_model(xtts.gpt, slots=1)
        expected = decode_alone(alone, 0, alone.prompt(cond, text), tokens)

        crowd = Decoder.for_model(xtts.gpt, slots=4, capacity=alone.table.capacity + 100)
        long_cond, long_text = prompt_of(xtts, "a much longer prompt that makes the cache grow. " * 3, "Ana Florence")
        others = [crowd.prompt(long_cond, long_text), crowd.prompt(*prompt_of(xtts, "another one.", "Viktor Eka"))]
        for piece in range(0, len(others[0]), PREFILL_PIECE):  # slot 0 holds a long prompt already
            crowd.forward([], [], [], [Piece(0, others[0][piece : piece + PREFILL_PIECE])])
        mine = crowd.prompt(cond, text)
        got = []
        for start in range(0, len(mine), PREFILL_PIECE):  # mine in slot 2, beside slot 1's prompt and slot 0's tokens
            pieces = [Piece(1, others[1][start : start + PREFILL_PIECE])] if start < len(others[1]) else []
            latents, logits = crowd.forward([0], [7], [start // PREFILL_PIECE + 1], [*pieces, Piece(2, mine[start : start + PREFILL_PIECE])])
        got.append((latents[-1], logits[-1]))
        for position, token in enumerate(tokens, start=1):
            latents, logits = crowd.forward([0, 2], [9, token], [20 + position, position], [])
            got.append((latents[1], logits[1]))
    assert crowd.table.capacity != alone.table.capacity
    for (a, b), (c, d) in zip(expected, got, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
