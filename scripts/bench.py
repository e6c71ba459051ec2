#!/usr/bin/env python
"""Time to first audio in process (Model.predict) and over HTTP (scripts/serve.py), same checkpoint.

Runs alternate between the two paths so that machine noise hits both alike; the table gives medians
and the same-run ratio HTTP / in-process. Timing starts before the request is built and stops at the
first PCM byte (the HTTP headers come earlier and are not counted).

    python scripts/bench.py --checkpoint checkpoints/tiny --runs 7
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from local_server import free_port, stop, wait_healthy  # noqa: E402
from truss.base.truss_config import TrussConfig  # noqa: E402

TEXT = "Streaming speech starts before the sentence is done."


@dataclass
class Run:
    first_chunk: float
    total: float
    audio_seconds: float


def in_process(model, body: dict) -> Run:
    from model.schema import SynthesisRequest

    started = time.perf_counter()
    response = model.predict(SynthesisRequest(**body))

    async def drain() -> tuple[float, int]:
        first, n_bytes = None, 0
        async for chunk in response.body_iterator:
            first = first or time.perf_counter() - started
            n_bytes += len(chunk)
        return first, n_bytes

    first, n_bytes = asyncio.run(drain())
    return Run(first, time.perf_counter() - started, n_bytes / 48000)


def over_http(url: str, body: dict) -> Run:
    started = time.perf_counter()
    first, n_bytes = None, 0
    with requests.post(url, json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=None):
            first = first or time.perf_counter() - started
            n_bytes += len(chunk)
    return Run(first, time.perf_counter() - started, n_bytes / 48000)


def load_model(checkpoint: Path):
    from model.model import Model

    os.environ["XTTS_CHECKPOINT_DIR"] = str(checkpoint)
    model = Model(config=TrussConfig.from_yaml(ROOT / "config.yaml").to_dict(verbose=True), data_dir=ROOT / "data")
    model.load()
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--chunk-size", type=int, default=20)
    args = parser.parse_args(argv)
    body = {"text": TEXT, "chunk_size": args.chunk_size, "seed": 0}

    print(f"loading {args.checkpoint} in process and starting the server ...", file=sys.stderr)
    model = load_model(args.checkpoint)
    port = free_port()
    env = {**os.environ, "XTTS_CHECKPOINT_DIR": str(args.checkpoint)}
    server = subprocess.Popen(
        [sys.executable, "scripts/serve.py", "--port", str(port)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/v1/models/model", server, Path(os.devnull))
        url = f"http://127.0.0.1:{port}/v1/models/model:predict"
        runs: dict[str, list[Run]] = {"in process": [], "HTTP": []}
        for i in range(args.runs):
            runs["in process"].append(in_process(model, body))
            runs["HTTP"].append(over_http(url, body))
            print(
                f"run {i + 1}/{args.runs}: first chunk {runs['in process'][-1].first_chunk * 1000:.0f} ms in process, "
                f"{runs['HTTP'][-1].first_chunk * 1000:.0f} ms over HTTP",
                file=sys.stderr,
            )
    finally:
        stop(server)

    ratios = [h.first_chunk / p.first_chunk for h, p in zip(runs["HTTP"], runs["in process"])]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, checkpoint {args.checkpoint}, chunk_size {args.chunk_size}, "
          f"{args.runs} runs, medians\n")
    print("| path | first chunk (ms) | total (s) | audio (s) | RTF |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        first = statistics.median(r.first_chunk for r in rs) * 1000
        total = statistics.median(r.total for r in rs)
        audio = statistics.median(r.audio_seconds for r in rs)
        print(f"| {name} | {first:.0f} | {total:.2f} | {audio:.2f} | {total / audio:.2f} |")
    print(f"\nfirst chunk, HTTP / in process (same-run pairs): median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}; difference median "
          f"{statistics.median(h.first_chunk - p.first_chunk for h, p in zip(runs['HTTP'], runs['in process'])) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
