"""Cloning, reuse by id and the voice list over HTTP, on the real Truss runtime."""

import base64
import subprocess

import pytest
import requests
from conftest import PYTHON, ROOT, TOKENS, speech_wav, tone_wav
from test_clips import BAD_CLIPS


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(server, body: dict) -> requests.Response:
    return requests.post(server.predict_url, json=body, timeout=120)


def computed_lines(server, voice_id: str) -> int:
    return server.log.read_text().count(f"voice {voice_id}: latents computed")


def test_a_clip_sent_once_is_reused_by_id_without_computing_it_again(server):
    clip = b64(speech_wav("Cloned once, reused by id."))
    first = post(server, {"text": "First.", "speaker_wav": clip, "seed": 1})
    assert first.status_code == 200 and len(first.content) >= TOKENS * 1024 * 2 * 0.9
    voice_id = first.headers["x-voice-id"]
    assert first.headers["x-voice-cache"] == "miss"

    by_id = post(server, {"text": "First.", "voice_id": voice_id, "seed": 1})
    assert (by_id.status_code, by_id.headers["x-voice-id"], by_id.headers["x-voice-cache"]) == (200, voice_id, "hit")
    assert by_id.content == first.content  # same voice, same seed, same audio

    again = post(server, {"text": "Second.", "speaker_wav": clip})
    assert (again.headers["x-voice-id"], again.headers["x-voice-cache"]) == (voice_id, "hit")
    assert computed_lines(server, voice_id) == 1


def test_several_clips_make_one_voice(server):
    body = {"text": "Two clips.", "speaker_wav": [b64(tone_wav(2.0, f0=120.0)), b64(speech_wav())]}
    response = post(server, body)
    assert response.status_code == 200 and len(response.headers["x-voice-id"]) == 32


def test_a_named_voice_carries_no_voice_id(server):
    response = post(server, {"text": "Named.", "speaker": "Viktor Eka"})
    assert response.status_code == 200 and "x-voice-id" not in response.headers


@pytest.mark.parametrize("name,data,says", BAD_CLIPS, ids=[c[0] for c in BAD_CLIPS])
def test_a_bad_clip_gets_a_400_saying_why_and_no_audio(server, name, data, says):
    response = post(server, {"text": "Never spoken.", "speaker_wav": b64(data)})
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error.startswith("`speaker_wav`: ") and says in error


def test_a_bad_clip_among_several_is_named_by_index(server):
    response = post(server, {"text": "Never spoken.", "speaker_wav": [b64(tone_wav(2.0)), b64(tone_wav(0.3))]})
    assert response.status_code == 400 and response.json()["error"].startswith("`speaker_wav[1]`: 0.30 s")


def test_an_unknown_voice_id_gets_a_404_that_says_to_send_the_clip_again(server):
    response = post(server, {"text": "Never spoken.", "voice_id": "0" * 32})
    assert response.status_code == 404
    assert response.json()["error"].startswith("`voice_id`: ") and "send the clip again" in response.json()["error"]


def test_the_voice_list_is_json(server):
    response = post(server, {"list": "voices"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    listing = response.json()
    assert [v["name"] for v in listing["voices"]] == ["Claribel Dervla", "Ana Florence", "Viktor Eka"]
    assert listing["default_speaker"] == "Ana Florence" and len(listing["languages"]) == 17
    assert listing["cloning"]["formats"] == ["flac", "mp3", "ogg", "wav"]


def run_call(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "call.py", "--url", server.predict_url, "--no-play", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )


def test_call_py_clones_prints_the_id_and_reuses_it(server, tmp_path):
    clip = tmp_path / "me.wav"
    clip.write_bytes(speech_wav("Call dot py clones this voice."))
    cloned = run_call(server, "Cloned.", "--voice", str(clip), "--out", str(tmp_path / "a.wav"))
    assert cloned.returncode == 0, cloned.stderr
    voice_id = next(line.split()[2] for line in cloned.stderr.splitlines() if line.startswith("voice id:"))
    assert "cache miss" in cloned.stderr and f"--voice-id {voice_id}" in cloned.stderr

    reused = run_call(server, "Again.", "--voice-id", voice_id, "--out", str(tmp_path / "b.wav"))
    assert reused.returncode == 0 and f"voice id:          {voice_id} (cache hit" in reused.stderr

    listed = run_call(server, "--list-voices")
    assert listed.returncode == 0 and "Ana Florence  [studio] (default)" in listed.stdout
