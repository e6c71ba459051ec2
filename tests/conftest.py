"""Shared fixtures: one tiny random-weight checkpoint, one loaded Model and one local server per session."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import io
import os
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from local_server import MountError, free_port, read_only_mount, stop, wait_healthy
from make_checkpoint import build_checkpoint
from truss.base.truss_config import TrussConfig

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Every utterance of the test checkpoint is exactly this many GPT tokens (see make_checkpoint.py).
TOKENS = 40


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable tiny checkpoint in the published layout (model.pth pickles the config objects)."""
    return build_checkpoint(tmp_path_factory.mktemp("tiny"), size="tiny", max_tokens=TOKENS)


def sharpen_attention(xtts, factor: float = 10.0) -> None:
    """Scale the GPT's attention projections. Random weights at init scale attend almost uniformly and
    add little to the residual, so a decoder that attended to the wrong positions (another stream's,
    or padding) still sampled the right tokens; the trained model's attention is sharp. At 10x, the
    engine tests fail without the length mask (they pass at 1x)."""
    with torch.no_grad():
        for block in xtts.gpt.gpt.h:
            block.attn.c_attn.weight.mul_(factor)
            block.attn.c_proj.weight.mul_(factor)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Weights:
    """The tiny checkpoint as the model and the server see it: `directory`, read-only when `read_only`."""

    directory: Path
    read_only: bool
    why_writable: str = ""
    model_sha256: str = ""


@pytest.fixture(scope="session")
def weights(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weights]:
    """The tiny checkpoint on a read-only bind mount, as in production, or, where mounting is not
    possible (not root), the writable directory (and the read-only tests skip, saying why)."""
    digest = sha256(tiny_checkpoint / "model.pth")
    try:
        with read_only_mount(tiny_checkpoint, tmp_path_factory.mktemp("mount") / "xtts_v2") as mounted:
            yield Weights(mounted, True, model_sha256=digest)
    except MountError as exc:
        yield Weights(tiny_checkpoint, False, why_writable=str(exc), model_sha256=digest)


@pytest.fixture(scope="session")
def truss_config() -> dict:
    """The expanded config, as the runtime hands it to Model(config=...)."""
    return TrussConfig.from_yaml(ROOT / "config.yaml").to_dict(verbose=True)


@pytest.fixture(scope="session")
def model(weights: Weights, truss_config: dict):
    """The real Model, loaded once through its own load(), from the (read-only) weights."""
    from model.model import Model

    previous = os.environ.get("XTTS_CHECKPOINT_DIR")
    os.environ["XTTS_CHECKPOINT_DIR"] = str(weights.directory)
    try:
        instance = Model(config=truss_config, data_dir=ROOT / "data")
        instance.load()
    finally:
        if previous is None:
            os.environ.pop("XTTS_CHECKPOINT_DIR")
        else:
            os.environ["XTTS_CHECKPOINT_DIR"] = previous
    return instance


def collect(response) -> list[tuple[float, bytes]]:
    """Drain a StreamingResponse as the server would, timestamping each chunk."""

    async def drain() -> list[tuple[float, bytes]]:
        return [(time.perf_counter(), chunk) async for chunk in response.body_iterator]

    return asyncio.run(drain())


class Server:
    def __init__(self, port: int, process: subprocess.Popen, log: Path, health: list[int], netns: bool = False):
        self.port, self.process, self.log, self.health_seen, self.netns = port, process, log, health, netns
        self.base = f"http://127.0.0.1:{port}"
        self.predict_url = f"{self.base}/v1/models/model:predict"

    def network(self):
        """Sockets made inside reach this server (in its own network namespace if it has one)."""
        return enter_network_of(self.process.pid) if self.netns else contextlib.nullcontext()


# A network namespace of its own, with a send buffer capped at 64 KB: a client that stops reading fills
# it after one or two chunks, as a slow link does. On the host's loopback, Linux grows a socket's send
# buffer to 4 MB, more than most utterances: a stalled reader there looks like a fast one to the server.
SLOW_LINK = 'ip link set lo up && sysctl -qw net.ipv4.tcp_wmem="4096 16384 65536" && exec "$@"'
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def enter_network_of(pid: int) -> Iterator[None]:
    """Move this thread into process `pid`'s network namespace, and back afterwards (root only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the server's network namespace")
        yield
    finally:
        libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def slow_link_available() -> bool:
    return subprocess.run(["unshare", "-n", "sh", "-c", SLOW_LINK, "sh", "true"], capture_output=True).returncode == 0


@contextlib.contextmanager
def running_server(checkpoint: Path, log: Path, *args: str, slow_link: bool = False) -> Iterator[Server]:
    """scripts/serve.py on a free loopback port, stopped by PID at the end, whatever happened.
    `slow_link`: in a network namespace of its own with small socket buffers (see SLOW_LINK)."""
    if slow_link and not slow_link_available():
        pytest.skip("cannot make a network namespace here (needs root and unshare): the slow-link tests need one")
    port = free_port()
    env = {**os.environ, "XTTS_CHECKPOINT_DIR": str(checkpoint), "PYTHONUNBUFFERED": "1"}
    command = [PYTHON, "scripts/serve.py", "--port", str(port), *args]
    if slow_link:
        command = ["unshare", "-n", "sh", "-c", SLOW_LINK, "sh", *command]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if slow_link:  # until `unshare` has made its namespace, /proc/PID/ns/net is still ours
            deadline = time.monotonic() + 30
            while os.readlink(f"/proc/{process.pid}/ns/net") == os.readlink("/proc/thread-self/ns/net"):
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-2000:]
                time.sleep(0.05)
        with enter_network_of(process.pid) if slow_link else contextlib.nullcontext():
            health = wait_healthy(f"http://127.0.0.1:{port}/v1/models/model", process, log)
        yield Server(port, process, log, health, netns=slow_link)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def server(weights: Weights, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """scripts/serve.py on the tiny checkpoint, served from a read-only mount where one can be made."""
    with running_server(weights.directory, tmp_path_factory.mktemp("server") / "server.log") as running:
        yield running


@pytest.fixture(scope="session")
def realtime(weights: Weights, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The realtime deployment (config.realtime.yaml) on the tiny checkpoint, shared by its test modules
    (tests/test_server_realtime.py, tests/test_livekit.py) to start the runtime once."""
    log = tmp_path_factory.mktemp("realtime") / "server.log"
    # A short idle limit, to see a limit's close through the runtime; every other test keeps talking.
    with running_server(weights.directory, log, "--config", "config.realtime.yaml", "--metadata", "idle_timeout_s=5") as server:
        server.ws_url = f"ws://127.0.0.1:{server.port}/v1/websocket"
        yield server


def request_log_line(server: Server, request_id: str, timeout: float = 30) -> str:
    """The server's end-of-request line for this id (model/scheduler.py), waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log.read_text().splitlines():
            if f"request {request_id} " in line and "s of audio in" in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no end-of-request line for {request_id} in {server.log}")


# Reference clips, made at test time: never downloaded.
def tone_wav(seconds: float = 3.0, rate: int = 22050, f0: float = 140.0, amplitude: float = 0.3, channels: int = 1) -> bytes:
    """A harmonic tone as 16-bit WAV bytes."""
    t = np.arange(int(seconds * rate)) / rate
    signal = amplitude * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3)) / 1.84
    frames = np.repeat((signal * 32767).astype("<i2")[:, None], channels, axis=1)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels), wav.setsampwidth(2), wav.setframerate(rate)
        wav.writeframes(frames.tobytes())
    return buffer.getvalue()


FFMPEG_ARGS = {"flac": ["-f", "flac"], "ogg": ["-c:a", "libvorbis", "-f", "ogg"], "mp3": ["-f", "mp3"]}


def transcode(wav: bytes, fmt: str) -> bytes:
    """WAV bytes re-encoded by the ffmpeg CLI (Debian's, which setup installs)."""
    command = ["ffmpeg", "-loglevel", "error", "-i", "pipe:0", *FFMPEG_ARGS[fmt], "pipe:1"]
    return subprocess.run(command, input=wav, capture_output=True, check=True).stdout


def speech_wav(text: str = "This is a reference voice, made by espeak for the tests.") -> bytes:
    return subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
