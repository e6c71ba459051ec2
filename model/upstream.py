"""The upstream streamer: `Xtts.inference_stream` as coqui ships it (`streamer: "upstream"`), kept so
that the comparison in docs/benchmarks.md can be rerun. XTTS keeps per-stream state on the model (the
GPT's stored prefix embedding), so it runs alone: the scheduler starts it once nothing else runs.

The default, windowed streamer runs in the batched engine (model/engine.py).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import torch
from TTS.tts.models.xtts import Xtts

from model.schema import SynthesisRequest
from model.voices import Voice

# Two interleaved upstream streams would corrupt each other: a guard behind the scheduler's order.
_lock = threading.Lock()


def stream(model: Xtts, request: SynthesisRequest, voice: Voice, sentences: list[str]) -> Iterator[torch.Tensor]:
    """Upstream's `Xtts.inference_stream` over the request's checked sentences: 1-D float chunks at
    24 kHz the moment XTTS produces them."""
    with _lock:
        if request.seed is not None:
            torch.manual_seed(request.seed)
        settings = dict(
            stream_chunk_size=request.chunk_size,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            repetition_penalty=request.repetition_penalty,
            length_penalty=request.length_penalty,
            speed=request.speed,
        )
        # XTTS yields the stop token's latent too, so a model that stops at once leaves one latent,
        # which a speed above 1 stretches to no frame, and upstream's decoder fails. Holding the
        # stop token back for ceil(speed) - 1 tokens keeps a frame; the windowed streamer needs
        # no such help (it skips a chunk with no frame).
        early_stop = {"min_new_tokens": math.ceil(request.speed) - 1} if request.speed > 1 else {}
        if request.max_new_tokens is not None:
            early_stop["max_new_tokens"] = min(request.max_new_tokens, model.gpt.max_gen_mel_tokens)
        # Voices keep float32 latents; the GPT and vocoder run in the model's dtype (model/precision.py).
        dtype = model.gpt.mel_embedding.weight.dtype
        latent, embedding = voice.gpt_cond_latent.to(dtype), voice.speaker_embedding.to(dtype)
        for sentence in sentences:
            for chunk in model.inference_stream(
                sentence, request.language, latent, embedding, enable_text_splitting=False, **settings, **early_stop,
            ):
                yield chunk.float()
