#!/usr/bin/env python
"""Many streams at once on one model: the batched engine against one stream at a time, in one run.

In process, through `Model.predict` (the server's code minus HTTP), on the real-size random-weight
checkpoint: N simultaneous requests of `--tokens` GPT tokens at chunk `--chunk`, for N in `--counts`,
and the largest N again on an engine of one stream (`max_streams: 1`: each waits for the ones before
it, as every request did before the batched engine). Scenarios alternate within each of `--runs`
rounds, so machine noise hits them alike. Per stream: time to first chunk, the longest gap between
chunks, and its real-time factor (generation time over audio time); per scenario: aggregate audio
seconds per wall second, the engine's time split between GPT (decode steps and sampling), prefill and
vocoder, and peak resident memory.

    make bench                                            # runs this after scripts/bench.py
    .venv/bin/python scripts/bench_concurrency.py         # this part alone, into docs/
    .venv/bin/python scripts/bench_concurrency.py --quick # tiny checkpoint, one round: a smoke test

Writes OUT/benchmarks-concurrency.json and .png, and the "Concurrency" section of OUT/benchmarks.md.
Progress goes to standard error. Random weights: every utterance is exactly `--tokens` tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import bench  # sets the server's environment (threads, allocator knobs) before torch loads
import torch

from model.engine import Engine
from model.scheduler import Scheduler
from model.schema import SynthesisRequest

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Streaming speech starts playing long before the sentence is done.",
    "Every caller on this replica hears their own voice at once.",
    "Four requests arrive together and all of them start speaking soon.",
    "A batched decoder reads the weights once for every stream in it.",
    "Nobody waits for the whole utterance of somebody else anymore.",
    "Chunks of twenty tokens carry about one second of audio each.",
    "The vocoder still runs once per chunk for each of the streams.",
]
SECTION = "## Concurrency"


def run_scenario(model, n: int, tokens: int, chunk: int, seed: int) -> dict:
    """N requests submitted together; each chunk's arrival time, from submission, per stream."""
    xtts = model._synth.model
    engine = model._scheduler.engine
    before = vars(engine.timings).copy()
    bench.trim_heap()
    bench.reset_peak()
    started = time.perf_counter()
    responses = [
        model.predict(SynthesisRequest(text=TEXTS[i % len(TEXTS)], chunk_size=chunk, seed=seed + i)) for i in range(n)
    ]

    async def drain(response):
        return [(time.perf_counter() - started, len(piece) // 2) async for piece in response.body_iterator]

    async def drain_all():
        return await asyncio.gather(*(drain(r) for r in responses))

    with bench.capped(xtts, tokens):
        streams = asyncio.run(drain_all())
    wall = time.perf_counter() - started
    after = vars(engine.timings)
    split = {key: after[key] - before[key] for key in after}
    per_stream = []
    for arrivals in streams:
        times = [t for t, _ in arrivals]
        audio = sum(samples for _, samples in arrivals) / 24000
        per_stream.append({
            "first_chunk": times[0],
            "max_gap": max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0),
            "audio_s": audio,
            "rtf": times[-1] / audio,
            "arrivals": times,
        })
    return {
        "n": n,
        "max_streams": engine.max_streams,
        "wall": wall,
        "audio_s": sum(s["audio_s"] for s in per_stream),
        "throughput": sum(s["audio_s"] for s in per_stream) / wall,
        "streams": per_stream,
        "split": split,
        "peak_rss_mb": bench.memory_mb()[1],
    }


def use_engine(model, max_streams: int) -> None:
    """Swap the model's scheduler for one whose engine holds `max_streams` streams."""
    model._scheduler.close()
    xtts = model._synth.model
    model._scheduler = Scheduler(model._limits["max_queued_requests"], Engine(xtts, max_streams))


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(runs: list[dict], counts: list[int]) -> list[dict]:
    """One row per scenario: medians over rounds of per-round figures."""
    rows = []
    keys = [("batched", n) for n in counts] + [("one at a time", max(counts))]
    for mode, n in keys:
        group = [r for r in runs if r["mode"] == mode and r["n"] == n]
        if not group:
            continue
        split = {k: median([r["split"][k] for r in group]) for k in group[0]["split"]}
        rows.append({
            "mode": mode,
            "n": n,
            "rounds": len(group),
            "first_chunk_median": median([median([s["first_chunk"] for s in r["streams"]]) for r in group]),
            "first_chunk_worst": median([max(s["first_chunk"] for s in r["streams"]) for r in group]),
            "max_gap": median([max(s["max_gap"] for s in r["streams"]) for r in group]),
            "rtf_worst": median([max(s["rtf"] for s in r["streams"]) for r in group]),
            "throughput": median([r["throughput"] for r in group]),
            "wall": median([r["wall"] for r in group]),
            "gpt_ms_per_step": 1000 * split["gpt"] / max(split["steps"], 1),
            "gpt_s": split["gpt"],
            "prefill_s": split["prefill"],
            "vocoder_s": split["vocoder"],
            "encode_s": split["encode"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in group),
        })
    return rows


def same_run_ratios(runs: list[dict], counts: list[int]) -> dict:
    """Per round, then the median: worst first chunk of N together over solo's, and throughput together
    over one at a time (the targets)."""
    top = max(counts)
    ttfc, throughput = [], []
    for round_ in sorted({r["round"] for r in runs}):
        got = {(r["mode"], r["n"]): r for r in runs if r["round"] == round_}
        solo, together, serial = got.get(("batched", 1)), got.get(("batched", top)), got.get(("one at a time", top))
        if solo and together:
            ttfc.append(max(s["first_chunk"] for s in together["streams"]) / solo["streams"][0]["first_chunk"])
        if together and serial:
            throughput.append(together["throughput"] / serial["throughput"])
    return {
        "worst_first_chunk_over_solo": ttfc,
        "throughput_over_one_at_a_time": throughput,
    }


def plot(data: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    last_round = max(r["round"] for r in runs)
    shown = [r for r in runs if r["round"] == last_round]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.35 * sum(r["n"] for r in shown)))
    y = 0
    labels = []
    for r in shown:
        for i, stream in enumerate(r["streams"]):
            ax.plot(stream["arrivals"], [y] * len(stream["arrivals"]), "|", markersize=9,
                    color="tab:blue" if r["mode"] == "batched" else "tab:red")
            labels.append(f"{r['mode']}, {r['n']} at once: stream {i + 1}")
            y += 1
        y += 0.5
    ticks = []
    y = 0
    for r in shown:
        for _ in r["streams"]:
            ticks.append(y)
            y += 1
        y += 0.5
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the requests were sent (each mark: a chunk arrived)")
    ax.set_title(f"Chunk arrivals, {data['meta']['tokens']} tokens per request at chunk {data['meta']['chunk']} "
                 f"({data['meta']['checkpoint']}, {data['meta']['device']}, round {last_round + 1})", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def section(data: dict, png_name: str) -> str:
    meta, rows, ratios = data["meta"], data["rows"], data["ratios"]
    fmt = lambda v: f"{v:.2f}"  # noqa: E731
    lines = [
        SECTION, "",
        f"Written by `scripts/bench_concurrency.py` (part of `make bench`), {meta['started']}, {meta['duration_s']:.0f} s; "
        f"load average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after; commit {meta['commit']}. "
        f"{meta['checkpoint']} on {meta['device']}, {meta['threads']} torch threads, in process through `Model.predict`. "
        f"Each request is {meta['tokens']} GPT tokens ({meta['tokens'] * 1024 / 24000:.1f} s of audio) at chunk "
        f"{meta['chunk']}, first chunk 4, a different text and seed each; {meta['rounds']} rounds, the scenarios "
        "alternating within each. \"Batched\" is the engine (`max_streams` 4); \"one at a time\" is an engine of "
        "one stream, where each request waits for those before it, as every request did before the engine.",
        "",
        "| scenario | first chunk, median of streams | first chunk, worst | longest gap | worst real-time factor | "
        "audio s per wall s | GPT ms per step | GPT / prefill / vocoder / encode s | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']}, {r['n']} at once | {fmt(r['first_chunk_median'])} s | {fmt(r['first_chunk_worst'])} s | "
            f"{fmt(r['max_gap'])} s | {fmt(r['rtf_worst'])} | {fmt(r['throughput'])} | {r['gpt_ms_per_step']:.0f} | "
            f"{r['gpt_s']:.1f} / {r['prefill_s']:.1f} / {r['vocoder_s']:.1f} / {r['encode_s']:.2f} | {r['peak_rss_mb']:.0f} MB |"
        )
    top = max(meta["counts"])
    show = lambda xs: (f"{median(xs):.2f} ({min(xs):.2f} to {max(xs):.2f})" if xs else "not measured")  # noqa: E731
    ttfc, thr = ratios["worst_first_chunk_over_solo"], ratios["throughput_over_one_at_a_time"]
    lines += [
        "",
        "Medians over rounds; the real-time factor is a stream's time from sending to its last chunk over its audio "
        "time (below 1: faster than real time). The split is the engine's own clock, summed over streams' work in "
        "the scenario (medians over rounds).",
        "",
        "Targets, as same-round ratios (median, range):",
        "",
        f"- worst time to first chunk with {top} at once over a solo request's: **{show(ttfc)}** (target: at most 2)",
        f"- aggregate throughput with {top} at once over one at a time: **{show(thr)}** (target: at least 1.5)",
        "",
        *why(rows, top),
        "",
        f"![chunk arrivals]({png_name})",
        "",
        "GPU rows: none. No GPU was available to the session that wrote this; none is estimated.",
        "",
    ]
    return "\n".join(lines)


def why(rows: list[dict], top: int) -> list[str]:
    """Where the time went, from the split: what batching bought in GPT steps and in the vocoder."""
    get = {(r["mode"], r["n"]): r for r in rows}
    solo, together, serial = get.get(("batched", 1)), get.get(("batched", top)), get.get(("one at a time", top))
    if not (solo and together and serial):
        return []
    return [
        "Where the time went (the split above):",
        "",
        f"- **GPT.** A decode step for {top} streams took {together['gpt_ms_per_step']:.0f} ms against "
        f"{solo['gpt_ms_per_step']:.0f} ms for one ({together['gpt_ms_per_step'] / solo['gpt_ms_per_step']:.2f}x, "
        f"not the ~1x of a device bound by reading the weights): {top} streams' tokens cost {together['gpt_s']:.1f} s "
        f"batched against {serial['gpt_s']:.1f} s one at a time.",
        f"- **Vocoder.** The same {top} requests' chunks cost {together['vocoder_s']:.1f} s batched (windows due on "
        f"the same step share one HiFiGAN call) against {serial['vocoder_s']:.1f} s one by one: on this CPU the "
        "convolutions are bound by arithmetic, so batching them buys nothing, and the vocoder is "
        f"{together['vocoder_s'] / together['wall']:.0%} of the batched wall time.",
        f"- **Prefill.** Requests that arrive together are prefilled one after another before their first step: "
        f"{together['prefill_s']:.1f} s for {top} (solo {solo['prefill_s']:.1f} s), the larger part of the worst "
        "first chunk. Prefill is arithmetic too, so batching prompts would not shorten it on CPU.",
    ]


def write_section(md: Path, text: str) -> None:
    """Replace the page's Concurrency section (up to the next `## `), or append it."""
    page = md.read_text() if md.exists() else ""
    start = page.find("\n" + SECTION + "\n")
    if start == -1:
        md.write_text(page.rstrip("\n") + "\n\n" + text)
        return
    end = page.find("\n## ", start + 1)
    md.write_text(page[: start + 1] + text + ("" if end == -1 else page[end:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny checkpoint, one round, into /tmp/xtts-bench-quick")
    parser.add_argument("--checkpoint", type=Path, help="default: checkpoints/real (checkpoints/tiny with --quick)")
    parser.add_argument("--tokens", type=int, help="GPT tokens per request: default 120 (40 with --quick)")
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--counts", default="1,2,4", help="simultaneous requests, comma-separated")
    parser.add_argument("--rounds", type=int, help="default 3 (1 with --quick)")
    parser.add_argument("--out", type=Path, help="default docs/ (/tmp/xtts-bench-quick with --quick)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    counts = sorted(int(c) for c in args.counts.split(","))
    args.tokens = args.tokens or (40 if args.quick else 120)
    size = "tiny" if args.quick else "real"
    checkpoint = args.checkpoint or ROOT / "checkpoints" / size
    rounds = args.rounds or (1 if args.quick else 3)
    out = args.out or (Path("/tmp/xtts-bench-quick") if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    log = bench.Log()
    bench.ensure_checkpoint(checkpoint, size, 602 if size == "real" else 40, log)

    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": os.getloadavg()[0],
        "checkpoint": str(checkpoint.relative_to(ROOT)) if checkpoint.is_relative_to(ROOT) else str(checkpoint),
        "tokens": args.tokens,
        "chunk": args.chunk,
        "counts": counts,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "commit": bench_commit(),
    }
    model = bench.load_model(checkpoint)
    meta["device"] = str(model._synth.model.device)
    log(f"loaded {meta['checkpoint']} on {meta['device']}; {rounds} rounds of {counts} at once and {max(counts)} one at a time")
    runs: list[dict] = []
    json_path = out / "benchmarks-concurrency.json"
    for round_ in range(rounds):
        plan = [("batched", n) for n in counts] + [("one at a time", max(counts))]
        if round_ % 2:
            plan.reverse()
        for mode, n in plan:
            use_engine(model, max(counts) if mode == "batched" else 1)
            result = run_scenario(model, n, args.tokens, args.chunk, seed=round_ * 100)
            runs.append({"mode": mode, "round": round_, **result})
            worst = max(s["first_chunk"] for s in result["streams"])
            log(f"round {round_ + 1}/{rounds}: {mode}, {n} at once: worst first chunk {worst:.2f} s, "
                f"{result['throughput']:.2f} audio s per wall s, wall {result['wall']:.1f} s")
    meta.update(duration_s=time.monotonic() - log.started, load_after=os.getloadavg()[0])
    data = {"meta": meta, "runs": runs, "rows": summarize(runs, counts), "ratios": same_run_ratios(runs, counts)}
    json_path.write_text(json.dumps(data, indent=1))
    png = out / "benchmarks-concurrency.png"
    plot(data, png)
    write_section(out / "benchmarks.md", section(data, png.name))
    log(f"wrote {json_path}, {png} and the Concurrency section of {out / 'benchmarks.md'}")
    return 0


def bench_commit() -> str:
    import subprocess

    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
