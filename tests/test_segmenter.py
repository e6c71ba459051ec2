"""model/segmenter.py: where streamed text is cut into segments, token by token, without a model."""

import pytest

from model.segmenter import Policy, cut, flush

SENTENCES = Policy(max_chars=250)
CLAUSES = Policy(max_chars=250, first_clause_chars=24)


def stream(tokens: list[str], policy: Policy) -> list[tuple[int, str]]:
    """Feed tokens one at a time as a session does: (index of the token that completed it, segment)."""
    buffer, made = "", []
    for i, token in enumerate(tokens):
        segments, buffer = cut(buffer + token, policy, first=not made)
        made += [(i, segment) for segment in segments]
    return made + [(len(tokens), segment) for segment in flush(buffer, policy)]


def test_a_sentence_is_cut_on_the_token_that_ends_it_not_the_next_one():
    tokens = ["Hello", " there", " world.", " How", " are", " you?", " Fine"]
    assert stream(tokens, SENTENCES) == [(2, "Hello there world."), (5, "How are you?"), (7, "Fine")]


@pytest.mark.parametrize("text, first", [
    ("It costs 3.5 dollars. Then", "It costs 3.5 dollars."),  # "3." is not an end
    ("Mr. Smith is here. Then", "Mr. Smith is here."),
    ("Ask Dr. Who, e.g. now. Then", "Ask Dr. Who, e.g. now."),
    ("J. K. Rowling wrote it. Then", "J. K. Rowling wrote it."),
    ("... well. Then", "... well."),  # punctuation before any word goes with the words after it
])
def test_numbers_abbreviations_and_quotes_do_not_end_a_sentence_early(text, first):
    tokens = [text[0]] + [ch for ch in text[1:]]  # one character at a time: the hardest stream
    assert stream(tokens, SENTENCES)[0][1] == first


def test_a_closing_quote_stays_with_its_sentence_when_it_comes_with_the_period():
    assert stream(["He", " said", ' "stop."', " Then"], SENTENCES)[0] == (2, 'He said "stop."')
    # A period that ends the buffer ends the sentence at once (waiting would cost a token's interval),
    # so a quote sent after it starts the next segment, where XTTS does not speak it.
    assert stream(["He", " said", ' "stop.', '"', " Then"], SENTENCES)[:2] == [(2, 'He said "stop.'), (5, '" Then')]


@pytest.mark.parametrize("text, language_end", [
    ("你好。我很好。", "你好。"),
    ("こんにちは！元気ですか？", "こんにちは！"),
    ("नमस्ते। आप कैसे हैं।", "नमस्ते।"),
    ("مرحبا؟ كيف حالك", "مرحبا؟"),
])
def test_cjk_and_other_scripts_end_sentences_with_their_own_marks(text, language_end):
    segments, rest = cut(text, SENTENCES, first=True)
    assert segments[0] == language_end


def test_a_run_on_is_cut_at_its_last_clause_within_the_limit_else_between_words():
    policy = Policy(max_chars=60)
    clause = "one two three four five, six seven eight nine ten eleven twelve thirteen fourteen"
    segments, rest = cut(clause, policy, first=False)
    assert segments == ["one two three four five,"] and rest.startswith("six")
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron"
    segments, rest = cut(words, policy, first=False)
    assert len(segments[0]) <= 60 and (segments[0] + " " + rest).split() == words.split()
    assert words.startswith(segments[0] + " ")  # never inside a word


def test_a_run_on_without_spaces_is_cut_at_the_limit():
    segments, rest = cut("我" * 100, Policy(max_chars=82), first=False)
    assert segments == ["我" * 82] and rest == "我" * 18


def test_a_sentence_longer_than_the_limit_arriving_at_once_is_still_cut_within_it():
    text = "word " * 70 + "end."
    segments = flush(text, Policy(max_chars=100))
    assert all(len(segment) <= 100 for segment in segments)
    assert " ".join(segments).split() == text.split()


def test_the_first_segment_may_end_at_a_clause_once_long_enough_and_only_the_first():
    tokens = "Well, I think that is right, but let me check this with the team, because it matters. Then".split(" ")
    tokens = [t if i == 0 else " " + t for i, t in enumerate(tokens)]
    made = stream(tokens, CLAUSES)
    # "Well," is too short to speak alone; the first clause past 24 characters goes at once.
    assert made[0] == (5, "Well, I think that is right,")
    assert made[1][1] == "but let me check this with the team, because it matters."
    assert stream(tokens, SENTENCES)[0][1] == (
        "Well, I think that is right, but let me check this with the team, because it matters.")


def test_a_comma_inside_a_number_is_no_clause():
    segments, rest = cut("The total comes to 1,000,000 dollars", CLAUSES, first=True)
    assert segments == []


def test_flush_speaks_everything_now_even_mid_sentence():
    assert flush("First one. and then half of a", SENTENCES) == ["First one.", "and then half of a"]
    assert flush("   ", SENTENCES) == []


def test_text_arriving_later_never_changes_a_segment_already_cut():
    text = "The cat sat. On the mat it stayed, for hours and hours. The end"
    tokens = [text[i:i + 3] for i in range(0, len(text), 3)]
    made = [segment for _, segment in stream(tokens, SENTENCES)]
    assert made == ["The cat sat.", "On the mat it stayed, for hours and hours.", "The end"]


def test_one_message_with_two_long_clauses_cuts_only_its_first_clause_early():
    """Only the session's first segment may end at a clause: the rest of the same message waits for its
    sentence end, even when it holds another clause past first_clause_chars."""
    text = "This first clause is long enough, and this second clause is long enough too, then it ends here. More"
    segments, rest = cut(text, CLAUSES, first=True)
    assert segments == ["This first clause is long enough,", "and this second clause is long enough too, then it ends here."]
    assert rest == "More"
