"""The slot table's one move and one release, and the prefix cache, on small tensors (no model)."""

import gc

import torch

from model.slots import PrefixCache, Sampling, SlotTable


def table(slots: int = 3) -> SlotTable:
    return SlotTable(slots, layers=2, heads=2, head_dim=4, vocab=10, device=torch.device("cpu"), dtype=torch.float32)


def fill(t: SlotTable, slot: int, length: int, value: float) -> None:
    t.reserve(length)
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


def test_the_cache_grows_keeping_what_it_holds_and_reset_frees_it():
    t = table()
    fill(t, 1, 3, 1.5)
    t.reserve(300)
    assert t.capacity >= 300 and all((cache[1, :, :3] == 1.5).all() for cache in t.k + t.v)
    t.reset()
    assert t.cache_bytes == 0 and t.lengths == [0, 0, 0]


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
