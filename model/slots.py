"""The slot table: every piece of state the engine keeps per stream, indexed by slot. A stream holds one
slot from joining to leaving; slots 0..used-1 are taken, and when a stream leaves, the last slot's state
moves into its place (`move`), so a step always finds its streams in one contiguous range.

What a slot holds: the stream's KV cache in every layer (up to `lengths[slot]` positions), its
repetition-penalty mask (the tokens it has seen), its sampling settings (on the device, where sampling
reads them), and its random generator.

The KV cache is allocated once, at its full size (`capacity`: the longest prompt plus the most tokens a
sentence may generate, `Decoder.for_model`), and never reallocated while serving: a grow would briefly
need twice the memory, and an out-of-memory error there would fail every stream; static buffers are
also what CUDA graphs need (model/decoding.py). One slot more than the streams, `scratch`, takes the
padding rows of a batch-size bucket. On CPU the allocation is lazy (`torch.empty`: the kernel maps
pages as positions are first written), and an idle engine gives its pages back (`give_back`).

Beside it, the prefix cache: each recent voice's conditioning positions, copied into a slot at the
start of each of that voice's prompts instead of prefilled.
"""

from __future__ import annotations

import ctypes
import mmap
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch


class CacheSizeError(MemoryError):
    """The static KV cache does not fit in the device's free memory."""


@dataclass(frozen=True)
class Sampling:
    """One stream's sampling settings, applied as HF's logits processors would (model/decoding.py)."""

    temperature: float = 0.75
    top_p: float = 0.85
    top_k: int = 50
    repetition_penalty: float = 10.0


class SlotTable:
    def __init__(
        self, slots: int, layers: int, heads: int, head_dim: int, vocab: int, device: torch.device, dtype: torch.dtype,
        capacity: int = 64,
    ):
        self.slots, self.layers, self.heads, self.head_dim = slots, layers, heads, head_dim
        self.device, self.dtype = device, dtype
        self.capacity = capacity
        self.scratch = slots  # the padding rows' slot
        need = self.bytes_for(slots, layers, heads, head_dim, capacity, dtype)
        free = free_memory(device)
        if need > free:
            raise CacheSizeError(
                f"the KV cache for {slots} streams of {capacity} positions needs {need / 2**30:.2f} GiB in "
                f"{str(dtype).removeprefix('torch.')}, and {device} has {free / 2**30:.2f} GiB free: set "
                f"model_metadata.max_streams to {fitting_streams(free, layers, heads, head_dim, capacity, dtype)} "
                f"or less (README \"Sizing\")"
            )
        shape = (slots + 1, heads, capacity, head_dim)
        # empty, not zeros: on CPU, pages nobody writes are never resident. Positions past a slot's
        # length are never read, so what they hold does not matter.
        self.k: list[torch.Tensor] = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.v: list[torch.Tensor] = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
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

    @staticmethod
    def bytes_for(slots: int, layers: int, heads: int, head_dim: int, capacity: int, dtype: torch.dtype) -> int:
        """The KV cache's size: keys and values, every layer, `slots` streams and the scratch slot."""
        return 2 * layers * (slots + 1) * heads * capacity * head_dim * torch.empty(0, dtype=dtype).element_size()

    def assign(self, slot: int, sampling: Sampling, generator: torch.Generator) -> None:
        """A new stream in `slot`: its settings and generator (`restart` begins each sentence)."""
        self.temperature[slot] = sampling.temperature
        self.top_p[slot] = sampling.top_p
        self.top_k[slot] = sampling.top_k
        self.repetition_penalty[slot] = sampling.repetition_penalty
        self.generators[slot] = generator
        self.lengths[slot] = 0

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
        for cache, saved in zip(self.k + self.v, prefix.k + prefix.v, strict=True):
            cache[slot, :, : prefix.length] = saved
        self.lengths[slot] = prefix.length

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.generators[slot] = None

    def reset(self) -> None:
        """Every slot empty, whatever it held (the memory stays allocated: see `give_back`)."""
        self.lengths = [0] * self.slots
        self.generators = [None] * self.slots
        self.seen.zero_()

    def give_back(self) -> None:
        """On CPU, return the cache's resident pages to the system (an idle engine); the next write maps
        fresh zero pages. On CUDA the memory stays: it was reserved at load for the streams to come."""
        if self.device.type == "cpu":
            for cache in self.k + self.v:
                release_pages(cache)


def free_memory(device: torch.device) -> int:
    """Bytes the device can still allocate: CUDA's free memory, or the system's available memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def fitting_streams(free: int, layers: int, heads: int, head_dim: int, capacity: int, dtype: torch.dtype) -> int:
    """The most streams whose static KV cache fits in `free` bytes."""
    per_stream = SlotTable.bytes_for(0, layers, heads, head_dim, capacity, dtype)  # one slot's worth
    return max(free // per_stream - 1, 0)


def release_pages(tensor: torch.Tensor) -> int:
    """MADV_DONTNEED over the whole pages inside a CPU tensor (one it shares with a neighbour stays):
    the kernel drops them. A later read of anonymous memory (the KV cache) gets zero pages, of a
    private file mapping (model/packing.py) the file's. Returns the bytes that madvise failed to drop."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED) != 0:
            return last - first
    return 0


MADV_DONTNEED = 4


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
