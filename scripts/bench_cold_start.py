#!/usr/bin/env python
"""Cold start on the real-size checkpoint: what a scale-to-zero deployment pays on its first request.

For each case, `--runs` times, each in a fresh process, the checkpoint on a read-only bind mount as
Baseten mounts it, and its files evicted from the page cache first (posix_fadvise, these files only):

- server: scripts/serve.py started, its health route polled every 0.1 s until 200; peak RSS is the
  server's VmHWM at that moment;
- load: a process that imports the Model class (torch, transformers, coqui-tts, ...) and runs its
  load(), which reports its steps (model/checkpoint.py LoadTimes); peak RSS from getrusage. It runs
  with config.yaml's environment_variables, as the server does.

Cases: "before" loads with coqui-tts's Xtts.load_checkpoint as model/checkpoint.py did before
issue 11, on the plain layout (on the published layout it rewrites model.pth, and on a read-only
mount it fails); "after" is model/checkpoint.py, on each layout. `--before-root` is a copy of the
repository at the old commit, for the "before" server (e.g. `git archive 4ec6fb7 | tar -x -C DIR`
and a `.venv` link); without it the before server case is left out.

`--variants` instead measures the weights step's parts, each way, in fresh processes: random init
or none, torch.load memory-mapped or not, load_state_dict copying or assigning; then every
parameter read once (what inference does first), so mapped pages are paid for too.

    .venv/bin/python scripts/bench_cold_start.py --published DIR --plain DIR [--before-root DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from local_server import free_port, read_only_mount, stop


def evict(directory: Path) -> None:
    """Drop these files' pages from the page cache, so each run reads them from disk."""
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def memory_mb(status: str) -> dict[str, float]:
    fields = dict(re.findall(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+) kB", status, re.MULTILINE))
    return {key: int(value) / 1024 for key, value in fields.items()}


def run_server(directory: Path, root: Path, log: Path) -> dict:
    port = free_port()
    env = {**os.environ, "XTTS_CHECKPOINT_DIR": str(directory), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "scripts/serve.py", "--port", str(port)], cwd=root, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    import requests

    try:
        while time.monotonic() - started < 900:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/v1/models/model", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            raise TimeoutError("not healthy in 900 s")
        seconds = time.monotonic() - started
        memory = memory_mb(Path(f"/proc/{process.pid}/status").read_text())
    finally:
        stop(process)
    ready = next(line for line in log.read_text().splitlines() if "ready in" in line)
    with contextlib.suppress(ValueError, KeyError):
        ready = json.loads(ready)["message"]
    return {"health_200_s": seconds, "ready": ready, **memory}


def coqui_load_checkpoint(directory: Path, device, times):
    """How model/checkpoint.py loaded before issue 11: Xtts(config), then coqui-tts's load_checkpoint."""
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(directory / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(directory), eval=True)
    times.lap("weights")
    return model.to(device)


def child_load(directory: Path, loader: str) -> dict:
    """In a fresh process: import the Model class, then run its load()."""
    started = time.perf_counter()
    from truss.base.truss_config import TrussConfig

    import model.model as adapter

    imports = time.perf_counter() - started
    if loader == "before":
        adapter.load_xtts = coqui_load_checkpoint
    os.environ["XTTS_CHECKPOINT_DIR"] = str(directory)
    instance = adapter.Model(config=TrussConfig.from_yaml(ROOT / "config.yaml").to_dict(verbose=True), data_dir=ROOT / "data")
    loading = time.perf_counter()
    instance.load()
    total = time.perf_counter() - loading
    memory = memory_mb(Path("/proc/self/status").read_text())
    return {
        "imports_s": imports, "load_s": total, **{f"{k}_s": v for k, v in instance.load_times.steps.items()},
        "mmap": instance.load_times.mmap, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **memory,
    }


def child_variant(directory: Path, init: str, mmap: bool, assign: bool) -> dict:
    """The weights step one way: build (random init or not), torch.load, load_state_dict, first read."""
    import torch
    from transformers.initialization import no_init_weights
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    from model.checkpoint import PUBLISHED_PICKLE_CLASSES

    config = XttsConfig()
    config.load_json(str(directory / "config.json"))
    times, last = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        times[name], last = time.perf_counter() - last, time.perf_counter()

    if init == "random":
        model = Xtts(config)
    else:
        with no_init_weights():
            model = Xtts(config)
    lap("build_s")
    with torch.serialization.safe_globals(PUBLISHED_PICKLE_CLASSES):
        state = torch.load(directory / "model.pth", map_location="cpu", weights_only=True, mmap=mmap)["model"]
    lap("torch_load_s")
    model.load_state_dict(state, strict=True, assign=assign)
    del state
    lap("load_state_dict_s")
    with torch.no_grad():
        sum(float(p.sum()) for p in model.parameters())
    lap("first_read_s")
    return {**times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **memory_mb(Path("/proc/self/status").read_text())}


def config_environment() -> dict[str, str]:
    """config.yaml's environment_variables (jemalloc, OpenMP waiting, ...), as the server starts with them."""
    import yaml

    wanted = yaml.safe_load((ROOT / "config.yaml").read_text()).get("environment_variables") or {}
    return {key: str(value) for key, value in wanted.items()}


def in_child(args: list[str], directory: Path) -> dict:
    evict(directory)
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(args), str(directory)],
        capture_output=True, text=True, check=False, timeout=900, env={**config_environment(), **os.environ},
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published", type=Path, help="real-size checkpoint, published layout")
    parser.add_argument("--plain", type=Path, help="real-size checkpoint, plain layout")
    parser.add_argument("--before-root", type=Path, help="the repository before issue 11, for the before server")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", action="store_true", help="the weights step's parts instead")
    parser.add_argument("--only", default="server,load", help="which measurements: server, load")
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("directory", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        result = child_load(args.directory, spec[1]) if spec[0] == "load" else child_variant(args.directory, *spec[1:])
        print(json.dumps(result))
        return 0

    mounts = {layout: path for layout, path in (("published", args.published), ("plain", args.plain)) if path}
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        with contextlib.ExitStack() as stack:
            mounted = {layout: stack.enter_context(read_only_mount(path, scratch / f"mount-{layout}"))
                       for layout, path in mounts.items()}
            if args.variants:
                plan = [(f"{init} init, {'mmap' if mmap else 'read'}, {'assign' if assign else 'copy'}",
                         ["variant", init, mmap, assign])
                        for init, mmap, assign in [("random", False, False), ("none", False, False),
                                                   ("none", True, False), ("none", True, True)]]
                layout = "published" if "published" in mounted else "plain"
                for i in range(args.runs):  # interleaved, so a slow spell of the shared CPU hits every variant
                    for name, spec in plan:
                        results.setdefault(name, []).append(in_child(spec, mounted[layout]))
                        print(name, results[name][-1], file=sys.stderr)
            else:
                cases = [(f"{when}, {layout}", when, layout) for when, layout in
                         [("before", "plain"), ("after", "plain"), ("after", "published")] if layout in mounted]
                for i in range(args.runs):
                    for name, when, layout in cases:
                        run = {}
                        if "load" in args.only:
                            run.update(in_child(["load", when], mounted[layout]))
                        root = ROOT if when == "after" else args.before_root
                        if "server" in args.only and root is not None:
                            evict(mounted[layout])
                            server = run_server(mounted[layout], root, scratch / "server.log")
                            run.update({f"server_{k}": v for k, v in server.items()})
                        results.setdefault(name, []).append(run)
                        print(name, run, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results, args.variants))
    return 0


def table(results: dict[str, list[dict]], variants: bool) -> str:
    def cell(runs: list[dict], key: str, fmt: str = "{:.1f}") -> str:
        value = median(runs, key)
        return "n/a" if value is None else fmt.format(value)

    if variants:
        keys = ["build_s", "torch_load_s", "load_state_dict_s", "first_read_s", "peak_rss_mb", "RssAnon", "RssFile"]
        lines = [("| weights step | build | torch.load | load_state_dict | first read of every parameter | "
                 "peak RSS (MB) | anon / file RSS after (MB) |"), "|---" * 7 + "|"]
        for name, runs in results.items():
            c = [cell(runs, k, "{:.2f}" if k.endswith("_s") else "{:.0f}") for k in keys]
            lines.append(f"| {name} | {c[0]} s | {c[1]} s | {c[2]} s | {c[3]} s | {c[4]} | {c[5]} / {c[6]} |")
        return "\n".join(lines)
    lines = [("| case | start to health 200 (serve.py) | server peak RSS (MB) | imports | load() | of which: files + build + "
             "weights | voices | warm-up | load() peak RSS (MB) | anon / file RSS after load (MB) |"), "|---" * 10 + "|"]
    for name, runs in results.items():
        weights = [{"w": sum(r.get(k, 0) for k in ("files_s", "build_s", "weights_s", "to device_s"))} for r in runs]
        lines.append(
            f"| {name} | {cell(runs, 'server_health_200_s')} s | {cell(runs, 'server_VmHWM', '{:.0f}')} | "
            f"{cell(runs, 'imports_s')} s | {cell(runs, 'load_s')} s | {cell(weights, 'w')} s | {cell(runs, 'voices_s')} s | "
            f"{cell(runs, 'warm-up_s')} s | {cell(runs, 'peak_rss_mb', '{:.0f}')} | "
            f"{cell(runs, 'RssAnon', '{:.0f}')} / {cell(runs, 'RssFile', '{:.0f}')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
