"""model/book.py: the session's segments, marks and turns, without a socket or a model."""

from model import segmenter
from model.book import DONE, FLUSH, Book

POLICY = segmenter.Policy(max_chars=250, first_clause_chars=None)


def spoken(book: Book, texts: list[str]) -> list[int]:
    """Number each text, submit and send them all (100 samples each); their numbers."""
    numbers = [book.number(text, [text], None).number for text in texts]
    while (segment := book.next_to_submit(ahead=1)) is not None:
        book.sent(segment, 100)
    return numbers


def test_text_becomes_numbered_segments_and_at_most_ahead_plus_one_flow():
    book = Book()
    assert book.take("One. Two", POLICY) == ["One."] and book.buffer == "Two"
    for text in ("One.", "Two.", "Three."):
        book.number(text, [text], None)
    assert [book.next_to_submit(1).number, book.next_to_submit(1).number, book.next_to_submit(1)] == [1, 2, None]
    assert book.busy and not book.idle and book.last_sent == 0


def test_a_done_mark_is_due_after_its_segments_with_the_turns_totals():
    book = Book()
    book.number("One.", ["One."], None)
    book.mark(DONE)
    assert book.due() == []  # segment 1 is not sent yet
    segment = book.next_to_submit(1)
    assert book.covered(segment)
    book.sent(segment, 2400)
    assert book.due() == [(DONE, 1, 2400)]
    book.mark(DONE)  # an empty turn (LiveKit's keepalive): due at once, with nothing in it
    assert book.due() == [(DONE, 0, 0)] and book.idle


def test_turns_count_apart_and_flushes_in_a_loop_hold_one_mark():
    book = Book()
    spoken(book, ["One.", "Two."])
    book.mark(DONE)
    assert book.due() == [(DONE, 2, 200)]
    book.number("Three.", ["Three."], None)
    for _ in range(1000):
        book.mark(FLUSH)
    assert len(book.marks) == 1
    book.mark(DONE)
    book.sent(book.next_to_submit(1), 100)
    assert book.due() == [(FLUSH, 1, 100)] * 1000 + [(DONE, 1, 100)]
    assert (book.sent_segments, book.sent_samples) == (3, 300)


def test_cancel_stops_everything_and_numbering_goes_on():
    book = Book()
    book.take("Half of a", POLICY)
    for text in ("One.", "Two."):
        book.number(text, [text], None)
    book.next_to_submit(1)
    book.mark(DONE)
    stopped = book.cancel()
    assert [s.number for s in stopped] == [1, 2] and all(s.cancelled and s.stopped.is_set() for s in stopped)
    assert book.idle and not book.marks and book.buffer == "" and not book.cut_any
    assert book.number("After.", ["After."], None).number == 3
    book.sent(book.next_to_submit(1), 100)
    book.mark(DONE)
    assert book.due() == [(DONE, 1, 100)]  # the turn's segments spoken to the end, the cancelled ones not


def test_the_first_segment_may_end_at_a_clause_only_once():
    book = Book()
    policy = segmenter.Policy(max_chars=250, first_clause_chars=10)
    assert book.take("Well, let me think about it, then", policy) == ["Well, let me think about it,"]
    assert book.take(", and more, later", policy) == []  # no second clause cut


def test_shutdown_drops_what_is_not_generating():
    book = Book()
    book.take("Half", POLICY)
    assert book.drop_waiting() and book.buffer == ""
    assert not Book().drop_waiting()
