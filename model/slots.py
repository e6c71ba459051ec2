"""The slot table: every piece of state the engine keeps per stream, indexed by slot. A stream holds one
slot from joining to leaving; slots 0..used-1 are taken, and when a stream leaves, the last slot's state
moves into its place (`move`), so a step always finds its streams in one contiguous range.

What a slot holds: the stream's KV cache in every layer (up to `lengths[slot]` positions), its
repetition-penalty mask (the tokens it has seen), its sampling settings, and its random generator.

Beside it, the prefix cache: each recent voice's conditioning positions, copied into a slot at the
start of each of that voice's prompts instead of prefilled.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
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

    def save_prefix(self, slot: int, length: int) -> Prefix:
        """A copy of the slot's first `length` positions."""
        return Prefix(length, [k[slot, :, :length].clone() for k in self.k], [v[slot, :, :length].clone() for v in self.v])

    def load_prefix(self, slot: int, prefix: Prefix) -> None:
        """The slot's cache starts with `prefix` (after `restart`)."""
        self.reserve(prefix.length)
        for cache, saved in zip(self.k + self.v, prefix.k + prefix.v, strict=True):
            cache[slot, :, : prefix.length] = saved
        self.lengths[slot] = prefix.length

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.generators[slot] = None

    def reset(self) -> None:
        """Every slot empty and the cache freed, whatever it held."""
        self.lengths = [0] * self.slots
        self.generators = [None] * self.slots
        self.k, self.v, self.capacity = [], [], 0
        self.seen.zero_()


class PrefixCache:
    """The KV cache of each voice's conditioning positions, for the voices used last.

    Every prompt starts with its voice's conditioning latent (32 positions), which attends only to
    itself: its keys and values depend on the voice alone. Kept here, they are copied into a slot
    instead of prefilled, and a prompt prefills only its text (model/engine.py). A voice is known by
    its latent tensor, weakly: a voice dropped from the voice cache drops out of here too.
    """

    def __init__(self, voices: int):
        self.voices = voices
        self._kept: OrderedDict[int, tuple[weakref.ref, Prefix]] = OrderedDict()

    def get(self, latent: torch.Tensor) -> Prefix | None:
        kept = self._kept.get(id(latent))
        if kept is None or kept[0]() is not latent:
            return None
        self._kept.move_to_end(id(latent))
        return kept[1]

    def put(self, latent: torch.Tensor, prefix: Prefix) -> None:
        self._kept[id(latent)] = (weakref.ref(latent), prefix)
        self._kept.move_to_end(id(latent))
        for key in [k for k, (ref, _) in self._kept.items() if ref() is None]:
            del self._kept[key]
        while len(self._kept) > self.voices:
            self._kept.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, prefix in self._kept.values() for t in prefix.k + prefix.v)


@dataclass(frozen=True)
class Prefix:
    """The first `length` positions of a slot's cache, per layer [heads, length, head_dim]."""

    length: int
    k: list[torch.Tensor]
    v: list[torch.Tensor]
