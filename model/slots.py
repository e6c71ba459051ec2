"""The slot table: every piece of state the engine keeps per stream, indexed by slot. A stream holds one
slot from joining to leaving; slots 0..used-1 are taken, and when a stream leaves, the last slot's state
moves into its place (`move`), so a step always finds its streams in one contiguous range.

What a slot holds: the stream's KV cache in every layer (up to `lengths[slot]` positions), its
repetition-penalty mask (the tokens it has seen), its sampling settings, and its random generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# KV capacity grows in steps of this many positions: fewer reallocations, little unused memory.
CAPACITY_STEP = 128


@dataclass(frozen=True)
class Sampling:
    """One stream's sampling settings, applied as HF's logits processors would (model/decoding.py)."""

    temperature: float = 0.75
    top_p: float = 0.85
    top_k: int = 50
    repetition_penalty: float = 10.0


class SlotTable:
    def __init__(
        self, slots: int, layers: int, heads: int, head_dim: int, vocab: int, device: torch.device, dtype: torch.dtype
    ):
        self.slots, self.layers, self.heads, self.head_dim = slots, layers, heads, head_dim
        self.device, self.dtype = device, dtype
        self.capacity = 0
        self.k: list[torch.Tensor] = []  # per layer, [slots, heads, capacity, head_dim]
        self.v: list[torch.Tensor] = []
        self.lengths = [0] * slots  # positions filled in the KV cache
        self.seen = torch.zeros(slots, vocab, dtype=torch.bool, device=device)
        self.temperature = torch.ones(slots, device=device)
        self.top_p = torch.ones(slots, device=device)
        self.top_k = torch.ones(slots, dtype=torch.long, device=device)
        self.repetition_penalty = torch.ones(slots, device=device)
        self.generators: list[torch.Generator | None] = [None] * slots

    @property
    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def assign(self, slot: int, sampling: Sampling, generator: torch.Generator) -> None:
        """A new stream in `slot`: its settings and generator (`restart` begins each sentence)."""
        self.temperature[slot] = sampling.temperature
        self.top_p[slot] = sampling.top_p
        self.top_k[slot] = sampling.top_k
        self.repetition_penalty[slot] = sampling.repetition_penalty
        self.generators[slot] = generator
        self.lengths[slot] = 0

    def reserve(self, length: int) -> None:
        """Room for `length` positions in every slot; what the cache held is kept."""
        if length <= self.capacity:
            return
        capacity = -(-length // CAPACITY_STEP) * CAPACITY_STEP
        shape = (self.slots, self.heads, capacity, self.head_dim)
        grown = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(2 * self.layers)]
        for old, new in zip(self.k + self.v, grown, strict=False):
            new[:, :, : self.capacity] = old
        self.k, self.v = grown[: self.layers], grown[self.layers :]
        self.capacity = capacity

    def move(self, src: int, dst: int) -> None:
        """Everything slot `src` holds goes to slot `dst` (whose stream has left); `src` is then free."""
        length = self.lengths[src]
        for cache in self.k + self.v:
            cache[dst, :, :length] = cache[src, :, :length]
        for column in (self.seen, self.temperature, self.top_p, self.top_k, self.repetition_penalty):
            column[dst] = column[src]
        self.lengths[dst], self.generators[dst] = length, self.generators[src]
        self.release(src)

    def restart(self, slot: int, seen: list[int]) -> None:
        """The slot's next sentence: an empty cache, and only `seen` in its repetition-penalty mask."""
        self.lengths[slot] = 0
        self.seen[slot] = False
        self.seen[slot, seen] = True

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.generators[slot] = None

    def reset(self) -> None:
        """Every slot empty and the cache freed, whatever it held."""
        self.lengths = [0] * self.slots
        self.generators = [None] * self.slots
        self.k, self.v, self.capacity = [], [], 0
        self.seen.zero_()
