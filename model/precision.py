"""The model's number format: `model_metadata.dtype` (auto, float32, float16 or bfloat16).

What runs at every step is cast: the GPT's transformer, its embeddings and heads, and HiFiGAN's waveform
decoder (so the KV cache and the prefix cache are in that dtype too). What stays float32, and why:

- the conditioning encoder, the perceiver and the speaker encoder: they run once per cloned voice, not
  per step, so half precision would save nothing; in float32 a voice's latents are the same on every
  replica whatever its dtype, and the voice store keeps float32 on disk (model/store.py).
- the voices' latents: kept in float32 and cast where they enter the GPT (`Decoder.prompt`) and the
  vocoder (`Windowed`), a copy of 32 x 1024 and 512 numbers per sentence.
- sampling: logits are upcast before the repetition penalty, temperature, top-k/top-p and softmax
  (model/decoding.py), as HF does in half precision; a half-precision softmax over 1026 tokens loses
  the tail that top-p keeps.
- audio: each chunk leaves the vocoder as float32, so the crossfade, the resampler and the encoders
  see what they always saw.
"""

from __future__ import annotations

import torch
from torch import nn
from TTS.tts.models.xtts import Xtts

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHOICES = ("auto", *DTYPES)


class PrecisionError(ValueError):
    """A dtype the setting does not know, or one the device cannot run."""


def resolve(name: str, device: torch.device) -> torch.dtype:
    """The dtype `name` means on `device`: auto is float16 on CUDA (a T4 has fp16 tensor cores and no
    bf16) and float32 on CPU (where half precision is emulated or slow, and the engine's bit-for-bit
    crowd guarantee is made for float32)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise PrecisionError(f"model_metadata.dtype is {name!r}; use one of {', '.join(CHOICES)}")
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"model_metadata.dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16; use float16")
    return dtype


def per_step_modules(xtts: Xtts) -> list[nn.Module]:
    """The modules every decode step or chunk runs: cast to the chosen dtype."""
    gpt = xtts.gpt
    return [
        gpt.gpt, gpt.text_embedding, gpt.mel_embedding, gpt.text_pos_embedding, gpt.mel_pos_embedding,
        gpt.final_norm, gpt.mel_head, gpt.text_head, xtts.hifigan_decoder.waveform_decoder,
    ]


def cast(xtts: Xtts, dtype: torch.dtype) -> None:
    """Cast the per-step modules to `dtype`, in place (upstream's HF inference model shares them)."""
    for module in per_step_modules(xtts):
        module.to(dtype)


def model_dtype(xtts: Xtts) -> torch.dtype:
    """The dtype the per-step modules run in."""
    return xtts.gpt.mel_embedding.weight.dtype
