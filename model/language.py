"""`language: "auto"`: which of XTTS's 17 languages a piece of text is in.

lingua-language-detector, restricted to those 17, in its low-accuracy mode: chosen by measurement on
short sentences in all 17 (docs/language-detection.md): 98.8% right, about 0.1 ms a segment, 63 MB
resident, 0.3 s to load; its high-accuracy mode was 100% but held 440 MB and took 6 s to load.

A result is unsure when lingua's confidence in its first choice is under UNSURE_BELOW (or it has no
choice at all: digits, punctuation): then the caller's fallback is used, the session's last language
or English. Short replies ("Hello there", "Okay, bye.") fall under it; in the measurement, the one
wrong sure answer was at 0.94.
"""

from __future__ import annotations

import functools
import threading

from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

from model.schema import AUTO, LANGUAGES, SynthesisRequest

FALLBACK = "en"
UNSURE_BELOW = 0.7
_CODES = {getattr(IsoCode639_1, code.split("-")[0].upper()): code for code in LANGUAGES}  # zh -> zh-cn
_lock = threading.Lock()


@functools.cache
def _detector() -> LanguageDetector:
    languages = [Language.from_iso_code_639_1(iso) for iso in _CODES]
    return LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models().with_low_accuracy_mode().build()


def detect(text: str, fallback: str | None = None) -> str:
    """The XTTS language code `text` is in; `fallback` (else English) when detection is unsure."""
    with _lock:  # built once, by whichever thread asks first
        detector = _detector()
    values = detector.compute_language_confidence_values(text)
    if not values or values[0].value < UNSURE_BELOW:
        return fallback or FALLBACK
    return _CODES[values[0].language.iso_code_639_1]


def warm_up() -> None:
    """Load the models before the first request (about 0.3 s)."""
    detect("Warming up.")


def resolved(request: SynthesisRequest, fallback: str | None = None) -> SynthesisRequest:
    """The request with its language detected from its text if it asks for "auto"; else itself."""
    if request.language != AUTO:
        return request
    return request.model_copy(update={"language": detect(request.text, fallback)})
