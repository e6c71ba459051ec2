"""The voice store (model/store.py) on its own: files, bad files, bounds, names, and a store that is
read-only, full, gone or hanging. No model: latents of the real size, made up."""

import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from local_server import MountError, read_only_mount

from model import store as store_module
from model.store import SUFFIX, VoiceStore, decode, encode, name_key, weights_folder

SHAPES = {"gpt_cond_latent": (1, 32, 1024), "speaker_embedding": (1, 512, 1)}
WEIGHTS = "hf://coqui/XTTS-v2@test"


def latents(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in SHAPES.items()}


def vid(n: int) -> str:
    return f"{n:032x}"


def open_store(folder: Path, max_files: int = 100, **kwargs) -> VoiceStore:
    store = VoiceStore.open(str(folder), SHAPES, max_files, weights=WEIGHTS)
    assert store is not None
    for key, value in kwargs.items():
        setattr(store, key, value)
    return store


def settle(store: VoiceStore) -> None:
    """Until the background writer has done what was queued."""
    deadline = time.monotonic() + 10
    while (store._queue.unfinished_tasks or store._evicting) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)


def equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_voice_is_written_by_id_and_read_back_exactly(tmp_path):
    store = open_store(tmp_path)
    store.save_voice(vid(1), latents(1))
    settle(store)
    path = tmp_path / weights_folder(WEIGHTS) / "voices" / f"{vid(1)}{SUFFIX}"
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary file left behind
    assert equal(store.voice(vid(1)), latents(1))
    assert safetensors.torch.load_file(path)["gpt_cond_latent"].dtype == torch.float32
    assert store.voice(vid(2)) is None


def test_ids_that_are_not_32_hex_digits_never_reach_the_file_system(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    monkeypatch.setattr(store, "_read", lambda *_: pytest.fail("read a path built from a bad id"))
    for bad in ("../" * 8 + "etc/passwd", vid(0xABC).upper(), vid(1)[:-1], vid(1) + "0", ""):
        assert store.voice(bad) is None
        store.save_voice(bad, latents())
    settle(store)
    assert os.listdir(store.voices_dir) == []


def test_the_store_is_off_unless_b10cache_or_a_folder_is_there(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="model.store")
    monkeypatch.setattr(store_module, "DEFAULT_PARENT", tmp_path / "cache" / "org")
    assert VoiceStore.open("auto", SHAPES, 10, weights=WEIGHTS) is None
    assert VoiceStore.open(None, SHAPES, 10, weights=WEIGHTS) is None
    assert VoiceStore.open(False, SHAPES, 10, weights=WEIGHTS) is None  # YAML's `off`
    assert VoiceStore.open("off", SHAPES, 10, weights=WEIGHTS) is None
    off = [r.getMessage() for r in caplog.records]
    assert len(off) == 4 and "b10cache not enabled?" in off[0] and "memory only" in off[3]

    (tmp_path / "cache" / "org").mkdir(parents=True)
    caplog.clear()
    store = VoiceStore.open("auto", SHAPES, 10, weights=WEIGHTS)
    assert store.root == tmp_path / "cache" / "org" / "xtts-streaming-voices" / weights_folder(WEIGHTS)
    assert store.voices_dir.is_dir() and store.writable
    (line,) = [r.getMessage() for r in caplog.records]
    assert "0 files, at most 10; read and written" in line


def test_other_weights_get_a_folder_of_their_own(tmp_path):
    one, other = (VoiceStore.open(str(tmp_path), SHAPES, 10, weights=w) for w in (WEIGHTS, WEIGHTS + "-finetuned"))
    one.save_voice(vid(1), latents(1))
    settle(one)
    assert one.root != other.root and other.voice(vid(1)) is None


def write_raw(store: VoiceStore, voice_id: str, data: bytes) -> Path:
    path = store.voices_dir / f"{voice_id}{SUFFIX}"
    path.write_bytes(data)
    return path


GOOD = encode(latents(), {"voice_id": vid(7)})
BAD_FILES = {
    "truncated": GOOD[: len(GOOD) // 2],
    "empty": b"",
    "corrupt header": b"\xff" * 8 + GOOD[8:],
    "random bytes": os.urandom(4096),
    "a pickle": b"\x80\x04\x95" + os.urandom(200),
    "a wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(200),
    "wrong shape": encode({**latents(), "gpt_cond_latent": torch.zeros(1, 32, 1023)}, {"voice_id": vid(7)}),
    "wrong dtype": safetensors.torch.save(
        {k: v.half() for k, v in latents().items()}, metadata={"voice_id": vid(7), "format": "1"}),
    "nan": encode({**latents(), "speaker_embedding": torch.full((1, 512, 1), float("nan"))}, {"voice_id": vid(7)}),
    "infinity": encode({**latents(), "gpt_cond_latent": torch.full((1, 32, 1024), float("inf"))}, {"voice_id": vid(7)}),
    "an extra tensor": encode({**latents(), "extra": torch.zeros(1)}, {"voice_id": vid(7)}),
    "a missing tensor": encode({"gpt_cond_latent": latents()["gpt_cond_latent"]}, {"voice_id": vid(7)}),
    "another id in its header": encode(latents(), {"voice_id": vid(8)}),
    "another format": safetensors.torch.save(latents(), metadata={"voice_id": vid(7), "format": "0"}),
    "too large": GOOD + bytes(store_module.MAX_FILE_BYTES),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_absent_logged_once_and_replaced_by_the_next_write(tmp_path, caplog, kind):
    store = open_store(tmp_path)
    caplog.set_level(logging.WARNING, logger="model.store")
    write_raw(store, vid(7), BAD_FILES[kind])
    assert store.voice(vid(7)) is None and store.voice(vid(7)) is None
    assert len([r for r in caplog.records if "unusable" in r.getMessage()]) == 1, caplog.text
    store.save_voice(vid(7), latents(3))
    settle(store)
    assert equal(store.voice(vid(7)), latents(3))


def test_decode_says_what_is_wrong():
    with pytest.raises(store_module.BadFile, match=r"gpt_cond_latent is torch.float32 \[1, 32, 1023\], not torch.float32 \[1, 32, 1024\]"):
        decode(BAD_FILES["wrong shape"], SHAPES)
    with pytest.raises(store_module.BadFile, match="not finite"):
        decode(BAD_FILES["nan"], SHAPES)
    with pytest.raises(store_module.BadFile, match="not a safetensors file"):
        decode(BAD_FILES["a pickle"], SHAPES)


def test_names_are_stored_under_a_hash_replaced_and_listed(tmp_path):
    store = open_store(tmp_path)
    name = "../../Narrator v2.final"
    first = store.save_name(name, vid(1), latents(1))
    assert first is not None
    (written,) = [path for path in tmp_path.rglob("*") if path.is_file()]  # the name is no path
    assert written.parent == store.names_dir and re.fullmatch(r"[0-9a-f]{32}\.safetensors", written.name)
    entry = store.name(name)
    assert entry.voice_id == vid(1) and equal(entry.tensors, latents(1)) and entry.signature == first
    assert store.name(name, known=first) is None  # unchanged: the caller keeps what it has

    second = store.save_name(name, vid(2), latents(2))  # registering again replaces it
    assert second != first
    changed = store.name(name, known=first)
    assert changed.voice_id == vid(2) and equal(changed.tensors, latents(2))
    store.save_name("Alice", vid(3), latents(3))
    assert store.names() == ["../../Narrator v2.final", "Alice"]
    assert store.name("nobody") is None


def test_a_listing_skips_files_that_are_not_registrations(tmp_path):
    store = open_store(tmp_path)
    store.save_name("Alice", vid(1), latents(1))
    # A good file under another name's hash, a corrupt one, and a stray file.
    (store.names_dir / f"{name_key('Bob')}{SUFFIX}").write_bytes(encode(latents(), {"name": "Mallory", "voice_id": vid(2)}))
    (store.names_dir / f"{name_key('Carol')}{SUFFIX}").write_bytes(b"\xff" * 64)
    (store.names_dir / "notes.txt").write_text("hello")
    assert store.names() == ["Alice"]
    assert store.name("Bob") is None  # its header names someone else


def test_past_the_bound_the_oldest_files_go_voices_and_names_alike(tmp_path):
    store = open_store(tmp_path, max_files=3)
    for n in range(3):
        store.save_voice(vid(n), latents(n))
        settle(store)
    # Files' times as another replica's writes and uses left them: voice 0 used last, voice 1 oldest.
    for n, age in ((0, 10), (1, 300), (2, 200)):
        os.utime(store.voices_dir / f"{vid(n)}{SUFFIX}", (time.time() - age,) * 2)
    stale = store.voices_dir / f".{vid(9)}{SUFFIX}.dead.tmp"  # a writer that died before its rename
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 2 * store_module.STALE_TMP_S,) * 2)
    store.save_name("Alice", vid(5), latents(5))
    settle(store)
    assert sorted(os.listdir(store.voices_dir)) == [f"{vid(n)}{SUFFIX}" for n in (0, 2)]
    assert store.names() == ["Alice"]


def test_a_voice_in_use_has_its_time_refreshed_now_and_then(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.save_voice(vid(1), latents(1))
    settle(store)
    path = store.voices_dir / f"{vid(1)}{SUFFIX}"
    os.utime(path, (time.time() - 2 * store_module.TOUCH_S,) * 2)
    store.used(vid(1))  # written by this replica a moment ago: not yet
    settle(store)
    assert time.time() - path.stat().st_mtime > store_module.TOUCH_S
    monkeypatch.setattr(store_module, "TOUCH_S", 0.0)
    store.used(vid(1))
    settle(store)
    assert time.time() - path.stat().st_mtime < 60


def test_a_store_folder_removed_mid_run_is_absent_then_made_again(tmp_path):
    store = open_store(tmp_path)
    store.save_voice(vid(1), latents(1))
    settle(store)
    subprocess.run(["rm", "-rf", str(store.root)], check=True)
    assert store.voice(vid(1)) is None and store.names() is None and store.name("Alice") is None
    store.save_voice(vid(2), latents(2))
    settle(store)
    assert equal(store.voice(vid(2)), latents(2))


def test_two_writers_of_the_same_voice_at_once_leave_one_good_file(tmp_path):
    stores = [open_store(tmp_path) for _ in range(2)]  # two replicas
    path = stores[0].voices_dir / f"{vid(1)}{SUFFIX}"
    data = encode(latents(1), {"voice_id": vid(1)})
    stores[0]._write(path, data)
    barrier = threading.Barrier(8)

    def write(n: int) -> None:
        barrier.wait()
        for _ in range(20):
            stores[n % 2]._write(path, data)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    reads = 0
    while any(t.is_alive() for t in threads):  # a reader meanwhile always sees a whole file
        assert equal(stores[1].voice(vid(1)), latents(1))
        reads += 1
    for thread in threads:
        thread.join()
    assert reads > 0 and os.listdir(stores[0].voices_dir) == [path.name]
    assert equal(stores[0].voice(vid(1)), latents(1))


@pytest.fixture()
def read_only(tmp_path):
    writable = open_store(tmp_path / "store")
    writable.save_voice(vid(1), latents(1))
    settle(writable)
    try:
        with read_only_mount(tmp_path / "store", tmp_path / "ro") as mounted:
            yield mounted
    except MountError as exc:
        pytest.skip(f"a read-only store needs a read-only mount: {exc}")


def test_a_read_only_store_is_read_and_never_written(read_only, caplog):
    caplog.set_level(logging.INFO, logger="model.store")
    store = open_store(read_only)
    assert not store.writable and "read-only" in caplog.text
    assert equal(store.voice(vid(1)), latents(1))
    store.save_voice(vid(2), latents(2))
    assert store.save_name("Alice", vid(2), latents(2)) is None
    settle(store)
    assert store.voice(vid(2)) is None and store.names() == []


def test_a_full_store_takes_nothing_and_says_so_once(tmp_path, caplog):
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(full)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full store needs a small tmpfs mount: {mounted.stderr.strip()}")
    try:
        caplog.set_level(logging.WARNING, logger="model.store")
        store = open_store(full)
        store.save_voice(vid(1), latents(1))  # 133 KB: fits
        settle(store)
        for n in range(2, 6):
            store.save_voice(vid(n), latents(n))
        settle(store)
        assert store.save_name("Alice", vid(6), latents(6)) is None
        assert equal(store.voice(vid(1)), latents(1)) and store.voice(vid(2)) is None
        assert caplog.text.count("No space left on device") == 1, caplog.text
        assert [n for n in os.listdir(store.voices_dir) if n.endswith(".tmp")] == []  # partial writes removed
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_a_hanging_store_costs_a_lookup_the_timeout_then_nothing(tmp_path, caplog, monkeypatch):
    # A FIFO in place of a voice file: open() blocks in the kernel until a writer comes, as a read from
    # a hung network volume does.
    monkeypatch.setattr(store_module, "RETRY_S", 1.0)
    store = open_store(tmp_path, timeout_s=0.3)
    store.save_voice(vid(2), latents(2))
    settle(store)
    fifo = store.voices_dir / f"{vid(1)}{SUFFIX}"
    os.mkfifo(fifo)
    try:
        started = time.monotonic()
        assert store.voice(vid(1)) is None
        assert 0.25 < time.monotonic() - started < 1.0
        started = time.monotonic()
        assert store.voice(vid(2)) is None and store.names() is None  # left alone meanwhile: no wait
        assert time.monotonic() - started < 0.05
        assert "did not answer within 0.3 s" in caplog.text
        time.sleep(1.1)
        assert equal(store.voice(vid(2)), latents(2))  # tried again after RETRY_S
    finally:
        with open(fifo, "wb"):  # lets the hung thread go
            pass


def test_a_slow_listing_lists_nothing_from_the_store_but_leaves_lookups_alone(tmp_path, monkeypatch):
    store = open_store(tmp_path, timeout_s=0.2)
    store.save_name("Alice", vid(1), latents(1))
    store.save_voice(vid(2), latents(2))
    settle(store)
    name_in = store._name_in
    monkeypatch.setattr(store, "_name_in", lambda path: time.sleep(0.5) or name_in(path))
    assert store.names() is None  # over the timeout
    assert equal(store.voice(vid(2)), latents(2))  # the store is not taken for down
    time.sleep(0.5)
    assert store.names() == ["Alice"]  # the first listing finished in the background
