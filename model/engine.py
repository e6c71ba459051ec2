"""The batched engine: many windowed streams on one model, one GPT token each per step.

Each stream speaks its job's sentences one after another. A sentence is a prompt prefilled into the
stream's KV slot, then one token per batched decode step; every `chunk_size` tokens (`first_chunk_size`
for the request's first chunk) the windowed vocoder turns the new latents into audio for that stream
alone, and the job's encoder sends it. A stream's tokens depend only on its own prompt, settings and
generator, so a seeded request gives the same audio whatever else runs (tests/test_engine.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from TTS.tts.models.xtts import Xtts

from model.decoding import Decoder, Sampling, sample
from model.incremental import Window, Windowed, decode_windows
from model.scheduler import Job

logger = logging.getLogger(__name__)

# GPT tokens in the first chunk when the request does not say. docs/benchmarks.md (real size, CPU,
# chunk 20): 2 tokens gave 0.34x upstream's time to first chunk, 4 gave 0.45x, 8 gave 0.53x. 4 meets the
# 0.5x target with twice the first chunk's audio of 2 (0.19 s against 0.09 s), which is the margin a
# faster-than-real-time GPU has before the second chunk arrives.
FIRST_CHUNK_SIZE = 4


@dataclass
class Timings:
    """Where the engine's time went, in seconds (scripts/bench_concurrency.py reports the split)."""

    steps: int = 0
    stream_steps: int = 0  # tokens made by steps: the sum of the batch sizes
    prefills: int = 0
    gpt: float = 0.0  # decode steps and sampling
    prefill: float = 0.0
    vocoder: float = 0.0
    vocoder_batches: int = 0  # HiFiGAN calls
    vocoder_windows: int = 0  # chunks they decoded
    encode: float = 0.0


class Stream:
    """One job's generation: its sentences in order, each a prompt, then tokens until stop or the cap."""

    def __init__(self, job: Job, model: Xtts):
        request = job.request
        self.job = job
        self.model = model
        self.sampling = Sampling(request.temperature, request.top_p, request.top_k, request.repetition_penalty)
        self.generator = torch.Generator(device=model.device)
        if request.seed is not None:
            self.generator.manual_seed(request.seed)
        else:
            self.generator.seed()
        self.language = request.language.split("-")[0]
        self.length_scale = 1.0 / max(request.speed, 0.05)
        self.chunk_size = request.chunk_size
        # At least `speed` tokens: fewer stretch to no frame at all (see schema.py).
        self.first_due = request.first_chunk_size or max(min(FIRST_CHUNK_SIZE, request.chunk_size), math.ceil(request.speed))
        self.due = self.first_due
        self.pending = list(job.sentences)
        self.tokens = job.tokens
        self.slot = -1
        self.windowed: Windowed | None = None
        self.new = 0  # tokens since the last chunk
        self.last = 0  # the token the next step feeds
        self.wants: list[bool] = []
        self.done = False

    @property
    def position(self) -> int:
        """The mel position of the token the next step feeds: upstream counts the start token as 0."""
        return len(self.tokens[-1])

    def next_prompt(self, decoder: Decoder) -> torch.Tensor:
        sentence = self.pending.pop(0).strip().lower()
        text = torch.IntTensor(self.model.tokenizer.encode(sentence, lang=self.language)).unsqueeze(0).to(self.model.device)
        voice = self.job.voice
        self.windowed = Windowed(self.model, voice.speaker_embedding.to(self.model.device), self.length_scale)
        self.tokens.append([])
        return decoder.prompt(voice.gpt_cond_latent, text)

    def accept(self, latent: torch.Tensor, token: int) -> bool:
        """Take the latent of the token just fed and the token sampled after it; note any chunk that
        comes due (`wants`: False for a chunk, True for the sentence's last). True when the sentence ended."""
        self.windowed.add(latent[None])
        self.tokens[-1].append(token)
        self.last = token
        self.new += 1
        ended = token == self.model.gpt.stop_audio_token or len(self.tokens[-1]) >= self.model.gpt.max_gen_mel_tokens
        if self.new >= self.due:
            self.wants.append(False)
        if ended:
            self.wants.append(True)
        return ended

    def prepare(self) -> Window | None:
        """The window for the next chunk due; None when it stretches to no frame yet (at this speed)."""
        window = self.windowed.prepare(self.wants.pop(0))
        if window is None and self.wants:  # a chunk with no frame: the same latents, now as the end
            return self.prepare()
        return window

    def send(self, window: Window, wav: torch.Tensor) -> None:
        self.new = 0
        self.job.deliver(self.windowed.complete(window, wav))
        # Chunks stay first-chunk sized until the encoder has sent its first bytes: MP3 needs 3 frames
        # before its first, more than a small first chunk holds, and would otherwise wait for a whole
        # chunk_size more (all of the audio at chunk_size 400). An encoder that keeps no count has started.
        if getattr(self.job.encoder, "emitted", 1):
            self.due = self.chunk_size


class Engine:
    """The active streams, at most `max_streams`, in KV slots 0..n-1. Called from one thread only."""

    def __init__(self, model: Xtts, max_streams: int):
        self.model = model
        self.max_streams = max_streams
        self.decoder = Decoder(model.gpt, max_streams)
        self.streams: list[Stream] = []
        self.timings = Timings()
        self.left: list[Job] = []  # jobs that ended, for the scheduler to read (and clear) after each step
        vocab = model.gpt.mel_head.out_features
        self._seen = torch.zeros(max_streams, vocab, dtype=torch.bool, device=model.device)

    @property
    def full(self) -> bool:
        return len(self.streams) >= self.max_streams

    def join(self, job: Job) -> None:
        """Prefill the job's first sentence into a free slot and sample its first token."""
        self.start(self.admit(job))

    def admit(self, job: Job) -> Stream:
        """Give the job a slot (quick: the scheduler counts it under its lock); `start` prefills it."""
        stream = Stream(job, self.model)
        stream.slot = len(self.streams)
        self.streams.append(stream)
        return stream

    @torch.inference_mode()
    def start(self, stream: Stream) -> None:
        try:
            self._start_sentence(stream)
        except Exception as exc:
            self._fail(stream, exc)

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every active stream; streams that ended, failed or were cancelled leave.

        A failure that belongs to one stream (its prompt, its vocoder window, its encoder) ends that
        stream. One that belongs to the batch (the GPT step, sampling) is raised: the caller ends every
        stream with `abort` and goes on with a clean engine, and can tell a fault that repeats."""
        for stream in [s for s in self.streams if s.job.cancelled]:
            self._leave(stream, None)
        if not self.streams:
            return
        started = time.perf_counter()
        streams = list(self.streams)
        try:
            latents, logits = self.decoder.step([s.last for s in streams], [s.position for s in streams])
            tokens = sample(logits, self._seen[: len(streams)], [s.sampling for s in streams], [s.generator for s in streams])
        finally:
            self.timings.gpt += time.perf_counter() - started
            self.timings.steps += 1
            self.timings.stream_steps += len(streams)
        ended = []
        for stream, latent, token in zip(streams, latents, tokens, strict=True):
            self._seen[stream.slot, token] = True
            if stream.accept(latent, token):
                ended.append(stream)
        self._vocode(streams)
        for stream in ended:
            self._next_sentence(stream)

    @torch.inference_mode()  # the KV cache is made of inference tensors: touched outside, they raise
    def abort(self, error: BaseException) -> None:
        """End every stream with `error` (StreamAborted: stopped, not failed) and leave the engine as
        new: no stream, no KV memory, whatever state an interrupted step left behind."""
        streams, self.streams = self.streams, []
        for stream in streams:
            stream.done = True
            stream.job.complete(error)
            self.left.append(stream.job)
        self.decoder.reset()
        self._seen.zero_()

    def _start_sentence(self, stream: Stream) -> None:
        started = time.perf_counter()
        prompt = stream.next_prompt(self.decoder)
        latent, logits = self.decoder.prefill(stream.slot, prompt)
        seen = self._seen[stream.slot]
        seen.zero_()
        seen[[1, self.model.gpt.start_audio_token]] = True  # upstream's input ids: the prompt's 1s, then start
        token = sample(logits[None], seen[None], [stream.sampling], [stream.generator])[0]
        self.timings.prefill += time.perf_counter() - started
        self.timings.prefills += 1
        self._seen[stream.slot, token] = True
        stream.new = 0
        ended = stream.accept(latent, token)
        self._vocode([stream])
        if ended:  # a sentence that ended on its first token
            self._next_sentence(stream)

    def _next_sentence(self, stream: Stream) -> None:
        if stream.done:
            return
        try:
            if stream.pending and not stream.job.cancelled:
                self._start_sentence(stream)
            else:
                self._leave(stream, None)
        except Exception as exc:
            self._fail(stream, exc)

    def _vocode(self, streams: list[Stream]) -> None:
        """Decode and send every chunk that came due, batching the windows of different streams (a
        stream's second chunk in one step, its sentence's end, follows its first)."""
        while waiting := [s for s in streams if s.wants and not s.done]:
            windows, owners = [], []
            for stream in waiting:
                try:
                    window = stream.prepare()
                except Exception as exc:
                    self._fail(stream, exc)
                    continue
                if window is not None:
                    windows.append(window)
                    owners.append(stream)
            if not windows:
                continue
            started = time.perf_counter()
            try:
                wavs, calls = decode_windows(self.model, windows)
                self.timings.vocoder_batches += calls
            except Exception as exc:
                for stream in owners:
                    self._fail(stream, exc)
                continue
            finally:
                self.timings.vocoder += time.perf_counter() - started
                self.timings.vocoder_windows += len(windows)
            started = time.perf_counter()
            for stream, window, wav in zip(owners, windows, wavs, strict=True):
                try:
                    stream.send(window, wav)
                except Exception as exc:
                    self._fail(stream, exc)
            self.timings.encode += time.perf_counter() - started

    def _fail(self, stream: Stream, exc: Exception) -> None:
        logger.error("request %s: generation failed", stream.job.id, exc_info=exc)
        self._leave(stream, exc)

    def _leave(self, stream: Stream, error: Exception | None) -> None:
        """Free the stream's slot (the last slot's stream moves in) and end its job."""
        if stream not in self.streams:
            return
        last = self.streams[-1]
        if last is not stream:
            self.decoder.move(last.slot, stream.slot)
            self._seen[stream.slot] = self._seen[last.slot]
            self.streams[stream.slot], last.slot = last, stream.slot
        self.decoder.release(len(self.streams) - 1)
        self.streams.pop()
        stream.done = True
        stream.job.complete(error)
        self.left.append(stream.job)
        if not self.streams:
            self.decoder.shrink()
