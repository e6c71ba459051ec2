"""The synthesis stream: a validated request and a voice in, float audio chunks out, as XTTS makes them."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import torch
from TTS.tts.layers.xtts.tokenizer import split_sentence
from TTS.tts.models.xtts import Xtts

from model import incremental
from model.schema import RequestError, SynthesisRequest
from model.voices import Voice


# GPT tokens in the windowed streamer's first chunk when the request does not say. docs/benchmarks.md
# (real size, CPU, chunk 20): 2 tokens gave 0.34x upstream's time to first chunk, 4 gave 0.45x, 8 gave
# 0.53x. 4 meets the 0.5x target with twice the first chunk's audio of 2 (0.19 s against 0.09 s), which
# is the margin a faster-than-real-time GPU has before the second chunk arrives.
FIRST_CHUNK_SIZE = 4


class TextError(RequestError):
    """The text cannot be synthesized as sent (too many tokens in one sentence)."""

    def __init__(self, message: str):
        super().__init__("text", message)


class Synthesizer:
    def __init__(self, model: Xtts):
        self.model = model
        # XTTS keeps per-stream state on the model (the GPT's stored prefix embedding), so two
        # interleaved streams would corrupt each other: generation runs one stream at a time.
        self._lock = threading.Lock()

    def check_text(self, request: SynthesisRequest) -> None:
        """Raise TextError for text XTTS would fail on mid-stream (its 400-token assertion) or that
        has nothing to say (punctuation, symbols, emoji: XTTS would babble noise for it)."""
        tokenizer, language = self.model.tokenizer, request.language.split("-")[0]
        limit = self.model.args.gpt_max_text_tokens
        speakable = False
        try:
            sentences = [(s, tokenizer.encode(s, lang=language)) for s in self.sentences(request)]
        except Exception as exc:  # e.g. num2words has no Hindi and no Czech ordinals: NotImplementedError
            raise TextError(
                f"XTTS's {request.language} text cleaning cannot read this text ({type(exc).__name__}: {exc}); "
                "spell out numbers and symbols as words"
            ) from None
        for sentence, tokens in sentences:
            n_tokens = len(tokens)
            if n_tokens >= limit:
                hint = "" if request.enable_text_splitting else "; set enable_text_splitting to true, or add punctuation"
                raise TextError(f"a sentence is {n_tokens} tokens; XTTS takes fewer than {limit}{hint}")
            # After XTTS's own cleaning: digits become words, Chinese pinyin, Japanese romaji.
            speakable = speakable or any(ch.isalnum() for ch in tokenizer.preprocess_text(sentence, language))
        if not speakable:
            raise TextError("nothing to speak: the text is only punctuation, symbols or emoji")

    def sentences(self, request: SynthesisRequest) -> list[str]:
        """The pieces inference_stream will speak, normalized the way it does."""
        language = request.language.split("-")[0]
        pieces = [request.text]
        if request.enable_text_splitting:
            pieces = split_sentence(request.text, language, self.model.tokenizer.char_limits[language])
        return [piece.strip().lower() for piece in pieces]

    def warm_up(self, voice: Voice) -> None:
        """Pay one-time costs (allocations, kernel selection) before the first real request."""
        chunks = self.stream(SynthesisRequest(text="Warming up.", chunk_size=4, seed=0), voice)
        next(chunks)
        chunks.close()

    def stream(self, request: SynthesisRequest, voice: Voice) -> Iterator[torch.Tensor]:
        """Yield 1-D float chunks at 24 kHz the moment XTTS produces them."""
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
                enable_text_splitting=request.enable_text_splitting,
            )
            args = (request.text, request.language, voice.gpt_cond_latent, voice.speaker_embedding)
            if request.streamer == "upstream":
                # XTTS yields the stop token's latent too, so a model that stops at once leaves one latent,
                # which a speed above 1 stretches to no frame, and upstream's decoder fails. Holding the
                # stop token back for ceil(speed) - 1 tokens keeps a frame; the windowed streamer needs
                # no such help (it skips a chunk with no frame).
                early_stop = {"min_new_tokens": math.ceil(request.speed) - 1} if request.speed > 1 else {}
                yield from self.model.inference_stream(*args, **settings, **early_stop)
            else:
                # At least `speed` tokens: fewer stretch to no frame at all (see schema.py).
                first = request.first_chunk_size or max(min(FIRST_CHUNK_SIZE, request.chunk_size), math.ceil(request.speed))
                yield from incremental.inference_stream(self.model, *args, first_chunk_size=first, **settings)
