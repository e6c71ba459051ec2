"""Batched GPT decoding for XTTS: one forward advances every stream that is generating by one token, and
carries on the prompts of streams that are joining, a piece at a time (chunked prefill).

Stock XTTS cannot batch requests: `GPT2InferenceModel.store_prefix_emb` keeps one prompt on the shared
module, and its decode step derives one mel position for the whole batch. So this module runs the GPT
itself, over the loaded weights: XTTS's GPT is HF's `GPT2Model` with its built-in position embedding
nulled and XTTS's learned text and mel position embeddings added to the inputs. Every per-stream state
(prompt progress, KV cache, mel position, sampling settings, generator) lives in the slot table
(model/slots.py); nothing per stream is stored on the model.

A forward is one set of rows through every layer: the token of each generating stream, then the
prompt pieces. The layers' linear maps see all rows at once, so the weights are read once per step
whatever the batch; attention runs per stream, over that stream's own cache and nothing else. With the
linear kernels packed on CPU (model/packing.py), whose arithmetic for a row does not depend on the
other rows, a stream's numbers are then the same bit for bit whatever else runs, and so are its tokens.

One transfer each way per step (`Decoder.step`): every integer the step needs (tokens, positions, slots,
cache offsets, the rows to sample) goes to the device in one non-blocking copy from one pinned host
buffer; sampling runs on the device over settings the slot table keeps there; one `.tolist()` reads the
sampled tokens back. Nothing else in a step waits for the device, so on a GPU the host runs ahead and
queues the next kernels while the last ones run. tests/test_decoding.py counts this.

The static step (`static=True`): a step where every stream generates and none is joining runs over
fixed-shape buffers, batch padded to a bucket (1, 2, 4, 8, ... streams) with attention over every slot
of the bucket at once, masked by its length. Fixed shapes and no host sync are what CUDA graphs need
(`CudaGraphs`, on CUDA behind model_metadata.cuda_graphs, unverified); on CPU the same path runs
without capture so that its logic is tested. Batched attention over padded slots is not bit-identical
per row to attention per stream, so it is not CPU's default: the per-stream step keeps CPU's exact
crowd guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from TTS.tts.layers.xtts.gpt import GPT

from model.slots import SlotTable

# The static step's attention spans the cache in blocks of this many positions: one graph per
# (batch bucket, span), and no step reads more than a block past its longest stream.
SPAN_BLOCK = 128


@dataclass(frozen=True)
class Piece:
    """Rows of one stream's prompt, [k, C], for positions lengths[slot] .. lengths[slot] + k - 1."""

    slot: int
    rows: torch.Tensor


def buckets(max_streams: int) -> list[int]:
    """Batch sizes the static step runs at: powers of two below max_streams, then max_streams."""
    sizes = [1 << k for k in range(max(max_streams - 1, 0).bit_length()) if 1 << k < max_streams]
    return [*sizes, max_streams]


def conditioning_positions(gpt: GPT) -> int:
    """Positions a voice's conditioning latent takes: the perceiver's latents (32), else one."""
    perceiver = getattr(gpt, "conditioning_perceiver", None)
    return perceiver.latents.shape[0] if gpt.use_perceiver_resampler and perceiver is not None else 1


def longest_sequence(gpt: GPT) -> int:
    """Positions one sentence can fill: the conditioning latent, the longest text with its start and
    stop tokens (`max_text_tokens` counts them), the start-of-audio token, then every token the GPT may
    generate but the last (which is never fed)."""
    return conditioning_positions(gpt) + gpt.max_text_tokens + 1 + gpt.max_gen_mel_tokens


class Uploads:
    """One pinned host buffer of integers, sent to the device in one non-blocking copy per step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.transfers = 0  # copies to the device and reads back, for tests/test_engine.py
        self._host = torch.empty(0, dtype=torch.long)
        self._copied: torch.cuda.Event | None = None  # the last copy out of the pinned buffer

    def send(self, *groups: list[int]) -> list[torch.Tensor]:
        """The groups of integers on the device, in one copy; the views in the order given."""
        total = sum(map(len, groups))
        if total > len(self._host):
            pin = self.device.type == "cuda"
            self._host = torch.empty(max(total, 2 * len(self._host), 64), dtype=torch.long, pin_memory=pin)
        # A step that samples nothing (prompt pieces only) ends with no read back: its copy may still
        # be reading the pinned buffer. Waiting for that copy alone costs nothing once it is done.
        if self._copied is not None:
            self._copied.synchronize()
        # Filled through numpy: a Python list into a tensor would be a copy of its own (and on CUDA
        # a blocking one).
        flat = self._host.numpy()
        at = 0
        for group in groups:
            flat[at : at + len(group)] = group
            at += len(group)
        self.transfers += 1
        sent = self._host[:total].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        views, at = [], 0
        for group in groups:
            views.append(sent[at : at + len(group)])
            at += len(group)
        return views

    def read(self, tensor: torch.Tensor) -> list[int]:
        """The step's one read back (and its one wait for the device)."""
        self.transfers += 1
        return tensor.tolist()


class Decoder:
    """XTTS's GPT over a slot table."""

    def __init__(self, gpt: GPT, table: SlotTable, static: bool = False):
        self.gpt = gpt
        self.blocks = gpt.gpt.h
        self.table = table
        self.width = gpt.model_dim
        self.heads = gpt.heads
        self.head_dim = self.width // self.heads
        self.uploads = Uploads(table.device)
        self.static = static  # pure decode steps through the static-buffer path
        self.graphs: CudaGraphs | None = None
        self.buckets = buckets(table.slots)

    @classmethod
    def for_model(cls, gpt: GPT, slots: int, static: bool = False, capacity: int | None = None) -> Decoder:
        """A decoder with a slot table of `slots` streams, its KV cache allocated now: `capacity`
        positions a stream, by default the longest sentence's (`longest_sequence`)."""
        param = gpt.mel_embedding.weight
        table = SlotTable(
            slots, len(gpt.gpt.h), gpt.heads, gpt.model_dim // gpt.heads, gpt.mel_head.out_features, param.device,
            param.dtype, capacity=capacity or longest_sequence(gpt),
        )
        return cls(gpt, table, static)

    def prompt(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """A sentence's prompt [P, C]: the conditioning latent, the text between its start and stop
        tokens (`GPT.compute_embeddings`, without storing it on the model), then the start-of-audio
        token at mel position 0, whose output gives the first latent and logits. In the model's dtype
        (voices keep float32 latents: model/precision.py)."""
        text = F.pad(text_tokens, (0, 1), value=self.gpt.stop_text_token)
        text = F.pad(text, (1, 0), value=self.gpt.start_text_token)
        emb = self.gpt.text_embedding(text) + self.gpt.text_pos_embedding(text)
        device = emb.device
        start = self.mel_input(
            torch.tensor([self.gpt.start_audio_token], device=device), torch.zeros(1, dtype=torch.long, device=device)
        )
        return torch.cat([cond_latent.to(device, emb.dtype)[0], emb[0], start])

    def mel_input(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rows [n, C] for mel tokens at their mel positions."""
        return self.gpt.mel_embedding(tokens) + self.gpt.mel_pos_embedding.emb(positions)

    def forward(self, slots: list[int], tokens: list[int], positions: list[int], pieces: list[Piece]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed `tokens[i]` at mel position `positions[i]` to stream `slots[i]`, and each piece to its
        stream. Returns the latents [m, C] and logits [m, vocab] of each token's row, then of each
        piece's last row (m = len(tokens) + len(pieces))."""
        return self._run(slots, tokens, positions, pieces, [])[:2]

    def step(
        self, slots: list[int], tokens: list[int], positions: list[int], pieces: list[Piece], sampled: list[tuple[int, int]],
    ) -> tuple[torch.Tensor, list[int]]:
        """`forward`, then one token sampled for each (row, slot) of `sampled` with that slot's settings
        and generator: the latents of every row, and the tokens. One copy to the device, one read back."""
        latents, logits, rows = self._run(slots, tokens, positions, pieces, sampled)
        if not sampled:
            return latents, []
        sampled_tokens = _sample(logits[rows[0]].float(), self.table, rows[1], [s for _, s in sampled])
        return latents, self.uploads.read(sampled_tokens)

    def _run(self, slots, tokens, positions, pieces, sampled):
        table = self.table
        n = len(tokens)
        owners = slots + [p.slot for p in pieces]
        sizes = [1] * n + [len(p.rows) for p in pieces]
        starts, filled = [], {}
        for slot, size in zip(owners, sizes, strict=True):  # a stream's pieces follow one another
            starts.append(filled.get(slot, table.lengths[slot]))
            filled[slot] = starts[-1] + size
        if max(filled.values()) > table.capacity:
            raise ValueError(f"a stream passed the KV cache's {table.capacity} positions")
        last = list(np.cumsum(sizes) - 1)
        if self.static and not pieces and slots == list(range(n)):
            bucket = next(b for b in self.buckets if b >= n)
            pad = bucket - n
            span = min(-(-max(filled.values()) // SPAN_BLOCK) * SPAN_BLOCK, table.capacity)
            g_tokens, g_positions, g_at, rows, row_slots = self.uploads.send(
                tokens + [0] * pad, positions + [0] * pad, starts + [0] * pad, [r for r, _ in sampled], [s for _, s in sampled],
            )
            latents, logits = self._static(bucket, span, g_tokens, g_positions, g_at)
            latents, logits = latents[:n], logits[:n]
        else:
            g_tokens, g_positions, g_slots, g_at, g_last, rows, row_slots = self.uploads.send(
                tokens, positions, slots, starts[:n], last, [r for r, _ in sampled], [s for _, s in sampled],
            )
            latents, logits = self._per_stream(n, owners, starts, sizes, pieces, g_tokens, g_positions, g_slots, g_at, g_last)
        for slot, length in filled.items():
            table.lengths[slot] = length
        return latents, logits, (rows, row_slots)

    def _per_stream(self, n, owners, starts, sizes, pieces, tokens, positions, at_slots, at, last):
        """Linear maps over all rows, attention per stream over its own slot: a row's numbers do not
        depend on the other rows (CPU's exact path, and every step with a prompt piece)."""
        table = self.table
        rows = [self.mel_input(tokens, positions)] if n else []
        x = torch.cat(rows + [p.rows for p in pieces])
        masks = [None if size == 1 else self._causal(start, size) for start, size in zip(starts, sizes, strict=True)]
        attended = torch.empty(len(x), self.heads, self.head_dim, device=x.device, dtype=x.dtype)
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.c_attn(block.ln_1(x)).view(len(x), 3, self.heads, self.head_dim).unbind(1)
            keys, values = table.k[layer], table.v[layer]
            if n:
                keys[at_slots, :, at], values[at_slots, :, at] = k[:n], v[:n]  # every generating row's position at once
            row = n
            for piece, start in zip(pieces, starts[n:], strict=True):
                size = len(piece.rows)
                keys[piece.slot, :, start : start + size] = k[row : row + size].transpose(0, 1)
                values[piece.slot, :, start : start + size] = v[row : row + size].transpose(0, 1)
                row += size
            row = 0
            for slot, start, size, mask in zip(owners, starts, sizes, masks, strict=True):
                end = start + size
                # One stream's rows over its own cache: the same call, alone or in a crowd.
                out = F.scaled_dot_product_attention(
                    q[row : row + size].transpose(0, 1)[None], keys[slot, :, :end][None], values[slot, :, :end][None],
                    attn_mask=mask,
                )
                attended[row : row + size] = out[0].transpose(0, 1)
                row += size
            x = x + block.attn.c_proj(attended.view(len(x), self.width))
            x = x + block.mlp(block.ln_2(x))
        latents = self.gpt.final_norm(self.gpt.gpt.ln_f(x[last]))
        return latents, self.gpt.mel_head(latents)

    def _static(self, bucket: int, span: int, tokens, positions, at):
        """A pure decode step over slots 0..bucket-1 (fixed shapes): replayed from a CUDA graph when one
        is captured for (bucket, span), else run eagerly."""
        if self.graphs is not None:
            return self.graphs.replay(bucket, span, tokens, positions, at)
        return self.static_forward(bucket, span, tokens, positions, at)

    def static_forward(self, bucket: int, span: int, tokens, positions, at):
        """Rows for slots 0..bucket-1 (padding rows write to free slots' position 0, never read); attention
        for all of them in one call over the first `span` positions, each row masked to its own length."""
        table = self.table
        x = self.mel_input(tokens, positions)
        slots = torch.arange(bucket, device=x.device)
        mask = (torch.arange(span, device=x.device)[None, :] <= at[:, None])[:, None, None, :]
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.c_attn(block.ln_1(x)).view(bucket, 3, self.heads, self.head_dim).unbind(1)
            keys, values = table.k[layer], table.v[layer]
            keys[slots, :, at], values[slots, :, at] = k, v
            out = F.scaled_dot_product_attention(
                q[:, :, None], keys[:bucket, :, :span], values[:bucket, :, :span], attn_mask=mask,
            )
            x = x + block.attn.c_proj(out.reshape(bucket, self.width))
            x = x + block.mlp(block.ln_2(x))
        latents = self.gpt.final_norm(self.gpt.gpt.ln_f(x))
        return latents, self.gpt.mel_head(latents)

    def spans(self) -> list[int]:
        return sorted({min(k * SPAN_BLOCK, self.table.capacity) for k in range(1, math.ceil(self.table.capacity / SPAN_BLOCK) + 1)})

    def _causal(self, start: int, size: int) -> torch.Tensor:
        """Rows at positions start..start+size-1, each seeing every position up to its own."""
        device = self.table.device
        return torch.arange(start + size, device=device)[None, :] <= torch.arange(start, start + size, device=device)[:, None]


class CudaGraphs:
    """The static decode step captured as one CUDA graph per (batch bucket, attention span), replayed
    with its inputs copied into the graph's own buffers. UNVERIFIED: no GPU has run this yet (README)."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        device = decoder.table.device
        most = decoder.table.slots
        self.tokens = torch.zeros(most, dtype=torch.long, device=device)
        self.positions = torch.zeros(most, dtype=torch.long, device=device)
        self.at = torch.zeros(most, dtype=torch.long, device=device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = None

    def capture(self, bucket: int, span: int) -> None:
        """Warm the shapes on a side stream, then capture (the KV writes land in the scratch-free
        slots 0..bucket-1 at position 0: call before any stream holds a slot)."""
        d = self.decoder
        args = (bucket, span, self.tokens[:bucket], self.positions[:bucket], self.at[:bucket])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                d.static_forward(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            latents, logits = d.static_forward(*args)
        self.pool = graph.pool()
        self.graphs[bucket, span] = (graph, latents, logits)

    def capture_all(self) -> None:
        for bucket in self.decoder.buckets:
            for span in self.decoder.spans():
                self.capture(bucket, span)

    def replay(self, bucket: int, span: int, tokens, positions, at):
        if (bucket, span) not in self.graphs:
            return self.decoder.static_forward(bucket, span, tokens, positions, at)
        graph, latents, logits = self.graphs[bucket, span]
        self.tokens[:bucket].copy_(tokens)
        self.positions[:bucket].copy_(positions)
        self.at[:bucket].copy_(at)
        graph.replay()
        return latents.clone(), logits  # the latents outlive the step (the vocoder's windows); the logits do not


def sample(logits: torch.Tensor, table: SlotTable, slots: list[int]) -> list[int]:
    """One token per row of `logits` [n, vocab], row i with the settings, seen tokens and generator of
    slot `slots[i]`; each sampled token joins its slot's seen tokens.

    The order and arithmetic are HF's for `do_sample=True`: RepetitionPenaltyLogitsProcessor (over the
    slot's seen tokens, the stream's input ids), then the Temperature, TopK and TopP warpers, then
    softmax and `torch.multinomial`. With the same generator state a row gives HF's token, and every
    operation is per row, so a row's token does not depend on the others. (The engine samples inside
    `Decoder.step`, with the slots among the step's one upload.)
    """
    return _sample(logits.float(), table, torch.tensor(slots, device=logits.device), slots).tolist()


def _sample(scores: torch.Tensor, table: SlotTable, index: torch.Tensor, slots: list[int]) -> torch.Tensor:
    """`sample` on the device, in float32 (`scores`), with no host sync: the tokens as a tensor."""
    seen = table.seen[index]
    penalty = table.repetition_penalty[index, None]
    scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
    scores = scores / table.temperature[index, None]

    # The k-th largest score from one sort, not torch.topk with k read back from the device. The
    # same value either way, so the same mask as HF's TopK.
    descending = torch.sort(scores, dim=-1, descending=True).values
    top_k = table.top_k[index].clamp(max=scores.shape[-1])
    kth = descending.gather(1, top_k[:, None] - 1)
    scores = scores.masked_fill(scores < kth, -float("inf"))

    # HF leaves the TopP warper out at 1.0; here every row runs it and rows at 1.0 remove nothing
    # (deciding per batch would read the settings back from the device).
    top_p = table.top_p[index, None]
    ascending, order = torch.sort(scores, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove = (cumulative <= 1 - top_p) & (top_p < 1.0)
    remove[:, -1].fill_(False)  # min_tokens_to_keep (fill_: a Python scalar assigned would be a copy of its own)
    scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))

    probs = F.softmax(scores, dim=-1)
    # Each stream's own generator, so that a seed means the same tokens alone or in a crowd.
    tokens = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=table.generators[s])[0] for i, s in enumerate(slots)])
    table.seen.index_put_((index, tokens), torch.ones((), dtype=torch.bool, device=tokens.device))
    return tokens
