"""The batched engine: many windowed streams on one model, one GPT token each per step.

Each job becomes a Sequence that speaks its sentences one after another. A sentence is a prompt,
prefilled into the sequence's slot a piece at a time, then one token per step; every `chunk_size`
tokens (`first_chunk_size` for the request's first chunk) the windowed vocoder turns the new latents
into audio for that sequence, and the job's encoder sends it.

A step is one forward (model/decoding.py): a row for every sequence that is generating, then the prompt
pieces of sequences that are joining (all of them, or up to `prefill_rows` rows while any sequence
generates), so joining never runs as a prefill of its own between steps while the batch waits. A prompt
is cut into pieces at the same places whatever else runs, so a sequence's tokens depend only on its own
prompt, settings and generator: a seeded request gives the same audio whatever else runs
(tests/test_engine.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass

import torch
from TTS.tts.models.xtts import Xtts

from model.decoding import CudaGraphs, Decoder, Piece
from model.job import Job
from model.slots import PrefixCache, Sampling
from model.vocoder import Window, Windowed, decode, decode_batch

logger = logging.getLogger(__name__)

# GPT tokens in the first chunk when the request does not say. docs/benchmarks.md (real size, CPU,
# chunk 20): 2 tokens gave 0.34x upstream's time to first chunk, 4 gave 0.45x, 8 gave 0.53x. 4 meets the
# 0.5x target with twice the first chunk's audio of 2 (0.19 s against 0.09 s), which is the margin a
# faster-than-real-time GPU has before the second chunk arrives.
FIRST_CHUNK_SIZE = 4
# A prompt is cut into pieces of this many rows, at the same places alone or in a crowd (the rows of
# one attention call), so that a stream's numbers do not depend on what else runs.
PREFILL_PIECE = 16
# Prompt rows a step may carry beside the sequences that generate; 0: every piece waiting. On CPU, with 3
# joining beside a stream, prefilling them all in the next step gave that stream its shortest longest
# gap and the joiners their soonest first chunk (docs/benchmarks.md, "Concurrency": prefill is arithmetic
# there, and spreading it adds steps). A cap trades the joiners' first chunk for shorter steps meanwhile.
PREFILL_ROWS = 0
# Voices whose conditioning positions stay cached (model/slots.py PrefixCache): 7.9 MB each at real
# size in fp32, and the default voice, the studio ones in use and recent clones fit.
PREFIX_VOICES = 16


@dataclass
class Timings:
    """Where the engine's time went, in seconds (scripts/bench_concurrency.py reports the split)."""

    steps: int = 0
    stream_steps: int = 0  # tokens made by steps: the sum of the generating rows
    prefill_rows: int = 0  # prompt rows carried by steps
    prefills: int = 0  # prompts completed
    gpt: float = 0.0  # forwards and sampling
    vocoder: float = 0.0
    vocoder_batches: int = 0  # HiFiGAN calls
    vocoder_windows: int = 0  # chunks they decoded
    encode: float = 0.0


class Clock:
    """Adds the time between `start` and `stop` to a field of Timings. On CPU, wall time. On CUDA, the
    device's time between two events: the host returns from a kernel launch before the kernel runs, so
    host time would count the vocoder's kernels wherever the host next waits (the encoder's copy).
    An event pair is read once the device has passed it (`settle`, after each step's read back), so
    reading never waits."""

    def __init__(self, timings: Timings, device: torch.device):
        self.timings = timings
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> float | torch.cuda.Event:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, started: float | torch.cuda.Event, name: str) -> None:
        if not self.cuda:
            setattr(self.timings, name, getattr(self.timings, name) + time.perf_counter() - started)
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((name, started, end))

    def settle(self) -> None:
        """Add the event pairs the device has passed."""
        waiting = []
        for name, started, end in self._pending:
            if end.query():
                setattr(self.timings, name, getattr(self.timings, name) + started.elapsed_time(end) / 1000)
            else:
                waiting.append((name, started, end))
        self._pending = waiting


class Sequence:
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
        self.max_tokens = min(request.max_new_tokens or model.gpt.max_gen_mel_tokens, model.gpt.max_gen_mel_tokens)
        # At least `speed` tokens: fewer stretch to no frame at all (see schema.py).
        self.first_due = request.first_chunk_size or max(min(FIRST_CHUNK_SIZE, request.chunk_size), math.ceil(request.speed))
        self.due = self.first_due
        self.pending = list(job.sentences)
        self.tokens = job.tokens
        self.slot = -1
        self.prompt: torch.Tensor | None = None  # rows still to prefill; None while generating
        self.keep_prefix: tuple[torch.Tensor, int] | None = None  # (voice latent, positions) to cache once prefilled
        self.windowed: Windowed | None = None
        self.new = 0  # tokens since the last chunk
        self.last = 0  # the token the next step feeds
        self.wants: list[bool] = []
        self.done = False

    @property
    def position(self) -> int:
        """The mel position of the token the next step feeds: upstream counts the start token as 0."""
        return len(self.tokens[-1])

    def next_sentence(self, decoder: Decoder, prefixes: PrefixCache) -> None:
        """The next sentence's prompt, to prefill from the slot's first position, or from the end of its
        voice's conditioning positions when the prefix cache has them."""
        sentence = self.pending.pop(0).strip().lower()
        text = torch.IntTensor(self.model.tokenizer.encode(sentence, lang=self.language)).unsqueeze(0).to(self.model.device)
        voice = self.job.voice
        # Voices keep float32 latents; the vocoder takes its own dtype (model/precision.py).
        embedding = voice.speaker_embedding.to(self.model.device, decoder.table.dtype)
        self.windowed = Windowed(self.model, embedding, self.length_scale)
        self.tokens.append([])
        self.prompt = decoder.prompt(voice.gpt_cond_latent, text)
        # Upstream's input ids, which its repetition penalty counts: the prompt's 1s, then the start token.
        decoder.table.restart(self.slot, [1, self.model.gpt.start_audio_token])
        conditioning = voice.gpt_cond_latent.shape[1]
        self.keep_prefix = None
        if conditioning % PREFILL_PIECE:  # cached or not, a prompt must be cut at the same places
            return
        if (prefix := prefixes.get(voice.gpt_cond_latent)) is not None:
            decoder.table.load_prefix(self.slot, prefix)
            self.prompt = self.prompt[conditioning:]
        else:
            self.keep_prefix = (voice.gpt_cond_latent, conditioning)

    def piece(self) -> Piece:
        """The next piece of the prompt: PREFILL_PIECE rows, or what is left."""
        rows, self.prompt = self.prompt[:PREFILL_PIECE], self.prompt[PREFILL_PIECE:]
        if not len(self.prompt):
            self.prompt = None
        return Piece(self.slot, rows)

    def accept(self, latent: torch.Tensor, token: int) -> bool:
        """Take the latent of the row just fed and the token sampled after it; note any chunk that
        comes due (`wants`: False for a chunk, True for the sentence's last). True when the sentence ended."""
        self.windowed.add(latent[None])
        self.tokens[-1].append(token)
        self.last = token
        self.new += 1
        ended = token == self.model.gpt.stop_audio_token or len(self.tokens[-1]) >= self.max_tokens
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
    """The active sequences, at most `max_streams`, in slots 0..n-1. Called from one thread only.

    `batch_vocoder`: decode the windows of one length that come due on the same step in one HiFiGAN
    call. Off where measurement shows no gain (CPU: docs/benchmarks.md, "Vocoder").
    `static`: steps where every stream generates run through the decoder's static-buffer path (padded
    to a batch bucket); `cuda_graphs` (CUDA only, unverified) replays them from captured graphs.
    The KV cache is allocated here, at its full size, and never again (model/slots.py).
    """

    def __init__(
        self, model: Xtts, max_streams: int, prefill_rows: int = PREFILL_ROWS, batch_vocoder: bool = False,
        prefix_voices: int = PREFIX_VOICES, static: bool = False, cuda_graphs: bool = False,
    ):
        self.model = model
        self.max_streams = max_streams
        self.prefill_rows = prefill_rows
        self.batch_vocoder = batch_vocoder
        if cuda_graphs and model.device.type != "cuda":
            raise ValueError("model_metadata.cuda_graphs needs a CUDA device")
        self.decoder = Decoder.for_model(model.gpt, max_streams, static=static or cuda_graphs)
        self.table = self.decoder.table
        logger.info(
            "KV cache: %d streams x %d positions in %s, %.0f MB, allocated once",
            max_streams, self.table.capacity, str(self.table.dtype).removeprefix("torch."), self.table.cache_bytes / 2**20,
        )
        self.cuda_graphs = cuda_graphs
        self.prefixes = PrefixCache(prefix_voices)
        self.streams: list[Sequence] = []  # by slot
        self._joining: deque[Sequence] = deque()  # sequences with prompt rows left, in the order they came
        self.timings = Timings()
        self.clock = Clock(self.timings, model.device)
        self.left: list[tuple[Job, BaseException | None]] = []  # jobs that ended, and how, for the loop

    @property
    def full(self) -> bool:
        return len(self.streams) >= self.max_streams

    def take_left(self) -> list[tuple[Job, BaseException | None]]:
        """The jobs that ended since the last call, each with its error (None: it finished or was
        cancelled). Their slots are free; the caller tells the clients (`Job.complete`)."""
        left, self.left = self.left, []
        return left

    @torch.inference_mode()
    def join(self, job: Job) -> None:
        """Give the job a slot and queue its first prompt; the next steps prefill it."""
        sequence = Sequence(job, self.model)
        sequence.slot = len(self.streams)
        self.streams.append(sequence)
        self.table.assign(sequence.slot, sequence.sampling, sequence.generator)
        try:
            sequence.next_sentence(self.decoder, self.prefixes)
        except Exception as exc:
            self._fail(sequence, exc)
            return
        self._joining.append(sequence)

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every generating sequence, and the next prompt pieces; sequences that ended,
        failed or were cancelled leave.

        A failure that belongs to one sequence (its prompt, its vocoder window, its encoder) ends that
        sequence. One that belongs to the batch (the forward, sampling) is raised: the caller ends every
        sequence with `abort` and goes on with a clean engine, and can tell a fault that repeats."""
        for sequence in [s for s in self.streams if s.job.cancelled]:
            self._leave(sequence, None)
        generating = [s for s in self.streams if s.prompt is None]
        pieces, completing = self._pieces(bool(generating))
        if not generating and not pieces:
            return
        # Logits for the generating rows, and for the last row of each prompt completed this step.
        rows = list(range(len(generating))) + [len(generating) + i for i, s in enumerate(completing) if s is not None]
        sampled = [*generating, *[s for s in completing if s is not None]]
        started = self.clock.start()
        try:
            latents, tokens = self.decoder.step(
                [s.slot for s in generating], [s.last for s in generating], [s.position for s in generating], pieces,
                [(row, s.slot) for row, s in zip(rows, sampled, strict=True)],
            )
        finally:
            self.clock.stop(started, "gpt")
            self.timings.steps += 1
            self.timings.stream_steps += len(generating)
            self.timings.prefill_rows += sum(len(p.rows) for p in pieces)
        self.timings.prefills += len(sampled) - len(generating)
        self.clock.settle()
        self._keep_prefixes(pieces)
        ended = []
        for sequence, row, token in zip(sampled, rows, tokens, strict=True):
            if sequence not in generating:
                sequence.new = 0
            if sequence.accept(latents[row], token):
                ended.append(sequence)
        self._vocode(sampled)
        for sequence in ended:
            self._next_sentence(sequence)

    @torch.inference_mode()  # the KV cache is made of inference tensors: touched outside, they raise
    def abort(self, error: BaseException) -> None:
        """End every sequence with `error` and leave the engine as new: no sequence, no KV memory,
        whatever state an interrupted step left behind."""
        sequences, self.streams = self.streams, []
        self._joining.clear()
        for sequence in sequences:
            sequence.done = True
            self.left.append((sequence.job, error))
        self.table.reset()
        self.table.give_back()

    def warm_up(self) -> None:
        """Run a decode step at every batch-size bucket, so that no shape is first compiled, tuned or
        captured under real traffic; with CUDA graphs, capture them (before any stream holds a slot).
        Leaves the engine empty."""
        if self.streams:
            raise RuntimeError("warm_up needs an empty engine")
        decoder = self.decoder
        with torch.inference_mode():
            for bucket in decoder.buckets:
                slots = list(range(bucket))
                for slot in slots:
                    self.table.assign(slot, Sampling(), torch.Generator(device=self.model.device).manual_seed(slot))
                    self.table.restart(slot, [1])
                decoder.step(slots, [0] * bucket, [0] * bucket, [], [(row, row) for row in slots])
                self.table.reset()
            if self.cuda_graphs:
                decoder.graphs = CudaGraphs(decoder)
                decoder.graphs.capture_all()
                torch.cuda.synchronize()
        self.table.reset()
        self.table.give_back()

    def _pieces(self, generating: bool) -> tuple[list[Piece], list[Sequence | None]]:
        """The prompt pieces this step carries, first come first served: every one, or with `prefill_rows`
        up to that many rows while any sequence generates (at least one piece). For each piece, its
        sequence if the piece ends its prompt, else None."""
        pieces: list[Piece] = []
        completing: list[Sequence | None] = []
        rows = 0
        while self._joining:
            sequence = self._joining[0]
            size = min(len(sequence.prompt), PREFILL_PIECE)
            if generating and pieces and self.prefill_rows and rows + size > self.prefill_rows:
                break
            pieces.append(sequence.piece())
            rows += size
            if sequence.prompt is None:
                self._joining.popleft()
                completing.append(sequence)
            else:
                completing.append(None)
        return pieces, completing

    def _keep_prefixes(self, pieces: list[Piece]) -> None:
        """Cache the conditioning positions of voices whose prompts got past them in this step."""
        for slot in {p.slot for p in pieces}:
            sequence = self.streams[slot]
            if sequence.keep_prefix is not None and self.table.lengths[slot] >= sequence.keep_prefix[1]:
                latent, length = sequence.keep_prefix
                self.prefixes.put(latent, self.table.save_prefix(slot, length))
                sequence.keep_prefix = None

    def _next_sentence(self, sequence: Sequence) -> None:
        if sequence.done:
            return
        try:
            if sequence.pending and not sequence.job.cancelled:
                sequence.next_sentence(self.decoder, self.prefixes)
                self._joining.append(sequence)
            else:
                self._leave(sequence, None)
        except Exception as exc:
            self._fail(sequence, exc)

    def _vocode(self, sequences: list[Sequence]) -> None:
        """Decode and send every chunk that came due: each window alone, or with the others of its length
        where batching pays. A sequence's second chunk in one step (its sentence's end) follows its first."""
        while waiting := [s for s in sequences if s.wants and not s.done]:
            ready: list[tuple[Sequence, Window]] = []
            for sequence in waiting:
                try:
                    window = sequence.prepare()
                except Exception as exc:
                    self._fail(sequence, exc)
                    continue
                if window is not None:
                    ready.append((sequence, window))
            for group in self._groups(ready):
                started = self.clock.start()
                try:
                    wavs = decode_batch(self.model, [w for _, w in group]) if len(group) > 1 else [decode(self.model, group[0][1])]
                except Exception as exc:
                    for sequence, _ in group:
                        self._fail(sequence, exc)
                    continue
                finally:
                    self.clock.stop(started, "vocoder")
                    self.timings.vocoder_batches += 1
                    self.timings.vocoder_windows += len(group)
                started = time.perf_counter()
                for (sequence, window), wav in zip(group, wavs, strict=True):
                    try:
                        sequence.send(window, wav)
                    except Exception as exc:
                        self._fail(sequence, exc)
                self.timings.encode += time.perf_counter() - started

    def _groups(self, ready: list[tuple[Sequence, Window]]) -> list[list[tuple[Sequence, Window]]]:
        if not self.batch_vocoder:
            return [[item] for item in ready]
        groups: dict[int, list[tuple[Sequence, Window]]] = {}
        for sequence, window in ready:
            groups.setdefault(window.frames, []).append((sequence, window))
        return list(groups.values())

    def _fail(self, sequence: Sequence, exc: Exception) -> None:
        logger.error("request %s: generation failed", sequence.job.id, exc_info=exc)
        self._leave(sequence, exc)

    def _leave(self, sequence: Sequence, error: Exception | None) -> None:
        """Free the sequence's slot (the last slot's sequence moves in) and hand its job to the loop."""
        if sequence.done:
            return
        sequence.done = True
        if sequence in self._joining:
            self._joining.remove(sequence)
        last = self.streams[-1]
        if last is not sequence:
            self.table.move(last.slot, sequence.slot)
            self.streams[sequence.slot], last.slot = last, sequence.slot
        else:
            self.table.release(sequence.slot)
        self.streams.pop()
        self.left.append((sequence.job, error))
        if not self.streams:
            self.table.reset()
            self.table.give_back()  # on CPU an idle engine holds no KV pages
