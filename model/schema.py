"""The predict request: every field, its default and its bounds.

Truss validates the body against this model before `predict()` runs, so a bad field becomes an
HTTP 400 `{"error": "Input Parsing Error: `field`: ..."}` and no audio is produced.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from model.encoders import FORMATS, default_rate, rate_error

# XTTS v2's 17 language codes, as in XttsConfig.languages.
Language = Literal["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi"]
LANGUAGES: tuple[str, ...] = Language.__args__
# "auto": each text's language is detected among the 17 (model/language.py); any case ("Auto" is LiveKit's).
AUTO = "auto"
LanguageOrAuto = Literal[(*LANGUAGES, AUTO)]

MAX_TEXT_CHARS = 4000
MAX_CLIP_BYTES = 10 * 1024 * 1024  # all of speaker_wav, base64-encoded
MAX_CLIPS = 8
# A registered voice's name (model/voices.py): any of these characters, so it can travel in a header.
VOICE_NAME = re.compile(r"[A-Za-z0-9 _.-]{1,64}")
VOICE_NAME_RULE = "1 to 64 letters, digits, spaces or . _ -"


class RequestError(ValueError):
    """A request that passed the schema but that the model cannot serve: HTTP `status`, naming `field`."""

    status = 400

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class SynthesisRequest(BaseModel):
    # strict: "20" is not a chunk size and "true" is not a bool; unknown fields are rejected by name.
    model_config = ConfigDict(extra="forbid", strict=True)

    listing: Literal["voices"] | None = Field(
        None, alias="list", description='"voices": answer with the voices and languages as JSON instead of audio.'
    )
    text: str | None = Field(
        None, min_length=1, max_length=MAX_TEXT_CHARS, validate_default=True, description="Text to speak."
    )
    language: LanguageOrAuto = Field(
        "en", description='One of the 17 codes, or "auto" (any case): detected among them, English when unsure.'
    )
    # One voice per request: a named one, a clip to clone, or the id of a clip sent before.
    speaker: str | None = Field(None, min_length=1, description="Studio or bundled voice; default set in config.yaml.")
    speaker_wav: list[str] | None = Field(
        None, description="Base64 WAV, FLAC, Ogg or MP3 to clone from (1-60 s), or a list of clips of one voice."
    )
    voice_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="X-Voice-Id of a clip sent before.")
    voice_name: str | None = Field(
        None, description="Register the voice of speaker_wav under this name, usable as speaker from then on."
    )
    chunk_size: int = Field(20, ge=1, le=400, description="GPT tokens per streamed chunk (about 47 ms of audio each).")
    format: Literal[FORMATS] = Field(
        "pcm", description="pcm (s16le), wav, mulaw or alaw (G.711, 8 kHz), opus (Ogg Opus) or mp3."
    )
    sample_rate: int | None = Field(
        None, validate_default=True, description="Output rate in Hz; default 24000 (8000 for mulaw and alaw)."
    )
    # "windowed" is the batched engine with model/vocoder.py (flat cost per chunk, small first chunk); "upstream" is
    # Xtts.inference_stream as shipped, kept so the comparison in docs/benchmarks.md can be rerun.
    streamer: Literal["windowed", "upstream"] = "windowed"
    first_chunk_size: int | None = Field(
        None, ge=1, le=400, description="GPT tokens in the first chunk (windowed only); default min(4, chunk_size)."
    )
    # Generation settings: Xtts.inference_stream's defaults.
    temperature: float = Field(0.75, gt=0.0, le=2.0)
    top_p: float = Field(0.85, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=1, le=1024)
    repetition_penalty: float = Field(10.0, ge=1.0, le=50.0)
    length_penalty: float = Field(1.0, ge=-10.0, le=10.0)
    speed: float = Field(1.0, ge=0.5, le=2.0)
    enable_text_splitting: bool = False
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Fixes sampling: same seed, same audio.")
    max_new_tokens: int | None = Field(
        None, ge=1, le=1000, description="At most this many GPT tokens (about 46 ms of audio each) per sentence; "
        "default and ceiling: the model's own cap (602 for XTTS v2)."
    )

    @property
    def reference_clips(self) -> list[bytes]:
        """speaker_wav decoded from base64 (already checked by the validator)."""
        return [b64decode(clip) for clip in self.speaker_wav or []]

    # Validators that look at an earlier field are field validators, so the error names the field at fault.
    @field_validator("language", mode="before")
    @classmethod
    def _auto_in_any_case(cls, language: object) -> object:
        return AUTO if isinstance(language, str) and language.casefold() == AUTO else language

    @field_validator("text")
    @classmethod
    def _has_words(cls, text: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("listing") is not None:
            if text is not None:
                raise ValueError("a list request takes no text")
            return text
        if text is None:
            raise PydanticCustomError("missing", "Field required")
        if not text.strip():
            raise ValueError("text is empty or only whitespace")
        return text

    @field_validator("speaker_wav", mode="before")
    @classmethod
    def _one_clip_is_a_list_of_one(cls, clips: object) -> object:
        # Done before type checking so that a wrong type is reported against `speaker_wav` itself,
        # not against each member of a `str | list[str]` union.
        return [clips] if isinstance(clips, str) else clips

    @field_validator("speaker_wav")
    @classmethod
    def _clips_are_base64(cls, clips: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if clips is None:
            return None
        if info.data.get("speaker") is not None:
            raise ValueError("send speaker or speaker_wav, not both")
        if not 1 <= len(clips) <= MAX_CLIPS:
            raise ValueError(f"send 1 to {MAX_CLIPS} clips, not {len(clips)}")
        size = sum(len(clip) for clip in clips)
        if size > MAX_CLIP_BYTES:
            raise ValueError(f"{size / 2**20:.1f} MB of base64 is over the {MAX_CLIP_BYTES // 2**20} MB limit")
        for i, clip in enumerate(clips):
            try:
                b64decode(clip)
            except (binascii.Error, ValueError):
                raise ValueError(f"clip {i} is not valid base64") from None
        return clips

    @field_validator("sample_rate")
    @classmethod
    def _format_carries_the_rate(cls, rate: int | None, info: ValidationInfo) -> int | None:
        fmt = info.data.get("format")  # None if format itself was invalid: that is reported on its own
        if rate is None:
            return default_rate(fmt or "pcm")
        if error := rate_error(fmt, rate):
            raise ValueError(error)
        return rate

    @field_validator("speed")
    @classmethod
    def _first_chunk_holds_a_frame(cls, speed: float, info: ValidationInfo) -> float:
        # XTTS stretches the first chunk's latents by 1/speed before decoding: fewer tokens than
        # `speed` stretch to zero frames and fail mid-stream (upstream and windowed alike).
        first = info.data.get("first_chunk_size")
        if first is None and info.data.get("streamer") == "upstream":
            first = info.data.get("chunk_size")
        if first is not None and first < speed:
            name = "first_chunk_size" if info.data.get("first_chunk_size") is not None else "chunk_size"
            raise ValueError(f"at speed {speed:g} the first chunk needs at least {math.ceil(speed)} tokens; {name} is {first}")
        return speed

    @field_validator("voice_id")
    @classmethod
    def _one_voice(cls, voice_id: str | None, info: ValidationInfo) -> str | None:
        if voice_id is not None and (info.data.get("speaker") or info.data.get("speaker_wav")):
            raise ValueError("send one of speaker, speaker_wav or voice_id")
        return voice_id

    @field_validator("voice_name")
    @classmethod
    def _names_a_clip(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is None:
            return None
        if not VOICE_NAME.fullmatch(name):
            raise ValueError(f"a voice name is {VOICE_NAME_RULE}")
        if info.data.get("speaker_wav", ...) is None:  # absent from data: speaker_wav failed on its own
            raise ValueError("names the voice of speaker_wav: send the clip with it")
        return name

    @field_validator("first_chunk_size")
    @classmethod
    def _first_chunk_needs_windowed(cls, size: int | None, info: ValidationInfo) -> int | None:
        if size is not None and info.data.get("streamer") == "upstream":
            raise ValueError("needs streamer 'windowed'; upstream's first chunk is chunk_size tokens")
        return size


def b64decode(clip: str) -> bytes:
    """Standard base64, tolerating line breaks (the `base64` tool wraps) and a data: URL prefix."""
    if clip.startswith("data:"):
        clip = clip.partition(",")[2]
    return base64.b64decode(re.sub(r"\s+", "", clip), validate=True)


# The realtime session (model/session.py) takes the request's fields in session.config, and its text
# in input.text messages. The session streams raw frames: a WAV header per segment would be noise.
SESSION_FORMATS = tuple(fmt for fmt in FORMATS if fmt != "wav")


def session_config(fields: dict) -> SynthesisRequest:
    """A session.config's fields, validated by the request schema (pydantic.ValidationError naming
    the field), or RequestError for what a session does not take."""
    for name, why in (("text", "send text in input.text messages"), ("list", "a session speaks; list voices over HTTP")):
        if name in fields:
            raise RequestError(name, f"session.config takes no {name}: {why}")
    config = SynthesisRequest.model_validate({**fields, "text": "-"})
    if config.format not in SESSION_FORMATS:
        raise RequestError("format", f"a session streams raw frames: use {', '.join(SESSION_FORMATS)} (pcm for WAV's samples)")
    return config
