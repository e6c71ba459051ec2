"""XTTS's float chunks (24 kHz) to the bytes a client asked for, chunk by chunk: PCM or WAV at any offered
rate, G.711 μ-law or A-law, Ogg Opus, MP3.

One Encoder per request. It keeps the resampler's and the codec's state from chunk to chunk, so the joins
between chunks are seamless, and it hands back what it can encode as each chunk arrives: the first
encoded bytes leave with the first chunk, not at the end. Resampling is soxr's ResampleStream; G.711,
Opus and MP3 are FFmpeg's encoders through PyAV.
"""

from __future__ import annotations

from fractions import Fraction
from typing import ClassVar

import av
import numpy as np
import soxr
import torch

from model.audio import SAMPLE_RATE, pcm16, wav_header

FORMATS: tuple[str, ...] = ("pcm", "wav", "mulaw", "alaw", "opus", "mp3")
RATES: tuple[int, ...] = (8000, 16000, 22050, 24000, 44100, 48000)
# The rates each format can carry, the first being the default where 24 kHz is not among them.
FORMAT_RATES: dict[str, tuple[int, ...]] = {
    "pcm": RATES,
    "wav": RATES,
    "mulaw": (8000,),  # G.711 is defined at 8 kHz only
    "alaw": (8000,),
    "opus": (8000, 16000, 24000, 48000),  # libopus also takes 12 kHz, which no client here asked for
    "mp3": RATES,  # MPEG-1, 2 and 2.5 layer III between them cover all six
}
# Speech needs little: ElevenLabs' opus_48000_32, and mono MP3 at bit rates LAME allows at each rate.
OPUS_BIT_RATE = 32000
MP3_BIT_RATES = {8000: 16000, 16000: 32000, 22050: 32000, 24000: 32000, 44100: 64000, 48000: 64000}


def mp3_frame(sample_rate: int) -> int:
    """Samples in one MP3 frame: 1152 for MPEG-1 (32 kHz and up), 576 for MPEG-2 and 2.5. LAME emits its
    first frame once it holds 3 frames of input (2 without the bit reservoir), and keeps about that much
    of the latest audio back until more comes or the stream ends."""
    return 1152 if sample_rate >= 32000 else 576


def default_rate(fmt: str) -> int:
    """24 kHz, XTTS's own rate, unless the format cannot carry it (G.711: 8 kHz)."""
    rates = FORMAT_RATES[fmt]
    return SAMPLE_RATE if SAMPLE_RATE in rates else rates[0]


def rate_error(fmt: str | None, sample_rate: int) -> str | None:
    """Why `fmt` cannot be sent at `sample_rate`, naming the rates that work; None if it can."""
    if sample_rate not in RATES:
        return f"{sample_rate} Hz is not offered; use {_either(RATES)}"
    if fmt is not None and sample_rate not in FORMAT_RATES[fmt]:
        return f"{fmt} carries {_either(FORMAT_RATES[fmt])} Hz, not {sample_rate}"
    return None


def _either(rates: tuple[int, ...]) -> str:
    return " or ".join([", ".join(map(str, rates[:-1])), str(rates[-1])] if len(rates) > 1 else [str(rates[0])])


class Encoder:
    """Resamples each chunk from `source_rate` (XTTS's 24 kHz) and encodes it; subclasses say how the
    samples become bytes. `emitted` counts the bytes handed back so far."""

    media_type: str
    sample_rate: int

    def __init__(self, sample_rate: int, source_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self.emitted = 0
        # soxr keeps the filter's state across chunks: the joined output equals a one-shot resample.
        self._resampler = (
            None if sample_rate == source_rate
            else soxr.ResampleStream(source_rate, sample_rate, 1, dtype="float32", quality="HQ")
        )

    def encode(self, chunk: torch.Tensor) -> bytes:
        """A 1-D float chunk at the source rate (any device) to the bytes to send now."""
        # The device-to-host copy happens here, in the caller's worker thread, never on the event loop.
        return self._samples(np.ascontiguousarray(chunk.detach().to("cpu", torch.float32).numpy().reshape(-1)))

    def encode_pcm(self, pcm: bytes) -> bytes:
        """s16le PCM at the source rate (what a `pcm` encoder made) to the bytes to send now."""
        return self._samples(np.frombuffer(pcm, "<i2").astype(np.float32) / 32767.0)

    def _samples(self, samples: np.ndarray) -> bytes:
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return self._count(self._encode(samples))

    def finish(self) -> bytes:
        """The end of the stream: what the resampler and the codec still hold, and any trailer."""
        tail = b""
        if self._resampler is not None:
            tail = self._encode(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        return self._count(tail + self._close())

    def _count(self, data: bytes) -> bytes:
        self.emitted += len(data)
        return data

    def _encode(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def _close(self) -> bytes:
        return b""


class PcmEncoder(Encoder):
    """16-bit little-endian PCM, raw or behind a streamed WAV header sent with the first bytes."""

    def __init__(self, sample_rate: int, wav: bool, source_rate: int = SAMPLE_RATE) -> None:
        super().__init__(sample_rate, source_rate)
        self.media_type = "audio/wav" if wav else f"audio/pcm;rate={sample_rate};channels=1;encoding=s16le"
        self._header = wav_header(sample_rate) if wav else b""

    def _encode(self, samples: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + pcm16(samples)

    def _close(self) -> bytes:
        header, self._header = self._header, b""  # a stream without audio is still a valid WAV
        return header


class G711Encoder(Encoder):
    """μ-law or A-law at 8 kHz, one byte a sample, no header (what Twilio Media Streams carry).

    FFmpeg's pcm_mulaw / pcm_alaw through PyAV rather than a hand-written function: they are the tables
    ffmpeg itself decodes with, and G.711 is stateless, so each chunk encodes on its own.
    """

    _codecs: ClassVar[dict[str, tuple[str, str]]] = {
        "mulaw": ("pcm_mulaw", "audio/PCMU;rate=8000"),
        "alaw": ("pcm_alaw", "audio/PCMA;rate=8000"),
    }

    def __init__(self, fmt: str, sample_rate: int, source_rate: int = SAMPLE_RATE) -> None:
        super().__init__(sample_rate, source_rate)
        codec, self.media_type = self._codecs[fmt]
        self._codec = av.CodecContext.create(codec, "w")
        self._codec.sample_rate, self._codec.format, self._codec.layout = sample_rate, "s16", "mono"

    def _encode(self, samples: np.ndarray) -> bytes:
        if not samples.size:
            return b""
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm16(samples), "<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))


class _Sink:
    """Where PyAV's muxer writes; each encode() takes what arrived since the last one."""

    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def take(self) -> bytes:
        data, self._data = bytes(self._data), bytearray()
        return data


class ContainerEncoder(Encoder):
    """Ogg Opus (libopus) or MP3 (LAME), muxed by FFmpeg into a stream that is never seeked."""

    _setups: ClassVar[dict[str, tuple[str, str, str, str, dict[str, str]]]] = {
        # An Ogg page per Opus packet (20 ms): a page closes as soon as it holds any audio, so all but
        # the codec's last partial frame leaves with each chunk. PyAV cannot ask the muxer to flush a
        # page at the end of a chunk only; the price is 28 bytes of page header per packet.
        "opus": ("ogg", "libopus", "flt", "audio/ogg;codecs=opus", {"page_duration": "1"}),
        # Bare MP3 frames: no ID3 tag, and no Xing frame (it needs a seek back to be filled in).
        "mp3": ("mp3", "libmp3lame", "fltp", "audio/mpeg", {"id3v2_version": "0", "write_xing": "0"}),
    }

    def __init__(self, fmt: str, sample_rate: int, source_rate: int = SAMPLE_RATE) -> None:
        super().__init__(sample_rate, source_rate)
        container, codec, self._sample_format, self.media_type, options = self._setups[fmt]
        self._sink = _Sink()
        self._container = av.open(self._sink, "w", format=container, options=options)
        self._stream = self._container.add_stream(codec, rate=sample_rate, layout="mono")
        self._stream.codec_context.bit_rate = OPUS_BIT_RATE if fmt == "opus" else MP3_BIT_RATES[sample_rate]
        self._pts = 0

    def _mux(self, frame: av.AudioFrame | None) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _encode(self, samples: np.ndarray) -> bytes:
        if samples.size:
            frame = av.AudioFrame.from_ndarray(
                np.clip(samples, -1.0, 1.0).reshape(1, -1), format=self._sample_format, layout="mono"
            )
            frame.sample_rate, frame.pts, frame.time_base = self.sample_rate, self._pts, Fraction(1, self.sample_rate)
            self._pts += samples.size
            self._mux(frame)
        return self._sink.take()

    def _close(self) -> bytes:
        self._mux(None)  # the codec's last frames
        self._container.close()  # the muxer's last page and end-of-stream flag
        return self._sink.take()


def encoder_for(fmt: str, sample_rate: int, source_rate: int = SAMPLE_RATE) -> Encoder:
    """A fresh encoder for one request; the schema has already checked that `fmt` carries `sample_rate`.
    `source_rate`: the rate of what it is fed (a realtime session feeds its MP3 stream PCM already at
    `sample_rate`)."""
    if error := rate_error(fmt, sample_rate):
        raise ValueError(error)
    if fmt in ("pcm", "wav"):
        return PcmEncoder(sample_rate, wav=fmt == "wav", source_rate=source_rate)
    if fmt in ("mulaw", "alaw"):
        return G711Encoder(fmt, sample_rate, source_rate)
    return ContainerEncoder(fmt, sample_rate, source_rate)
