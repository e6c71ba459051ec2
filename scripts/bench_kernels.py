#!/usr/bin/env python
"""The kernels under a decode step, measured against their alternatives in one run (CPU):

- the GPT's 30 layers of linear products (XTTS's shapes: 1024->3072, 1024->1024, 1024->4096, 4096->1024)
  at 1 to 64 rows: stock `torch.addmm` (what HF's Conv1D runs), oneDNN's linear on weights packed once
  (model/packing.py), and `torch.compile` with freezing (its compile time included);
- whether a row's result depends on how many rows share the product (bit for bit), for each;
- HiFiGAN (XTTS's vocoder, the same in every checkpoint) on windows of one length: one call for 4
  windows against 4 calls.

    .venv/bin/python scripts/bench_kernels.py            # into docs/benchmarks.md ("Kernels") and docs/benchmarks-kernels.json
    .venv/bin/python scripts/bench_kernels.py --quick    # fewer repeats, no compile, into /tmp/xtts-bench-quick

Random weights: the kernels' speed and arithmetic do not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import bench  # the server's environment (threads, allocator) before torch loads
import torch

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Kernels"
SHAPES = [(1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024)]  # one GPT layer's products, (in, out)
LAYERS = 30
ROWS = (1, 2, 4, 8, 16, 32, 64)


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one unmeasured call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def linear_stack(layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`layers` layers' worth of distinct weights in Conv1D's [in, out] layout, so nothing stays in cache."""
    return [(torch.randn(i, o) * 0.02, torch.randn(o) * 0.01) for _ in range(layers) for i, o in SHAPES]


def measure_linears(repeats: int, compile_too: bool) -> dict:
    from model.packing import PackedLinear

    # A third of the layers, measured, times 3: the 30 layers' weights would not change the per-byte cost.
    measured = LAYERS // 3
    weights = linear_stack(measured)
    packed = [PackedLinear(w.t(), b) for w, b in weights]
    results: dict = {"rows": list(ROWS), "stock_ms": [], "packed_ms": [], "compiled_ms": [], "compile_s": []}
    for rows in ROWS:
        inputs = {1024: torch.randn(rows, 1024), 4096: torch.randn(rows, 4096)}
        with torch.inference_mode():
            stock = timed(lambda: [torch.addmm(b, inputs[w.shape[0]], w) for w, b in weights], repeats)  # noqa: B023
            fast = timed(lambda: [p(inputs[p.in_features]) for p in packed], repeats)  # noqa: B023
        results["stock_ms"].append(stock * 1000 * LAYERS / measured)
        results["packed_ms"].append(fast * 1000 * LAYERS / measured)
        if compile_too:
            compile_s, run_s = compiled(weights, inputs, repeats)
            results["compiled_ms"].append(run_s * 1000 * LAYERS / measured)
            results["compile_s"].append(compile_s)
        bench.Log()(f"linears, {rows} rows: stock {results['stock_ms'][-1]:.0f} ms, packed {results['packed_ms'][-1]:.0f} ms"
                    + (f", compiled {results['compiled_ms'][-1]:.0f} ms (compile {results['compile_s'][-1]:.0f} s)" if compile_too else ""))
    results["invariant"] = invariance(weights[0], packed[0])
    return results


def compiled(weights, inputs, repeats: int) -> tuple[float, float]:
    """torch.compile with freezing (inductor's weight prepacking) over the same products, at one row count."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    module = torch.nn.ModuleList()
    for w, b in weights:
        layer = torch.nn.Linear(*w.shape)
        layer.weight.data, layer.bias.data = w.t().contiguous(), b
        module.append(layer)
    module.eval()

    def forward(x1024, x4096):
        return [layer(x1024 if layer.in_features == 1024 else x4096) for layer in module]

    torch._dynamo.reset()
    fn = torch.compile(forward)
    started = time.perf_counter()
    with torch.no_grad():
        fn(inputs[1024], inputs[4096])
    compile_s = time.perf_counter() - started
    with torch.no_grad():
        run_s = timed(lambda: fn(inputs[1024], inputs[4096]), repeats)
    return compile_s, run_s


def invariance(weight_bias, packed) -> dict:
    """For each kernel, whether row 0's result is the same bits at every row count."""
    w, b = weight_bias
    x = torch.randn(max(ROWS), w.shape[0])
    with torch.inference_mode():
        stock = [torch.addmm(b, x[:rows], w)[:1] for rows in ROWS]
        fast = [packed(x[:rows])[:1] for rows in ROWS]
    same = lambda outs: all(torch.equal(o, outs[0]) for o in outs)  # noqa: E731
    return {"stock": same(stock), "packed": same(fast),
            "stock_max_diff": max((o - stock[0]).abs().max().item() for o in stock),
            "packed_vs_stock_max_diff": (fast[0] - stock[0]).abs().max().item()}


def measure_vocoder(checkpoint: Path, repeats: int) -> dict:
    """HiFiGAN on 4 windows of 20 GPT tokens each (plus the windowed vocoder's left context)."""
    from model.checkpoint import load_xtts
    from model.vocoder import CONTEXT_FRAMES

    xtts = load_xtts(checkpoint, torch.device("cpu"))
    hd = xtts.hifigan_decoder
    frames = round(20 * 1114 / hd.output_hop_length) + CONTEXT_FRAMES
    z = torch.randn(4, hd.waveform_decoder.conv_pre.in_channels, frames)
    g = torch.randn(4, 512, 1)
    with torch.inference_mode():
        alone = timed(lambda: [hd.waveform_decoder(z[i : i + 1], g=g[i : i + 1]) for i in range(4)], repeats)
        together = timed(lambda: hd.waveform_decoder(z, g=g), repeats)
    bench.Log()(f"vocoder, 4 windows of {frames} frames: 4 calls {alone * 1000:.0f} ms, one call {together * 1000:.0f} ms")
    return {"frames": frames, "four_calls_ms": alone * 1000, "one_call_ms": together * 1000}


def section(data: dict) -> str:
    lin, voc, meta = data["linears"], data["vocoder"], data["meta"]
    lines = [
        SECTION, "",
        f"Written by `scripts/bench_kernels.py`, {meta['started']}; {meta['threads']} torch threads, load average "
        f"{meta['load_before']:.2f} before and {meta['load_after']:.2f} after; commit {meta['commit']}. Medians of "
        f"{meta['repeats']} calls. The GPT's linear products, {LAYERS} layers of XTTS's four shapes (what a decode "
        "step multiplies), at each number of rows (streams in the step, plus prompt rows):",
        "",
        "| rows | stock `addmm` | oneDNN, packed once | `torch.compile` (freezing) | its compile time, 10 layers |",
        "|---|---|---|---|---|",
    ]
    for i, rows in enumerate(lin["rows"]):
        comp = f"{lin['compiled_ms'][i]:.0f} ms | {lin['compile_s'][i]:.0f} s" if lin["compiled_ms"] else "not run | "
        lines.append(f"| {rows} | {lin['stock_ms'][i]:.0f} ms | {lin['packed_ms'][i]:.0f} ms | {comp} |")
    inv = lin["invariant"]
    lines += [
        "",
        f"A row's result at every row count, bit for bit: stock **{'yes' if inv['stock'] else 'no'}** (up to "
        f"{inv['stock_max_diff']:.1e} apart), packed **{'yes' if inv['packed'] else 'no'}**; packed against stock "
        f"{inv['packed_vs_stock_max_diff']:.1e}. The engine uses the packed kernel on CPU (model/packing.py): it "
        "is the fastest at every row count, needs no compile time in `load()` (compiling took seconds per row "
        "count for a third of the layers, the first one longest, and a step meets a new row count whenever a "
        "stream joins or leaves), and keeps a stream's numbers independent of the batch.",
        "",
        f"HiFiGAN on 4 windows of {voc['frames']} frames (20 tokens and the windowed vocoder's left context): "
        f"4 calls {voc['four_calls_ms']:.0f} ms, one batched call {voc['one_call_ms']:.0f} ms "
        f"({voc['one_call_ms'] / voc['four_calls_ms']:.2f}x). The engine batches vocoder windows only where that "
        "pays (`batch_vocoder`, off on CPU).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats, no compile, into /tmp/xtts-bench-quick")
    parser.add_argument("--out", type=Path, help="default docs/ (/tmp/xtts-bench-quick with --quick)")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny",
                        help="for HiFiGAN, which every checkpoint has at full size (default checkpoints/tiny)")
    args = parser.parse_args(argv)
    out = args.out or (Path("/tmp/xtts-bench-quick") if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    repeats = 3 if args.quick else 9
    bench.ensure_checkpoint(args.checkpoint, "tiny", 40, bench.Log())
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": os.getloadavg()[0],
            "threads": torch.get_num_threads(), "repeats": repeats, "commit": bench.commit()}
    data = {"meta": meta, "linears": measure_linears(repeats, compile_too=not args.quick),
            "vocoder": measure_vocoder(args.checkpoint, repeats)}
    meta["load_after"] = os.getloadavg()[0]
    (out / "benchmarks-kernels.json").write_text(json.dumps(data, indent=1))
    bench.write_section(out / "benchmarks.md", SECTION, section(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
