#!/usr/bin/env python
"""What the voice store (model/store.py) costs: a voice id found in the store instead of in this
replica's memory, per lookup and per request (time to first chunk), in one run with the two
interleaved; and the memory and disk one voice takes.

    python scripts/bench_store.py --checkpoint checkpoints/tiny --store /tmp/voice-store
    python scripts/bench_store.py --checkpoint checkpoints/real --store /tmp/voice-store --runs 15

The store is a local folder here (the disk of --store). On Baseten it is b10cache, a network volume,
whose read latency this does not measure: add it to the store figure.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import torch  # noqa: E402
from bench import load_model  # noqa: E402
from bench_voices import first_chunk_seconds  # noqa: E402

from model.store import SUFFIX  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def wait_for(path_glob, store: Path) -> Path:
    for _ in range(500):
        found = list(store.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.01)
    raise RuntimeError(f"nothing matches {path_glob} under {store}")


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--store", type=Path, help="store folder (default: a new temporary one, removed after)")
    parser.add_argument("--lookups", type=int, default=300, help="interleaved lookups of each kind")
    parser.add_argument("--runs", type=int, default=15, help="interleaved requests of each kind")
    parser.add_argument("--voices", type=int, default=300, help="voices held at once for the memory figure")
    args = parser.parse_args(argv)

    folder = args.store or Path(tempfile.mkdtemp(prefix="voice-store-"))
    model = load_model(args.checkpoint, {"voice_store": str(folder), "voice_cache_size": args.voices + 10,
                                         "voice_store_max_voices": 2 * args.voices + 10})
    voices = model._service.voices
    cache, store = voices.cache, voices.store
    speech = subprocess.run(["espeak-ng", "--stdout", "A reference voice for the store benchmark, about six seconds."],
                            capture_output=True, check=True).stdout
    voice_id = cache.clone([speech]).voice_id
    path = wait_for(f"*/voices/{voice_id}{SUFFIX}", folder)

    # Per lookup: VoiceCache.find with the id in memory, and with it only in the store.
    memory, stored = [], []
    for _ in range(args.lookups):
        started = time.perf_counter()
        assert not cache.find(voice_id).from_store
        memory.append(time.perf_counter() - started)
        cache._voices.pop(voice_id)
        started = time.perf_counter()
        assert cache.find(voice_id).from_store
        stored.append(time.perf_counter() - started)
    added = [s - m for s, m in zip(stored, memory)]
    # Of which the read and its checks, on the calling thread: the rest is the hop to a thread of its own.
    direct = []
    for _ in range(args.lookups):
        started = time.perf_counter()
        assert store._read(path, {"voice_id": voice_id}) is not None
        direct.append(time.perf_counter() - started)

    # Per request: time to first chunk, in process, the same two ways.
    first_memory, first_store = [], []
    clip = base64.b64encode(speech).decode()
    first_chunk_seconds(model, speaker_wav=clip)  # warm
    for i in range(args.runs):
        first_memory.append(first_chunk_seconds(model, voice_id=voice_id))
        cache._voices.pop(voice_id)
        first_store.append(first_chunk_seconds(model, voice_id=voice_id))
        print(f"run {i + 1}/{args.runs}: memory {first_memory[-1] * 1000:.0f} ms, store {first_store[-1] * 1000:.0f} ms",
              file=sys.stderr)
    ratios = [s / m for s, m in zip(first_store, first_memory)]

    # Memory: resident growth while holding `voices` voices read from the store; disk: their files.
    shapes = store.shapes
    ids = [f"{n:032x}" for n in range(1, args.voices + 1)]
    for n, vid in enumerate(ids):
        generator = torch.Generator().manual_seed(n)
        store.save_voice(vid, {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()})
    store._queue.join()
    cache._voices.clear()
    before = rss()
    for vid in ids:
        assert cache.find(vid).from_store
    held = rss() - before
    stat = path.stat()
    tensor_bytes = sum(t.nbytes for t in cache.get(ids[0]).tensors().values())
    files = [p for p in path.parent.iterdir() if p.name.endswith(SUFFIX)]
    disk = sum(p.stat().st_blocks * 512 for p in files)

    print(f"\ncheckpoint {args.checkpoint}: latents {dict(shapes)}, fp32; store on {folder} "
          f"({subprocess.run(['df', '--output=fstype', str(folder)], capture_output=True, text=True).stdout.split()[-1]})")
    print(f"lookup, {args.lookups} interleaved: memory {ms(memory)}, store {ms(stored)}; added per lookup: median {ms(added)}; "
          f"of which reading and checking the file: {ms(direct)} (load average {os.getloadavg()[0]:.1f})")
    print(f"time to first chunk, {args.runs} interleaved: id in memory {ms(first_memory)}, id in the store {ms(first_store)}; "
          f"same-run ratio store/memory median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"memory per voice: {tensor_bytes} bytes of tensors; resident growth holding {args.voices}: {held / args.voices / 1024:.1f} KiB each")
    print(f"disk per voice: {stat.st_size} bytes ({stat.st_blocks * 512} allocated); {len(files)} files take {disk / 2**20:.1f} MiB")
    if args.store is None:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
