"""Reference clips for cloning: encoded audio bytes in, checked mono audio at XTTS's conditioning rate out.

Everything happens in memory: the bytes go to FFmpeg through torchcodec, never through a file.
"""

from __future__ import annotations

import hashlib

import torch
import torchaudio
from torchcodec.decoders import AudioDecoder

from model.schema import RequestError

CONDITIONING_RATE = 22050  # Xtts.get_conditioning_latents's load_sr
MIN_SECONDS = 1.0
MAX_SECONDS = 60.0
SILENCE_PEAK = 1e-3  # -60 dBFS: a clip whose loudest sample is below this has no voice in it

# FFmpeg probes hundreds of formats, some of which (playlists, concat lists) name other files or
# URLs to open. Only the four containers users send get through to it, recognized by magic bytes.
FORMATS = {"wav": "RIFF", "flac": "fLaC", "ogg": "OggS", "mp3": "ID3"}


class ClipError(RequestError):
    """A reference clip that cannot be used; `field` says which one."""


def sniff(data: bytes) -> str | None:
    """The container of `data` by its magic bytes, or None if it is not one we accept."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] in (b"fLaC", b"OggS"):
        return "flac" if data[:4] == b"fLaC" else "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"  # an ID3 tag, or a bare MPEG audio frame sync
    return None


def decode(data: bytes, field: str = "speaker_wav") -> torch.Tensor:
    """Decode one clip to [1, samples] float32 at 22,050 Hz, as Xtts's load_audio would, or raise ClipError."""
    kind = sniff(data)
    if kind is None:
        raise ClipError(field, f"not a WAV, FLAC, Ogg or MP3 file (starts with {data[:8]!r})")
    try:
        samples = AudioDecoder(data).get_all_samples()
    except Exception as exc:  # torchcodec raises RuntimeError or ValueError, with FFmpeg's message
        reason = str(exc).splitlines()[0]
        if reason.startswith("No audio frames were decoded"):  # its hint about start_seconds would mislead
            reason = "no audio frames in it (truncated?)"
        raise ClipError(field, f"cannot decode this {kind} data: {reason[:200]}") from None

    seconds = samples.data.shape[-1] / samples.sample_rate
    if seconds < MIN_SECONDS:
        raise ClipError(field, f"{seconds:.2f} s of audio is too short; send {MIN_SECONDS:g} to {MAX_SECONDS:g} s")
    if seconds > MAX_SECONDS:
        raise ClipError(field, f"{seconds:.1f} s of audio is too long; send {MIN_SECONDS:g} to {MAX_SECONDS:g} s")

    audio = samples.data.float().mean(dim=0, keepdim=True)
    peak = audio.abs().max().item()
    if peak < SILENCE_PEAK:
        raise ClipError(field, f"the clip is silent (peak {peak:.1e}, under {SILENCE_PEAK:g} full scale)")
    if samples.sample_rate != CONDITIONING_RATE:
        audio = torchaudio.functional.resample(audio, samples.sample_rate, CONDITIONING_RATE)
    return audio.clamp_(-1.0, 1.0)


def content_id(clips: list[torch.Tensor]) -> str:
    """A voice's id: a hash of its decoded audio, so a clip re-encoded losslessly (WAV to FLAC) is the same voice."""
    digest = hashlib.sha256()
    for clip in clips:
        digest.update(clip.shape[-1].to_bytes(8, "little"))
        digest.update(clip.contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]
