"""Crafted requests: small inputs a hostile or careless client can send, each aimed at a cost or a
check that used to fail (issue 13). Made at test time with numpy and the ffmpeg CLI, never downloaded.
Shared by the HTTP tests and scripts/bench_crafted.py, which measures each one's time and memory."""

from __future__ import annotations

import base64
import struct
import subprocess

import numpy as np
from conftest import tone_wav


def float_wav(samples: np.ndarray, rate: int = 22050) -> bytes:
    """Mono 32-bit float WAV (format 3), which the `wave` module cannot write."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(seconds: float = 3.0, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * 140.0 * t)


def wav_with(value: float) -> bytes:
    """A 3 s float tone with one sample replaced by `value` (NaN, inf)."""
    samples = tone()
    samples[len(samples) // 2] = value
    return float_wav(samples)


def ffmpeg(*args: str, data: bytes = b"") -> bytes:
    command = ["ffmpeg", "-loglevel", "error", *args]
    return subprocess.run(command, input=data, capture_output=True, check=True, timeout=120).stdout


def flac_declaring(seconds: float, rate: int = 48000, channels: int = 2) -> bytes:
    """A FLAC of `seconds` of silence: tiny on the wire (FLAC stores a constant frame as one value),
    huge decoded. Written to a file, so its header declares the length."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".flac") as out:
        ffmpeg(
            "-y", "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-t", str(seconds),
            "-ac", str(channels), "-c:a", "flac", "-frame_size", "65535", out.name,
        )
        return out.read()


def flac_streamed(seconds: float, rate: int = 48000, channels: int = 2) -> bytes:
    """The same written to a pipe: ffmpeg cannot seek back, so the header leaves the length unknown."""
    return ffmpeg(
        "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-t", str(seconds),
        "-ac", str(channels), "-c:a", "flac", "-frame_size", "65535", "-f", "flac", "pipe:1",
    )


def adts_aac(seconds: float = 3.0) -> bytes:
    return ffmpeg("-i", "pipe:0", "-c:a", "aac", "-f", "adts", "pipe:1", data=tone_wav(seconds))


# An ID3 tag (size 0) and then an HLS playlist: FFmpeg skips the tag when probing and sees the playlist.
ID3_PLAYLIST = b"ID3\x04\x00\x00\x00\x00\x00\x00" + (
    b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
)

# 135 short sentences with numbers: fine one by one, but XTTS's splitter cuts by characters before
# numbers become words, so its 250-character pieces grew past the 400-token limit.
NUMBERED_SENTENCES = " ".join(f"Room {1000 + 7 * i} holds {20 + i % 50} chairs." for i in range(135))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def clip_cases() -> dict[str, bytes]:
    """Every crafted clip, by name."""
    return {
        "wav-12011hz": tone_wav(3.0, rate=12011),
        "flac-hour-declared": flac_declaring(3600.0),
        "flac-hour-streamed": flac_streamed(3600.0),
        # The most data a clip may decode to: 59 s at 96 kHz stereo (about 45 MB as float32).
        "flac-59s-96khz-stereo": flac_declaring(59.0, rate=96000),
        "wav-nan": wav_with(float("nan")),
        "wav-inf": wav_with(float("inf")),
        "id3-hls-playlist": ID3_PLAYLIST,
        "adts-aac": adts_aac(),
    }
