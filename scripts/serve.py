#!/usr/bin/env python
"""Serve this Truss package on the real Truss server runtime, without Docker, on 127.0.0.1.

The runtime is the server template inside the installed truss package: the code Baseten runs in the
container (routes, validation, streaming, health). It is laid out as the image build lays it out
(template + `_truss_shared`) and started as its `main.py` starts it, bound to loopback instead of 0.0.0.0.

Weights: XTTS_CHECKPOINT_DIR if set; otherwise the published checkpoint at the revision pinned in
config.yaml, fetched once into ~/.cache/xtts-streaming (where Hugging Face can be reached), each
file's size checked before anything loads it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def config_path(argv: list[str]) -> Path:
    """--config's file (read before argparse: the environment comes from it before the imports below)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return ROOT / argv[i + 1]
        if arg.startswith("--config="):
            return ROOT / arg.partition("=")[2]
    return ROOT / "config.yaml"


def exec_with_config_environment() -> None:
    """Start this process over with config.yaml's environment_variables, as Baseten starts the container
    with them. Setting them later is too late for some: the dynamic loader reads LD_PRELOAD (jemalloc)
    only at exec. execve keeps the PID, so whoever started the server still has it."""
    wanted = yaml.safe_load(config_path(sys.argv[1:]).read_text()).get("environment_variables") or {}
    missing = {key: str(value) for key, value in wanted.items() if key not in os.environ}
    if missing:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **missing})


if __name__ == "__main__":
    exec_with_config_environment()  # before the heavy imports below, which would otherwise run twice

import truss
import uvicorn
from truss.base.truss_config import TrussConfig

RUNTIME_DIR = ROOT / ".venv" / "truss-runtime" / truss.__version__
WEIGHTS_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xtts-streaming"

LICENCE_NOTICE = """\
The XTTS v2 weights are licensed under the Coqui Public Model License 1.0.0 (CPML):
non-commercial use only. See https://coqui.ai/cpml before using them or their output."""

DEMO_NOTICE = """\
DEMO: serving a RANDOM-WEIGHT checkpoint of the XTTS v2 architecture. It makes noise, not speech:
it shows the streaming pipeline (HTTP, chunking, PCM/WAV) working offline. For speech, run `make serve`."""


# The published model.pth at the pinned revision (coqui/XTTS-v2@6c2b0d75, the "v2.0.3" weights of Dec 1 2023).
KNOWN_SIZES = {"6c2b0d75eae4b7047358e3b6bd9325f857d43f77": {"model.pth": 1_867_929_118}}
SIZES_FILE = ".expected-sizes.json"  # the sizes Hugging Face listed at download time, kept beside the files


def wrong_sizes(directory: Path, expected: dict[str, int]) -> list[str]:
    """What is wrong with the files in `directory` whose size is known: one line per file."""
    problems = []
    for name, size in sorted(expected.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{path} is {path.stat().st_size:,} bytes, not the published {size:,}")
    return problems


def listed_sizes(repo: str, revision: str, names: list[str]) -> dict[str, int]:
    """The sizes Hugging Face lists for these files at this revision."""
    from huggingface_hub import HfApi

    return {info.path: info.size for info in HfApi().get_paths_info(repo, names, revision=revision)}


def runtime_dir() -> Path:
    """The server template laid out as the image has it, copied once per truss version."""
    if not (RUNTIME_DIR / "truss_server.py").exists():
        templates = Path(truss.__file__).parent / "templates"
        staging = RUNTIME_DIR.with_name(RUNTIME_DIR.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(templates / "server", staging)
        shutil.copytree(templates / "shared", staging / "_truss_shared")
        staging.rename(RUNTIME_DIR)
    return RUNTIME_DIR


def published_weights(weights: dict) -> Path:
    """Download the pinned published checkpoint once, or exit at once with what to do instead."""
    repo, _, revision = weights["source"].removeprefix("hf://").partition("@")
    target = WEIGHTS_CACHE / f"{repo.replace('/', '--')}@{revision}"
    if not all((target / name).is_file() for name in weights["allow_patterns"]):
        download(repo, revision, weights["allow_patterns"], target)
    listed = json.loads((target / SIZES_FILE).read_text()) if (target / SIZES_FILE).is_file() else {}
    problems = wrong_sizes(target, {**listed, **KNOWN_SIZES.get(revision, {})})
    if problems:
        sys.exit(
            "the cached weights are not the published files, so nothing was loaded:\n  " + "\n  ".join(problems)
            + f"\nDelete {target} to download them again."
        )
    return target


def download(repo: str, revision: str, names: list[str], target: Path) -> None:
    print(LICENCE_NOTICE, file=sys.stderr)
    try:
        urllib.request.urlopen("https://huggingface.co", timeout=5)
    except OSError as exc:
        sys.exit(
            f"cannot reach huggingface.co to fetch {repo}@{revision[:12]} ({exc}).\n"
            "Supply weights with XTTS_CHECKPOINT_DIR=/path/to/checkpoint (model.pth, config.json, vocab.json, "
            "speakers_xtts.pth), or run `make demo` to try the pipeline offline with a random-weight model."
        )
    from huggingface_hub import snapshot_download

    print(f"downloading {repo}@{revision[:12]} (about 1.9 GB, once) to {target}", file=sys.stderr)
    snapshot_download(repo, revision=revision, allow_patterns=names, local_dir=target)
    (target / SIZES_FILE).write_text(json.dumps(listed_sizes(repo, revision, names)))


def fail_streams_after(n_chunks: int) -> None:
    """For tests: once loaded, make every stream raise after n_chunks chunks, as a GPU fault mid-stream
    would (armed after load(): a warm-up that fails now fails the load)."""
    from model.job import Job

    deliver = Job.deliver

    def failing(self, chunk):
        if self.generated_chunks == n_chunks:
            raise RuntimeError(f"failure injected after {n_chunks} chunks (serve.py --fail-after-chunks)")
        deliver(self, chunk)

    arm_after_load(lambda: setattr(Job, "deliver", failing))


def arm_after_load(arm) -> None:
    """Call `arm` once Service.load (warm-up included) has returned."""
    from model.service import Service

    load = Service.load.__func__

    def load_then_arm(cls, *args, **kwargs):
        service = load(cls, *args, **kwargs)
        arm()
        return service

    Service.load = classmethod(load_then_arm)


def fail_every_step_once_loaded() -> None:
    """For tests: after load() (warm-up included) every batched decode step raises, as a GPU in a sticky
    error state would: the generation loop must stop for good and the health route answer 503."""
    from model.decoding import Decoder

    def failing_step(self, *args, **kwargs):
        raise RuntimeError("failure injected into every decode step (serve.py --fail-every-step)")

    arm_after_load(lambda: setattr(Decoder, "step", failing_step))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8080)))
    parser.add_argument("--config", default="config.yaml", help="the package's config: config.realtime.yaml for the websocket")
    parser.add_argument("--demo", action="store_true", help="say that the checkpoint is a random-weight model")
    parser.add_argument("--fail-after-chunks", type=int, metavar="N", help="tests only: every stream fails after N chunks")
    parser.add_argument("--fail-every-step", action="store_true", help="tests only: once loaded, every batched GPT step fails")
    for section in ("metadata", "runtime"):
        parser.add_argument(
            f"--{section}", action="append", default=[], metavar="KEY=VALUE",
            help=f"tests only: override a key of config.yaml's {section} (a YAML value)",
        )
    args = parser.parse_args(argv)

    os.chdir(ROOT)  # the runtime reads model/ and data/ relative to the working directory, as in /app
    config = TrussConfig.from_yaml(ROOT / args.config).to_dict(verbose=True)
    for section, settings in (("model_metadata", args.metadata), ("runtime", args.runtime)):
        for setting in settings:
            key, _, value = setting.partition("=")
            config[section][key] = yaml.safe_load(value)
    if args.demo:
        print(DEMO_NOTICE, file=sys.stderr)
    if not os.environ.get("XTTS_CHECKPOINT_DIR"):
        os.environ["XTTS_CHECKPOINT_DIR"] = str(published_weights(config["weights"][0]))

    sys.path[:0] = [str(runtime_dir()), str(ROOT)]
    if args.fail_after_chunks is not None:
        fail_streams_after(args.fail_after_chunks)
    if args.fail_every_step:
        fail_every_step_once_loaded()
    from _truss_shared import log_config
    from truss_server import TIMEOUT_GRACEFUL_SHUTDOWN, WS_MAX_MSG_SZ_BYTES, TrussServer

    server = TrussServer(args.port, config)
    # TrussServer.start() without its 0.0.0.0 bind: a local server stays on loopback. Its websocket
    # settings too: the message cap, and the pings only when the config sets them.
    transport = config["runtime"].get("transport", {})
    pings = {f"ws_{key}": transport[f"{key}_seconds"] for key in ("ping_interval", "ping_timeout") if transport.get(f"{key}_seconds")}
    uvicorn_server = uvicorn.Server(
        uvicorn.Config(
            server.create_application(),
            http="h11",
            host="127.0.0.1",
            port=args.port,
            workers=1,
            timeout_graceful_shutdown=TIMEOUT_GRACEFUL_SHUTDOWN,
            log_config=log_config.make_log_config("INFO"),
            loop="uvloop",
            ws_max_size=WS_MAX_MSG_SZ_BYTES,
            **pings,
        )
    )
    server._server = uvicorn_server  # the runtime stops this server when load() fails
    websocket = config["runtime"].get("transport", {}).get("kind") == "websocket"
    route = "ws://127.0.0.1:%d/v1/websocket" if websocket else "http://127.0.0.1:%d/v1/models/model:predict"
    logging.getLogger(__name__).info("serving " + route, args.port)
    started = time.monotonic()
    asyncio.run(uvicorn_server.serve())
    if server._model.load_failed:
        print(f"model failed to load after {time.monotonic() - started:.0f} s; see the log above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
