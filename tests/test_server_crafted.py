"""Crafted requests over HTTP on the real runtime (issue 13): each costs bounded time and memory, and
the server keeps answering its health route meanwhile. A server of its own, so that the memory a case
adds is not hidden by memory freed by earlier tests and kept by the allocator."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import running_server
from crafted import ID3_PLAYLIST, adts_aac, b64, flac_declaring, flac_streamed, tone_wav, wav_with

MEMORY_LIMIT_MB = 300  # issue 13: what one clip under 10 MB of base64 may add to the server's peak
CLIP_SECONDS_LIMIT = 10.0  # ... and how long it may take to answer, on the tiny checkpoint
HEALTH_LIMIT_S = 1.0


@pytest.fixture(scope="module")
def own_server(tiny_checkpoint, tmp_path_factory):
    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("crafted") / "server.log") as server:
        # One ordinary request and one clone first: one-time allocations are not a case's.
        for body in ({"text": "Warm up."}, {"text": "Warm up.", "speaker_wav": b64(tone_wav(2.0, rate=44100))}):
            requests.post(server.predict_url, json=body, timeout=120).raise_for_status()
        yield server


def vm_mb(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


class Watch:
    """While a request runs: the server's peak resident memory (VmHWM, reset through clear_refs when the
    request starts, as scripts/bench.py does) and the health route's slowest answer."""

    def __init__(self, server):
        self.server, self.pid = server, server.process.pid
        self.health_s, self.growth_mb = 0.0, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._health)

    def _health(self):
        while not self._done.is_set():
            started = time.perf_counter()
            requests.get(f"{self.server.base}/v1/models/model", timeout=60).raise_for_status()
            self.health_s = max(self.health_s, time.perf_counter() - started)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        time.sleep(0.1)  # a first health answer before the request
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.base = vm_mb(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc):
        self.growth_mb = vm_mb(self.pid, "VmHWM") - self.base
        self._done.set()
        self._thread.join()


def post_and_time(server, body: dict, read_body: bool = True) -> tuple[requests.Response, float]:
    """The response and the seconds until its status and headers: every check runs before them."""
    started = time.perf_counter()
    response = requests.post(server.predict_url, json=body, stream=True, timeout=60)
    answered = time.perf_counter() - started
    if read_body or response.status_code != 200:
        response.content  # noqa: B018
    response.close()  # a 200 not read: the client leaves, and the server stops generating
    return response, answered


@pytest.mark.parametrize("split", [False, True], ids=["one-sentence", "split"])
@pytest.mark.parametrize(
    "run", ["7" * 4000, "$7" * 2000, "1,5€ " * 800], ids=["4000-digits", "dollar-digits", "euro-decimals"]
)
def test_text_of_any_content_is_checked_in_bounded_time_while_health_answers(own_server, run, split):
    # Before: 4,000 digits in one sentence took over a minute to check, holding the GIL: the health
    # route timed out. As one sentence each is refused (too many tokens); split, each is spoken.
    with Watch(own_server) as watch:
        response, answered = post_and_time(own_server, {"text": run, "enable_text_splitting": split}, read_body=False)
    assert response.status_code == (200 if split else 400), response.text
    # Issue 13's target is 1 s to check on these machines; the margin is for other tests' load.
    assert answered < 3.0, answered
    assert watch.health_s < HEALTH_LIMIT_S, watch.health_s


@pytest.mark.parametrize(
    "name,clip,status,says",
    [
        ("12011-hz", lambda: tone_wav(3.0, rate=12011), 200, None),
        ("hour-in-header", lambda: flac_declaring(3600.0), 400, "3600.0 s of audio is too long"),
        ("hour-streamed", lambda: flac_streamed(3600.0), 400, "over 60 s of audio is too long"),
        ("59-s-96-khz-stereo", lambda: flac_declaring(59.0, rate=96000), 400, "silent"),
    ],
    ids=["12011-hz", "hour-in-header", "hour-streamed", "59-s-96-khz-stereo"],
)
def test_a_clip_adds_bounded_memory_and_time(own_server, name, clip, status, says):
    # Before: the 12,011 Hz WAV added 4.3 GB (torchaudio's resampling kernel), the hour of FLAC 2.6 GB.
    body = {"text": "Hello there.", "speaker_wav": b64(clip())}
    with Watch(own_server) as watch:
        response, answered = post_and_time(own_server, body)
    assert response.status_code == status, response.text
    if says:
        assert says in response.json()["error"]
    assert watch.growth_mb < MEMORY_LIMIT_MB, watch.growth_mb
    assert answered < CLIP_SECONDS_LIMIT, answered
    assert watch.health_s < HEALTH_LIMIT_S, watch.health_s


@pytest.mark.parametrize(
    "clip,says",
    [
        (wav_with(float("nan")), "not finite"),
        (wav_with(float("inf")), "not finite"),
        (ID3_PLAYLIST, "an ID3 tag not followed by MP3 audio"),
        (adts_aac(), "ADTS AAC, which is not accepted"),
    ],
    ids=["nan", "inf", "id3-playlist", "adts-aac"],
)
def test_a_clip_that_would_fail_after_the_200_or_decode_as_something_else_is_refused(own_server, clip, says):
    # Before: NaN and inf were accepted (NaN then broke the stream after its 200, and every later
    # request with that voice_id); the playlist failed in FFmpeg by chance; ADTS AAC was decoded as MP3.
    response = requests.post(own_server.predict_url, json={"text": "Hello.", "speaker_wav": [b64(tone_wav()), b64(clip)]}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"].startswith("`speaker_wav[1]`: ") and says in response.json()["error"]


def new_log_lines(server, before: int) -> list[str]:
    time.sleep(0.5)  # the runtime's log handler flushes per record; give it a moment
    return server.log.read_text().splitlines()[before:]


@pytest.mark.parametrize(
    "body,field",
    [({"text": "Hello.", "speaker": "x" * 100_000}, "speaker"), ({"text": "7" * 4000}, "text")],
    ids=["long-speaker", "long-sentence"],
)
def test_a_client_error_is_one_info_line_and_echoes_a_short_prefix(own_server, body, field):
    before = len(own_server.log.read_text().splitlines())
    response = requests.post(own_server.predict_url, json=body, timeout=60)
    assert response.status_code == 400 and response.json()["error"].startswith(f"`{field}`: ")
    assert len(response.text) < 400
    lines = new_log_lines(own_server, before)
    ours = [line for line in lines if f"request refused (400): `{field}`: " in line]
    assert len(ours) == 1 and '"levelname": "INFO"' in ours[0] and len(ours[0]) < 800, ours
    assert not [line for line in lines if '"levelname": "ERROR"' in line or "Traceback" in line], lines


def test_a_schema_error_logs_no_error_either(own_server):
    # Truss answers these itself before predict() ("Input Parsing Error"); it logs no ERROR for them.
    before = len(own_server.log.read_text().splitlines())
    response = requests.post(own_server.predict_url, data=json.dumps({"text": "Hi.", "chunk_size": "20"}), timeout=60)
    assert response.status_code == 400 and "Input Parsing Error" in response.json()["error"]
    lines = new_log_lines(own_server, before)
    assert not [line for line in lines if '"levelname": "ERROR"' in line or "Traceback" in line], lines
