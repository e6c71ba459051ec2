"""Half precision on the tiny checkpoint, against float32 (model/precision.py).

Teacher-forced: both models are fed the float32 run's tokens, so every position compares like with like
(free-running, one differing token would make everything after it differ, and the rate would measure
where the first flip fell). At each position: whether the half model samples the float32 model's token
from the same generator state (the default sampling settings), and whether its most likely token is
float32's. Then the audio of the same tokens, each model's latents through its own vocoder: its SNR
against float32's.

Thresholds, from what these weights measured (the figures are beside them) with a margin, and what they guard: a cast that left a part in the wrong dtype, or upcast logits that stopped
being upcast, falls far below them. Random weights are a proxy only: their logits are flatter than a
trained model's (more near-ties, so more flips), and their audio is noise.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sharpen_attention

from model import precision
from model.checkpoint import load_xtts
from model.decoding import Decoder, Piece, sample
from model.encoders import PcmEncoder
from model.engine import PREFILL_PIECE, Engine
from model.job import ChunkBuffer, Job
from model.loop import GenerationLoop
from model.packing import pack_gpt
from model.scheduler import Scheduler
from model.schema import SynthesisRequest
from model.service import Service
from model.slots import Sampling
from model.voices import Voice
from model.vocoder import Windowed

PROMPTS = [
    ("Claribel Dervla", "hello there, this is a test."),
    ("Ana Florence", "the second voice reads another line."),
    ("Viktor Eka", "numbers and letters, one two three."),
]
POSITIONS = 513  # at least 500 compared positions: prompts taken in turn, each to the checkpoint's cap
# Sampled-token agreement with float32, at least: measured over 520 positions, bfloat16 0.985 (greedy
# 0.981), float16 1.000 (greedy 0.998). bfloat16 keeps 8 bits of mantissa, float16 11: a flip needs a
# near-tie within the rounding, about 8 times likelier in bfloat16. The thresholds leave room for
# about 3 and 1 times the flips measured.
MIN_AGREEMENT = {torch.bfloat16: 0.95, torch.float16: 0.98}
# The vocoded audio of the same tokens, SNR against float32 in dB: measured 28.8 (bfloat16) and 46.8
# (float16), about 6 dB per bit of mantissa apart, as rounding noise should be. A part left in the wrong
# dtype fails outright; the thresholds sit about 6 dB (one bit) below the measurements.
MIN_SNR_DB = {torch.bfloat16: 22.0, torch.float16: 40.0}
# Tokens vocoded for the SNR: HiFiGAN in float16 has no fast CPU kernel (20 s for 12 tokens' audio).
SNR_TOKENS = {torch.bfloat16: 12, torch.float16: 6}


def model(tiny_checkpoint, dtype: torch.dtype):
    xtts = load_xtts(tiny_checkpoint, torch.device("cpu"))
    sharpen_attention(xtts)
    if dtype == torch.float32:
        pack_gpt(xtts.gpt, mapped=False)  # as the server runs float32 on CPU
    else:
        precision.cast(xtts, dtype)
    return xtts


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return model(tiny_checkpoint, torch.float32)


def teacher_forced(reference, other):
    """Both models over the same prompts, fed the reference's sampled tokens: per position, (sampled
    tokens agree, greedy tokens agree); and per prompt, both models' latents."""
    agreement, latents = [], []
    seed = 0
    with torch.inference_mode():
        decoders = [Decoder.for_model(m.gpt, 1) for m in (reference, other)]
        while len(agreement) < POSITIONS:
            speaker, text = PROMPTS[len(latents) % len(PROMPTS)]
            cond = reference.speaker_manager.speakers[speaker]["gpt_cond_latent"]
            tokens = torch.IntTensor(reference.tokenizer.encode(text, lang="en"))[None]
            outs = []
            for decoder in decoders:
                decoder.table.assign(0, Sampling(), torch.Generator())
                decoder.table.restart(0, [1, reference.gpt.start_audio_token])
                prompt = decoder.prompt(cond, tokens)
                for start in range(0, len(prompt), PREFILL_PIECE):
                    out = decoder.forward([], [], [], [Piece(0, prompt[start : start + PREFILL_PIECE])])
                outs.append(out)
            pair = ([], [])
            for position in range(1, reference.gpt.max_gen_mel_tokens + 1):
                seed += 1
                drawn = []
                for decoder, (latent, logits) in zip(decoders, outs, strict=True):
                    decoder.table.generators[0] = torch.Generator().manual_seed(seed)
                    drawn.append(sample(logits, decoder.table, [0])[0])
                decoders[1].table.seen[0] = decoders[0].table.seen[0]  # the reference's input ids
                greedy = [int(logits[0].float().argmax()) for _, logits in outs]
                agreement.append((drawn[0] == drawn[1], greedy[0] == greedy[1]))
                for k, (latent, _) in enumerate(outs):
                    pair[k].append(latent[0].float())
                token = drawn[0]
                outs = [d.forward([0], [token], [position], []) for d in decoders]
            latents.append(pair)
    return agreement, latents


def vocode(xtts, speaker: str, latents: list[torch.Tensor]) -> torch.Tensor:
    dtype = precision.model_dtype(xtts)
    embedding = xtts.speaker_manager.speakers[speaker]["speaker_embedding"].to(dtype)
    windowed = Windowed(xtts, embedding, 1.0)
    for latent in latents:
        windowed.add(latent.to(dtype)[None])
    with torch.inference_mode():
        return windowed.chunk(final=True)


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (reference - other).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(reference.pow(2).sum().item() / noise)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_samples_float32s_tokens_and_its_audio_stays_close(tiny_checkpoint, reference, dtype):
    half = model(tiny_checkpoint, dtype)
    assert half.gpt.gpt.h[0].attn.c_attn.weight.dtype == dtype
    assert half.gpt.conditioning_perceiver.latents.dtype == torch.float32  # runs once per clone: stays float32
    agreement, latents = teacher_forced(reference, half)
    sampled = sum(a for a, _ in agreement) / len(agreement)
    greedy = sum(g for _, g in agreement) / len(agreement)
    print(f"{dtype}: {len(agreement)} positions, sampled {sampled:.4f}, greedy {greedy:.4f}")
    assert len(agreement) >= 500
    assert sampled >= MIN_AGREEMENT[dtype], (sampled, greedy)

    speaker = PROMPTS[0][0]
    ours, theirs = latents[0]
    audio = [vocode(m, speaker, lat[: SNR_TOKENS[dtype]]) for m, lat in ((reference, ours), (half, theirs))]
    assert audio[1].dtype == torch.float32 and audio[0].shape == audio[1].shape
    snr = snr_db(*audio)
    print(f"{dtype}: audio SNR {snr:.1f} dB over {len(audio[0])} samples")
    assert snr >= MIN_SNR_DB[dtype]


def test_an_unknown_dtype_fails_the_load_before_the_weights_are_read(tiny_checkpoint, tmp_path):
    config = {"model_metadata": {"dtype": "float64"}, "weights": [{"mount_location": str(tiny_checkpoint), "source": "x"}]}
    with pytest.raises(precision.PrecisionError, match="model_metadata.dtype is 'float64'; use one of auto, float32"):
        Service.load(config, tmp_path)
    assert precision.resolve("auto", torch.device("cpu")) == torch.float32
    assert precision.resolve("auto", torch.device("cuda")) == torch.float16


def test_a_part_left_in_another_dtype_fails_the_warm_up_not_a_stream(tiny_checkpoint):
    """The GPT in bfloat16 and the vocoder left in float32 (what issue 24 found: a 200 with a cut-off
    body): the warm-up request raises, so load() fails and the health route never says ready."""
    xtts = model(tiny_checkpoint, torch.bfloat16)
    xtts.hifigan_decoder.waveform_decoder.float()
    engine = Engine(xtts, 2)
    loop = GenerationLoop(Scheduler(2, 4), engine)
    speaker = xtts.speaker_manager.speakers[PROMPTS[0][0]]
    job = Job(PcmEncoder(24000, wav=False), ChunkBuffer(1 << 20), request=SynthesisRequest(text="Warming up.", seed=0),
              voice=Voice(speaker["gpt_cond_latent"], speaker["speaker_embedding"]), sentences=["Warming up."])
    with pytest.raises(RuntimeError, match="warm-up failed: RuntimeError: .*(dtype|type)"):
        loop.run_now(job)
