"""Named voices: studio speakers from speakers_xtts.pth plus reference clips bundled under data/voices/.

Every voice's conditioning latents are computed once, at load, on the model's device, so a request
pays nothing for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from TTS.tts.models.xtts import Xtts

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg"}


@dataclass(frozen=True)
class Voice:
    gpt_cond_latent: torch.Tensor  # [1, 32, C]
    speaker_embedding: torch.Tensor  # [1, 512, 1]


class UnknownVoice(LookupError):
    def __init__(self, name: str, known: list[str]):
        shown = ", ".join(repr(n) for n in known[:8]) + (", ..." if len(known) > 8 else "")
        super().__init__(f"unknown speaker {name!r}; known voices include {shown}")


class VoiceLibrary:
    def __init__(self, voices: dict[str, Voice], default: str):
        if default not in voices:
            raise ValueError(f"default voice {default!r} is not among {sorted(voices)}")
        self._voices = voices
        self.default = default

    @classmethod
    def load(cls, model: Xtts, clips_dir: Path | None, default: str | None) -> VoiceLibrary:
        voices = studio_voices(model)
        if clips_dir is not None and clips_dir.is_dir():
            voices.update(clip_voices(model, clips_dir))
        if not voices:
            raise RuntimeError(f"no voices: the checkpoint has no speakers_xtts.pth and {clips_dir} has no clips")
        if default not in voices:
            fallback = next(iter(voices))
            logger.warning("default speaker %r is not available; using %r", default, fallback)
            default = fallback
        return cls(voices, default)

    @property
    def names(self) -> list[str]:
        return list(self._voices)

    def get(self, name: str | None) -> Voice:
        if name is None:
            return self._voices[self.default]
        try:
            return self._voices[name]
        except KeyError:
            raise UnknownVoice(name, self.names) from None


def studio_voices(model: Xtts) -> dict[str, Voice]:
    if model.speaker_manager is None:
        return {}
    return {
        name: Voice(latents["gpt_cond_latent"].to(model.device), latents["speaker_embedding"].to(model.device))
        for name, latents in model.speaker_manager.speakers.items()
    }


def clip_voices(model: Xtts, clips_dir: Path) -> dict[str, Voice]:
    """One voice per audio file, named by its stem."""
    voices = {}
    for path in sorted(p for p in clips_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        gpt_cond_latent, speaker_embedding = model.get_conditioning_latents(audio_path=[str(path)])
        voices[path.stem] = Voice(gpt_cond_latent, speaker_embedding)
        logger.info("voice %r from %s", path.stem, path.name)
    return voices
