"""model/language.py: language "auto" among XTTS's 17, and its fallback when unsure."""

import pytest
from langid_sentences import SENTENCES

from model import language
from model.schema import LANGUAGES, SynthesisRequest


def test_each_of_the_17_languages_is_detected_on_short_sentences():
    assert set(SENTENCES) == set(LANGUAGES)
    found = {code: [language.detect(s) for s in sentences] for code, sentences in SENTENCES.items()}
    right = sum(f == code for code, results in found.items() for f in results)
    assert right >= 0.95 * sum(len(s) for s in SENTENCES.values()), found  # 168 of 170 when measured
    assert all(results.count(code) >= 8 for code, results in found.items()), found


@pytest.mark.parametrize("text", ["OK.", "Hello there", "42.", "…", ""])
def test_when_unsure_the_fallback_then_english(text):
    assert language.detect(text, "de") == "de"
    assert language.detect(text) == "en"


def test_a_request_in_auto_gets_its_texts_language_and_others_are_untouched():
    request = SynthesisRequest(text="Ihr Termin wurde auf Freitag verschoben.", language="AUTO")
    assert request.language == "auto" and language.resolved(request).language == "de"
    fixed = SynthesisRequest(text="Ihr Termin wurde auf Freitag verschoben.", language="en")
    assert language.resolved(fixed) is fixed
