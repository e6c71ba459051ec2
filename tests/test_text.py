"""model/text.py: the sentences a request is spoken as, with the test checkpoint's tokenizer (one token
a character, so limits are reached with little text). No model for most; the streamers at the end."""

from __future__ import annotations

import re
import sys
import time

import pytest
from crafted import NUMBERED_SENTENCES
from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

from model import text
from model.schema import SynthesisRequest

LIMIT = 402  # XttsArgs.gpt_max_text_tokens


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint) -> VoiceBpeTokenizer:
    return VoiceBpeTokenizer(str(tiny_checkpoint / "vocab.json"))


def sentences(tokenizer, **fields) -> list[str]:
    return text.sentences(SynthesisRequest(**fields), tokenizer, LIMIT)


def test_a_long_run_of_digits_is_read_digit_by_digit(tokenizer):
    pieces = sentences(tokenizer, text="Call 1234567890123456789 now, or 1,234,567.", enable_text_splitting=True)
    assert pieces == ["call one two three four five six seven eight nine zero one two three four five six seven eight nine now, or 1,234,567."]


@pytest.mark.parametrize("run", ["7" * 4000, "7." * 2000, "$7" * 2000, "." * 3999 + "a"])
def test_any_text_of_valid_length_is_checked_without_overflow(tokenizer, run):
    # Before: OverflowError (num2words past 10^303) after a minute of regex backtracking.
    pieces = sentences(tokenizer, text=run, enable_text_splitting=True)
    assert pieces and all(len(tokenizer.encode(p, lang="en")) < LIMIT for p in pieces)
    assert not any(re.search(r"\d{16}", p) for p in pieces)


def test_splitting_happens_after_numbers_become_words(tokenizer):
    # XTTS's own split cuts by characters before numbers are spelled out: its pieces grew past the limit.
    pieces = sentences(tokenizer, text=NUMBERED_SENTENCES, enable_text_splitting=True)
    assert all(len(tokenizer.encode(p, lang="en")) < LIMIT for p in pieces)
    assert " ".join(pieces).split() == NUMBERED_SENTENCES.lower().split()  # nothing lost, nothing added


def test_a_text_with_no_spaces_is_split_too(tokenizer):
    # No punctuation, no spaces: XTTS cuts it every 82 characters, and each piece's numbers become
    # hanzi, then pinyin, far past the limit. Only a cut without a space can split it further.
    run = "我有123456789012345个苹果" * 20
    pieces = sentences(tokenizer, text=run, language="zh-cn", enable_text_splitting=True)
    assert len(pieces) > 1 and "".join(pieces) == run
    assert all(len(tokenizer.encode(p, lang="zh")) < LIMIT for p in pieces)


def test_without_splitting_a_long_sentence_is_refused_with_the_hint(tokenizer):
    with pytest.raises(text.TextError, match="set enable_text_splitting to true") as info:
        sentences(tokenizer, text=NUMBERED_SENTENCES)
    assert info.value.field == "text" and info.value.status == 400


def test_hindi_digits_are_read_in_hindi_words(tokenizer):
    assert sentences(tokenizer, text="मेरे पास 25 सेब हैं, ३ नहीं।", language="hi") == [
        "मेरे पास  दो  पाँच  सेब हैं,  तीन  नहीं।"
    ]


def test_czech_ordinals_are_read_as_cardinals(tokenizer):
    # "5." before a space is what XTTS takes for an ordinal; "1.000." is a thousand; "3,5." a decimal.
    assert sentences(tokenizer, text="Přijdu 5. května. Stojí 1.000. Je to 3,5.", language="cs") == [
        "přijdu pět. května. stojí tisíc. je to 3,5."
    ]


def test_pieces_with_nothing_to_say_are_left_out(tokenizer):
    # XTTS's split makes three pieces of this; the two of notes alone would be babbled as noise.
    pieces = sentences(tokenizer, text="Hello there! " + "♪ " * 150, enable_text_splitting=True)
    assert pieces == ["hello there!"]
    with pytest.raises(text.TextError, match="nothing to speak"):
        sentences(tokenizer, text="?!... —")


@pytest.mark.parametrize("streamer", ["windowed", "upstream"])
def test_the_streamers_speak_exactly_the_checked_pieces(model, monkeypatch, streamer):
    xtts = model._service.xtts
    request = SynthesisRequest(text="Call 1234567890123456789 now. " + "Short words here. " * 14, enable_text_splitting=True, streamer=streamer, chunk_size=400, seed=1)
    checked = model._service.check(request)
    spoken = []
    encode = xtts.tokenizer.encode
    monkeypatch.setattr(xtts.tokenizer, "encode", lambda txt, lang: spoken.append(txt) or encode(txt, lang))
    job = model._service.job(request, model._service.voices.library.get(None), checked)  # windowed: the engine; upstream: alone
    model._service.scheduler.submit(job)
    deadline = time.monotonic() + 120
    while (piece := job.output.take()) is not None:
        assert time.monotonic() < deadline
        time.sleep(0 if piece else 0.01)
    assert len(checked) > 1 and spoken == checked


def test_text_the_tokenizer_cannot_take_is_a_text_error_not_a_crash(tokenizer):
    """A lone surrogate gets past a str type without constraints (the realtime protocol checks it too)."""
    request = SynthesisRequest.model_construct(text="\ud800 hello.", language="en", enable_text_splitting=False)
    with pytest.raises(text.TextError, match="tokenizer cannot read"):
        text.sentences(request, tokenizer, LIMIT)


def test_warm_up_loads_the_chinese_and_japanese_text_tools_before_any_request(tiny_checkpoint, monkeypatch):
    """They load in one stretch that holds the GIL (pypinyin's dictionary 410 ms, cutlet 344 ms here): on a
    first Chinese request, even from a worker thread, every stream of the replica stalled (issue 20)."""
    for name in [name for name in sys.modules if name.split(".")[0] == "pypinyin"]:
        monkeypatch.delitem(sys.modules, name)  # as in a fresh process; restored afterwards
    fresh = VoiceBpeTokenizer(str(tiny_checkpoint / "vocab.json"))
    text.warm_up(fresh, LIMIT)
    assert "pypinyin" in sys.modules and "katsu" in fresh.__dict__
