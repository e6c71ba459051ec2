"""Reference clips for cloning: encoded audio bytes in, checked mono audio at XTTS's conditioning rate out.

Everything happens in memory: the bytes go to FFmpeg through torchcodec, never through a file.
"""

from __future__ import annotations

import hashlib

import soxr
import torch
from torchcodec.decoders import AudioDecoder

from model.schema import RequestError

CONDITIONING_RATE = 22050  # Xtts.get_conditioning_latents's load_sr
MIN_SECONDS = 1.0
MAX_SECONDS = 60.0
SEND = f"send {MIN_SECONDS:g} to {MAX_SECONDS:g} s"
SILENCE_PEAK = 1e-3  # -60 dBFS: a clip whose loudest sample is below this has no voice in it
# Decoded samples are float32 per channel: 192,000 a second (96 kHz stereo, 192 kHz mono) bound a
# clip's decoded size to about 47 MB at MAX_SECONDS, whatever its size on the wire (decoding and
# checking it peaked at 105 MB for 59 s at 96 kHz stereo; at twice this cap, 262 MB).
MIN_RATE, MAX_RATE = 4000, 192_000
MAX_SAMPLES_PER_SECOND = 192_000

# FFmpeg probes hundreds of formats, some of which (playlists, concat lists) name other files or
# URLs to open. Only the four containers users send get through to it, recognized by magic bytes.
FORMATS = {"wav": "RIFF", "flac": "fLaC", "ogg": "OggS", "mp3": "ID3"}
# What FFmpeg must find inside each: it probes the data itself, and torchcodec cannot make it use the
# demuxer we chose, so a clip it reads as something else is refused.
CODECS = {"flac": {"flac"}, "ogg": {"vorbis", "opus", "flac", "speex"}, "mp3": {"mp1", "mp2", "mp3"}}


class ClipError(RequestError):
    """A reference clip that cannot be used; `field` says which one."""


def sniff(data: bytes) -> str | None:
    """The container of `data` by its magic bytes, or None if it is not one we accept."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] in (b"fLaC", b"OggS"):
        return "flac" if data[:4] == b"fLaC" else "ogg"
    # MP3: an MPEG audio frame, after one ID3 tag if there is one. FFmpeg skips that tag and probes
    # what follows, so the frame must be there: an ID3 tag before a playlist would open the playlist.
    if _mpeg_audio_frame(data[_id3_length(data) :][:4]):
        return "mp3"
    return None


def _id3_length(data: bytes) -> int:
    if data[:3] != b"ID3" or len(data) < 10:
        return 0
    size = 0
    for byte in data[6:10]:  # "syncsafe": 7 bits a byte
        size = size << 7 | byte & 0x7F
    return 10 + size + (10 if data[5] & 0x10 else 0)  # header, body, footer


def _mpeg_audio_frame(header: bytes) -> bool:
    """An MPEG-1/2/2.5 audio frame header: 11 sync bits, then no reserved version, layer, bitrate or rate."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return False
    version, layer = header[1] >> 3 & 3, header[1] >> 1 & 3
    bitrate, rate = header[2] >> 4, header[2] >> 2 & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3


def _adts(data: bytes) -> bool:
    """ADTS AAC shares MP3's sync bits; its layer bits are 00, which MPEG audio reserves."""
    return len(data) > 1 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


def decode(data: bytes, field: str = "speaker_wav") -> torch.Tensor:
    """Decode one clip to [1, samples] float32 at 22,050 Hz, as Xtts's load_audio would, or raise ClipError."""
    kind = sniff(data)
    if kind is None:
        if _adts(data):
            what = "ADTS AAC, which is not accepted"
        elif data[:3] == b"ID3":
            what = "an ID3 tag not followed by MP3 audio"
        else:
            what = f"starts with {data[:8]!r}"
        raise ClipError(field, f"not a WAV, FLAC, Ogg or MP3 file ({what})")
    try:
        decoder = AudioDecoder(data)
        _check_header(decoder, kind, field)
        # Decoding stops a little past the limit: a few bytes of FLAC can declare hours of audio.
        samples = decoder.get_samples_played_in_range(0.0, MAX_SECONDS + 0.5)
    except ClipError:
        raise
    except Exception as exc:  # torchcodec raises RuntimeError or ValueError, with FFmpeg's message
        reason = str(exc).splitlines()[0]
        if reason.startswith("No audio frames were decoded"):  # its hint about start_seconds would mislead
            reason = "no audio frames in it (truncated?)"
        raise ClipError(field, f"cannot decode this {kind} data: {reason[:200]}") from None

    seconds = samples.data.shape[-1] / samples.sample_rate
    if seconds < MIN_SECONDS:
        raise ClipError(field, f"{seconds:.2f} s of audio is too short; {SEND}")
    if seconds > MAX_SECONDS:  # decoding stopped here: the clip may be longer still
        raise ClipError(field, f"over {MAX_SECONDS:g} s of audio is too long; {SEND}")
    # Checked on the mix: a NaN or infinity in any channel makes it non-finite, at a channel's cost.
    audio = samples.data.float().mean(dim=0)
    if not torch.isfinite(audio).all():
        raise ClipError(field, "the clip has samples that are not finite numbers (NaN or infinity)")
    peak = audio.abs().max().item()
    if peak < SILENCE_PEAK:
        raise ClipError(field, f"the clip is silent (peak {peak:.1e}, under {SILENCE_PEAK:g} full scale)")
    if samples.sample_rate != CONDITIONING_RATE:
        # soxr: memory and time linear in the clip, whatever the two rates. torchaudio's sinc
        # resampler builds a kernel sized by the rates over their gcd: gigabytes for a 12,011 Hz clip.
        audio = torch.from_numpy(soxr.resample(audio.numpy(), samples.sample_rate, CONDITIONING_RATE))
    return audio[None, :].clamp_(-1.0, 1.0)


def _check_header(decoder: AudioDecoder, kind: str, field: str) -> None:
    """Refuse from the header alone what would cost too much to decode, or is not what it claims."""
    meta = decoder.metadata
    codec = meta.codec or "unknown"
    if not (codec.startswith("pcm_") if kind == "wav" else codec in CODECS[kind]):
        raise ClipError(field, f"this {kind} file holds {codec[:40]} data, which is not accepted in {kind}")
    rate, channels = meta.sample_rate or 0, meta.num_channels or 0
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ClipError(field, f"a sample rate of {rate} Hz is not accepted; send {MIN_RATE} to {MAX_RATE} Hz")
    if rate * channels > MAX_SAMPLES_PER_SECOND:
        raise ClipError(
            field, f"{channels} channels at {rate} Hz is too much data; send at most {MAX_SAMPLES_PER_SECOND} samples a second"
        )
    seconds = meta.duration_seconds_from_header
    if seconds is not None and seconds > MAX_SECONDS:  # None: unknown (streamed FLAC, some Ogg)
        raise ClipError(field, f"{seconds:.1f} s of audio is too long; {SEND}")


def content_id(clips: list[torch.Tensor]) -> str:
    """A voice's id: a hash of its decoded audio, so a clip re-encoded losslessly (WAV to FLAC) is the same voice."""
    digest = hashlib.sha256()
    for clip in clips:
        digest.update(clip.shape[-1].to_bytes(8, "little"))
        digest.update(clip.contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]
