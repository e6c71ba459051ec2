"""model/decoding.py against HF: the sampling processors, and the decode step against XTTS's own generator."""

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
from model.decoding import Decoder, Sampling, sample

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


def test_each_row_samples_what_hf_would_with_the_same_generator():
    torch.manual_seed(0)
    vocab = 1026
    logits = torch.randn(len(SETTINGS), vocab) * 3
    input_ids = [torch.randint(0, vocab, (1, n)) for n in (40, 1, 200, 7)]
    seen = torch.zeros(len(SETTINGS), vocab, dtype=torch.bool)
    for row, ids in enumerate(input_ids):
        seen[row, ids[0]] = True

    for draw in range(20):
        ours = sample(logits, seen, SETTINGS, [torch.Generator().manual_seed(draw * 10 + i) for i in range(len(SETTINGS))])
        for row, s in enumerate(SETTINGS):
            probs = hf_scores(logits[row : row + 1], input_ids[row], s).softmax(-1)
            expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(draw * 10 + row))
            assert ours[row] == int(expected), (draw, row, s)


def test_per_row_settings_are_applied_to_their_own_row_only():
    """Greedy (top_k 1) on one row, wide sampling on the other: each row keeps its own."""
    logits = torch.randn(2, 50)
    seen = torch.zeros(2, 50, dtype=torch.bool)
    greedy, wide = Sampling(top_k=1, repetition_penalty=1.0), Sampling(temperature=2.0, top_p=1.0, top_k=50, repetition_penalty=1.0)
    draws = [sample(logits, seen, [greedy, wide], [torch.Generator().manual_seed(i)] * 2) for i in range(30)]
    assert {d[0] for d in draws} == {int(logits[0].argmax())}
    assert len({d[1] for d in draws}) > 5


@pytest.fixture(scope="module")
def xtts(tiny_checkpoint):
    model = load_xtts(tiny_checkpoint, torch.device("cpu"))
    sharpen_attention(model)
    return model


@pytest.mark.parametrize("seed", [5, 77])
def test_the_decoder_gives_xtts_generators_tokens_and_latents(xtts, seed):
    """Prefill and decode steps over the loaded weights, against `GPT.get_generator` (HF generate)."""
    speaker = xtts.speaker_manager.speakers["Claribel Dervla"]
    cond = speaker["gpt_cond_latent"]
    text = torch.IntTensor(xtts.tokenizer.encode("hello there, this is a test.", lang="en")).unsqueeze(0)
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

        decoder = Decoder(xtts.gpt, slots=3)
        slot = 2  # any slot: the others stay empty
        latent, logits = decoder.prefill(slot, decoder.prompt(cond, text))
        seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool)
        seen[0, [1, xtts.gpt.start_audio_token]] = True
        rng = torch.Generator().manual_seed(seed)
        got = []
        decoder.move(slot, 0)
        while len(got) < len(expected):
            token = sample(logits[None], seen, [settings], [rng])[0]
            got.append((token, latent))
            seen[0, token] = True
            latents, logits = decoder.step([token], [len(got)])
            latent, logits = latents[0], logits[0]

    assert [t for t, _ in got] == [t for t, _ in expected]
    assert max((a - b).abs().max().item() for (_, a), (_, b) in zip(got, expected, strict=True)) <= 1e-5
