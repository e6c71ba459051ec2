"""The predict request: every field, its default and its bounds.

Truss validates the body against this model before `predict()` runs, so a bad field becomes an
HTTP 400 `{"error": "Input Parsing Error: `field`: ..."}` and no audio is produced.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# XTTS v2's 17 language codes, as in XttsConfig.languages.
Language = Literal["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi"]
LANGUAGES: tuple[str, ...] = Language.__args__

MAX_TEXT_CHARS = 4000


class SynthesisRequest(BaseModel):
    # strict: "20" is not a chunk size and "true" is not a bool; unknown fields are rejected by name.
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="Text to speak.")
    language: Language = "en"
    speaker: str | None = Field(None, min_length=1, description="Studio or bundled voice; default set in config.yaml.")
    chunk_size: int = Field(20, ge=1, le=400, description="GPT tokens per streamed chunk (about 47 ms of audio each).")
    format: Literal["pcm", "wav"] = "pcm"
    # "windowed" is model/incremental.py (flat cost per chunk, small first chunk); "upstream" is
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

    @field_validator("text")
    @classmethod
    def _has_words(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty or only whitespace")
        return text

    # Field validators that look at an earlier field, so the error's location names the field at fault.
    @field_validator("first_chunk_size")
    @classmethod
    def _first_chunk_needs_windowed(cls, size: int | None, info: ValidationInfo) -> int | None:
        if size is not None and info.data.get("streamer") == "upstream":
            raise ValueError("needs streamer 'windowed'; upstream's first chunk is chunk_size tokens")
        return size
