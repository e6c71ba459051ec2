"""The windowed vocoder: XTTS's chunks at a cost per chunk that stays flat with the utterance's length.

`Xtts.inference_stream` runs HiFiGAN over every latent generated so far at each chunk and keeps
only the new tail, so chunk k costs O(k). HiFiGAN is a stack of convolutions, so the new samples
depend only on a bounded stretch of z frames to their left: we decode that window alone. The
window ends where upstream's decode ends (all latents so far), so right-edge effects are the same,
and the chunks (slice boundaries, 1024-sample crossfade) are upstream's `handle_chunks` output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from TTS.tts.models.xtts import Xtts

# Left context, in z frames (256 samples each), decoded before the first sample we need.
# HiFiGAN's left reach, summed over its layers: conv_pre 3 frames, ups[0] 1.4, the 8x MRF blocks
# 7.5 (kernel 11, dilations 1+3+5, then 3 x dilation 1: 60 samples), later stages under 2:
# about 13.7 frames. On the tiny checkpoint the windowed decode differs from a full decode by
# 2e-2 with no context, 1.3e-6 at 8 frames and float noise (5e-8) from 10 on (/tmp script
# receptive.py). 16 is past the architectural bound, so it holds for any weights, not just these.
CONTEXT_FRAMES = 16


class Windowed:
    """One sentence's GPT latents in, upstream's chunks out, each decoded over a bounded window.

    `chunk` decodes at once; the engine instead calls `prepare`, decodes the window (alone, or with
    others of its length: `decode_batch`), and hands back its audio with `complete`."""

    def __init__(self, model: Xtts, speaker_embedding: torch.Tensor, length_scale: float, overlap_wav_len: int = 1024):
        self.model, self.speaker_embedding, self.length_scale = model, speaker_embedding, length_scale
        self.latents: list[torch.Tensor] = []
        self.chunker = _Chunker(overlap_wav_len, model.hifigan_decoder.output_hop_length)

    def add(self, latent: torch.Tensor) -> None:
        """One token's latent, [1, C]."""
        self.latents.append(latent)

    def chunk(self, final: bool) -> torch.Tensor | None:
        """The audio the latents so far add (all the rest when `final`); None while they stretch to no frame."""
        window = self.prepare(final)
        return None if window is None else self.complete(window, decode(self.model, window))

    def prepare(self, final: bool) -> Window | None:
        z = _z_frames(self.model, torch.cat(self.latents, dim=0)[None, :], self.length_scale)
        return None if z is None else Window(self, z, self.speaker_embedding, self.chunker.plan(z.shape[-1], final))

    def complete(self, window: Window, wav: torch.Tensor) -> torch.Tensor:
        return self.chunker.finish(window.plan, window.first_frame, wav)


@dataclass(frozen=True)
class Window:
    """A stretch of one stream's z frames to decode: from its plan's `first_frame` to the end."""

    owner: Windowed
    z: torch.Tensor  # [1, C, frames] or [C, frames]: all frames so far
    g: torch.Tensor  # the speaker embedding
    plan: _Plan

    @property
    def first_frame(self) -> int:
        return self.plan.first_frame

    @property
    def frames(self) -> int:
        return self.z.shape[-1] - self.first_frame


def decode(model: Xtts, window: Window) -> torch.Tensor:
    """HiFiGAN over one window: its own chunk and CONTEXT_FRAMES of left context, no more."""
    # _z_frames gives [C, T] when it resamples (HiFiGAN takes that unbatched), else [1, C, T]. Audio
    # leaves in float32 whatever the model's dtype: the crossfade and the encoders work on that.
    return model.hifigan_decoder.waveform_decoder(window.z[..., window.first_frame :], g=window.g).squeeze().float()


def decode_batch(model: Xtts, windows: list[Window]) -> list[torch.Tensor]:
    """HiFiGAN over windows of one length in one call (a device where batching pays: see the engine)."""
    frames = {w.frames for w in windows}
    if len(frames) != 1:
        raise ValueError(f"windows of one length only, not {sorted(frames)}")
    z = torch.cat([w.z.reshape(-1, *w.z.shape[-2:])[..., w.first_frame :] for w in windows])
    wav = model.hifigan_decoder.waveform_decoder(z, g=torch.cat([w.g for w in windows]))
    return [row.squeeze().float() for row in wav]


def _z_frames(model: Xtts, latents: torch.Tensor, length_scale: float) -> torch.Tensor | None:
    """The waveform decoder's input for all latents so far: upstream's interpolations, which are cheap.
    None when `length_scale` stretches the latents to no frame (F.interpolate would raise)."""
    if int(latents.shape[1] * length_scale) == 0:
        return None
    if length_scale != 1.0:
        latents = F.interpolate(latents.transpose(1, 2), scale_factor=length_scale, mode="linear").transpose(1, 2)
    hd = model.hifigan_decoder
    z = F.interpolate(
        latents.transpose(1, 2), scale_factor=[hd.ar_mel_length_compression / hd.output_hop_length], mode="linear"
    ).squeeze(1)
    if hd.output_sample_rate != hd.input_sample_rate:
        z = F.interpolate(z, scale_factor=[hd.output_sample_rate / hd.input_sample_rate], mode="linear").squeeze(0)
    return z


@dataclass(frozen=True)
class _Plan:
    chunk: tuple[int, int, int]  # absolute sample positions in the virtual full decode
    tail: tuple[int, int, int]
    short: bool
    final: bool
    full_len: int
    first_frame: int  # the least the window must start at (CONTEXT_FRAMES before the first sample needed)


class _Chunker:
    """`Xtts.handle_chunks` in absolute sample positions, fed by windowed decodes.

    Upstream slices a full decode of length W with Python slices; `slice.indices(W)` resolves them
    to the same absolute positions, so the chunks match upstream's in every branch.
    """

    def __init__(self, overlap_len: int, hop: int):
        self.overlap_len = overlap_len
        self.hop = hop
        self.prev_len: int | None = None  # length of the previous (virtual) full decode
        self.overlap: torch.Tensor | None = None  # its last overlap_len samples, to crossfade

    def next_chunk(self, model: Xtts, z: torch.Tensor, g: torch.Tensor, is_final: bool) -> torch.Tensor:
        plan = self.plan(z.shape[-1], is_final)
        wav = model.hifigan_decoder.waveform_decoder(z[..., plan.first_frame :], g=g).squeeze().float()
        return self.finish(plan, plan.first_frame, wav)

    def plan(self, frames: int, is_final: bool) -> _Plan:
        full_len = frames * self.hop
        ov = self.overlap_len
        start = 0 if self.prev_len is None else self.prev_len - ov
        chunk = slice(start, None if is_final else -ov).indices(full_len)
        short = self.overlap is not None and ov > max(chunk[1] - chunk[0], 0)
        if short:  # upstream then emits everything up to the end, with no crossfade
            chunk = slice(start, None).indices(full_len)
        tail = slice(-ov, None).indices(full_len)
        first_needed = chunk[0] if is_final or short else min(chunk[0], tail[0])
        return _Plan(chunk, tail, short, is_final, full_len, max(first_needed // self.hop - CONTEXT_FRAMES, 0))

    def finish(self, plan: _Plan, first_frame: int, wav: torch.Tensor) -> torch.Tensor:
        """The chunk from `wav`, the decode of frames `first_frame` to the end."""
        ov, chunk, offset = self.overlap_len, plan.chunk, first_frame * self.hop
        wav_chunk = wav[chunk[0] - offset : max(chunk[1], chunk[0]) - offset]
        if self.overlap is not None and not plan.short:
            fade_in = torch.linspace(0.0, 1.0, ov, device=wav.device)
            fade_out = torch.linspace(1.0, 0.0, ov, device=wav.device)
            wav_chunk[:ov] = self.overlap * fade_out + wav_chunk[:ov] * fade_in
        self.overlap = None if plan.final or plan.short else wav[plan.tail[0] - offset :]
        self.prev_len = plan.full_len
        return wav_chunk
