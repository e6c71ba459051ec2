"""What a request speaks (its checked sentences), and the upstream streamer, which runs alone on the model.

The default, windowed streamer runs in the batched engine (model/engine.py)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import torch
from TTS.tts.models.xtts import Xtts

from model import text
from model.schema import SynthesisRequest
from model.voices import Voice


# A sentence in each language whose text cleaning loads something big on first use (jieba, cutlet).
WARM_UP_TEXT = {"zh-cn": "你好，今天天气很好。", "ja": "こんにちは、元気ですか。"}


class Synthesizer:
    def __init__(self, model: Xtts):
        self.model = model
        # XTTS keeps per-stream state on the model (the GPT's stored prefix embedding), so two
        # interleaved streams would corrupt each other: generation runs one stream at a time.
        self._lock = threading.Lock()

    def sentences(self, request: SynthesisRequest) -> list[str]:
        """What `stream` will speak for this request (see text.sentences); raises text.TextError."""
        return text.sentences(request, self.model.tokenizer, self.model.args.gpt_max_text_tokens)

    def warm_up(self) -> None:
        """Pay spaCy's import for sentence splitting, and the Chinese and Japanese text tools' loading,
        before the first real request. Those load in one long stretch that holds the GIL (410 and 344 ms
        here): even in a worker thread, a first Chinese request stalled every stream on the replica."""
        self.sentences(SynthesisRequest(text="Warming up the sentence splitter. " * 10, enable_text_splitting=True))
        for language, sample in WARM_UP_TEXT.items():
            self.sentences(SynthesisRequest(text=sample, language=language))

    def stream(
        self, request: SynthesisRequest, voice: Voice, sentences: list[str] | None = None
    ) -> Iterator[torch.Tensor]:
        """Upstream's `Xtts.inference_stream` over the request's sentences: 1-D float chunks at 24 kHz the
        moment XTTS produces them. `sentences`: what self.sentences(request) returns, computed here if the
        caller has not already."""
        if sentences is None:
            sentences = self.sentences(request)
        with self._lock:
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
            for sentence in sentences:
                yield from self.model.inference_stream(
                    sentence, request.language, voice.gpt_cond_latent, voice.speaker_embedding,
                    enable_text_splitting=False, **settings, **early_stop,
                )
