"""Float audio from XTTS to the bytes on the wire: 16-bit little-endian PCM, optionally behind a WAV header."""

from __future__ import annotations

import struct
import numpy as np

SAMPLE_RATE = 24000
SAMPLE_WIDTH = 2  # bytes: s16
CHANNELS = 1

# A streamed WAV's length is unknown when its header is sent; 0xFFFFFFFF is the customary
# "until end of stream" size that ffmpeg, browsers and Python's wave module accept.
_UNKNOWN_SIZE = 0xFFFFFFFF


def pcm16(samples: np.ndarray) -> bytes:
    """Clip float audio to [-1, 1] and encode it as little-endian int16."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int = SAMPLE_RATE, data_bytes: int | None = None) -> bytes:
    """A 44-byte PCM WAV header; sizes say "unknown" when data_bytes is None (streaming)."""
    # Hand-written because the stdlib wave module needs a seekable file to write a header.
    data_size = _UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff_size = _UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    byte_rate = sample_rate * CHANNELS * SAMPLE_WIDTH
    return (
        struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE")
        + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, CHANNELS, sample_rate, byte_rate, CHANNELS * SAMPLE_WIDTH, 16)
        + struct.pack("<4sI", b"data", data_size)
    )
