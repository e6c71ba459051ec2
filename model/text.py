"""Text checks and segmentation: a validated request in, the exact sentences XTTS will speak out.

Every piece returned here is what the streamer encodes and speaks, so a piece that passes here
cannot fail XTTS's 400-token assertion mid-stream. The rewrites below run before XTTS's own
text cleaning (TTS/tts/layers/xtts/tokenizer.py), which stays in charge of everything else.
"""

from __future__ import annotations

import functools
import re

from num2words import num2words
from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer, _dot_number_re, _remove_dots, split_sentence

from model.schema import RequestError, SynthesisRequest

# A run of digits, dots and commas longer than this is read out digit by digit. XTTS's currency
# regexes backtrack over such runs in cubic time holding the GIL (1,000 digits: 2.4 s, 4,000: over
# a minute, and the server answers nothing meanwhile); num2words itself is cheap but overflows past
# 303 digits. 15 digits keeps every amount up to the hundreds of trillions read as a number.
MAX_NUMBER_DIGITS = 15
MAX_NUMBER_CHARS = 24  # "999.999.999.999.999,99": the longest separators add
_NUMBER_RUN = re.compile(r"[0-9.,]{2,}")

# num2words has no Hindi: digits are read one by one in Hindi words (ASCII and Devanagari digits).
_HINDI_DIGITS = ["शून्य", "एक", "दो", "तीन", "चार", "पाँच", "छह", "सात", "आठ", "नौ"]
_HINDI_DIGIT = re.compile(r"[0-9०-९]")
# XTTS reads "5." before a space or the end as a Czech ordinal, which num2words lacks (it raises):
# such numbers are read as cardinals. XTTS's _ordinal_re["cs"], applied as XTTS does, after its
# thousands dots are gone ("1.000." is 1000), and not to the decimals it reads first ("3,5.").
_CZECH_ORDINAL = re.compile(r"(?<![0-9.,])([0-9]+)\.(?=\s|$)")


class TextError(RequestError):
    """The text cannot be synthesized as sent."""

    def __init__(self, message: str):
        super().__init__("text", message)


def sentences(request: SynthesisRequest, tokenizer: VoiceBpeTokenizer, max_tokens: int) -> list[str]:
    """The pieces to speak, in order, each already normalized and under `max_tokens` text tokens;
    or TextError. With enable_text_splitting, a piece still too long after XTTS's split (numbers
    grow when spelled out) is split again at word boundaries."""
    language = request.language.split("-")[0]
    text = rewrite_numbers(request.text, language)
    pieces = [text]
    if request.enable_text_splitting:
        pieces = split_sentence(text, language, tokenizer.char_limits[language])
    spoken = []
    for piece in pieces:
        for part, cleaned in _fit(piece.strip().lower(), tokenizer, language, max_tokens, request.enable_text_splitting):
            # After XTTS's own cleaning: digits become words, Chinese pinyin, Japanese romaji. A piece
            # of only punctuation, symbols or emoji would be babbled as noise: it is left out.
            if any(ch.isalnum() for ch in cleaned):
                spoken.append(part)
    if not spoken:
        raise TextError("nothing to speak: the text is only punctuation, symbols or emoji")
    return spoken


# A sentence in each language whose text cleaning loads something big on first use (jieba, cutlet).
WARM_UP_TEXT = {"zh-cn": "你好，今天天气很好。", "ja": "こんにちは、元気ですか。"}


def warm_up(tokenizer: VoiceBpeTokenizer, max_tokens: int) -> None:
    """Pay spaCy's import for sentence splitting, and the Chinese and Japanese text tools' loading, before
    the first real request. Those load in one long stretch that holds the GIL (410 and 344 ms here):
    even in a worker thread, a first Chinese request stalled every stream on the replica."""
    sentences(SynthesisRequest(text="Warming up the sentence splitter. " * 10, enable_text_splitting=True), tokenizer, max_tokens)
    for language, sample in WARM_UP_TEXT.items():
        sentences(SynthesisRequest(text=sample, language=language), tokenizer, max_tokens)


def rewrite_numbers(text: str, language: str) -> str:
    """Numbers XTTS's cleaning cannot read in bounded time or at all, rewritten so that it can."""
    text = _NUMBER_RUN.sub(lambda m: _digit_by_digit(m[0], language), text)
    if language == "hi":
        text = _HINDI_DIGIT.sub(lambda m: f" {_HINDI_DIGITS[_digit_value(m[0])]} ", text)
    elif language == "cs":
        text = _dot_number_re.sub(_remove_dots, text)
        text = _CZECH_ORDINAL.sub(lambda m: num2words(int(m[1]), lang="cs") + ".", text)
    return text


def _digit_by_digit(run: str, language: str) -> str:
    if len(run) <= MAX_NUMBER_CHARS and sum(ch.isdigit() for ch in run) <= MAX_NUMBER_DIGITS:
        return run
    words = _digit_words(language)
    return " ".join(words[int(ch)] if ch.isdigit() else ch for ch in run)


@functools.cache
def _digit_words(language: str) -> list[str]:
    """The words for 0-9 as XTTS's cleaning would say them: one num2words call per digit, not per digit read."""
    if language == "hi":
        return _HINDI_DIGITS
    if language in ("zh", "ja"):  # XTTS reads digits with its own Chinese and Japanese converters
        return [str(d) for d in range(10)]
    return [num2words(d, lang=language) for d in range(10)]


def _digit_value(digit: str) -> int:
    return ord(digit) - (ord("0") if digit <= "9" else ord("०"))


def _fit(
    piece: str, tokenizer: VoiceBpeTokenizer, language: str, max_tokens: int, split: bool
) -> list[tuple[str, str]]:
    """[(piece, its cleaned text)], or with `split`, piece cut in halves at the space nearest the
    middle until each half is under max_tokens: O(n log n) cleaning, where a word-by-word fill is O(n^2)."""
    if not piece:
        return []
    cleaned = _clean(tokenizer, piece, language)
    try:
        n_tokens = len(_encode_cleaned(tokenizer, cleaned, language))
    except Exception as exc:  # the BPE tokenizer's own refusals (a lone surrogate raised TypeError)
        raise TextError(f"XTTS's tokenizer cannot read this text ({type(exc).__name__}: {str(exc)[:80]})") from None
    if n_tokens < max_tokens:
        return [(piece, cleaned)]
    if not split or len(piece) < 2:
        hint = "" if split else "; set enable_text_splitting to true, or add punctuation"
        raise TextError(f"a sentence is {n_tokens} tokens; XTTS takes fewer than {max_tokens}{hint}")
    middle = len(piece) // 2
    spaces = [i for i in (piece.rfind(" ", 0, middle), piece.find(" ", middle)) if 0 < i < len(piece) - 1]
    cut = min(spaces, key=lambda i: abs(i - middle)) if spaces else middle  # no space: Chinese, Japanese
    return [*_fit(piece[:cut].strip(), tokenizer, language, max_tokens, split),
            *_fit(piece[cut:].strip(), tokenizer, language, max_tokens, split)]


def _clean(tokenizer: VoiceBpeTokenizer, piece: str, language: str) -> str:
    try:
        return tokenizer.preprocess_text(piece, language)
    except Exception as exc:  # num2words gaps this module does not rewrite: NotImplementedError, OverflowError
        raise TextError(
            f"XTTS's {language} text cleaning cannot read this text ({type(exc).__name__}: {str(exc)[:80]}); "
            "spell out numbers and symbols as words"
        ) from None


def _encode_cleaned(tokenizer: VoiceBpeTokenizer, cleaned: str, language: str) -> list[int]:
    """VoiceBpeTokenizer.encode after its preprocess_text step (cleaning is the costly part: done once)."""
    tag = "zh-cn" if language == "zh" else language
    return tokenizer.tokenizer.encode(f"[{tag}]{cleaned}".replace(" ", "[SPACE]")).ids
