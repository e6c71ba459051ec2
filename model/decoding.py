"""Batched GPT decoding for XTTS: one decode step advances every active stream by one token.

Stock XTTS cannot batch requests: `GPT2InferenceModel.store_prefix_emb` keeps one prompt on the shared
module, and its decode step derives one mel position for the whole batch. So this module runs the GPT
itself, over the loaded weights: XTTS's GPT is HF's `GPT2Model` with its built-in position embedding
nulled and XTTS's learned text and mel position embeddings added to the inputs. Each stream has its own
prompt, slot in a KV cache, mel position, sampling settings and random generator; nothing per stream is
stored on the model. Attention over the slotted cache is torch's SDPA with a mask of each slot's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from TTS.tts.layers.xtts.gpt import GPT

# KV capacity grows in steps of this many positions: fewer reallocations, little unused memory.
CAPACITY_STEP = 128


@dataclass(frozen=True)
class Sampling:
    """One stream's sampling settings, applied as HF's logits processors would (tests/test_decoding.py)."""

    temperature: float = 0.75
    top_p: float = 0.85
    top_k: int = 50
    repetition_penalty: float = 10.0


def sample(
    logits: torch.Tensor, seen: torch.Tensor, settings: list[Sampling], generators: list[torch.Generator]
) -> list[int]:
    """One token per row of `logits` [n, vocab], each row with its own settings and generator.

    The order and arithmetic are HF's for `do_sample=True`: RepetitionPenaltyLogitsProcessor (over the
    tokens in `seen` [n, vocab], the stream's input ids), then the Temperature, TopK and TopP warpers,
    then softmax and `torch.multinomial`. With the same generator state a row gives HF's token.
    """
    device = logits.device
    scores = logits.float()
    column = lambda values: torch.tensor(values, dtype=scores.dtype, device=device)[:, None]  # noqa: E731
    penalty = column([s.repetition_penalty for s in settings])
    scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
    scores = scores / column([s.temperature for s in settings])

    top_k = [min(s.top_k, scores.shape[-1]) for s in settings]
    kth = torch.topk(scores, max(top_k)).values.gather(1, torch.tensor(top_k, device=device)[:, None] - 1)
    scores = scores.masked_fill(scores < kth, -float("inf"))

    top_p = [s.top_p for s in settings]
    if min(top_p) < 1.0:  # HF leaves the warper out at 1.0
        ascending, order = torch.sort(scores, descending=False)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        remove = (cumulative <= 1 - column(top_p)) & column([p < 1.0 for p in top_p]).bool()
        remove[:, -1] = False  # min_tokens_to_keep
        scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))

    probs = F.softmax(scores, dim=-1)
    return [int(torch.multinomial(probs[i : i + 1], 1, generator=g)) for i, g in enumerate(generators)]


class Decoder:
    """XTTS's GPT as a batched decoder over a slotted KV cache.

    Slots 0..n-1 hold the n active streams; `move` compacts them when one leaves, so a step reads the
    cache as one contiguous view. A slot's length is its prompt, start token and generated tokens so far.
    """

    def __init__(self, gpt: GPT, slots: int):
        self.gpt = gpt
        self.blocks = gpt.gpt.h
        self.slots = slots
        self.width = gpt.model_dim
        self.heads = gpt.heads
        self.head_dim = self.width // self.heads
        param = gpt.mel_head.weight
        self.device, self.dtype = param.device, param.dtype
        self.lengths = [0] * slots
        self.capacity = 0
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []

    @property
    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._k + self._v)

    def prompt(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """The stream's prefix [1, P, C]: conditioning latent, then text between its start and stop tokens.
        `GPT.compute_embeddings` without storing it on the model."""
        text = F.pad(text_tokens, (0, 1), value=self.gpt.stop_text_token)
        text = F.pad(text, (1, 0), value=self.gpt.start_text_token)
        emb = self.gpt.text_embedding(text) + self.gpt.text_pos_embedding(text)
        return torch.cat([cond_latent.to(self.device, emb.dtype), emb], dim=1)

    def prefill(self, slot: int, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt and the start-of-audio token into `slot`; returns the latent and logits [C], [vocab]
        that the start token gives (upstream's first yield)."""
        start = torch.tensor([[self.gpt.start_audio_token]], device=self.device)
        x = torch.cat([prompt, self._mel_input(start, torch.zeros(1, dtype=torch.long, device=self.device))], dim=1)
        length = x.shape[1]
        self._reserve(length)
        for layer, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, x)
            self._k[layer][slot, :, :length] = k[0]
            self._v[layer][slot, :, :length] = v[0]
            x = self._finish_block(block, x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
        self.lengths[slot] = length
        latent, logits = self._head(x[:, -1])
        return latent[0], logits[0]

    def step(self, tokens: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one token to each of slots 0..n-1 (n = len(tokens)) at its mel position; returns the
        latents [n, C] and logits [n, vocab] for the next token."""
        n = len(tokens)
        lengths = self.lengths[:n]
        self._reserve(max(lengths) + 1)
        rows = torch.arange(n, device=self.device)
        at = torch.tensor(lengths, device=self.device)
        span = max(lengths) + 1
        mask = (torch.arange(span, device=self.device)[None, :] <= at[:, None])[:, None, None, :]
        x = self._mel_input(torch.tensor(tokens, device=self.device)[:, None], torch.tensor(positions, device=self.device))
        for layer, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, x)
            keys, values = self._k[layer], self._v[layer]
            keys[rows, :, at] = k[:, :, 0]
            values[rows, :, at] = v[:, :, 0]
            attended = F.scaled_dot_product_attention(q, keys[:n, :, :span], values[:n, :, :span], attn_mask=mask)
            x = self._finish_block(block, x, attended)
        for i in range(n):
            self.lengths[i] += 1
        latents, logits = self._head(x)
        return latents[:, 0], logits[:, 0]

    def move(self, src: int, dst: int) -> None:
        """Put slot `src`'s cache in slot `dst` (compaction after `dst`'s stream left)."""
        length = self.lengths[src]
        for cache in self._k + self._v:
            cache[dst, :, :length] = cache[src, :, :length]
        self.lengths[dst], self.lengths[src] = length, 0

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0

    def shrink(self) -> None:
        """Free the cache when no stream is active (an idle server holds no KV memory)."""
        if not any(self.lengths):
            self.reset()

    def reset(self) -> None:
        """Every slot empty and the cache freed, whatever it held."""
        self.lengths = [0] * self.slots
        self._k, self._v, self.capacity = [], [], 0

    def _reserve(self, length: int) -> None:
        if length <= self.capacity:
            return
        capacity = -(-length // CAPACITY_STEP) * CAPACITY_STEP
        shape = (self.slots, self.heads, capacity, self.head_dim)
        grown = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(2 * len(self.blocks))]
        for old, new in zip(self._k + self._v, grown, strict=False):
            new[:, :, : self.capacity] = old
        self._k, self._v = grown[: len(self.blocks)], grown[len(self.blocks) :]
        self.capacity = capacity

    def _mel_input(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.gpt.mel_embedding(tokens) + self.gpt.mel_pos_embedding.emb(positions)[:, None, :]

    def _qkv(self, block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, length, _ = x.shape
        qkv = block.attn.c_attn(block.ln_1(x)).view(n, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [n, heads, length, head_dim]
        return q, k, v

    def _finish_block(self, block, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        x = x + block.attn.c_proj(attended.transpose(1, 2).reshape(n, length, self.width))
        return x + block.mlp(block.ln_2(x))

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GPT2Model's final norm, then XTTS's: the latent the vocoder takes, and the mel head's logits."""
        latent = self.gpt.final_norm(self.gpt.gpt.ln_f(x))
        return latent, self.gpt.mel_head(latent)
