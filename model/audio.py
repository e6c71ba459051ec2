"""Float audio from XTTS to the bytes on the wire: 16-bit little-endian PCM, optionally behind a WAV header."""

from __future__ import annotations

import struct
import numpy as np
import torch

SAMPLE_RATE = 24000
SAMPLE_WIDTH = 2  # bytes: s16
CHANNELS = 1
PCM_MEDIA_TYPE = f"audio/pcm;rate={SAMPLE_RATE};channels={CHANNELS};encoding=s16le"
WAV_MEDIA_TYPE = "audio/wav"

# A streamed WAV's length is unknown when its header is sent; 0xFFFFFFFF is the customary
# "until end of stream" size that ffmpeg, browsers and Python's wave module accept.
_UNKNOWN_SIZE = 0xFFFFFFFF


def to_pcm16(chunk: torch.Tensor) -> bytes:
    """Clip float audio to [-1, 1] and encode it as little-endian int16."""
    samples = chunk.detach().float().cpu().clamp(-1.0, 1.0).numpy()
    return np.round(samples * 32767.0).astype("<i2").tobytes()


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


def media_type(fmt: str) -> str:
    return WAV_MEDIA_TYPE if fmt == "wav" else PCM_MEDIA_TYPE


class PcmEncoder:
    """s16le at 24 kHz, behind a streaming WAV header for `wav`: the scheduler's Encoder for today's formats."""

    sample_rate = SAMPLE_RATE

    def __init__(self, fmt: str):
        self.media_type = media_type(fmt)
        self._header = wav_header() if fmt == "wav" else b""

    def encode(self, chunk: torch.Tensor) -> bytes:
        header, self._header = self._header, b""
        return header + to_pcm16(chunk)

    def finish(self) -> bytes:
        header, self._header = self._header, b""
        return header  # a WAV with no audio is still a WAV
