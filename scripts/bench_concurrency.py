#!/usr/bin/env python
"""Many streams at once on one model: the batched engine against one stream at a time, in one run.

In process, through `Model.predict` (the server's code minus HTTP), on the real-size random-weight
checkpoint, in rounds whose scenarios alternate so that machine noise hits them alike:

- **steps**: one decode step (the forward and sampling, no vocoder) for 1, 2, 4 and 8 streams, on the
  engine's packed kernels and on the stock ones (the same weights, unpacked);
- **identical**: 4 requests of the same text at once, against one alone and the same 4 one at a time;
- **mixed**: 8 requests of 1 to 3 sentences, chunk sizes 5 to 40 and speeds 0.8 to 1.3 at once, against
  the same 8 one at a time (an engine of one stream, where each waits for those before it);
- **joining**: a stream at chunk 20 alone, then with 3 more joining after its first chunk (each leaves
  after its own first chunk, so that only joining is measured), under each prefill policy: at most 16
  or 64 prompt rows a step beside the generating streams (chunked prefill), or every joiner's whole
  prompt in the next step (one batched forward, the default).

Then the mixed scenario once more on the tiny checkpoint, where the vocoder is nearly all the work.

    make bench                                            # runs this after scripts/bench.py
    .venv/bin/python scripts/bench_concurrency.py         # this part alone, into docs/
    .venv/bin/python scripts/bench_concurrency.py --quick # tiny checkpoint, one round: a smoke test

Writes OUT/benchmarks-concurrency.json and .png, and the "Concurrency" section of OUT/benchmarks.md.
Progress goes to standard error. Random weights never stop early: each request sets its length with
`max_new_tokens` (`--tokens` per sentence), and its audio is noise; timings only.
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

from model.checkpoint import load_xtts
from model.decoding import Decoder, Piece, sample
from model.engine import PREFILL_PIECE, PREFILL_ROWS, Engine
from model.loop import GenerationLoop
from model.packing import pack_gpt
from model.scheduler import Scheduler
from model.schema import SynthesisRequest
from model.slots import Sampling

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Concurrency"
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
STEP_COUNTS = (1, 2, 4, 8)
# The mixed crowd: (sentences, chunk_size, speed) per request.
MIXED = [(1, 5, 0.8), (2, 40, 1.0), (3, 20, 1.3), (1, 10, 0.9), (2, 8, 1.2), (3, 30, 1.1), (1, 15, 0.85), (2, 25, 1.25)]
TARGETS = {
    "step4": ("step(4) / step(1)", "at most 1.3", lambda v: v <= 1.3),
    "step8": ("step(8) / step(1)", "at most 1.6", lambda v: v <= 1.6),
    "identical_ttfc": ("4 identical: worst first chunk / solo", "at most 2", lambda v: v <= 2),
    "identical_throughput": ("4 identical: throughput / one at a time", "at least 2", lambda v: v >= 2),
    "mixed_throughput": ("8 mixed: throughput / one at a time", "at least 2", lambda v: v >= 2),
    "mixed_ttfc": ("8 mixed: worst first chunk / solo", "at most 3", lambda v: v <= 3),
    "joining_gap": ("longest gap while 3 join / alone (the default policy)", "at most 1.5", lambda v: v <= 1.5),
    "tiny_mixed_throughput": ("tiny, 8 mixed: throughput / one at a time", "at least 1", lambda v: v >= 1),
}
SCENARIOS = ("steps", "identical", "mixed", "joining", "tiny_mixed")  # per round; "invariance" runs once
# Prefill policies the joining scenario compares: prompt rows a step may carry beside the generating streams.
JOIN_POLICIES = {"16 rows a step": 16, "64 rows a step": 64, "all at once": 0}
DEFAULT_POLICY = next((name for name, rows in JOIN_POLICIES.items() if rows == PREFILL_ROWS), f"{PREFILL_ROWS} rows a step")


# --- the engine under test --------------------------------------------------------------------------


def use_engine(model, max_streams: int, prefill_rows: int = PREFILL_ROWS) -> Engine:
    """Give the model's service a fresh queue, loop and engine of `max_streams` streams."""
    service = model._service
    service.loop.close()
    engine = Engine(service.xtts, max_streams, prefill_rows=prefill_rows)
    engine.prefixes = service.loop.engine.prefixes  # as in a server, the voices' prefixes stay cached
    service.scheduler = Scheduler(max_streams, service.limits["max_queued_requests"])
    service.loop = GenerationLoop(service.scheduler, engine)
    service.loop.start()
    return engine


def request(text_index: int, sentences: int, chunk: int, speed: float, seed: int, tokens: int) -> SynthesisRequest:
    """`sentences` of TEXTS (XTTS's splitting keeps them in one prompt of at most 250 characters), spoken
    in exactly `tokens` GPT tokens: random weights never stop early, so `max_new_tokens` sets the length."""
    text = " ".join(TEXTS[(text_index + k) % len(TEXTS)] for k in range(sentences))
    return SynthesisRequest(text=text, chunk_size=chunk, speed=speed, seed=seed, enable_text_splitting=sentences > 1,
                            max_new_tokens=tokens)


def drain_all(model, requests: list[SynthesisRequest], started: float, leave_after_first: set[int] = frozenset(),
              later: tuple[int, list[SynthesisRequest]] | None = None) -> list[list[tuple[float, int]]]:
    """Send the requests together and read every body: per request, (arrival s, samples at 24 kHz) per
    chunk. `leave_after_first`: requests whose client hangs up after its first chunk. `later`: (i,
    requests) sent once request i's first chunk has arrived."""
    arrivals: list[list[tuple[float, int]]] = [[] for _ in requests] + [[] for _ in (later[1] if later else [])]

    async def drain(index: int, response) -> None:
        async for piece in response.body_iterator:
            arrivals[index].append((time.perf_counter() - started, len(piece) // 2))
            if later and index == later[0] and len(arrivals[index]) == 1:
                for k, extra in enumerate(later[1]):
                    tasks.append(asyncio.create_task(drain(len(requests) + k, model.predict(extra))))
            if index in leave_after_first:
                break
        await response.body_iterator.aclose()

    async def run() -> None:
        tasks.extend(asyncio.create_task(drain(i, model.predict(r))) for i, r in enumerate(requests))
        while not all(t.done() for t in tasks):
            await asyncio.gather(*tasks)

    tasks: list[asyncio.Task] = []
    asyncio.run(run())
    return arrivals


def measure(model, requests: list[SynthesisRequest], **kwargs) -> dict:
    """One scenario: its streams' arrivals, throughput, and where the engine's time went."""
    engine = model._service.loop.engine
    before = vars(engine.timings).copy()
    bench.trim_heap()
    bench.reset_peak()
    started = time.perf_counter()
    arrivals = drain_all(model, requests, started, **kwargs)
    wall = time.perf_counter() - started
    split = {key: value - before[key] for key, value in vars(engine.timings).items()}
    streams = []
    for chunks in arrivals:
        times = [t for t, _ in chunks]
        audio = sum(samples for _, samples in chunks) / 24000
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        streams.append({"first_chunk": times[0], "max_gap": max(gaps, default=0.0), "audio_s": audio,
                        "rtf": times[-1] / audio if audio else None, "arrivals": times})
    return {"wall": wall, "throughput": sum(s["audio_s"] for s in streams) / wall, "streams": streams,
            "split": split, "peak_rss_mb": bench.memory_mb()[1]}


# --- scenarios ------------------------------------------------------------------------------------------


def steps(model, stock, repeats: int) -> dict:
    """Median seconds of a decode step (forward and sampling) at each stream count, packed and stock."""
    out = {}
    for name, gpt in (("packed", model._service.xtts.gpt), ("stock", stock.gpt)):
        decoder = Decoder.for_model(gpt, max(STEP_COUNTS))
        cond = model._service.voices.library.get(None).gpt_cond_latent
        text = torch.IntTensor(model._service.xtts.tokenizer.encode(TEXTS[0].lower(), lang="en"))[None]
        with torch.inference_mode():
            prompt = decoder.prompt(cond, text)
            for slot in range(max(STEP_COUNTS)):
                decoder.table.assign(slot, Sampling(), torch.Generator().manual_seed(slot))
                for start in range(0, len(prompt), PREFILL_PIECE):
                    decoder.forward([], [], [], [Piece(slot, prompt[start : start + PREFILL_PIECE])])
            lengths = list(decoder.table.lengths)
            for n in STEP_COUNTS:
                times = []
                for k in range(repeats + 1):
                    decoder.table.lengths[:] = lengths  # every step at the same positions
                    started = time.perf_counter()
                    _, logits = decoder.forward(list(range(n)), [100 + k] * n, [1] * n, [])
                    sample(logits, decoder.table, list(range(n)))
                    times.append(time.perf_counter() - started)
                out[f"{name}_{n}"] = statistics.median(times[1:])
    return out


def identical(model, tokens: int, chunk: int, seed: int) -> dict[str, dict]:
    return against_one_at_a_time(model, [request(0, 1, chunk, 1.0, seed + i, tokens) for i in range(4)])


def mixed(model, tokens: int, seed: int) -> dict[str, dict]:
    crowd = [request(i, n, chunk, speed, seed + i, tokens * n) for i, (n, chunk, speed) in enumerate(MIXED)]
    return against_one_at_a_time(model, crowd)


def against_one_at_a_time(model, crowd: list[SynthesisRequest]) -> dict[str, dict]:
    """The first request alone, the crowd at once, and the crowd on an engine of one stream."""
    runs = {}
    use_engine(model, 8)
    runs["solo"] = measure(model, crowd[:1])
    runs["together"] = measure(model, crowd)
    use_engine(model, 1)
    runs["one at a time"] = measure(model, crowd)
    return runs


def invariance(model, tokens: int, requests: int = 17) -> dict:
    """Each of `requests` seeded requests, alone and in a crowd of 8 joining at different steps: how many
    of their GPT tokens differ, and where each first diverges. The vocoder is left out (the tokens do not
    depend on it), so that the 2,000-odd tokens take minutes, not an hour."""
    from model import engine as engine_module

    crowd = [request(i, 3, 40, 1.0, 1000 + i, tokens) for i in range(requests)]
    decode = engine_module.decode
    engine_module.decode = lambda m, window: torch.zeros(window.frames * m.hifigan_decoder.output_hop_length)
    try:
        use_engine(model, 1)
        alone = [measure_tokens(model, [r])[0] for r in crowd]
        use_engine(model, 8)
        together = measure_tokens(model, crowd)
    finally:
        engine_module.decode = decode
    flat = lambda t: [token for sentence in t for token in sentence]  # noqa: E731
    compared = [(flat(a), flat(b)) for a, b in zip(alone, together, strict=True)]
    differing = [next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None) for a, b in compared]
    return {"requests": requests, "tokens": sum(len(a) for a, _ in compared),
            "tokens_different": sum(x != y for a, b in compared for x, y in zip(a, b, strict=False)),
            "streams_diverging": sum(d is not None for d in differing), "first_divergence": differing}


def measure_tokens(model, requests: list[SynthesisRequest]) -> list[list[list[int]]]:
    """Run the requests at once and return each one's tokens, per sentence."""
    jobs = []
    submit = model._service.scheduler.submit
    model._service.scheduler.submit = lambda job: jobs.append(job) or submit(job)
    try:
        measure(model, requests)
    finally:
        model._service.scheduler.submit = submit
    return [job.tokens for job in jobs]


def joining(model, tokens: int, chunk: int, seed: int) -> dict[str, dict]:
    """A stream alone, then with 3 joining after its first chunk, under each prefill policy. The joiners
    leave after their own first chunk, so the stream's longest gap is what joining cost it."""
    first = request(0, 1, chunk, 1.0, seed, tokens)
    joiners = [request(i, 1, chunk, 1.0, seed + i, tokens) for i in (1, 2, 3)]
    runs = {}
    use_engine(model, 8)
    runs["alone"] = measure(model, [first])
    for policy, rows in JOIN_POLICIES.items():
        use_engine(model, 8, prefill_rows=rows)
        runs[policy] = measure(model, [first], later=(0, joiners), leave_after_first={1, 2, 3})
    return runs


# --- report -----------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratios(rounds: list[dict]) -> dict[str, list[float]]:
    """Per round, the figures the targets are about."""
    out: dict[str, list[float]] = {key: [] for key in TARGETS}
    for r in rounds:
        s = r.get("steps")
        if s:
            out["step4"].append(s["packed_4"] / s["packed_1"])
            out["step8"].append(s["packed_8"] / s["packed_1"])
        if i := r.get("identical"):
            out["identical_ttfc"].append(worst_first(i["together"]) / i["solo"]["streams"][0]["first_chunk"])
            out["identical_throughput"].append(i["together"]["throughput"] / i["one at a time"]["throughput"])
        if m := r.get("mixed"):
            out["mixed_throughput"].append(m["together"]["throughput"] / m["one at a time"]["throughput"])
            out["mixed_ttfc"].append(worst_first(m["together"]) / m["solo"]["streams"][0]["first_chunk"])
        if j := r.get("joining"):
            out["joining_gap"].append(j[DEFAULT_POLICY]["streams"][0]["max_gap"] / j["alone"]["streams"][0]["max_gap"])
        if t := r.get("tiny_mixed"):
            out["tiny_mixed_throughput"].append(t["together"]["throughput"] / t["one at a time"]["throughput"])
    return {k: v for k, v in out.items() if v}


def worst_first(run: dict) -> float:
    return max(s["first_chunk"] for s in run["streams"])


def section(data: dict, png_name: str) -> str:
    meta, rounds = data["meta"], data["rounds"]
    got = ratios(rounds)
    show = lambda xs: f"{median(xs):.2f} ({min(xs):.2f} to {max(xs):.2f})"  # noqa: E731
    lines = [
        SECTION, "",
        f"Written by `scripts/bench_concurrency.py` (part of `make bench`), {meta['started']}, {meta['duration_s']:.0f} s; "
        f"load average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after; commit {meta['commit']}. "
        f"{meta['checkpoint']} on {meta['device']}, {meta['threads']} torch threads, in process through `Model.predict`; "
        f"{len(rounds)} rounds, the scenarios alternating within each. A request is {meta['tokens']} GPT tokens per "
        f"sentence (`max_new_tokens`: random weights never stop early); chunk {meta['chunk']} unless the scenario says otherwise. \"One at a "
        "time\" is an engine of one stream, where each request waits for those before it.",
        "",
        "Targets, as same-round ratios (median, range over rounds):",
        "",
        "| what | measured | target | met |",
        "|---|---|---|---|",
    ]
    for key, (what, target, ok) in TARGETS.items():
        if key in got:
            lines.append(f"| {what} | **{show(got[key])}** | {target} | {'yes' if ok(median(got[key])) else 'no'} |")
    if inv := data.get("invariance"):
        lines += ["", f"**Seeded output against the crowd:** {inv['requests']} seeded requests, each alone "
                  f"and all in one crowd (8 at a time, joining as places free): **{inv['tokens_different']} of "
                  f"{inv['tokens']} GPT tokens differ**, in {inv['streams_diverging']} of {inv['requests']} streams "
                  "(the vocoder left out: tokens do not depend on it)."]
    steps_rounds = [r for r in rounds if "steps" in r]
    if steps_rounds:
        lines += ["", "### Decode step", "",
                  "One decode step (forward and sampling, no vocoder), milliseconds, medians over rounds of the medians of "
                  f"{meta['step_repeats']} steps:", "",
                  "| streams | packed (the engine) | stock kernels | packed / stock |", "|---|---|---|---|"]
        for n in STEP_COUNTS:
            packed = median([r["steps"][f"packed_{n}"] for r in steps_rounds]) * 1000
            stock = median([r["steps"][f"stock_{n}"] for r in steps_rounds]) * 1000
            lines.append(f"| {n} | {packed:.0f} ms | {stock:.0f} ms | {packed / stock:.2f} |")
    lines += ["", "### Requests", "", "Medians over rounds.", "",
              "| scenario | first chunk, median / worst | longest gap | audio s per wall s | wall | GPT / vocoder / encode s | "
              "prompt rows | peak RSS |", "|---|---|---|---|---|---|---|---|"]
    for scenario, modes in (("identical", ("solo", "together", "one at a time")), ("mixed", ("solo", "together", "one at a time")),
                            ("joining", ("alone", *JOIN_POLICIES)), ("tiny_mixed", ("together", "one at a time"))):
        for mode in modes:
            group = [r[scenario][mode] for r in rounds if scenario in r]
            if not group:
                continue
            first = median([median([s["first_chunk"] for s in g["streams"]]) for g in group])
            worst = median([worst_first(g) for g in group])
            split = {k: median([g["split"][k] for g in group]) for k in group[0]["split"]}
            # Joining: the first stream's longest gap (the joiners leave after their first chunk).
            gap = median([g["streams"][0]["max_gap"] if scenario == "joining" else max(s["max_gap"] for s in g["streams"])
                          for g in group])
            lines.append(
                f"| {scenario.replace('_', ' ')}, {mode} | {first:.2f} / {worst:.2f} s | {gap:.2f} s | "
                f"{median([g['throughput'] for g in group]):.2f} | "
                f"{median([g['wall'] for g in group]):.1f} s | {split['gpt']:.1f} / {split['vocoder']:.1f} / {split['encode']:.2f} | "
                f"{split['prefill_rows']:.0f} | {max(g['peak_rss_mb'] for g in group):.0f} MB |"
            )
    lines += [
        "",
        "Identical: 4 requests of one sentence at chunk 20. Mixed: 8 requests of 1 to 3 sentences, chunk sizes 5 to "
        "40, speeds 0.8 to 1.3 (`MIXED` in the script), each one prompt of 60 to 190 characters (XTTS's splitting keeps "
        "up to 250 characters together) of at most the sentence's tokens; \"solo\" is its first request alone. Joining: one stream at "
        "chunk 20 alone, then with 3 joining after its first chunk (each leaving after its own first chunk), its longest "
        "gap in the last column, under each prefill policy: at most so many prompt rows a step beside the generating "
        f"streams, or every joiner's whole prompt in the next step (the default: {DEFAULT_POLICY}). The split is the "
        "engine's own clock; \"prompt rows\" is how many prompt rows the steps carried.",
        "",
        f"![chunk arrivals]({png_name})",
        "",
        "GPU rows: none. No GPU was available to the session that wrote this; none is estimated.",
        "",
    ]
    return "\n".join(lines)


def plot(data: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = data["rounds"][-1]
    shown = [(f"{scenario}, {mode}", run) for scenario in ("mixed", "joining") if scenario in last
             for mode, run in last[scenario].items()]
    rows = sum(len(run["streams"]) for _, run in shown) + len(shown)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.3 * rows))
    y, ticks, labels = 0, [], []
    for label, run in shown:
        for i, stream in enumerate(run["streams"]):
            ax.plot(stream["arrivals"], [y] * len(stream["arrivals"]), "|", markersize=9,
                    color="tab:red" if "one at a time" in label else "tab:blue")
            ticks.append(y)
            labels.append(f"{label}: {i + 1}")
            y += 1
        y += 1
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the requests were sent (each mark: a chunk arrived)")
    ax.set_title(f"Chunk arrivals ({data['meta']['checkpoint']}, {data['meta']['device']}, last round)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny checkpoint, one round, into /tmp/xtts-bench-quick")
    parser.add_argument("--checkpoint", type=Path, help="default: checkpoints/real (checkpoints/tiny with --quick)")
    parser.add_argument("--tiny", type=Path, default=ROOT / "checkpoints" / "tiny", help="for the tiny mixed scenario")
    parser.add_argument("--tokens", type=int, help="GPT tokens per sentence: default 40 (13 with --quick)")
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--rounds", type=int, help="default 3 (1 with --quick)")
    parser.add_argument("--only", help="comma-separated scenarios: steps,identical,mixed,joining,tiny_mixed,invariance")
    parser.add_argument("--out", type=Path, help="default docs/ (/tmp/xtts-bench-quick with --quick)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    tokens = args.tokens or (13 if args.quick else 40)  # a sentence; the single-sentence scenarios take 3 of it
    size = "tiny" if args.quick else "real"
    checkpoint = args.checkpoint or ROOT / "checkpoints" / size
    rounds = args.rounds or (1 if args.quick else 3)
    out = args.out or (Path("/tmp/xtts-bench-quick") if args.quick else ROOT / "docs")
    only = set(args.only.split(",")) if args.only else {*SCENARIOS, "invariance"}
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    log = bench.Log()
    bench.ensure_checkpoint(checkpoint, size, 602 if size == "real" else 40, log)
    bench.ensure_checkpoint(args.tiny, "tiny", 40, log)
    step_repeats = 3 if args.quick else 10
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": os.getloadavg()[0],
        "checkpoint": str(checkpoint.relative_to(ROOT)) if checkpoint.is_relative_to(ROOT) else str(checkpoint),
        "tokens": tokens, "chunk": args.chunk, "threads": torch.get_num_threads(), "commit": bench.commit(),
        "step_repeats": step_repeats,
    }
    model = bench.load_model(checkpoint)
    meta["device"] = str(model._service.xtts.device)
    stock = load_xtts(checkpoint, model._service.xtts.device) if "steps" in only else None  # the same weights, unpacked
    tiny = bench.load_model(args.tiny) if "tiny_mixed" in only else None
    log(f"loaded {meta['checkpoint']} on {meta['device']}; {rounds} rounds of {sorted(only)}")
    data = {"meta": meta, "rounds": []}
    for round_ in range(rounds if only & set(SCENARIOS) else 0):
        found: dict = {}
        plan = [name for name in SCENARIOS if name in only]
        if round_ % 2:
            plan.reverse()
        for name in plan:
            seed = round_ * 100
            if name == "steps":
                found[name] = steps(model, stock, step_repeats)
            elif name == "identical":
                found[name] = identical(model, tokens * 3, args.chunk, seed)
            elif name == "mixed":
                found[name] = mixed(model, tokens, seed)
            elif name == "joining":
                found[name] = joining(model, tokens * 3, args.chunk, seed)
            else:
                found[name] = mixed(tiny, tokens, seed)
            log(f"round {round_ + 1}/{rounds}: {name} done; so far {ratios([found])}")
        data["rounds"].append(found)
    if "invariance" in only:
        data["invariance"] = invariance(model, tokens * 3)
        log(f"invariance: {data['invariance']['tokens_different']} of {data['invariance']['tokens']} tokens differ")
    meta.update(duration_s=time.monotonic() - log.started, load_after=os.getloadavg()[0])
    data["ratios"] = ratios(data["rounds"])
    (out / "benchmarks-concurrency.json").write_text(json.dumps(data, indent=1))
    png = out / "benchmarks-concurrency.png"
    if data["rounds"]:
        plot(data, png)
    bench.write_section(out / "benchmarks.md", SECTION, section(data, png.name))
    log(f"wrote {out / 'benchmarks-concurrency.json'}, {png} and the Concurrency section of {out / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
