#!/usr/bin/env python
"""Each crafted request of issue 13 against a local server: status, time to the answer's headers,
the server's resident-memory growth while it ran, and the health route's slowest answer meanwhile.

    .venv/bin/python scripts/bench_crafted.py [--root DIR] [--only NAME ...]

--root serves another checkout (e.g. an export of main, to measure before a change) with this
script's cases. Memory: the server's VmHWM after the request minus its VmRSS before, with VmHWM reset
through /proc/PID/clear_refs when the request starts (as scripts/bench.py does).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

import crafted  # noqa: E402
from local_server import free_port, stop, wait_healthy  # noqa: E402
from make_checkpoint import build_checkpoint  # noqa: E402

from conftest import TOKENS  # noqa: E402


def vm_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


class Watch:
    """The server's peak memory growth (VmHWM reset through clear_refs at the start) and the health
    route's slowest answer, while a request runs."""

    def __init__(self, pid: int, health_url: str):
        self.pid, self.health_url = pid, health_url
        self.health_max, self.growth = 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._health)

    def _health(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                requests.get(self.health_url, timeout=120)
            except requests.RequestException:
                pass
            self.health_max = max(self.health_max, time.perf_counter() - started)
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self._thread.start()
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.base = vm_mb(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.growth = vm_mb(self.pid, "VmHWM") - self.base
        self._stop.set()
        self._thread.join()


def cases() -> dict[str, tuple[dict, dict]]:
    """name: (JSON body, extra requests.post keywords)."""
    clips = crafted.clip_cases()
    text_cases = {
        "text-1000-digits": {"text": "7" * 1000},
        "text-4000-digits": {"text": "7" * 4000},
        "text-4000-dots": {"text": "." * 3999 + "a"},
        "text-numbered-sentences-split": {"text": crafted.NUMBERED_SENTENCES, "enable_text_splitting": True},
        "text-hindi-digit": {"text": "मेरे पास 5 सेब हैं।", "language": "hi"},
        "text-czech-ordinal": {"text": "Přijdu 5. května.", "language": "cs"},
        "speaker-100k-chars": {"text": "Hello.", "speaker": "x" * 100_000},
    }
    out = {name: (body, {}) for name, body in text_cases.items()}
    # Accepted, it would generate 30 sentences of audio: the case is its check, so the client leaves.
    out["text-numbered-sentences-split"] = (text_cases["text-numbered-sentences-split"], {"read_body": False})
    for name, data in clips.items():
        out[f"clip-{name}"] = ({"text": "Hello there.", "speaker_wav": crafted.b64(data)}, {})
    out["octet-stream-body"] = ({"text": "Hello."}, {"headers": {"Content-Type": "application/octet-stream"}})
    return out


def measure(base: str, pid: int, body: dict, extra: dict) -> dict:
    import json

    with Watch(pid, f"{base}/v1/models/model") as watch:
        started = time.perf_counter()
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **extra.get("headers", {})}
        with requests.post(f"{base}/v1/models/model:predict", data=data, headers=headers, stream=True, timeout=300) as r:
            answered = time.perf_counter() - started
            try:
                content, error = (r.content if extra.get("read_body", True) else r.raw.read(4096)), ""
            except requests.RequestException as exc:  # a 200 whose stream then broke
                content, error = b"", f"stream broken after the 200: {type(exc).__name__}"
        total = time.perf_counter() - started
    if r.status_code != 200:
        error = content[:160].decode(errors="replace")
    return {
        "status": r.status_code, "answered_s": answered, "total_s": total, "rss_growth_mb": watch.growth,
        "health_max_s": watch.health_max, "error": error,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "tiny", size="tiny", max_tokens=TOKENS)
        port, log = free_port(), Path(tmp) / "server.log"
        env = {**os.environ, "XTTS_CHECKPOINT_DIR": str(checkpoint), "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "scripts/serve.py", "--port", str(port)], cwd=args.root, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(f"{base}/v1/models/model", process, log)
            # One ordinary request first, so that one-time allocations do not count against a case.
            requests.post(f"{base}/v1/models/model:predict", json={"text": "Warm up."}, timeout=120).raise_for_status()
            print(f"{'case':34s} {'status':>6s} {'answer s':>9s} {'total s':>8s} {'+RSS MB':>8s} {'health s':>9s}  error")
            for name, (body, extra) in cases().items():
                if args.only and name not in args.only:
                    continue
                time.sleep(1.0)
                m = measure(base, process.pid, body, extra)
                print(
                    f"{name:34s} {m['status']:6d} {m['answered_s']:9.2f} {m['total_s']:8.2f} {m['rss_growth_mb']:8.0f} "
                    f"{m['health_max_s']:9.2f}  {m['error'][:110]!r}", flush=True,
                )
        finally:
            stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
