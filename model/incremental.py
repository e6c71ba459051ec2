"""XTTS streaming whose vocoder cost per chunk stays flat with the length of the utterance.

`Xtts.inference_stream` runs HiFiGAN over every latent generated so far at each chunk and keeps
only the new tail, so chunk k costs O(k). HiFiGAN is a stack of convolutions, so the new samples
depend only on a bounded stretch of z frames to their left: we decode that window alone. The
window ends where upstream's decode ends (all latents so far), so right-edge effects are the same,
and the chunks (slice boundaries, 1024-sample crossfade) are upstream's `handle_chunks` output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from TTS.tts.layers.xtts.tokenizer import split_sentence
from TTS.tts.models.xtts import Xtts

# Left context, in z frames (256 samples each), decoded before the first sample we need.
# HiFiGAN's left reach, summed over its layers: conv_pre 3 frames, ups[0] 1.4, the 8x MRF blocks
# 7.5 (kernel 11, dilations 1+3+5, then 3 x dilation 1: 60 samples), later stages under 2:
# about 13.7 frames. On the tiny checkpoint the windowed decode differs from a full decode by
# 2e-2 with no context, 1.3e-6 at 8 frames and float noise (5e-8) from 10 on (/tmp script
# receptive.py). 16 is past the architectural bound, so it holds for any weights, not just these.
CONTEXT_FRAMES = 16


@torch.inference_mode()
def inference_stream(
    model: Xtts,
    text: str | list[str],
    language: str,
    gpt_cond_latent: torch.Tensor,
    speaker_embedding: torch.Tensor,
    stream_chunk_size: int = 20,
    overlap_wav_len: int = 1024,
    temperature: float = 0.75,
    length_penalty: float = 1.0,
    repetition_penalty: float = 10.0,
    top_k: int = 50,
    top_p: float = 0.85,
    do_sample: bool = True,
    speed: float = 1.0,
    enable_text_splitting: bool = False,
    first_chunk_size: int | None = None,
    **hf_generate_kwargs,
) -> Iterator[torch.Tensor]:
    """Yield 1-D float chunks at 24 kHz, the same as `model.inference_stream` would.

    `text` is one text, split as upstream splits it, or a list of pieces spoken one after another.

    `first_chunk_size` tokens make the stream's first chunk (a lower time to first audio); the
    rest come every `stream_chunk_size` tokens. None means `stream_chunk_size`, upstream's chunks.
    """
    language = language.split("-")[0]
    length_scale = 1.0 / max(speed, 0.05)
    gpt_cond_latent = gpt_cond_latent.to(model.device)
    speaker_embedding = speaker_embedding.to(model.device)
    if isinstance(text, str):  # a list is already split (model/text.py): spoken as given
        text = split_sentence(text, language, model.tokenizer.char_limits[language]) if enable_text_splitting else [text]
    chunk_size = stream_chunk_size if first_chunk_size is None else first_chunk_size

    for sent in text:
        sent = sent.strip().lower()
        text_tokens = torch.IntTensor(model.tokenizer.encode(sent, lang=language)).unsqueeze(0).to(model.device)
        assert text_tokens.shape[-1] < model.args.gpt_max_text_tokens, (
            " ❗ XTTS can only generate text with a maximum of 400 tokens."
        )
        fake_inputs = model.gpt.compute_embeddings(gpt_cond_latent, text_tokens)
        gpt_generator = model.gpt.get_generator(
            fake_inputs=fake_inputs,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            do_sample=do_sample,
            num_beams=1,
            num_return_sequences=1,
            length_penalty=float(length_penalty),
            repetition_penalty=float(repetition_penalty),
            output_attentions=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
            **hf_generate_kwargs,
        )

        windowed = Windowed(model, speaker_embedding, length_scale, overlap_wav_len)
        n_new = 0
        is_end = False
        while not is_end:
            try:
                _, latent = next(gpt_generator)
                windowed.add(latent)
                n_new += 1
            except StopIteration:
                is_end = True

            if is_end or (chunk_size > 0 and n_new >= chunk_size):
                # Too few tokens for one frame at this speed (the model stopped early, or a chunk smaller
                # than `speed`): nothing to decode yet, and at the end nothing to say.
                chunk = windowed.chunk(is_end)
                if chunk is not None:
                    yield chunk
                    n_new = 0
                    chunk_size = stream_chunk_size


class Windowed:
    """One sentence's GPT latents in, upstream's chunks out, each decoded over a bounded window.

    `chunk` decodes at once; the engine instead calls `prepare`, decodes the windows of several
    streams in one batch (`decode_windows`), and hands each its audio with `complete`."""

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
        return None if window is None else self.complete(window, decode_windows(self.model, [window])[0][0])

    def prepare(self, final: bool) -> Window | None:
        z = _z_frames(self.model, torch.cat(self.latents, dim=0)[None, :], self.length_scale)
        return None if z is None else Window(self, z, self.speaker_embedding, self.chunker.plan(z.shape[-1], final))

    def complete(self, window: Window, wav: torch.Tensor) -> torch.Tensor:
        return self.chunker.finish(window.plan, window.first_frame, wav)


@dataclass
class Window:
    """A stretch of one stream's z frames to decode: from `first_frame` to the end."""

    owner: Windowed
    z: torch.Tensor  # [1, C, frames] or [C, frames]: all frames so far
    g: torch.Tensor  # the speaker embedding
    plan: _Plan

    def __post_init__(self):
        self.first_frame = self.plan.first_frame

    @property
    def frames(self) -> int:
        return self.z.shape[-1] - self.first_frame


def decode_windows(model: Xtts, windows: list[Window]) -> tuple[list[torch.Tensor], int]:
    """HiFiGAN over each window, batched where windows can be made one length: a shorter window takes
    more left context (at least CONTEXT_FRAMES already, so its samples do not change, up to float
    noise), if its stream has the frames. Returns each window's audio and the number of HiFiGAN calls."""
    out: list[torch.Tensor | None] = [None] * len(windows)
    calls = 0
    left = sorted(range(len(windows)), key=lambda i: -windows[i].frames)
    while left:
        length = windows[left[0]].frames
        group = [i for i in left if windows[i].z.shape[-1] >= length]
        for i in group:
            windows[i].first_frame = windows[i].z.shape[-1] - length
        # _z_frames gives [C, T] when it resamples (HiFiGAN takes that unbatched), else [1, C, T].
        z = torch.cat([windows[i].z.reshape(-1, *windows[i].z.shape[-2:])[..., windows[i].first_frame :] for i in group])
        g = torch.cat([windows[i].g for i in group])
        wav = model.hifigan_decoder.waveform_decoder(z, g=g)
        calls += 1
        for row, i in enumerate(group):
            out[i] = wav[row].squeeze()
        left = [i for i in left if i not in group]
    return out, calls


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
        wav = model.hifigan_decoder.waveform_decoder(z[..., plan.first_frame :], g=g).squeeze()
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
