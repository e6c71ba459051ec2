#!/usr/bin/env python
"""One-shot check of the engine on a machine with one GPU, PyTorch and no network (`make gpu-check`).

What it does, in about 8 minutes of GPU time at full size:

1. builds the real-size random-weight checkpoint there (scripts/make_checkpoint.py; tiny with --quick);
2. equivalence and crowd, in float32 and float16: seeded requests alone and then together in one engine
   (joining at different steps): how many GPT tokens differ, and whether the audio is bit-identical;
   and float16's tokens against float32's for the same seeds (free-running: where each first differs);
3. scaling, in the deployed dtype (auto: float16 on CUDA), with CUDA graphs off and on: N = 1, 2, 4,
   8, 16, 32 requests at once (chunk 20): time to first chunk, the decode step's median time, and
   whether every stream stays ahead of real time (each chunk arrives before the audio before it has
   played out from the first chunk's arrival);
4. writes OUT/gpu-check.json and OUT/gpu-check.md (a table per dtype and graphs setting).

Run on the GPU machine (no network): carry the wheels that its image lacks (scripts/gpu_wheels.sh
downloads them here into .whl/), then

    scripts/gpu_check.sh                        # = make gpu-check: installs .whl/*.whl, runs this
    python scripts/gpu_check.py --device cpu --quick   # the rehearsal on CPU: tiny checkpoint, small N

On CPU there is no graph capture: "graphs on" runs the same static-buffer step eagerly, and the half
dtype is bfloat16 (float16 has no fast CPU kernels). Random weights: timings only, the audio is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import torch  # noqa: E402
import yaml  # noqa: E402


def stub_missing(name: str, why: str) -> None:
    """A module this check imports through the server's code but never calls, absent from the GPU
    machine's image (and too big, or tied to another torch build, to carry): an empty stand-in."""
    import importlib.util
    import types

    try:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            __import__(name)
            return
    except Exception:  # noqa: BLE001 -- present but broken (a wheel for another torch): stubbed too
        pass
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        sys.modules[".".join(parts[:depth])] = types.ModuleType(".".join(parts[:depth]))
    print(f"gpu_check: {name} stubbed ({why})", file=sys.stderr)


# Reference clips decode through torchcodec (model/clips.py): cloning is not checked here.
stub_missing("torchcodec.decoders", "reference clips only")
sys.modules["torchcodec.decoders"].__dict__.setdefault("AudioDecoder", None)

from make_checkpoint import build_checkpoint  # noqa: E402

from model import text  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.schema import SynthesisRequest  # noqa: E402
from model.service import Service  # noqa: E402

TEXT = "Every caller on this replica hears their own voice at once, and nobody waits for anybody else."
SECONDS_PER_TOKEN = 1024 / 22050  # one GPT token is 1024 samples at 22.05 kHz: 46.4 ms of audio


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load(checkpoint: Path, dtype: str, max_streams: int, cuda_graphs: bool) -> Service:
    os.environ["XTTS_CHECKPOINT_DIR"] = str(checkpoint)
    # The text tools' warm-up loads spaCy and the Chinese and Japanese tools, which the machine lacks
    # and which never touch the GPU; this check speaks short English sentences without splitting.
    text.warm_up = lambda *args: None
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["model_metadata"].update(
        dtype=dtype, cuda_graphs=cuda_graphs, max_streams=max_streams, max_queued_requests=4 * max_streams, voice_store="off",
    )
    return Service.load(config, ROOT / "data")


def jobs(service: Service, seeds: list[int], tokens: int, chunk: int = 20) -> list:
    voice = service.voices.library.get(None)
    made = []
    for seed in seeds:
        request = SynthesisRequest(text=TEXT, seed=seed, chunk_size=chunk, max_new_tokens=tokens)
        job = service.job(request, voice, service.check(request))
        job.arrivals = []
        deliver = job.deliver

        def timed(chunk, job=job, deliver=deliver):
            deliver(chunk)
            if chunk.numel():
                job.arrivals.append((time.perf_counter(), chunk.numel() / 24000))
        job.deliver = timed
        made.append(job)
    return made


def drive(engine: Engine, crowd: list, join_at: list[int]) -> float:
    """Run the jobs to their ends on this thread, each joining at its step; the wall time."""
    started, step = time.perf_counter(), 0
    for job in crowd:
        job.started = started
    while step <= max(join_at) or engine.streams:
        for job, at in zip(crowd, join_at, strict=True):
            if at == step:
                engine.join(job)
        engine.step()
        for job, error in engine.take_left():
            job.complete(error)
        step += 1
    for job in crowd:  # the encoding worker's share (on CUDA): the audio is all in the buffers
        job.wait_delivered()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def audio_of(job) -> bytes:
    data = b""
    while (piece := job.output.take()) is not None:
        data += piece
    return data


def equivalence(service: Service, tokens: int, streams: int) -> dict:
    """Seeded requests alone, then together (joining at steps 0, 0, 3, 7, ...)."""
    seeds = list(range(100, 100 + streams))
    alone = []
    for seed in seeds:
        (job,) = jobs(service, [seed], tokens)
        drive(Engine(service.xtts, 1), [job], [0])
        alone.append(job)
    crowd = jobs(service, seeds, tokens)
    drive(Engine(service.xtts, streams), crowd, [0, 0] + [4 * k - 1 for k in range(1, streams - 1)])
    flat = lambda job: [t for sentence in job.tokens for t in sentence]  # noqa: E731
    pairs = [(a, b) for x, y in zip(alone, crowd, strict=True) for a, b in zip(flat(x), flat(y), strict=False)]
    return {
        "streams": streams, "tokens": len(pairs), "tokens_different": sum(a != b for a, b in pairs),
        "audio_identical": sum(audio_of(x) == audio_of(y) for x, y in zip(alone, crowd, strict=True)),
        "ended": [job.ended for job in crowd], "alone_tokens": [flat(job) for job in alone],
    }


def scaling(service: Service, counts: list[int], tokens: int, graphs: bool) -> dict:
    out = {}
    capture = graphs and service.xtts.device.type == "cuda"
    engine = Engine(service.xtts, max(counts), static=graphs, cuda_graphs=capture)
    engine.warm_up()  # every bucket's shapes (and graphs) before the first request, as the server does
    for n in counts:
        crowd = jobs(service, list(range(n)), tokens)
        steps_before, gpt_before = engine.timings.steps, engine.timings.gpt
        wall = drive(engine, crowd, [0] * n)
        firsts, lags = [], []
        for job in crowd:
            first = job.arrivals[0][0]
            firsts.append(first - job.started)
            played = 0.0
            for arrival, seconds in job.arrivals:  # ahead of real time: each chunk before its audio is due
                lags.append(arrival - first - played)
                played += seconds
        engine.clock.settle()
        steps = engine.timings.steps - steps_before
        out[n] = {
            "first_chunk_median_s": statistics.median(firsts), "first_chunk_worst_s": max(firsts),
            "worst_lag_s": max(lags), "realtime": max(lags) <= 0, "wall_s": wall,
            "gpt_ms_per_step": 1000 * (engine.timings.gpt - gpt_before) / max(steps, 1),
            "ended": sorted({job.ended for job in crowd}), "kv_cache_mb": engine.table.cache_bytes / 2**20,
        }
        log(f"  N={n}: first chunk {out[n]['first_chunk_median_s']:.3f}/{out[n]['first_chunk_worst_s']:.3f} s, "
            f"worst lag {out[n]['worst_lag_s']:.3f} s, {out[n]['gpt_ms_per_step']:.1f} ms/step")
    return out


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [f"# GPU check: {meta['device_name']}", "",
             f"{meta['started']}, torch {meta['torch']}, {meta['checkpoint']}, {meta['tokens']} tokens a request, chunk 20; "
             f"{meta['duration_s']:.0f} s in all. Random weights: timings only.", "", "## Equivalence and crowd", "",
             "| dtype | streams | tokens compared | tokens different (alone vs crowd) | audio bit-identical | against float32: first differing token per stream |",
             "|---|---|---|---|---|---|"]
    for dtype, found in data["equivalence"].items():
        lines.append(f"| {dtype} | {found['streams']} | {found['tokens']} | {found['tokens_different']} | "
                     f"{found['audio_identical']} of {found['streams']} | {found.get('first_divergence_vs_float32', '-')} |")
    for name, rows in data["scaling"].items():
        lines += ["", f"## Scaling, {name}", "",
                  "| N | first chunk, median / worst | decode step (GPT, sampling) | worst lag behind real time | every stream real time |",
                  "|---|---|---|---|---|"]
        for n, row in rows.items():
            lines.append(f"| {n} | {row['first_chunk_median_s'] * 1000:.0f} / {row['first_chunk_worst_s'] * 1000:.0f} ms | "
                         f"{row['gpt_ms_per_step']:.1f} ms | {row['worst_lag_s'] * 1000:.0f} ms | {'yes' if row['realtime'] else 'no'} |")
        fast = [n for n, row in rows.items() if row["realtime"]]
        lines += ["", f"Largest N with every stream ahead of real time: {max(fast) if fast else 'none'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny checkpoint, N up to 4, short requests (the CPU rehearsal)")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-check-out")
    parser.add_argument("--checkpoint", type=Path, help="default: built in /tmp/xtts-gpu-check/<size>")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # model/checkpoint.py picks CUDA whenever it is there
    elif not torch.cuda.is_available():
        parser.error("no CUDA device; rehearse with --device cpu --quick")
    started = time.monotonic()
    size = "tiny" if args.quick else "real"
    tokens = 13 if args.quick else 60
    counts = [1, 2, 4] if args.quick else [1, 2, 4, 8, 16, 32]
    checkpoint = args.checkpoint or Path("/tmp/xtts-gpu-check") / size
    if not (checkpoint / "model.pth").exists():
        log(f"building the {size} checkpoint in {checkpoint} ...")
        build_checkpoint(checkpoint, size=size, max_tokens=602 if size == "real" else 40)
    half = "float16" if args.device == "cuda" else "bfloat16"
    data = {"meta": {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__, "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "checkpoint": f"{size} ({checkpoint})", "tokens": tokens, "quick": args.quick,
    }, "equivalence": {}, "scaling": {}}
    reference = None
    for dtype in ("float32", half):
        log(f"equivalence and crowd in {dtype} ...")
        service = load(checkpoint, dtype, 8, False)
        found = equivalence(service, tokens, 4)
        if reference is None:
            reference = found["alone_tokens"]
        else:
            found["first_divergence_vs_float32"] = [
                next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), None)
                for x, y in zip(reference, found["alone_tokens"], strict=True)
            ]
        data["equivalence"][dtype] = found
        log(f"  {found['tokens_different']} of {found['tokens']} tokens differ; audio identical in {found['audio_identical']}")
        if dtype == half:
            for graphs in (False, True):
                name = f"{dtype}, CUDA graphs {'on' if graphs else 'off'}"
                if args.device == "cpu" and graphs:
                    name = f"{dtype}, static-buffer step without capture (CPU)"
                log(f"scaling: {name} ...")
                data["scaling"][name] = scaling(service, counts, tokens, graphs)
        service.loop.close()
        del service
    data["meta"]["duration_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(data, indent=1, default=str))
    (args.out / "gpu-check.md").write_text(markdown(data))
    log(f"wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'} in {data['meta']['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
