"""Incremental segmentation for the realtime session: text that arrives a token at a time in, the
segments to speak out, each as soon as it is complete. Pure functions: the session keeps the buffer.

A segment ends at a sentence end (CJK and other scripts' enders included). The first segment of a
session may end earlier, at a clause mark, once it is long enough to be spoken as a phrase: that is
what first audio waits for (docs/benchmarks.md "Realtime"). A run-on with no end is cut, once it
passes the language's length limit, at its last clause mark, else between words. Nothing is ever cut
inside a word, except in a run of more than `max_chars` with no space (Chinese, Japanese, or garbage),
which XTTS itself would cut the same way (model/text.py `_fit`).

Every segment still goes through model/text.py's checks before it is spoken, as HTTP text does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Enders that need no space after them (full-width, danda, Arabic question mark): never part of a number.
CLOSED_ENDERS = "。！？．｡؟۔।॥"
ENDERS = ".!?…" + CLOSED_ENDERS
CLAUSE_MARKS = ",;:—–" + "，、；：،"
CLOSERS = "\"'”’»)]}」』）】"
# "Mr." and "e.g." do not end a sentence. Single letters ("J. K.", "U.S.") are handled apart.
ABBREVIATIONS = frozenset("mr mrs ms dr prof st sr jr vs etc e.g i.e no approx dept fig".split())

_END = re.compile(f"[{re.escape(ENDERS)}]+[{re.escape(CLOSERS)}]*")
_CLAUSE = re.compile(f"[{re.escape(CLAUSE_MARKS)}]+[{re.escape(CLOSERS)}]*")


@dataclass(frozen=True)
class Policy:
    """max_chars: a segment's longest (XTTS's per-language character limit). first_clause_chars: the
    first segment may end at a clause mark once it holds this many characters; None: sentences only."""

    max_chars: int = 250
    first_clause_chars: int | None = None


def cut(buffer: str, policy: Policy, first: bool) -> tuple[list[str], str]:
    """The segments complete in `buffer`, in order, and the text left over. `first`: no segment has
    been cut yet, so the first one may end at a clause (policy.first_clause_chars)."""
    segments: list[str] = []
    while (end := _segment_end(buffer, policy, first and not segments)) is not None:
        segments.append(buffer[:end].strip())
        buffer = buffer[end:].lstrip()
    return segments, buffer


def flush(buffer: str, policy: Policy) -> list[str]:
    """All of `buffer` as segments, now (input.flush, input.done): the last one may be mid-sentence."""
    segments, rest = cut(buffer, policy, first=False)
    if rest.strip():
        segments.append(rest.strip())
    return segments


def _segment_end(text: str, policy: Policy, first: bool) -> int | None:
    """Where the next segment ends in `text`, or None if it is not complete yet."""
    end = _sentence_end(text)
    if first and policy.first_clause_chars is not None:
        clause = _clause_end(text, policy.first_clause_chars)
        if clause is not None and (end is None or clause < end):
            end = clause
    if end is not None and end <= policy.max_chars:
        return end
    if end is not None or len(text) > policy.max_chars:
        return _run_on_cut(text, policy.max_chars)
    return None


def _sentence_end(text: str) -> int | None:
    for match in _END.finditer(text):
        stop = match.end()
        if not _has_words(text[:stop]):
            continue  # "..." before any word: it belongs with what follows
        if stop < len(text):
            if text[stop].isspace() or match[0][-1] in CLOSED_ENDERS or match[0][0] in CLOSED_ENDERS:
                if not _abbreviation(text, match):
                    return stop
            continue
        # At the end of the buffer, before the next token shows whether a space follows: "!", "?" and
        # the closed enders end a sentence now; a "." does unless it may be a number's ("3." of "3.5")
        # or an abbreviation's. Waiting for the next token would add its interval to first audio.
        if match[0][0] != "." or (text[match.start() - 1 : match.start()].isalpha() and not _abbreviation(text, match)):
            return stop
    return None


def _abbreviation(text: str, match: re.Match) -> bool:
    if match[0] != ".":
        return False
    word = text[: match.start()].rsplit(None, 1)[-1] if text[: match.start()].strip() else ""
    word = word.lstrip(CLOSERS + "(\"'").lower()
    initials = "." in word and word.replace(".", "").isalpha() and len(word) <= 4  # "u.s", "e.g"
    return len(word) == 1 and word.isalpha() or word in ABBREVIATIONS or initials


def _clause_end(text: str, min_chars: int) -> int | None:
    """The first clause mark after at least `min_chars` characters, followed by a space (a comma
    before a digit is a number's, as in "1,000"), or closing the text so far."""
    for match in _CLAUSE.finditer(text):
        stop = match.end()
        if len(text[:stop].strip()) < min_chars:
            continue
        if stop == len(text) or text[stop].isspace() or match[0][0] in "，、；：":
            return stop
    return None


def _run_on_cut(text: str, max_chars: int) -> int:
    """Where to cut a segment that would pass max_chars: its last clause mark within the limit, else its
    last space, else (no spaces at all) the limit itself."""
    head = text[: max_chars + 1]  # a space just past the limit still ends a word within it
    clauses = [m.end() for m in _CLAUSE.finditer(head) if m.end() <= max_chars and _has_words(head[: m.end()])]
    if clauses:
        return clauses[-1]
    space = head.rstrip().rfind(" ")
    if space > 0 and _has_words(head[:space]):
        return space
    return max_chars


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)
