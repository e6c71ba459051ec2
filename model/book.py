"""The realtime session's segment book: text in, numbered segments out, and what is owed to the client
when (flush.done, session.done). Synchronous and free of I/O: model/session.py does the talking and
the engine's jobs, and asks the book what to do next; tests drive it without a socket or a model.

A segment is numbered once its text has been checked (the session checks it off the event loop), then
waits in `pending` until the session submits it, then is `flowing` until its audio has been sent.
Segments are sent strictly in number order, so "everything up to segment N has been sent" is one
number. An input.flush or input.done puts a mark at the last segment numbered so far; the mark is due
once that segment has been sent: flush.done, or session.done with the turn's totals. A turn is what
was spoken between two input.done; the session stays open for the next one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from model import segmenter

FLUSH, DONE = "flush", "done"


@dataclass
class Segment:
    number: int
    text: str
    sentences: list[str]
    request: Any  # the SynthesisRequest it is spoken with (the session's config, this text, its language)
    job: Any = None  # the engine's Job once submitted
    cancelled: bool = False
    # Set on cancel: wakes the session's sender at once. The book itself never awaits it.
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Mark:
    kind: str  # FLUSH or DONE
    last: int  # due once segment `last` has been sent
    count: int = 1  # the same kind at the same place: a client flushing in a loop holds one mark


@dataclass
class Book:
    buffer: str = ""
    cut_any: bool = False  # a segment was cut since the start or the last cancel: no more clause cuts
    numbered: int = 0
    pending: deque[Segment] = field(default_factory=deque)  # checked, not yet submitted
    flowing: deque[Segment] = field(default_factory=deque)  # submitted; the first one's audio is being sent
    marks: deque[Mark] = field(default_factory=deque)
    sent_segments: int = 0  # the whole session's
    sent_samples: int = 0
    turn_segments: int = 0  # sent whole since the last input.done was answered (a cancel stops none of them)
    turn_samples: int = 0

    # Text in ---------------------------------------------------------------------------------------

    def queued_chars(self, more: str = "") -> int:
        """Characters received and not yet generating, with `more` added."""
        return len(self.buffer) + sum(len(s.text) for s in self.pending) + len(more)

    def take(self, text: str, policy: segmenter.Policy) -> list[str]:
        """Add `text` to the buffer; the segments it completes, to be checked and then numbered."""
        segments, self.buffer = segmenter.cut(self.buffer + text, policy, first=not self.cut_any)
        self.cut_any = self.cut_any or bool(segments)
        return segments

    def take_all(self, policy: segmenter.Policy) -> list[str]:
        """The whole buffer as segments, now (input.flush, input.done)."""
        text, self.buffer = self.buffer, ""
        segments = segmenter.flush(text, policy)
        self.cut_any = self.cut_any or bool(segments)
        return segments

    def number(self, text: str, sentences: list[str], request: Any) -> Segment:
        """A checked segment, numbered and waiting to be submitted."""
        self.numbered += 1
        segment = Segment(self.numbered, text, sentences, request)
        self.pending.append(segment)
        return segment

    def mark(self, kind: str) -> None:
        """An input.flush (FLUSH) or input.done (DONE): due once what was numbered so far has been sent."""
        if self.marks and self.marks[-1].kind == kind and self.marks[-1].last == self.numbered:
            self.marks[-1].count += 1
        else:
            self.marks.append(Mark(kind, self.numbered))

    # Segments out ----------------------------------------------------------------------------------

    def next_to_submit(self, ahead: int) -> Segment | None:
        """The next pending segment, now flowing, if fewer than `ahead` + 1 are flowing."""
        if not self.pending or len(self.flowing) > ahead:
            return None
        segment = self.pending.popleft()
        self.flowing.append(segment)
        return segment

    def sent(self, segment: Segment, samples: int) -> None:
        """`segment` (the first flowing) has been sent whole: `samples` at the session's rate."""
        assert self.flowing and self.flowing[0] is segment
        self.flowing.popleft()
        self.sent_segments += 1
        self.sent_samples += samples
        self.turn_segments += 1
        self.turn_samples += samples

    @property
    def last_sent(self) -> int:
        if self.flowing:
            return self.flowing[0].number - 1
        if self.pending:
            return self.pending[0].number - 1
        return self.numbered

    def covered(self, segment: Segment) -> bool:
        """Whether a mark falls at or after `segment`: the session's MP3 stream ends with it."""
        return bool(self.marks) and self.marks[0].last <= segment.number

    def due(self) -> list[tuple[str, int, int]]:
        """The marks whose segments have all been sent, in order, as (kind, segments, samples); a DONE
        carries its turn's totals, and starts the next turn."""
        answers = []
        while self.marks and self.marks[0].last <= self.last_sent:
            mark = self.marks.popleft()
            for _ in range(mark.count):
                answers.append((mark.kind, self.turn_segments, self.turn_samples))
                if mark.kind == DONE:
                    self.turn_segments = self.turn_samples = 0
        return answers

    # Turns ----------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing buffered, waiting or generating: between turns (session.config may change settings)."""
        return not self.buffer.strip() and not self.pending and not self.flowing

    @property
    def busy(self) -> bool:
        """Segments waiting or generating."""
        return bool(self.pending or self.flowing)

    def cancel(self) -> list[Segment]:
        """Everything stops: the segments that were waiting or flowing (marked cancelled), the buffer and
        the marks dropped. Numbering goes on, so a cancelled segment's number is never reused."""
        stopped = [*self.flowing, *self.pending]
        for segment in stopped:
            segment.cancelled = True
            segment.stopped.set()
        self.flowing.clear()
        self.pending.clear()
        self.marks.clear()
        self.buffer, self.cut_any = "", False
        return stopped

    def drop_waiting(self) -> bool:
        """The server is shutting down: what is not generating yet is dropped; whether there was any."""
        dropped = bool(self.pending or self.buffer.strip())
        self.pending.clear()
        self.buffer = ""
        return dropped
