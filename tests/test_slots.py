"""The slot table's one move and one release, and the prefix cache, on small tensors (no model)."""

import gc

import pytest
import torch

from model import slots
from model.slots import PrefixCache, Sampling, SlotTable


def table(slots: int = 3, capacity: int = 300) -> SlotTable:
    return SlotTable(slots, layers=2, heads=2, head_dim=4, vocab=10, device=torch.device("cpu"), dtype=torch.float32, capacity=capacity)


def fill(t: SlotTable, slot: int, length: int, value: float) -> None:
    for cache in t.k + t.v:
        cache[slot, :, :length] = value
    t.lengths[slot] = length


def test_a_move_carries_everything_the_slot_holds_and_frees_the_source():
    t = table()
    generator = torch.Generator().manual_seed(7)
    t.assign(2, Sampling(temperature=0.3, top_p=0.5, top_k=7, repetition_penalty=2.0), generator)
    t.restart(2, [1, 4])
    fill(t, 2, 5, 2.5)
    t.move(2, 0)
    assert t.lengths == [5, 0, 0] and t.generators[0] is generator and t.generators[2] is None
    assert all((cache[0, :, :5] == 2.5).all() for cache in t.k + t.v)
    assert t.seen[0].nonzero().flatten().tolist() == [1, 4]
    settings = [t.temperature[0].item(), t.top_p[0].item(), t.top_k[0].item(), t.repetition_penalty[0].item()]
    assert settings == [torch.tensor(0.3).item(), 0.5, 7, 2.0]  # as float32 holds them


def test_the_cache_is_allocated_once_at_full_size_and_kept_through_reset():
    t = table(capacity=300)
    assert t.cache_bytes == SlotTable.bytes_for(3, 2, 2, 4, 300, torch.float32) == 2 * 2 * 4 * 2 * 300 * 4 * 4
    storage = [cache.data_ptr() for cache in t.k + t.v]
    fill(t, 1, 3, 1.5)
    t.reset()
    t.give_back()
    assert t.lengths == [0, 0, 0] and [cache.data_ptr() for cache in t.k + t.v] == storage  # never reallocated
    half = SlotTable(3, layers=2, heads=2, head_dim=4, vocab=10, device=torch.device("cpu"), dtype=torch.float16, capacity=300)
    assert half.cache_bytes * 2 == t.cache_bytes and half.k[0].dtype == torch.float16


def test_a_cache_that_does_not_fit_fails_naming_the_streams_that_fit(monkeypatch):
    monkeypatch.setattr(slots, "free_memory", lambda device: SlotTable.bytes_for(4, 2, 2, 4, 300, torch.float32) + 10)
    with pytest.raises(slots.CacheSizeError, match="set model_metadata.max_streams to 4 or less"):
        table(slots=8)
    assert table(slots=4).slots == 4


def test_a_saved_prefix_loads_into_another_slot():
    t = table()
    fill(t, 0, 4, 3.0)
    prefix = t.save_prefix(0, 4)
    fill(t, 0, 4, -1.0)  # the saved copy does not change with the slot
    t.restart(1, [1])
    t.load_prefix(1, prefix)
    assert t.lengths[1] == 4 and all((cache[1, :, :4] == 3.0).all() for cache in t.k + t.v)


def test_the_prefix_cache_knows_a_voice_by_its_tensor_keeps_the_recent_ones_and_forgets_the_dropped():
    t = table()
    fill(t, 0, 2, 1.0)
    cache = PrefixCache(voices=2)
    a, b, c = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    for latent in (a, b):
        cache.put(latent, t.save_prefix(0, 2))
    assert cache.get(a) is not None and cache.get(torch.zeros(1, 2, 4)) is None  # equal values, not the voice
    cache.put(c, t.save_prefix(0, 2))  # a was used last, so b goes
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    del a
    gc.collect()
    cache.put(b, t.save_prefix(0, 2))
    assert len(cache._kept) == 2 and cache.get(c) is not None  # a's entry went with its voice
