#!/usr/bin/env python
"""Bursts over HTTP: N requests at once against the local server (config.yaml as shipped), on a random-weight
checkpoint. For each burst: every request's time to headers and to first audio, and how long an invalid
request and a voice listing sent into the burst wait for their answer. Prints a markdown table.

    .venv/bin/python scripts/bench_burst.py                  # tiny checkpoint, bursts of 8 and 16
    .venv/bin/python scripts/bench_burst.py --sizes 4 8 16 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from local_server import free_port, stop, wait_healthy
from make_checkpoint import build_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def timed(url: str, body: dict) -> dict:
    started = time.perf_counter()
    with requests.post(url, json=body, stream=True, timeout=600) as response:
        headers = time.perf_counter() - started
        first = None
        for _ in response.iter_content(chunk_size=None):
            first = first or time.perf_counter() - started
        return {"status": response.status_code, "headers": headers, "first": first, "total": time.perf_counter() - started}


def burst(url: str, n: int, text: str) -> tuple[list[dict], list[float]]:
    """n requests released together; 1 s in, an unknown speaker and a listing, each timed."""
    gate = threading.Barrier(n + 1)

    def one(i: int) -> dict:
        gate.wait()
        return timed(url, {"text": text, "seed": i})

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        gate.wait()
        time.sleep(1.0)
        checks = []
        for body in ({"text": "hi", "speaker": "Nobody"}, {"list": "voices"}):
            started = time.perf_counter()
            requests.post(url, json=body, timeout=60)
            checks.append(time.perf_counter() - started)
        return [f.result() for f in futures], checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--text", default="A caller in a burst of requests, speaking one sentence.")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "tiny", size="tiny", max_tokens=40)
        port, log = free_port(), Path(tmp) / "server.log"
        env = {**os.environ, "XTTS_CHECKPOINT_DIR": str(checkpoint), "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as out:
            server = subprocess.Popen([sys.executable, "scripts/serve.py", "--port", str(port)], cwd=ROOT, env=env,
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(f"http://127.0.0.1:{port}/v1/models/model", server, log)
            url = f"http://127.0.0.1:{port}/v1/models/model:predict"
            solo = [timed(url, {"text": args.text, "seed": 100 + i}) for i in range(3)]
            print(f"solo (median of 3): headers {statistics.median(r['headers'] for r in solo) * 1000:.0f} ms, "
                  f"first audio {statistics.median(r['first'] for r in solo) * 1000:.0f} ms, "
                  f"whole {statistics.median(r['total'] for r in solo):.2f} s\n")
            print("| burst | 200 / 503 | headers: median, max | first audio: median, max | invalid request answered | listing answered |")
            print("|---|---|---|---|---|---|")
            for n in args.sizes:
                results, (invalid, listing) = burst(url, n, args.text)
                ok = [r for r in results if r["status"] == 200]
                heads = [r["headers"] for r in results]
                firsts = [r["first"] for r in ok]
                print(f"| {n} | {len(ok)} / {sum(r['status'] == 503 for r in results)} "
                      f"| {statistics.median(heads) * 1000:.0f} ms, {max(heads) * 1000:.0f} ms "
                      f"| {statistics.median(firsts):.2f} s, {max(firsts):.2f} s "
                      f"| {invalid * 1000:.0f} ms | {listing * 1000:.0f} ms |")
        finally:
            stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
