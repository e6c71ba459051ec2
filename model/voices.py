"""Voices: the named ones (studio speakers and clips bundled under data/voices/, computed at load)
and voices cloned from clips in requests, whose latents are cached by content in a bounded LRU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from TTS.tts.models.xtts import Xtts

from model import clips
from model.schema import LANGUAGES, MAX_CLIP_BYTES, MAX_CLIPS, RequestError, SynthesisRequest

logger = logging.getLogger(__name__)

MAX_REF_SECONDS = 30  # Xtts.get_conditioning_latents's max_ref_length: the part of each clip it uses

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg"}


@dataclass(frozen=True)
class Voice:
    gpt_cond_latent: torch.Tensor  # [1, 32, C]
    speaker_embedding: torch.Tensor  # [1, 512, 1]


@dataclass(frozen=True)
class Resolved:
    """The voice a request gets; for a cloned voice, its id and whether its latents were cached."""

    voice: Voice
    voice_id: str | None = None
    cache_hit: bool | None = None


class UnknownVoice(RequestError):
    def __init__(self, name: str, known: list[str]):
        shown = ", ".join(repr(n) for n in known[:8]) + (", ..." if len(known) > 8 else "")
        name = repr(name) if len(name) <= 60 else repr(name[:60]) + f"... ({len(name)} characters)"
        super().__init__("speaker", f"unknown speaker {name}; known voices include {shown}")


class UnknownVoiceId(RequestError):
    status = 404

    def __init__(self, voice_id: str):
        super().__init__(
            "voice_id", f"no voice {voice_id!r} here: it was never sent or has been evicted; send the clip again as speaker_wav"
        )


class VoiceLibrary:
    def __init__(self, voices: dict[str, Voice], default: str, bundled: frozenset[str] = frozenset()):
        if default not in voices:
            raise ValueError(f"default voice {default!r} is not among {sorted(voices)}")
        self._voices = voices
        self.default = default
        self.bundled = bundled  # names that come from data/voices/ clips, not speakers_xtts.pth

    @classmethod
    def load(cls, model: Xtts, clips_dir: Path | None, default: str | None) -> VoiceLibrary:
        voices = studio_voices(model)
        bundled = clip_voices(model, clips_dir) if clips_dir is not None and clips_dir.is_dir() else {}
        voices.update(bundled)
        if not voices:
            raise RuntimeError(f"no voices: the checkpoint has no speakers_xtts.pth and {clips_dir} has no clips")
        if default not in voices:
            fallback = next(iter(voices))
            logger.warning("default speaker %r is not available; using %r", default, fallback)
            default = fallback
        return cls(voices, default, frozenset(bundled))

    @property
    def names(self) -> list[str]:
        return list(self._voices)

    def describe(self) -> list[dict[str, str]]:
        return [{"name": name, "source": "bundled" if name in self.bundled else "studio"} for name in self._voices]

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
    """One voice per audio file, named by its stem; decoded and checked like a clip in a request."""
    voices = {}
    for path in sorted(p for p in clips_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            audio = clips.decode(path.read_bytes())
        except clips.ClipError as exc:
            raise ValueError(f"bundled voice {path}: {exc}") from None
        voices[path.stem] = conditioning_latents(model, [audio])
        logger.info("voice %r from %s", path.stem, path.name)
    return voices


@torch.inference_mode()
def conditioning_latents(model: Xtts, audios: list[torch.Tensor]) -> Voice:
    """Xtts.get_conditioning_latents with its defaults, from decoded audio: upstream takes only file paths."""
    audios = [audio[:, : clips.CONDITIONING_RATE * MAX_REF_SECONDS].to(model.device) for audio in audios]
    embeddings = [model.get_speaker_embedding(audio, clips.CONDITIONING_RATE) for audio in audios]
    gpt_cond_latent = model.get_gpt_cond_latents(torch.cat(audios, dim=-1), clips.CONDITIONING_RATE, length=6, chunk_length=6)
    return Voice(gpt_cond_latent, torch.stack(embeddings).mean(dim=0))


class VoiceCache:
    """Latents of cloned voices by content id, least recently used evicted first. Thread-safe."""

    def __init__(self, model: Xtts, size: int):
        self._model = model
        self._size = size
        self._voices: OrderedDict[str, Voice] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # latent computations so far: a cache hit adds none

    def __len__(self) -> int:
        return len(self._voices)

    def get(self, voice_id: str) -> Voice:
        with self._lock:
            if voice_id not in self._voices:
                raise UnknownVoiceId(voice_id)
            self._voices.move_to_end(voice_id)
            return self._voices[voice_id]

    def clone(self, encoded: list[bytes]) -> Resolved:
        """The voice of these clips, computed unless the same audio was cloned before."""
        fields = ["speaker_wav"] if len(encoded) == 1 else [f"speaker_wav[{i}]" for i in range(len(encoded))]
        audios = [clips.decode(data, field) for data, field in zip(encoded, fields)]
        voice_id = clips.content_id(audios)
        try:
            return Resolved(self.get(voice_id), voice_id, cache_hit=True)
        except UnknownVoiceId:
            pass
        # Outside the lock: the latent networks are pure forward passes, and a slow clone must not
        # hold up lookups. Two requests racing with the same new clip both compute it, harmlessly.
        started = time.perf_counter()
        voice = conditioning_latents(self._model, audios)
        if not all(torch.isfinite(t).all() for t in (voice.gpt_cond_latent, voice.speaker_embedding)):
            # Cached, they would fail every later stream with this voice_id after its 200.
            raise clips.ClipError("speaker_wav", "these clips give non-finite voice latents")
        logger.info("voice %s: latents computed in %.0f ms", voice_id, (time.perf_counter() - started) * 1000)
        with self._lock:
            self.computed += 1
            self._voices[voice_id] = voice
            self._voices.move_to_end(voice_id)
            while len(self._voices) > self._size:
                evicted, _ = self._voices.popitem(last=False)
                logger.info("voice %s evicted from the cache (size %d)", evicted, self._size)
        return Resolved(voice, voice_id, cache_hit=False)


class Voices:
    """Finds the voice a request asks for: by name, by clip, or by the id of a clip sent before."""

    def __init__(self, library: VoiceLibrary, cache: VoiceCache):
        self.library = library
        self.cache = cache

    def resolve(self, request: SynthesisRequest) -> Resolved:
        """Raises RequestError naming the field at fault."""
        if request.voice_id is not None:
            return Resolved(self.cache.get(request.voice_id), request.voice_id, cache_hit=True)
        if request.speaker_wav is not None:
            return self.cache.clone(request.reference_clips)
        return Resolved(self.library.get(request.speaker))

    def catalogue(self) -> dict:
        """What a `{"list": "voices"}` request answers. Cloned voice ids are not listed: each is a
        capability for whoever sent the clip."""
        return {
            "voices": self.library.describe(),
            "default_speaker": self.library.default,
            "languages": list(LANGUAGES),
            "cloning": {
                "formats": sorted(clips.FORMATS),
                "seconds": [clips.MIN_SECONDS, clips.MAX_SECONDS],
                "max_base64_bytes": MAX_CLIP_BYTES,
                "max_clips": MAX_CLIPS,
                "cached_voices": len(self.cache),
            },
        }
