"""Voices: the named ones (studio speakers and clips bundled under data/voices/, computed at load),
voices cloned from clips in requests, whose latents are cached by content in a bounded LRU, and names
registered for cloned voices. With a voice store (model/store.py), clones and names are shared by every
replica and outlive restarts; the in-memory LRU stays in front of it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from TTS.tts.models.xtts import Xtts

from model import clips
from model.schema import LANGUAGES, MAX_CLIP_BYTES, MAX_CLIPS, VOICE_NAME, VOICE_NAME_RULE, RequestError, SynthesisRequest
from model.store import Signature, Tensors, VoiceStore

logger = logging.getLogger(__name__)

MAX_REF_SECONDS = 30  # Xtts.get_conditioning_latents's max_ref_length: the part of each clip it uses

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg"}


@dataclass(frozen=True)
class Voice:
    gpt_cond_latent: torch.Tensor  # [1, 32, C]
    speaker_embedding: torch.Tensor  # [1, 512, 1]

    def tensors(self) -> Tensors:
        return {"gpt_cond_latent": self.gpt_cond_latent, "speaker_embedding": self.speaker_embedding}

    @classmethod
    def of(cls, tensors: Tensors, device: torch.device) -> Voice:
        return cls(tensors["gpt_cond_latent"].to(device), tensors["speaker_embedding"].to(device))


def latent_shapes(model: Xtts) -> dict[str, tuple[int, ...]]:
    """The shapes of a voice's latents for this model: [1, 32, 1024] and [1, 512, 1] at real size."""
    return {
        "gpt_cond_latent": (1, *model.gpt.conditioning_perceiver.latents.shape),
        "speaker_embedding": (1, model.args.d_vector_dim, 1),
    }


@dataclass(frozen=True)
class Resolved:
    """The voice a request gets. For a cloned voice: its id, whether its latents were cached (in memory or
    in the store) and whether they came from the store. For one registered now: its name, and whether
    the store took it (else it lives in this replica's memory only)."""

    voice: Voice
    voice_id: str | None = None
    cache_hit: bool | None = None
    from_store: bool = False
    name: str | None = None
    stored: bool | None = None


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
    """Latents of cloned voices by content id, least recently used evicted first, in front of the
    shared store when there is one. Thread-safe."""

    def __init__(self, model: Xtts, size: int, store: VoiceStore | None = None):
        self._model = model
        self._size = size
        self._store = store
        self._voices: OrderedDict[str, Voice] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # latent computations so far: a cache hit adds none

    def __len__(self) -> int:
        return len(self._voices)

    @property
    def device(self) -> torch.device:
        return self._model.device

    def get(self, voice_id: str) -> Voice:
        return self.find(voice_id).voice

    def find(self, voice_id: str) -> Resolved:
        """The voice of a clip sent before, from memory or else from the store; UnknownVoiceId (404) if neither has it."""
        with self._lock:
            voice = self._voices.get(voice_id)
            if voice is not None:
                self._voices.move_to_end(voice_id)
        if voice is not None:
            if self._store is not None:
                self._store.used(voice_id)
            return Resolved(voice, voice_id, cache_hit=True)
        tensors = self._store.voice(voice_id) if self._store is not None else None
        if tensors is None:
            raise UnknownVoiceId(voice_id)
        voice = Voice.of(tensors, self.device)
        self._remember(voice_id, voice)
        return Resolved(voice, voice_id, cache_hit=True, from_store=True)

    def _remember(self, voice_id: str, voice: Voice) -> None:
        with self._lock:
            self._voices[voice_id] = voice
            self._voices.move_to_end(voice_id)
            while len(self._voices) > self._size:
                evicted, _ = self._voices.popitem(last=False)
                logger.info("voice %s evicted from the cache (size %d)", evicted, self._size)

    def clone(self, encoded: list[bytes], field: str = "speaker_wav") -> Resolved:
        """The voice of these clips, computed unless the same audio was cloned before (here or, with a
        store, on any replica). Errors name `field`, or `field[i]` for one clip of several."""
        fields = [field] if len(encoded) == 1 else [f"{field}[{i}]" for i in range(len(encoded))]
        audios = [clips.decode(data, name) for data, name in zip(encoded, fields)]
        voice_id = clips.content_id(audios)
        try:
            return self.find(voice_id)
        except UnknownVoiceId:
            pass
        # Outside the lock: the latent networks are pure forward passes, and a slow clone must not
        # hold up lookups. Two requests racing with the same new clip both compute it, harmlessly.
        started = time.perf_counter()
        voice = conditioning_latents(self._model, audios)
        if not all(torch.isfinite(t).all() for t in (voice.gpt_cond_latent, voice.speaker_embedding)):
            # Cached, they would fail every later stream with this voice_id after its 200.
            raise clips.ClipError(field, "these clips give non-finite voice latents")
        logger.info("voice %s: latents computed in %.0f ms", voice_id, (time.perf_counter() - started) * 1000)
        with self._lock:
            self.computed += 1
        self._remember(voice_id, voice)
        if self._store is not None:
            self._store.save_voice(voice_id, voice.tensors())  # in the background: the audio does not wait
        return Resolved(voice, voice_id, cache_hit=False)


@dataclass
class Registered:
    """A registered name as this replica knows it; `signature` is its store file's, None if only in memory."""

    voice: Voice
    voice_id: str
    signature: Signature | None


class Voices:
    """Finds the voice a request asks for: by name (a studio, bundled or registered one), by clip, or by
    the id of a clip sent before; and registers names."""

    def __init__(self, library: VoiceLibrary, cache: VoiceCache, store: VoiceStore | None = None, names_size: int = 128):
        self.library = library
        self.cache = cache
        self.store = store
        self._names_size = names_size
        self._names: OrderedDict[str, Registered] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def resolve(self, request: SynthesisRequest) -> Resolved:
        """Raises RequestError naming the field at fault."""
        if request.voice_id is not None:
            return self.cache.find(request.voice_id)
        if request.speaker_wav is not None:
            if request.voice_name is not None:
                return self.register(request.voice_name, request.reference_clips)
            return self.cache.clone(request.reference_clips)
        return Resolved(self.speaker(request.speaker))

    def speaker(self, name: str | None) -> Voice:
        """A studio or bundled voice (they come first), else a registered name; UnknownVoice if none."""
        if name is None or name in self.library.names:
            return self.library.get(name)
        if VOICE_NAME.fullmatch(name) and (registered := self._registered(name)) is not None:
            return registered.voice
        raise UnknownVoice(name, self.library.names)

    def _registered(self, name: str) -> Registered | None:
        with self._lock:
            known = self._names.get(name)
        if self.store is not None:
            # The store's file, unless it is the one already in memory: another replica may have replaced it.
            entry = self.store.name(name, known.signature if known else None)
            if entry is not None and (known is None or known.signature is not None):
                known = Registered(Voice.of(entry.tensors, self.cache.device), entry.voice_id, entry.signature)
            elif entry is not None:
                # Registered here while the store did not take it: this replica's registration is the
                # newer one, and a later change in the store replaces it.
                known.signature = entry.signature
        if known is not None:
            self._keep(name, known)
        return known

    def _keep(self, name: str, registered: Registered) -> None:
        with self._lock:
            self._names[name] = registered
            self._names.move_to_end(name)
            while len(self._names) > self._names_size:
                self._names.popitem(last=False)

    def register(self, name: str, encoded: list[bytes], name_field: str = "voice_name", clip_field: str = "speaker_wav") -> Resolved:
        """Clone these clips and register the voice as `name`, replacing what the name was: usable as
        `speaker` from then on, on every replica sharing the store. RequestError names `name_field` for
        a name that cannot be registered, `clip_field` for a bad clip."""
        self.check_name(name, name_field)
        cloned = self.cache.clone(encoded, clip_field)
        signature = self.store.save_name(name, cloned.voice_id, cloned.voice.tensors()) if self.store is not None else None
        self._keep(name, Registered(cloned.voice, cloned.voice_id, signature))
        logger.info("voice %s registered as %r (%s)", cloned.voice_id, name, "in the store" if signature else "in this replica only")
        return Resolved(cloned.voice, cloned.voice_id, cloned.cache_hit, cloned.from_store, name=name, stored=signature is not None)

    def check_name(self, name: object, field: str = "voice_name") -> None:
        if not isinstance(name, str) or not VOICE_NAME.fullmatch(name):
            raise RequestError(field, f"a voice name is {VOICE_NAME_RULE}")
        if re.fullmatch(r"[0-9a-fA-F]{32}", name):
            raise RequestError(field, "32 hex digits is how a voice id looks, not a name: choose another")
        clash = next((known for known in self.library.names if known.casefold() == name.casefold()), None)
        if clash is not None:
            kind = "bundled" if clash in self.library.bundled else "studio"
            raise RequestError(field, f"{name!r} is taken by the {kind} voice {clash!r}: choose another name")

    def registered(self) -> list[str]:
        """Registered names: the store's, and any this replica holds that the store does not."""
        stored = self.store.names() if self.store is not None else None
        with self._lock:
            return sorted(set(stored or []) | set(self._names))

    def catalogue(self) -> dict:
        """What a `{"list": "voices"}` request answers. Cloned voice ids are not listed: each is a
        capability for whoever sent the clip."""
        return {
            "voices": self.library.describe() + [{"name": name, "source": "registered"} for name in self.registered()],
            "default_speaker": self.library.default,
            "languages": list(LANGUAGES),
            "cloning": {
                "formats": sorted(clips.FORMATS),
                "seconds": [clips.MIN_SECONDS, clips.MAX_SECONDS],
                "max_base64_bytes": MAX_CLIP_BYTES,
                "max_clips": MAX_CLIPS,
                "cached_voices": len(self.cache),
                "shared_store": self.store is not None,
            },
        }
