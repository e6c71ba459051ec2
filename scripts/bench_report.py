#!/usr/bin/env python
"""Turn the raw runs of scripts/bench.py (benchmarks.json) into benchmarks.md and benchmarks.png beside it.

    .venv/bin/python scripts/bench_report.py docs/benchmarks.json

Every number is computed from the runs: medians over repetitions, and ratios taken within one
repetition (two runs next to each other in time) before the median, so that slow drifts of a noisy
machine cancel out. Targets say met or missed from these numbers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 24000
TOKEN_SAMPLES = 1024 * 24000 / 22050  # output samples per GPT token
HTTP_SLACK_S = 0.010  # the "plus a few ms" of the HTTP target


# --- one run ----------------------------------------------------------------------------------------


def metrics(run: dict) -> dict:
    arrivals = run["arrivals"]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    audio = sum(run["samples"]) / SAMPLE_RATE
    return {
        "first": arrivals[0],
        "first_gap": gaps[0] if gaps else None,
        "last_gap": gaps[-1] if gaps else None,
        "max_gap": max(gaps) if gaps else None,
        "total": run["total"],
        "audio": audio,
        "rtf": run["total"] / audio,
        "chunks": len(arrivals),
        "tokens": round(audio * SAMPLE_RATE / TOKEN_SAMPLES),
        "peak": run["peak_rss_mb"],
        # The server's heap keeps what earlier requests freed, so only an in-process run's growth is its own.
        "growth": run["peak_rss_mb"] - run["rss_before_mb"] if run["path"] == "in-process" else None,
    }


def describe(run: dict) -> str:
    """One line for the progress log."""
    m = metrics(run)
    first = f", first chunk {run['first_chunk_size']} tokens" if run["first_chunk_size"] else ""
    gaps = f", gaps {m['first_gap']:.2f} .. {m['last_gap']:.2f} s" if m["first_gap"] is not None else ""
    growth = f" ({m['growth']:+.0f})" if m["growth"] is not None else ""
    return (
        f"{run['text']} ({run['tokens']} tokens) chunk {run['chunk_size']}{first} {run['streamer']} {run['path']} "
        f"rep {run['rep'] + 1}: first chunk {m['first']:.2f} s, {m['chunks']} chunks{gaps}, total {m['total']:.1f} s, "
        f"RTF {m['rtf']:.2f}, peak RSS {m['peak']:.0f} MB{growth}"
    )


# --- many runs --------------------------------------------------------------------------------------


def select(runs: list[dict], **where) -> list[dict]:
    return [r for r in runs if all(r[key] == value for key, value in where.items())]


def main_runs(runs: list[dict], **where) -> list[dict]:
    """Runs of the texts proper: not the first-chunk sweep."""
    return [r for r in select(runs, **where) if r["text"] != "sweep"]


def cells(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs grouped by everything but the repetition, in the order they first ran."""
    keys = ("text", "tokens", "chunk_size", "first_chunk_size", "streamer", "path")
    grouped: dict[tuple, list[dict]] = {}
    for run in runs:
        grouped.setdefault(tuple(run[k] for k in keys), []).append(run)
    return grouped


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_of(runs: list[dict], key: str) -> float | None:
    return median(metrics(r)[key] for r in runs)


def paired(a: list[dict], b: list[dict], value) -> list[float]:
    """value(run_a, run_b) for every repetition that has both: the same-run comparisons."""
    b_by_rep = {r["rep"]: r for r in b}
    return [value(r, b_by_rep[r["rep"]]) for r in a if r["rep"] in b_by_rep]


def ratio_of(key: str):
    return lambda a, b: metrics(a)[key] / metrics(b)[key]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0"


def spread(values: list[float], digits: int = 2) -> str:
    """The median, and the range when there is more than one value."""
    if len(values) < 2:
        return fmt(median(values), digits)
    return f"{fmt(median(values), digits)} ({fmt(min(values), digits)} to {fmt(max(values), digits)})"


def table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


# --- targets ----------------------------------------------------------------------------------------


def targets(runs: list[dict]) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met); met is None when the run did not cover it."""
    rows = []
    at_20 = main_runs(runs, path="in-process", chunk_size=20, first_chunk_size=None)
    long_w, long_u = select(at_20, text="long", streamer="windowed"), select(at_20, text="long", streamer="upstream")
    long = f"long text ({(long_w + long_u)[0]['tokens'] if long_w + long_u else '-'} tokens), chunk 20"

    steady = [metrics(r)["last_gap"] / metrics(r)["first_gap"] for r in long_w if metrics(r)["first_gap"]]
    rows.append((
        f"{long}: windowed last gap <= 1.3 x its first gap",
        f"last / first gap {spread(steady)} over {len(steady)} run(s)",
        _met(steady, 1.3),
    ))
    totals = paired(long_w, long_u, ratio_of("total"))
    rows.append((
        f"{long}: windowed total <= 0.5 x upstream total",
        f"windowed / upstream {spread(totals)} ({len(totals)} pair(s))",
        _met(totals, 0.5),
    ))
    for (text, tokens, *_), windowed in cells(select(at_20, streamer="windowed")).items():
        first = paired(windowed, select(at_20, text=text, tokens=tokens, streamer="upstream"), ratio_of("first"))
        rows.append((
            f"{text} text ({tokens} tokens), chunk 20: windowed first chunk <= 0.5 x upstream's",
            f"windowed / upstream {spread(first)} ({len(first)} pair(s))",
            _met(first, 0.5),
        ))
    for (text, tokens, chunk, _, streamer, _), http in cells(select(runs, path="HTTP")).items():
        local = select(runs, path="in-process", text=text, tokens=tokens, chunk_size=chunk, streamer=streamer,
                       first_chunk_size=None)
        excess = paired(http, local, lambda h, p: metrics(h)["first"] - 1.05 * metrics(p)["first"])
        ratios = paired(http, local, ratio_of("first"))
        rows.append((
            (f"{streamer}, {text} text, chunk {chunk}: HTTP first chunk <= 1.05 x in-process "
            f"+ {HTTP_SLACK_S * 1000:.0f} ms"),
            (f"HTTP / in-process {spread(ratios, 3)}; HTTP - 1.05 x in-process "
            f"{spread([e * 1000 for e in excess], 0)} ms ({len(ratios)} pair(s))"),
            _met(excess, HTTP_SLACK_S),
        ))
    return rows


def _met(values: list[float], limit: float) -> bool | None:
    return None if not values else median(values) <= limit


# --- the document -----------------------------------------------------------------------------------


def machine() -> dict:
    """The machine and the versions that matter, for the report's header."""
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           check=False)
    packages = ("torch", "coqui-tts", "transformers", "truss")
    return {
        "cpu": cpu.group(1) if cpu else platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024**2, 1),
        "os": f"{platform.system()} {platform.release()}",
        "versions": {"python": platform.python_version()} | {p: importlib.metadata.version(p) for p in packages},
        "commit": commit.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else ""),
    }


def header(meta: dict) -> list[str]:
    versions = ", ".join(f"{name} {v}" for name, v in meta["versions"].items())
    threads = ", ".join(f"{k} {v}" for k, v in meta["threads"].items())
    scope = ""
    if meta["quick"]:
        scope += " **--quick: tiny checkpoints and one or two runs a cell, a smoke test of the harness, not a measurement.**"
    if meta.get("only") or meta.get("chunk"):
        scope += f" **Partial run: text {meta.get('only') or 'all'}, chunk size {meta.get('chunk') or 'all'}.**"
    memory = "; ".join(f"{p['process']} on {p['checkpoint']} {p['rss_mb']:.0f} MB" for p in meta["processes"])
    return [
        "# Benchmarks: the upstream and the windowed streamer, in process and over HTTP",
        "",
        ("Written by `make bench` (scripts/bench.py measures, scripts/bench_report.py writes this page and the "
        "plot). The checkpoints have random weights and the published architecture: their audio is noise and "
        "says nothing about speech quality, and every utterance is exactly its cap of GPT tokens (one token is "
        f"about 46 ms of audio).{scope}"),
        "",
        *table(["", ""], [
            ["date", (f"{meta['started']}, {meta['duration_s'] / 60:.0f} min; load average "
                     f"{meta['load_before']:.2f} before, {meta['load_after']:.2f} after")],
            ["machine", (f"{meta['cpu']}, {meta['cores']} cores, {meta['memory_gb']} GB, {meta['os']}; "
                        f"model on {meta.get('device', '?')}")],
            ["versions", f"{versions}; commit {meta['commit']}"],
            ["threads", threads],
            ["settings", f"seed {meta['seed']}; XTTS's sampling defaults; the default speaker; PCM"],
            ["resident memory after load", memory],
        ]),
        "",
    ]


def main_table(runs: list[dict]) -> list[str]:
    rows = []
    for (text, tokens, chunk, _, streamer, path), group in cells(main_runs(runs)).items():
        measured = sorted({metrics(r)["tokens"] for r in group})
        shown = f"{tokens}" if measured == [tokens] else f"{tokens}, measured {measured}"
        rows.append([
            f"{text} ({shown})", chunk, streamer, path, len(group),
            *(fmt(median_of(group, key)) for key in ("first", "first_gap", "last_gap", "max_gap")),
            fmt(median_of(group, "total"), 1), fmt(median_of(group, "audio")), fmt(median_of(group, "rtf")),
            fmt(median_of(group, "peak"), 0), fmt(median_of(group, "growth"), 0),
        ])
    return table(["text (tokens)", "chunk", "streamer", "path", "runs", "first chunk (s)", "first gap (s)",
                  "last gap (s)", "max gap (s)", "total (s)", "audio (s)", "RTF", "peak RSS (MB)", "growth (MB)"], rows)


def ratio_table(runs: list[dict]) -> list[str]:
    rows = []
    inproc = main_runs(runs, path="in-process", first_chunk_size=None)
    for (text, tokens, chunk, *_), windowed in cells(select(inproc, streamer="windowed")).items():
        upstream = select(inproc, text=text, tokens=tokens, chunk_size=chunk, streamer="upstream")
        first = paired(windowed, upstream, ratio_of("first"))
        rows.append([
            f"{text} ({tokens})", chunk, len(first), spread(first), spread(paired(windowed, upstream, ratio_of("total"))),
            spread(paired(windowed, upstream, lambda w, u: metrics(w)["growth"] - metrics(u)["growth"]), 0),
        ])
    return table(["text (tokens)", "chunk", "pairs", "first chunk, windowed / upstream", "total, windowed / upstream",
                  "peak RSS growth, windowed - upstream (MB)"], rows)


def http_table(runs: list[dict]) -> list[str]:
    rows = []
    for (text, tokens, chunk, _, streamer, _), http in cells(select(runs, path="HTTP")).items():
        local = select(runs, path="in-process", text=text, tokens=tokens, chunk_size=chunk, streamer=streamer,
                       first_chunk_size=None)
        ratios = paired(http, local, ratio_of("first"))
        rows.append([
            streamer, f"{text} ({tokens})", chunk, len(ratios), fmt(median_of(local, "first")),
            fmt(median_of(http, "first")), spread(ratios, 3),
            spread(paired(http, local, lambda h, p: (metrics(h)["first"] - metrics(p)["first"]) * 1000), 0),
            spread(paired(http, local, ratio_of("total")), 3), fmt(median_of(http, "peak"), 0),
        ])
    return table(["streamer", "text (tokens)", "chunk", "pairs", "first chunk in process (s)", "over HTTP (s)",
                  "HTTP / in process", "HTTP - in process (ms)", "total, HTTP / in process", "server peak RSS (MB)"],
                 rows)


def sweep_table(runs: list[dict]) -> list[str]:
    sweep = select(runs, text="sweep")
    upstream = select(sweep, streamer="upstream")
    rows = []
    for (_, _, chunk, first_size, streamer, _), group in cells(sweep).items():
        two = [r for r in group if len(r["arrivals"]) > 1]
        audio = [r["samples"][0] / SAMPLE_RATE for r in two]
        waits = [r["arrivals"][1] - r["arrivals"][0] for r in two]
        rows.append([
            f"{first_size} (windowed)" if streamer == "windowed" else f"{chunk} (upstream)", len(group),
            fmt(median_of(group, "first")), spread(paired(group, upstream, ratio_of("first"))), fmt(median(audio)),
            fmt(median(r["arrivals"][1] for r in two)), fmt(median(waits)),
            fmt(median(a - w for a, w in zip(audio, waits))),
        ])
    return table(["first chunk (tokens)", "runs", "first chunk (s)", "/ upstream's (same run)", "first chunk audio (s)",
                  "second chunk at (s)", "wait for the second chunk (s)", "audio - wait (s)"], rows)


def method_text(meta: dict, runs: list[dict]) -> list[str]:
    """What ran, how often and why; durations are this run's own."""
    n = {group: _times(count) for group, count in meta["plan_runs"].items()}
    tokens = {r["text"]: r["tokens"] for r in runs}
    minutes = {key: median(r["total"] for r in group) / 60 for key, group in cells(runs).items()}
    long_cost = ", ".join(f"{key[4]} {minutes[key]:.1f} min" for key in minutes if key[0] == "long")
    medium_cost = ", ".join(f"{key[4]} at chunk {key[2]} {minutes[key]:.1f}" for key in minutes if key[0] == "medium")
    return [
        "## What ran, and why so many times",
        "",
        ("One invocation, in this order. Runs to be compared sit next to each other and swap order every repetition, "
        "so that drifts of a noisy machine hit both sides alike."),
        "",
        (f"1. **Short text** ({tokens.get('short', '-')} tokens), {n['short']}: upstream and windowed at chunk 10, 20 "
        "and 40 in process, and at chunk 20 over HTTP next to its in-process twin. It has a checkpoint of its own, "
        "built with `--max-tokens` at its length, because the server cannot be told to stop early; its in-process "
        "runs use the same checkpoint, so each HTTP/in-process pair is the same model, text and seed. Short runs "
        "are the cheapest, so the HTTP comparison and the first-chunk ratios get the most repetitions."),
        (f"2. **First-chunk sweep**, {n['sweep']}: upstream at chunk 20, then windowed with `first_chunk_size` "
        "2, 4, 6 and 8 at chunk 20, on the main checkpoint with generation capped in process at "
        f"{tokens.get('sweep', '-')} tokens: each run ends right after its second chunk, and the first two chunks, "
        "all it measures, do not depend on the cap. The text is the short one."),
        (f"3. **Medium text** ({tokens.get('medium', '-')} tokens, the main checkpoint capped in process), "
        f"{n['medium']}: upstream and windowed at chunk 10, 20 and 40 (median run, minutes: {medium_cost or '-'})."),
        (f"4. **Long text** ({tokens.get('long', '-')} tokens, the main checkpoint's own cap), at chunk 20 only: "
        f"windowed {n['long windowed']}, upstream {n['long upstream']} (median run: {long_cost or '-'}). "
        "Upstream's cost per chunk grows with the audio already made, so the long runs take most of the time "
        f"of the whole benchmark ({meta['duration_s'] / 60:.0f} min here): they run the fewest times, and not at "
        "chunk 10 (about twice as long again for upstream) or 40."),
        "",
        ("In-process runs go through `Model.predict` (request validation, the streamer, PCM encoding): the code the "
        'server runs, without HTTP. `streamer: "upstream"` calls `Xtts.inference_stream` unchanged. A chunk\'s '
        "time is when its PCM bytes were in hand, counted from before the request was built (over HTTP: before it "
        "was sent). Both processes run torch with the same thread count and `OMP_WAIT_POLICY=PASSIVE`: with "
        "OpenMP's default spin-waiting, on a 2-core machine with any other load, the server's runs took 3 to 5 "
        "times as long as the same runs in process (its helper thread spun while the main one ran Python)."),
        "",
        ("Peak RSS is the VmHWM of the process that synthesized, reset through `/proc/PID/clear_refs` just before "
        "each run. Before each in-process run `malloc_trim` hands freed heap back to the system, so its growth "
        "(peak minus RSS at the start) is that run's own working set, not what an earlier, larger run left in "
        "malloc's free lists; that costs the run a few ms of page faults (tiny checkpoint: +5 ms on a 290 ms "
        "first chunk, within noise). The server is left as it is, as in production: its peak is the absolute "
        "figure, and it has no growth column."),
        "",
    ]


def _times(count: int) -> str:
    return "once" if count == 1 else "twice" if count == 2 else f"{count} times"


def plot(runs: list[dict], path: Path) -> str | None:
    """Audio received against wall time, and the wait before each chunk, for the longest chunk-20 text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    candidates = main_runs(runs, path="in-process", chunk_size=20, first_chunk_size=None)
    if not candidates:
        return None
    tokens = max(r["tokens"] for r in candidates)
    fig, (arrivals_ax, gaps_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for streamer, colour in (("upstream", "tab:red"), ("windowed", "tab:blue")):
        for i, run in enumerate(select(candidates, tokens=tokens, streamer=streamer)):
            label = streamer if i == 0 else None
            audio = list(itertools.accumulate(n / SAMPLE_RATE for n in run["samples"]))
            arrivals_ax.step([0, *run["arrivals"]], [0, *audio], where="post", color=colour, alpha=0.8, label=label)
            arrivals_ax.plot(run["arrivals"], audio, ".", color=colour)
            waits = [run["arrivals"][0]] + [b - a for a, b in itertools.pairwise(run["arrivals"])]
            gaps_ax.plot(range(1, len(waits) + 1), waits, ".-", color=colour, alpha=0.8, label=label)
    arrivals_ax.set(xlabel="wall time since the request (s)", ylabel="audio received (s)",
                    title=f"{tokens} GPT tokens, chunk 20: when each chunk arrived")
    gaps_ax.set(xlabel="chunk", ylabel="wait for this chunk (s)",
                title="wait before each chunk (the first: time to first chunk)")
    gaps_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (arrivals_ax, gaps_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return (f"In process, {tokens} tokens, chunk 20, every run drawn. Left: audio received against time, one step "
            "per chunk. Right: the wait before each chunk; upstream's grows with the audio already made, the "
            "windowed streamer's should stay flat.")


def write(json_path: Path) -> None:
    data = json.loads(json_path.read_text())
    meta, runs = data["meta"], data["runs"]
    png = json_path.with_suffix(".png")
    caption = plot(runs, png)

    lines = header(meta)
    lines += ["## Targets", "", "Medians of same-run ratios (range in brackets).", ""]
    verdicts = {None: "not measured", True: "**met**", False: "**missed**"}
    lines += table(["target", "measured", ""], [[t, m, verdicts[met]] for t, m, met in targets(runs)])
    lines += ["", "## Every cell (medians)", "",
              "Gaps are the times between consecutive chunks; RTF is total time / audio seconds.", ""]
    lines += main_table(runs)
    lines += ["", "## Windowed against upstream, in process (same-run ratios)", ""]
    lines += ratio_table(runs)
    lines += ["", "## Over HTTP against in process (same-run pairs)", ""]
    lines += http_table(runs)
    if select(runs, text="sweep"):
        lines += [
            "", "## First chunk size (windowed, chunk 20)", "",
            ("A smaller first chunk comes sooner but holds less audio: the player runs dry at the first join when "
            "the wait for the second chunk is longer than the first chunk's audio (a negative last column). On a "
            "machine slower than real time (RTF above 1) every join runs dry whatever the first chunk, so here only "
            "the first-chunk times carry over to faster hardware; the margin is the column to read on a GPU."),
            "", *sweep_table(runs),
        ]
    if caption:
        lines += ["", "## Chunk arrival times", "", f"![chunk arrivals]({png.name})", "", caption]
    lines += ["", *method_text(meta, runs)]
    shown = json_path.resolve().relative_to(ROOT) if json_path.resolve().is_relative_to(ROOT) else json_path
    lines += [(f"Raw runs: `{json_path.name}` (every chunk's arrival time and size). "
              f"`.venv/bin/python scripts/bench_report.py {shown}` rewrites this page from it."), ""]
    md = json_path.with_suffix(".md")
    md.write_text("\n".join(lines) + hand_written_sections(md))


# Sections other scripts measure (bench_cold_start.py, bench_burst.py, bench_formats.py, bench_kernels.py,
# bench_concurrency.py, bench_realtime.py), after this script's own: kept as they are when the page is rewritten.
HAND_WRITTEN = ("\n## Cold start\n", "\n## Bursts\n", "\n## Formats\n", "\n## Kernels\n", "\n## Concurrency\n", "\n## Realtime\n")


def hand_written_sections(md: Path) -> str:
    text = md.read_text() if md.exists() else ""
    starts = [text.index(heading) for heading in HAND_WRITTEN if heading in text]
    return text[min(starts):] if starts else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="benchmarks.json written by scripts/bench.py")
    write(parser.parse_args(argv).json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
