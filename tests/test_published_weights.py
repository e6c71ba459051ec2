"""The published weights as Baseten mounts them.

The session's server (conftest `server`) runs scripts/serve.py on the tiny checkpoint in the published
layout, from a read-only bind mount: it must stream, and model.pth must stay byte for byte what it was.
Where `make serve` downloads the weights itself, each file's size is checked before anything loads it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
import serve
import yaml
from conftest import PYTHON, ROOT, TOKENS, sha256
from make_checkpoint import pickled_globals

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
WEIGHTS = CONFIG["weights"][0]
REPO, _, REVISION = WEIGHTS["source"].removeprefix("hf://").partition("@")
PUBLISHED_MODEL_BYTES = 1_867_929_118


def test_the_server_streams_from_a_read_only_mount_and_leaves_model_pth_unchanged(server, weights):
    if not weights.read_only:
        pytest.skip(f"the session's weights are not on a read-only mount: {weights.why_writable}")
    assert os.statvfs(weights.directory).f_flag & os.ST_RDONLY
    assert "TTS.tts.models.xtts.XttsArgs" in pickled_globals(weights.directory / "model.pth")  # the published layout
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    assert f"XTTS_CHECKPOINT_DIR={weights.directory}".encode() in environ

    with requests.post(server.predict_url, json={"text": "Read-only weights.", "chunk_size": 10}, stream=True, timeout=120) as response:
        assert response.status_code == 200
        pcm = b"".join(response.iter_content(chunk_size=None))
    assert np.frombuffer(pcm, "<i2").size >= TOKENS * 1024 * 0.9

    assert sha256(weights.directory / "model.pth") == weights.model_sha256
    ready = [line for line in server.log.read_text().splitlines() if "ready in" in line]
    assert ready and "model.pth memory-mapped" in ready[0], ready


@pytest.fixture()
def cached(tmp_path, monkeypatch) -> Path:
    """A weights cache for the pinned revision, as a finished download leaves it, with small files."""
    monkeypatch.setattr(serve, "WEIGHTS_CACHE", tmp_path / "xtts-streaming")
    target = tmp_path / "xtts-streaming" / f"{REPO.replace('/', '--')}@{REVISION}"
    target.mkdir(parents=True)
    for name in WEIGHTS["allow_patterns"]:
        (target / name).write_bytes(b"x" * 100)
    with open(target / "model.pth", "wb") as model:  # sparse: the published size without using the disk
        model.truncate(PUBLISHED_MODEL_BYTES)
    (target / serve.SIZES_FILE).write_text(json.dumps({n: 100 for n in WEIGHTS["allow_patterns"] if n != "model.pth"}))
    return target


def test_the_pinned_revision_is_checked_against_the_published_model_size():
    assert serve.KNOWN_SIZES[REVISION] == {"model.pth": PUBLISHED_MODEL_BYTES}


def test_cached_weights_of_the_published_sizes_are_used(cached):
    assert serve.published_weights(WEIGHTS) == cached


@pytest.mark.parametrize("name", ["model.pth", "vocab.json"])
def test_a_cached_file_of_another_size_stops_before_loading(cached, name):
    with open(cached / name, "r+b") as damaged:
        damaged.truncate(50)
    with pytest.raises(SystemExit) as stopped:
        serve.published_weights(WEIGHTS)
    message = str(stopped.value)
    assert f"{cached / name} is 50 bytes, not the published" in message and f"Delete {cached}" in message
    assert message.count(" is ") == 1  # only the damaged file is named


def test_make_serve_exits_on_a_wrong_size_without_loading(cached, tmp_path):
    """Through scripts/serve.py, as `make serve` runs it with no XTTS_CHECKPOINT_DIR."""
    with open(cached / "model.pth", "r+b") as damaged:
        damaged.truncate(PUBLISHED_MODEL_BYTES - 1)
    env = {k: v for k, v in os.environ.items() if k != "XTTS_CHECKPOINT_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    result = subprocess.run(
        [PYTHON, "scripts/serve.py", "--port", "9"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert f"model.pth is {PUBLISHED_MODEL_BYTES - 1:,} bytes, not the published {PUBLISHED_MODEL_BYTES:,}" in result.stderr
    assert "loading XTTS" not in result.stderr + result.stdout
