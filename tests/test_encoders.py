"""model/encoders.py on synthetic chunks: every format and rate decodes with the ffmpeg CLI, joins are
seamless, and bytes leave with each chunk. No model needed."""

import io
import struct
import subprocess
import wave

import numpy as np
import pytest
import soxr
import torch

from model.encoders import FORMAT_RATES, encoder_for

# Chunk sizes as the windowed streamer makes them (a short first chunk, then 20 tokens), and an odd tail.
SIZES = (4096, 22272, 22272, 9001)
N = sum(SIZES)
CASES = [(fmt, rate) for fmt, rates in FORMAT_RATES.items() for rate in rates]
RAW = {"pcm": "s16le", "mulaw": "mulaw", "alaw": "alaw"}  # headerless formats: ffmpeg must be told
CODEC = {"pcm": "pcm_s16le", "wav": "pcm_s16le", "mulaw": "pcm_mulaw", "alaw": "pcm_alaw", "opus": "opus", "mp3": "mp3"}
LAME_START = 576 + 529  # LAME's encoder delay plus the decoder's, FFmpeg's `initial_padding` for libmp3lame


def speechlike(n: int = N, seed: int = 0) -> torch.Tensor:
    """A gliding harmonic tone with noise: smooth, so a broken join shows against it."""
    t = np.arange(n) / 24000
    f = 120 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f) / 24000
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.25
    x += np.random.default_rng(seed).standard_normal(n) * 0.01
    return torch.from_numpy(x.astype(np.float32))


def chunked(audio: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(audio, list(SIZES)))


def encode(fmt: str, rate: int, chunks: list[torch.Tensor]) -> list[bytes]:
    encoder = encoder_for(fmt, rate)
    return [encoder.encode(chunk) for chunk in chunks] + [encoder.finish()]


def ffmpeg_input(fmt: str, rate: int) -> list[str]:
    return ["-f", RAW[fmt], "-ar", str(rate), "-ac", "1"] if fmt in RAW else []


def probe(data: bytes, fmt: str, rate: int) -> tuple[str, int, int]:
    """(codec, sample rate, channels) as ffprobe reads the stream."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", *ffmpeg_input(fmt, rate), "-i", "pipe:0",
         "-show_entries", "stream=codec_name,sample_rate,channels", "-of", "csv=p=0"],
        input=data, capture_output=True, check=True,
    ).stdout.decode().strip()
    codec, sample_rate, channels = out.split(",")
    return codec, int(sample_rate), int(channels)


def decode(data: bytes, fmt: str, rate: int) -> np.ndarray:
    """Samples as ffmpeg decodes them, at the codec's own rate (48 kHz for Opus), in int16 units."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", *ffmpeg_input(fmt, rate), "-i", "pipe:0", "-f", "s16le", "pipe:1"],
        input=data, capture_output=True, check=True,
    ).stdout
    return np.frombuffer(out, "<i2").astype(np.float64)


def quiet_runs(samples: np.ndarray, rate: int, floor: float = 30, min_ms: float = 10) -> list[tuple[float, float]]:
    """Where decoded audio is quiet: (start s, length ms) of each run of |sample| <= floor (int16 units) at least min_ms long."""
    quiet = np.r_[0, (np.abs(samples) <= floor).astype(int), 0]
    edges = np.flatnonzero(np.diff(quiet))
    return [(a / rate, (b - a) * 1000 / rate) for a, b in zip(edges[::2], edges[1::2]) if (b - a) * 1000 / rate >= min_ms]


def reference(audio: torch.Tensor, rate: int) -> np.ndarray:
    """The whole utterance resampled in one call, in int16 units: what seamless chunks must add up to."""
    x = audio.numpy()
    if rate != 24000:
        x = soxr.resample(x, 24000, rate, quality="HQ")
    return np.round(np.clip(x, -1, 1) * 32767.0)


@pytest.mark.parametrize("fmt,rate", CASES, ids=[f"{f}-{r}" for f, r in CASES])
def test_every_format_and_rate_decodes_to_the_right_codec_rate_and_length(fmt, rate):
    data = b"".join(encode(fmt, rate, chunked(speechlike())))
    codec, probed_rate, channels = probe(data, fmt, rate)
    native = 48000 if fmt == "opus" else rate  # Ogg Opus always decodes at 48 kHz
    assert (codec, probed_rate, channels) == (CODEC[fmt], native, 1)
    extra = decode(data, fmt, rate).size - N * native / 24000
    if fmt == "mp3":
        # No gapless tag on a stream: LAME's start delay is decoded, and the end is padded to whole frames.
        frame = 1152 if rate >= 32000 else 576
        assert LAME_START <= extra <= LAME_START + 2 * frame
    else:
        assert abs(extra) <= 2  # Opus's pre-skip and end trim are in the Ogg stream: exact, up to rounding


@pytest.mark.parametrize("rate", FORMAT_RATES["pcm"])
def test_chunked_pcm_equals_a_one_shot_resample_of_the_whole(rate):
    audio = speechlike()
    pcm = np.frombuffer(b"".join(encode("pcm", rate, chunked(audio))), "<i2").astype(np.float64)
    want = reference(audio, rate)
    assert pcm.size == want.size
    # Float rounding may move a sample by one step; a restarted resampler at a join costs hundreds.
    assert np.abs(pcm - want).max() <= 1


def test_24khz_pcm_is_todays_bytes_exactly():
    audio = speechlike()
    expected = np.round(np.clip(audio.numpy(), -1, 1) * 32767).astype("<i2").tobytes()
    assert b"".join(encode("pcm", 24000, chunked(audio))) == expected


@pytest.mark.parametrize("rate", [8000, 24000, 44100])
def test_wav_header_leaves_with_the_first_chunk_and_states_the_rate(rate):
    parts = encode("wav", rate, chunked(speechlike()))
    assert parts[0][:4] == b"RIFF" and len(parts[0]) > 44
    with wave.open(io.BytesIO(b"".join(parts))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (rate, 1, 2)
        assert wav.readframes(10**9) == b"".join(parts)[44:]


def test_a_stream_without_audio_is_still_a_valid_wav():
    encoder = encoder_for("wav", 16000)
    data = encoder.finish()
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getframerate() == 16000 and wav.readframes(10) == b""


@pytest.mark.parametrize("fmt", ["mulaw", "alaw"])
def test_g711_is_the_8khz_pcm_quantized_within_the_codecs_own_round_trip_error(fmt):
    audio = speechlike()
    g711 = decode(b"".join(encode(fmt, 8000, chunked(audio))), fmt, 8000)
    pcm = reference(audio, 8000)
    assert g711.size == pcm.size
    # The codec's own round trip of every 16-bit value bounds the error at each magnitude.
    every = np.arange(-32768, 32768, dtype=np.int16)
    encoder = encoder_for(fmt, 8000)
    table = decode(encoder._encode(every.astype(np.float32) / 32767.0), fmt, 8000)
    bound = np.abs(table - np.round(np.clip(every / 32767.0, -1, 1) * 32767))
    allowed = bound[(pcm + 32768).astype(int)]
    assert np.all(np.abs(g711 - pcm) <= allowed + 1)  # +1: float rounding of the resampled sample
    assert 0 < bound.max() <= 700  # half the largest step (1024 in 16-bit units), or μ-law's clip above 32124


def test_g711_silence_is_the_standard_code():
    silence = torch.zeros(2400)
    assert b"".join(encode("mulaw", 8000, [silence])) == b"\xff" * 800
    assert b"".join(encode("alaw", 8000, [silence])) == b"\xd5" * 800


@pytest.mark.parametrize("fmt,rate", [(f, r) for f, r in CASES if f in ("opus", "mp3")])
def test_opus_and_mp3_send_bytes_with_every_full_size_chunk(fmt, rate):
    parts = encode(fmt, rate, chunked(speechlike()))
    # The first chunk may be shorter than the codec's lookahead (LAME holds about 1,700 samples); every
    # 20-token chunk after it must bring bytes, most of the stream leaving before the end.
    assert all(len(part) > 0 for part in parts[1:3]), [len(p) for p in parts]
    assert sum(map(len, parts[:-1])) > 0.7 * sum(map(len, parts))


def test_ogg_opus_header_comes_first_and_records_the_input_rate():
    for rate in FORMAT_RATES["opus"]:
        first = encode("opus", rate, chunked(speechlike()))[0]
        assert first[:4] == b"OggS"
        head = first.index(b"OpusHead")
        channels, _pre_skip, input_rate = struct.unpack_from("<BHI", first, head + 9)
        assert (channels, input_rate) == (1, rate)


def test_chunks_on_any_device_and_dtype_are_accepted():
    chunk = speechlike(4800).to(torch.float64)
    assert encode("pcm", 24000, [chunk])[0] == encode("pcm", 24000, [chunk.float()])[0]


@pytest.mark.parametrize("fmt,rate", [("opus", 22050), ("opus", 44100), ("mulaw", 16000), ("alaw", 24000),
                                      ("pcm", 11025)])
def test_a_combination_the_codec_cannot_carry_is_refused(fmt, rate):
    with pytest.raises(ValueError, match="Hz"):
        encoder_for(fmt, rate)


@pytest.mark.parametrize("fmt,media_type", [
    ("pcm", "audio/pcm;rate=16000;channels=1;encoding=s16le"), ("wav", "audio/wav"),
    ("opus", "audio/ogg;codecs=opus"), ("mp3", "audio/mpeg"),
])
def test_media_types(fmt, media_type):
    encoder = encoder_for(fmt, 16000)
    assert (encoder.media_type, encoder.sample_rate) == (media_type, 16000)
    assert (encoder_for("mulaw", 8000).media_type, encoder_for("alaw", 8000).media_type) == (
        "audio/PCMU;rate=8000", "audio/PCMA;rate=8000")
