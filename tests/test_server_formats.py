"""Every format and rate over HTTP on the real Truss runtime (scripts/serve.py, tiny checkpoint): it streams,
decodes with ffprobe/ffmpeg to the codec, rate and length asked for, and resampled PCM joins seamlessly."""

import subprocess
import time

import numpy as np
import pytest
import requests
import soxr
from conftest import PYTHON, ROOT, TOKENS
from test_encoders import CODEC, LAME_START, decode, probe

from model.encoders import FORMAT_RATES

CASES = [(fmt, rate) for fmt, rates in FORMAT_RATES.items() for rate in rates]
# One seed for every request, so each format carries the same audio as the 24 kHz PCM reference.
BODY = {"text": "Every format, streamed while it is made.", "chunk_size": 10, "seed": 15}
MEDIA_TYPES = {"wav": "audio/wav", "mulaw": "audio/PCMU;rate=8000", "alaw": "audio/PCMA;rate=8000",
               "opus": "audio/ogg;codecs=opus", "mp3": "audio/mpeg"}


def fetch(url: str, **fields) -> tuple[requests.Response, bytes, float, float]:
    """The body, when its first bytes arrived and when the last did (seconds from sending)."""
    started = time.perf_counter()
    first, data = None, bytearray()
    with requests.post(url, json={**BODY, **fields}, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        for piece in response.iter_content(chunk_size=None):
            first = first or time.perf_counter() - started
            data += piece
    return response, bytes(data), first, time.perf_counter() - started


@pytest.fixture(scope="module")
def reference(server) -> np.ndarray:
    """Today's default, 24 kHz s16le, as floats in [-1, 1]."""
    response, data, _, _ = fetch(server.predict_url)
    assert response.headers["content-type"] == "audio/pcm;rate=24000;channels=1;encoding=s16le"
    samples = np.frombuffer(data, "<i2")
    assert samples.size >= TOKENS * 1024 * 0.9
    assert np.abs(samples).max() > 300  # random weights make quiet noise (peak about 900), not silence
    return samples / 32767.0


@pytest.mark.parametrize("fmt,rate", CASES, ids=[f"{f}-{r}" for f, r in CASES])
def test_every_format_and_rate_streams_and_decodes(server, reference, fmt, rate):
    response, data, first, total = fetch(server.predict_url, format=fmt, sample_rate=rate)
    assert response.headers["content-type"] == MEDIA_TYPES.get(fmt, f"audio/pcm;rate={rate};channels=1;encoding=s16le")
    assert response.headers["x-sample-rate"] == str(rate)
    # 40 tokens in chunks of 4, 10, 10, 10, 6: the first bytes leave while most of the audio is still to make.
    assert first < 0.5 * total, (first, total)

    native = 48000 if fmt == "opus" else rate  # Ogg Opus decodes at 48 kHz; its header records the input rate
    assert probe(data, fmt, rate) == (CODEC[fmt], native, 1)
    decoded = decode(data, fmt, rate)
    extra = decoded.size - reference.size * native / 24000
    if fmt == "mp3":
        frame = 1152 if rate >= 32000 else 576
        assert LAME_START <= extra <= LAME_START + 2 * frame
    else:
        assert abs(extra) <= 2

    if fmt in ("pcm", "wav"):
        # Seamless joins: the streamed chunks equal one resample of the whole 24 kHz reference, up to the
        # reference's own 16-bit rounding; a resampler restarted at each chunk leaves a step at every join.
        whole = reference if rate == 24000 else soxr.resample(reference.astype(np.float32), 24000, rate, quality="HQ")
        error = np.abs(decoded - np.round(whole * 32767))
        assert error.max() <= 3, (error.max(), np.argmax(error))


@pytest.mark.parametrize("fields,says", [
    ({"format": "opus", "sample_rate": 44100}, "opus carries 8000, 16000, 24000 or 48000 Hz, not 44100"),
    ({"format": "mulaw", "sample_rate": 16000}, "mulaw carries 8000 Hz, not 16000"),
    ({"sample_rate": 11025}, "11025 Hz is not offered; use 8000, 16000, 22050, 24000, 44100 or 48000"),
])
def test_a_combination_a_codec_cannot_carry_is_a_400_naming_the_field_and_what_works(server, fields, says):
    response = requests.post(server.predict_url, json={"text": "hi", **fields}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "`sample_rate`" in error and says in error


@pytest.mark.parametrize("name,fmt,rate,flags", [("speech.ogg", "opus", 16000, ["--sample-rate", "16000"]),
                                                 ("phone.ulaw", "mulaw", 8000, [])])
def test_call_py_saves_an_encoded_format_named_by_out(server, tmp_path, name, fmt, rate, flags):
    out = tmp_path / name
    result = subprocess.run(
        [PYTHON, "call.py", BODY["text"], "--url", server.predict_url, "--no-play", "--out", str(out), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert probe(data, fmt, rate) == (CODEC[fmt], 48000 if fmt == "opus" else rate, 1)
    assert decode(data, fmt, rate).size >= TOKENS * 1024 * 0.9 * (48000 if fmt == "opus" else rate) / 24000
    assert f"saved {out}" in result.stderr and sorted(p.name for p in tmp_path.iterdir()) == [name]
