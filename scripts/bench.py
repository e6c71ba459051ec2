#!/usr/bin/env python
"""Benchmark the streamers in process and over HTTP, on random-weight checkpoints of the real size.

One invocation runs a fixed schedule (`schedule()`) with one seed and XTTS's default settings:

- in process, through `Model.predict` (the code the server runs, minus HTTP): `streamer: "upstream"`
  (`Xtts.inference_stream` as shipped) and `streamer: "windowed"` (the batched engine and model/vocoder.py, the default),
  at chunk sizes 10, 20 and 40 on a short (40 GPT tokens) and a medium (120) utterance, and at chunk
  20 on a long one (602, the published cap);
- over HTTP, through scripts/serve.py (the real Truss runtime), for the short text at chunk 20, each
  run next to its in-process twin so that machine noise hits both alike;
- the windowed streamer's `first_chunk_size` 2, 4, 6, 8 at chunk 20 (time to first and second chunk).

Every run records when each chunk arrived, its length in samples, the total time and the peak resident
memory of the process that synthesized it during that run (VmHWM, reset through /proc/PID/clear_refs
just before). Raw runs go to OUT/benchmarks.json; scripts/bench_report.py turns them into
OUT/benchmarks.md and OUT/benchmarks.png (and can rerun on the JSON alone).

    make bench                                 # the full run, into docs/ (30 to 65 min on 2 cores)
    .venv/bin/python scripts/bench.py --quick  # a 2-minute smoke test on tiny checkpoints, into /tmp/xtts-bench-quick
    .venv/bin/python scripts/bench.py --only short --chunk 20 --runs 1 --out /tmp/b   # one cell, real size

Progress, with the time and the elapsed time, goes to standard error, one line a run.

Random weights: every utterance is exactly the checkpoint's cap of GPT tokens (see make_checkpoint.py).
The medium length and the first-chunk sweep lower that cap in process (`gpt.max_gen_mel_tokens`); the
server cannot be told to stop early, so the short text has its own checkpoint capped at its length.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

# Before torch loads libgomp, which reads it once. With its default (spin about 3 ms before sleeping,
# but barely when it manages more threads than there are cores), OpenMP threads of the server and of
# this process spun differently: the server's helper thread spun while its main one ran Python, and on
# a 2-core machine with any other load its runs took 3-5 times as long as the same runs here (tiny
# checkpoint, 2 threads). Passive waiting in both makes the two paths comparable; override from outside.
# So this process takes the server's whole environment from config.yaml (oneDNN's cache size too).
SERVER_ENV = yaml.safe_load((Path(__file__).parent.parent / "config.yaml").read_text())["environment_variables"]
for key, value in SERVER_ENV.items():
    os.environ.setdefault(key, str(value))

import requests
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import bench_report
from local_server import free_port, stop, wait_healthy
from make_checkpoint import build_checkpoint
from truss.base.truss_config import TrussConfig

from model.checkpoint import pick_device

SEED = 0
CHUNK_SIZES = (10, 20, 40)
SWEEP_CHUNK_SIZE = 20
SWEEP_FIRST_CHUNKS = (2, 4, 6, 8)
HTTP_CHUNK_SIZE = 20
SAMPLE_RATE = 24000

# One sentence each (no text splitting), about as long as XTTS would speak in the full plan's token
# counts at some 15 characters a second. Random weights ignore the text's length (every utterance is
# its cap of GPT tokens), but it sets the GPT's prompt. The long one is over the 250 characters after
# which XTTS warns that English audio may be cut; in these checkpoints one character is one text token,
# and XTTS takes fewer than 400 per sentence.
TEXTS = {
    "short": "Streaming speech starts now.",
    "medium": "The first chunk should reach the listener while the model is still working on the rest.",
    "long": (
        "A streaming endpoint earns its keep on long answers, where waiting for the whole utterance would "
        "leave the listener in silence for many seconds, so this sentence runs on for about half a minute "
        "of speech, long enough that a decoder whose cost grows with what it has already produced falls "
        "behind, while one whose cost per chunk stays flat keeps the same pace from the first word to the last."
    ),
}


@dataclass(frozen=True)
class Plan:
    """The sizes and repetitions of one benchmark: what `--quick` changes."""

    size: str  # checkpoint size, make_checkpoint.py --size
    tokens: dict[str, int]  # GPT tokens per utterance, by text; "long" is the main checkpoint's cap
    runs: dict[str, int]  # repetitions, by group of cells (see schedule())
    out: Path


FULL = Plan(
    size="real",
    tokens={"short": 40, "medium": 120, "long": 602},
    runs={"short": 3, "sweep": 2, "medium": 2, "long windowed": 2, "long upstream": 1},
    out=ROOT / "docs",
)
QUICK = Plan(
    size="tiny",
    tokens={"short": 20, "medium": 40, "long": 60},
    runs={"short": 2, "sweep": 1, "medium": 1, "long windowed": 1, "long upstream": 1},
    out=Path(tempfile.gettempdir()) / "xtts-bench-quick",
)


@dataclass(frozen=True)
class Step:
    """One run: a request, the path it takes, and the checkpoint it runs on."""

    text: str  # key of TEXTS, or "sweep"
    tokens: int
    path: str  # "in-process" or "HTTP"
    streamer: str  # "upstream" or "windowed"
    chunk_size: int
    first_chunk_size: int | None  # sent only when not None; the windowed default otherwise
    rep: int
    checkpoint: str

    def body(self) -> dict:
        text = TEXTS["short" if self.text == "sweep" else self.text]
        body = {"text": text, "chunk_size": self.chunk_size, "streamer": self.streamer, "seed": SEED}
        if self.first_chunk_size is not None:
            body["first_chunk_size"] = self.first_chunk_size
        return body


def checkpoint_dirs(plan: Plan) -> dict[str, Path]:
    """The main checkpoint (capped at the long length) and the short text's own, for the server."""
    base = ROOT / "checkpoints" / plan.size
    return {"main": base, "short": base.with_name(f"{plan.size}-{plan.tokens['short']}")}


def schedule(plan: Plan) -> list[Step]:
    """Every run, in order. Runs to be compared sit next to each other and swap order every repetition."""
    dirs = {name: str(path.relative_to(ROOT)) for name, path in checkpoint_dirs(plan).items()}
    tokens, runs = plan.tokens, plan.runs
    steps: list[Step] = []

    def add(text, path, streamer, chunk, rep, first=None, n=None, checkpoint="main"):
        steps.append(Step(text, n or tokens[text], path, streamer, chunk, first, rep, dirs[checkpoint]))

    def streamers(rep):
        return ("upstream", "windowed") if rep % 2 == 0 else ("windowed", "upstream")

    # The short text, on its own checkpoint, in process and (chunk 20) over HTTP, side by side.
    for rep in range(runs["short"]):
        for chunk in CHUNK_SIZES:
            for streamer in streamers(rep):
                paths = ["in-process", "HTTP"] if chunk == HTTP_CHUNK_SIZE else ["in-process"]
                for path in paths if rep % 2 == 0 else paths[::-1]:
                    add("short", path, streamer, chunk, rep, checkpoint="short")
    # First-chunk sweep: generation capped where the second chunk ends, so each run stops right after it.
    cap = max(SWEEP_FIRST_CHUNKS) + SWEEP_CHUNK_SIZE
    for rep in range(runs["sweep"]):
        add("sweep", "in-process", "upstream", SWEEP_CHUNK_SIZE, rep, n=cap)
        for first in SWEEP_FIRST_CHUNKS:
            add("sweep", "in-process", "windowed", SWEEP_CHUNK_SIZE, rep, first=first, n=cap)
    for rep in range(runs["medium"]):
        for chunk in CHUNK_SIZES:
            for streamer in streamers(rep):
                add("medium", "in-process", streamer, chunk, rep)
    # The long utterance at chunk 20 only: upstream alone takes about 12 minutes on 2 cores.
    for rep in range(max(runs["long windowed"], runs["long upstream"])):
        for streamer in ("windowed", "upstream"):
            if rep < runs[f"long {streamer}"]:
                add("long", "in-process", streamer, 20, rep)
    return steps


# --- measuring --------------------------------------------------------------------------------------


def write_section(md: Path, heading: str, text: str) -> None:
    """Replace the page's section under `heading` (up to the next `## `), or append it: each benchmark
    script owns one section of docs/benchmarks.md (bench_report.py keeps them when it rewrites the rest)."""
    page = md.read_text() if md.exists() else ""
    start = page.find("\n" + heading + "\n")
    if start == -1:
        md.write_text(page.rstrip("\n") + "\n\n" + text)
        return
    end = page.find("\n## ", start + 1)
    md.write_text(page[: start + 1] + text + ("" if end == -1 else page[end:]))


def commit() -> str:
    """The short hash of the code measured."""
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def memory_mb(pid: int | str = "self") -> tuple[float, float]:
    """(resident now, peak resident since the last reset), in MB, of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss, hwm = (int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) for key in ("VmRSS", "VmHWM"))
    return rss / 1024, hwm / 1024


def reset_peak(pid: int | str = "self") -> None:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def trim_heap() -> None:
    """Give freed heap memory back to the system, so that a run's peak RSS is its own working set and
    not what earlier, larger runs left cached in malloc's free lists."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def in_process(model, body: dict) -> tuple[list[float], list[int], float]:
    """Arrival times (s) and sizes (samples) of the chunks, and the total time, through Model.predict."""
    from model.schema import SynthesisRequest

    started = time.perf_counter()
    response = model.predict(SynthesisRequest(**body))

    async def drain():
        return [(time.perf_counter() - started, len(chunk) // 2) async for chunk in response.body_iterator]

    chunks = asyncio.run(drain())
    return [t for t, _ in chunks], [n for _, n in chunks], time.perf_counter() - started


def over_http(url: str, body: dict) -> tuple[list[float], list[int], float]:
    """The same over HTTP: a chunk is one piece of the chunked body, timed when it is read."""
    started = time.perf_counter()
    arrivals, sizes = [], []
    with requests.post(url, json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=None):
            arrivals.append(time.perf_counter() - started)
            sizes.append(len(chunk) // 2)
    return arrivals, sizes, time.perf_counter() - started


@contextmanager
def capped(xtts, tokens: int):
    """Generate exactly `tokens` GPT tokens (random weights never stop early); get_generator reads this per call."""
    saved = xtts.gpt.max_gen_mel_tokens
    if tokens > saved:
        raise ValueError(f"{tokens} tokens asked of a checkpoint capped at {saved}")
    xtts.gpt.max_gen_mel_tokens = tokens
    try:
        yield
    finally:
        xtts.gpt.max_gen_mel_tokens = saved


class Log:
    def __init__(self):
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        stamp = f"[{time.strftime('%H:%M:%S')} +{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}]"
        print(stamp, message, file=sys.stderr, flush=True)


# --- running ----------------------------------------------------------------------------------------


def ensure_checkpoint(directory: Path, size: str, tokens: int, log: Log) -> None:
    if not (directory / "model.pth").exists():
        log(f"building {directory.relative_to(ROOT)} ({size}, {tokens} tokens per utterance) ...")
        build_checkpoint(directory, size=size, max_tokens=tokens)


def load_model(checkpoint: Path, metadata: dict | None = None):
    """The HTTP Model, loaded in process; `metadata` overrides config.yaml's model_metadata."""
    from model.model import Model

    os.environ["XTTS_CHECKPOINT_DIR"] = str(checkpoint)
    config = TrussConfig.from_yaml(ROOT / "config.yaml").to_dict(verbose=True)
    config["model_metadata"].update(metadata or {})
    model = Model(config=config, data_dir=ROOT / "data")
    model.load()
    return model


def start_server(checkpoint: Path, threads: int, log_file: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "XTTS_CHECKPOINT_DIR": str(checkpoint),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    with open(log_file, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "scripts/serve.py", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, f"http://127.0.0.1:{port}/v1/models/model"


def measure(step: Step, model, server: subprocess.Popen | None, url: str | None) -> dict:
    """One run: its chunks' arrival times and sizes, total time, and the synthesizing process's peak RSS."""
    xtts = model._service.xtts
    if step.path == "HTTP":
        if step.tokens != xtts.gpt.max_gen_mel_tokens:
            raise ValueError(f"an HTTP run needs a checkpoint capped at its length: {step}")
        pid = server.pid
    else:
        pid = "self"
        trim_heap()  # not the server's: its heap stays as its earlier requests left it, as in production
    reset_peak(pid)
    rss_before = memory_mb(pid)[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    if step.path == "HTTP":
        arrivals, samples, total = over_http(f"{url}:predict", step.body())
    else:
        with capped(xtts, step.tokens):
            arrivals, samples, total = in_process(model, step.body())
    return {
        **asdict(step),
        "started": started,
        "arrivals": arrivals,
        "samples": samples,
        "total": total,
        "rss_before_mb": rss_before,
        "peak_rss_mb": memory_mb(pid)[1],
    }


def run_steps(steps: list[Step], threads: int, log: Log, runs: list, processes: list, save) -> None:
    """Run every step, checkpoint by checkpoint: append each run and each loaded process, save after each run."""
    for checkpoint, group in itertools.groupby(steps, key=lambda s: s.checkpoint):
        group = list(group)
        directory = ROOT / checkpoint
        server = url = None
        if any(step.path == "HTTP" for step in group):
            server_log = Path(tempfile.mkstemp(prefix="xtts-bench-server-", suffix=".log")[1])
            log(f"starting the server on {checkpoint} (log: {server_log}) ...")
            server, url = start_server(directory, threads, server_log)
        try:
            log(f"loading {checkpoint} in process ...")
            model = load_model(directory)
            processes.append({"process": "in-process", "checkpoint": checkpoint, "rss_mb": memory_mb()[0]})
            if server:
                wait_healthy(url, server, server_log, timeout=900)
                processes.append({"process": "server", "checkpoint": checkpoint, "rss_mb": memory_mb(server.pid)[0]})
            log(f"loaded {checkpoint}: {model._service.xtts.gpt.max_gen_mel_tokens} tokens per utterance")
            for step in group:
                runs.append(measure(step, model, server, url))
                save()
                log(f"{len(runs)}/{len(steps)} {bench_report.describe(runs[-1])}")
        finally:
            if server:
                stop(server)
        del model
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny checkpoints, one or two runs a cell: a smoke test")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where to write benchmarks.{{json,md,png}} (default: docs/, or {QUICK.out} with --quick)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, in process and server")
    parser.add_argument("--only", choices=["short", "sweep", "medium", "long"], help="run only this text's steps")
    parser.add_argument("--chunk", type=int, choices=CHUNK_SIZES, help="run only the steps at this chunk size")
    parser.add_argument("--runs", type=int, help="repetitions of every group of cells (overrides the plan's)")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    if args.runs:
        plan = Plan(plan.size, plan.tokens, {group: args.runs for group in plan.runs}, plan.out)
    out = args.out or plan.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    log = Log()

    steps = [s for s in schedule(plan) if args.only in (None, s.text) and args.chunk in (None, s.chunk_size)]
    used = {step.checkpoint for step in steps}
    for name, directory in checkpoint_dirs(plan).items():
        if str(directory.relative_to(ROOT)) in used:
            ensure_checkpoint(directory, plan.size, plan.tokens["short" if name == "short" else "long"], log)
    log(f"{len(steps)} runs, {args.threads} torch threads, writing to {out}")

    meta = bench_report.machine() | {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": os.getloadavg()[0],
        "quick": args.quick,
        "only": args.only,
        "chunk": args.chunk,
        "seed": SEED,
        "texts": TEXTS,
        "plan_runs": plan.runs,
        "threads": {
            "in-process": torch.get_num_threads(),
            "server (OMP_NUM_THREADS)": args.threads,
            "OMP_WAIT_POLICY (both)": os.environ["OMP_WAIT_POLICY"],
            "ONEDNN_PRIMITIVE_CACHE_CAPACITY (both)": os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"],
        },
        "device": str(pick_device()),
        "processes": [],
    }
    runs: list[dict] = []
    json_path = out / "benchmarks.json"

    def save():  # after every run: a run cut short keeps what it measured (bench_report.py reads it)
        meta.update(duration_s=time.monotonic() - log.started, load_after=os.getloadavg()[0])
        json_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))

    run_steps(steps, args.threads, log, runs, meta["processes"], save)
    save()
    bench_report.write(json_path)
    log(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
