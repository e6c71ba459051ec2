"""End to end over HTTP: scripts/serve.py runs the package on the real Truss runtime; call.py talks to it."""

import json
import os
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from conftest import PYTHON, ROOT, TOKENS
from test_schema import INVALID


def test_health_is_503_while_loading_then_200(server):
    assert server.health_seen[-1] == 200
    assert 503 in server.health_seen  # load() runs after the server is up


def stream(url: str, body: dict) -> tuple[requests.Response, list[tuple[float, int]], float, bytes]:
    started = time.perf_counter()
    arrivals, data = [], bytearray()
    with requests.post(url, json=body, stream=True, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=None):
            arrivals.append((time.perf_counter() - started, len(chunk)))
            data += chunk
    return response, arrivals, time.perf_counter() - started, bytes(data)


def test_the_server_process_starts_with_config_yaml_environment_variables(server):
    """As the container does: LD_PRELOAD (jemalloc) takes effect only when the process starts, so
    setting os.environ later would look right and do nothing. /proc's environ is what the process started with."""
    wanted = yaml.safe_load((ROOT / "config.yaml").read_text())["environment_variables"]
    raw = (Path(f"/proc/{server.process.pid}/environ")).read_bytes().decode()
    started_with = dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)
    assert wanted and {key: started_with.get(key) for key in wanted} == {
        key: os.environ.get(key, str(value)) for key, value in wanted.items()
    }


def test_the_server_runs_on_jemalloc(server):
    """The allocator that keeps memory flat (config.yaml's LD_PRELOAD): mapped into the server process,
    which is what the loader did with the variable, not what the variable says."""
    mapped = {line.split()[-1] for line in Path(f"/proc/{server.process.pid}/maps").read_text().splitlines()
              if len(line.split()) >= 6}
    assert any(Path(path).name.startswith("libjemalloc.so") for path in mapped), sorted(mapped)[:20]


def test_the_tutorial_request_streams_pcm_incrementally(server):
    response, arrivals, total, pcm = stream(server.predict_url, {"text": "Hello world, streaming.", "chunk_size": 10})
    assert response.headers["content-type"].startswith("audio/pcm")
    assert response.headers.get("transfer-encoding") == "chunked"
    assert len(arrivals) >= 3 and len(pcm) % 2 == 0
    first_chunk = arrivals[0][0]
    assert first_chunk < 0.5 * total, arrivals  # 40 tokens in chunks of 10: the first of 4+ decodes
    assert np.frombuffer(pcm, "<i2").size >= TOKENS * 1024 * 0.9


def test_call_py_writes_a_valid_wav(server, tmp_path):
    out = tmp_path / "hello.wav"
    result = subprocess.run(
        [PYTHON, "call.py", "Hello world.", "--url", server.predict_url, "--no-play", "--out", str(out), "--seed", "7"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    data_bytes = out.stat().st_size - 44
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert wav.getnframes() / wav.getframerate() == pytest.approx(data_bytes / 48000)
        assert wav.getnframes() >= TOKENS * 1024 * 0.9
    assert "first audio" in result.stderr.lower()


@pytest.mark.parametrize(
    "raw,says",
    [(b"not json", "`__root__`: Expecting value"), (b"[1, 2]", "valid dictionary")]
    + [(json.dumps(body).encode(), f"`{field}`") for body, field in INVALID]
    + [
        (b'{"text": "hi", "speaker": "Nobody"}', "`speaker`: unknown speaker 'Nobody'; known voices include"),
        (b'{"text": "hi", "speaker": "../../../etc/passwd"}', "`speaker`: unknown speaker"),  # a name, never a path
        (b'{"text": "' + b"word" * 300 + b'"}', "`text`: a sentence is"),  # past XTTS's 400-token assertion
        ('{"text": "?! \u2026 \U0001F600"}'.encode(), "`text`: nothing to speak"),
    ],
)
def test_bad_requests_get_a_400_json_error_naming_the_field_and_no_audio(server, raw, says):
    response = requests.post(server.predict_url, data=raw, timeout=30)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert says in response.json()["error"]


def test_the_log_has_a_prefix_of_the_text_and_its_length_never_all_of_it(server):
    secret = "My account number is 4929 1234 5678 9012 and my PIN is 4321."
    response = requests.post(server.predict_url, json={"text": secret, "seed": 2}, timeout=120)
    assert response.status_code == 200
    log = server.log.read_text()
    assert f"{len(secret)} chars ('{secret[:24]}'..." in log
    # Not "9012" alone: a random 12-hex request id on the log contains it now and then (it did once).
    assert secret[24:] not in log and "5678 9012" not in log and "PIN" not in log
