"""A broken checkpoint stops the server: the health route never says ready and the log names the file.

Each fault is a copy of the tiny checkpoint (hard links, the broken file written anew) served by
scripts/serve.py on the real Truss runtime. The six servers start at once and are watched together,
their health route polled until each process has exited.

What truss 0.18.35 does when load() raises (templates/server/{model_wrapper,truss_server}.py):
load() is retried once, a second after the first failure ("Failed to load model. Retrying..."); the
second failure is logged with its traceback ("Exception while loading model") and the model is marked
failed. From then on, whichever comes first ends the process:
- a health check: the route touches ~/inference_server_crashed.txt and SIGKILLs its own process;
- the runtime's shutdown watcher (every 0.5 s) stops uvicorn, and serve.py exits with 1.
Each server here gets its own HOME, so that crash marker is per server and cannot race with others.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import PYTHON, ROOT
from local_server import free_port, stop

CRASH_MARKER = "inference_server_crashed.txt"
DEADLINE_S = 420  # six servers importing torch at once on two shared cores


def _replace(path: Path, data: bytes) -> None:
    """Write `path` anew: it may be a hard link to the shared tiny checkpoint, which must stay intact."""
    path.unlink()
    path.write_bytes(data)


def _missing(name: str) -> Callable[[Path], Path]:
    def apply(directory: Path) -> Path:
        (directory / name).unlink()
        return directory / name

    return apply


def _truncated_model(directory: Path) -> Path:
    path = directory / "model.pth"
    data = path.read_bytes()
    _replace(path, data[: len(data) // 2])
    return path


def _corrupt_model(directory: Path) -> Path:
    path = directory / "model.pth"
    _replace(path, os.urandom(1 << 20))
    return path


def _config_not_json(directory: Path) -> Path:
    path = directory / "config.json"
    _replace(path, path.read_bytes()[:-200] + b",,,")
    return path


def _directory_missing(directory: Path) -> Path:
    shutil.rmtree(directory)
    return directory


# fault: what breaks the copy, returning the path the error must name.
FAULTS: dict[str, Callable[[Path], Path]] = {
    "directory-missing": _directory_missing,
    "model.pth-missing": _missing("model.pth"),
    "model.pth-truncated": _truncated_model,
    "model.pth-corrupt": _corrupt_model,
    "vocab.json-missing": _missing("vocab.json"),
    "config.json-not-json": _config_not_json,
}


@dataclass
class Outcome:
    named: Path  # the path the error must name
    port: int
    home: Path
    log: Path
    process: subprocess.Popen
    health: list[int | str] = field(default_factory=list)  # status codes, or "down" when nothing answered
    seconds: float = 0.0

    def records(self) -> list[dict]:
        """The runtime's JSON log records (serve.py's own lines are plain text)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return found


def final_error(exc_info: str) -> str:
    """The first line of the exception a traceback ends with ("module.Error: message"), what one reads first."""
    lines = exc_info.splitlines()
    last_frame = max(i for i, line in enumerate(lines) if line.startswith("  File "))
    return next(line for line in lines[last_frame + 1 :] if line and not line[0].isspace())


@pytest.fixture(scope="module")
def outcomes(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    started: dict[str, Outcome] = {}
    try:
        for fault, breaks in FAULTS.items():
            base = tmp_path_factory.mktemp(fault)
            directory = base / "checkpoint"
            directory.mkdir()
            for source in tiny_checkpoint.iterdir():
                os.link(source, directory / source.name)
            named = breaks(directory)
            home = base / "home"
            home.mkdir()
            port = free_port()
            env = {
                **os.environ,
                "XTTS_CHECKPOINT_DIR": str(directory),
                "HOME": str(home),
                "PYTHONUNBUFFERED": "1",
            }
            log = base / "server.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [PYTHON, "scripts/serve.py", "--port", str(port)], cwd=ROOT, env=env,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
            started[fault] = Outcome(named, port, home, log, process)

        begin = time.monotonic()
        while time.monotonic() - begin < DEADLINE_S and any(o.process.poll() is None for o in started.values()):
            for outcome in started.values():
                if outcome.process.poll() is not None:
                    outcome.seconds = outcome.seconds or time.monotonic() - begin
                    continue
                try:
                    status = requests.get(f"http://127.0.0.1:{outcome.port}/v1/models/model", timeout=2).status_code
                except requests.RequestException:
                    status = "down"
                outcome.health.append(status)
            time.sleep(0.2)
        for outcome in started.values():
            outcome.seconds = outcome.seconds or time.monotonic() - begin
        yield started
    finally:
        for outcome in started.values():
            stop(outcome.process)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_checkpoint_stops_the_server_and_the_log_names_the_file(outcomes, fault):
    outcome = outcomes[fault]
    log = outcome.log.read_text(errors="replace")
    assert outcome.process.poll() is not None, f"still running after {DEADLINE_S} s:\n{log[-3000:]}"

    # The health route answered while loading, and never said ready.
    assert 503 in outcome.health, outcome.health
    assert 200 not in outcome.health, outcome.health

    # Loaded twice (truss retries once), then given up, the second error logged with the file's path.
    records = outcome.records()
    messages = [r.get("message", "") for r in records]
    assert sum(m.startswith("Failed to load model. Retrying") for m in messages) == 1, messages
    failures = [r for r in records if r.get("message", "").startswith("Exception while loading model")]
    assert len(failures) == 1, messages
    error = final_error(failures[0]["exc_info"])
    assert str(outcome.named) in error, error
    assert not any(m.startswith("ready in") for m in messages)

    # Exited non-zero: killed by its own health route, or stopped by the runtime and serve.py exits 1.
    code = outcome.process.returncode
    if code == -signal.SIGKILL:
        assert (outcome.home / CRASH_MARKER).exists()  # touched by the health route before the kill
    else:
        assert code == 1, (code, log[-3000:])
        assert "model failed to load" in log
    seen = sorted(set(map(str, outcome.health)))
    print(f"{fault}: exit {code} after {outcome.seconds:.0f} s; health answers {seen}; {error}")
