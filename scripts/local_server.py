"""Start-up helpers for a local server process (scripts/serve.py), and the read-only weights mount it is
served from as on Baseten: shared by the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> list[int]:
    """Poll the health route until 200; return the status codes seen on the way."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            status = requests.get(url, timeout=2).status_code
            seen.append(status)
            if status == 200:
                return seen
        except (requests.ConnectionError, requests.Timeout):
            # Not up yet, or loading: load() runs beside the event loop and can hold the GIL for
            # seconds at a time (the Chinese and Japanese text tools load in one stretch at warm-up).
            pass
        time.sleep(0.25)
    raise TimeoutError(f"server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class MountError(OSError):
    """A read-only bind mount could not be made here (mounting needs root)."""


@contextmanager
def read_only_mount(source: Path, target: Path) -> Iterator[Path]:
    """`source` seen read-only at `target`, as Baseten mounts the weights; unmounted at the end.

    Unmounted lazily: a process that still maps model.pth (the in-process model) keeps it until it exits."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        bind = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:  # no mount(8)
        raise MountError(str(exc)) from exc
    if bind.returncode != 0:
        raise MountError(f"cannot bind-mount {source}: {bind.stderr.strip() or bind.returncode}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], capture_output=True, text=True, check=False)
        if remount.returncode != 0:
            raise MountError(f"cannot make {target} read-only: {remount.stderr.strip() or remount.returncode}")
        yield target
    finally:
        subprocess.run(["umount", "--lazy", str(target)], check=True)
