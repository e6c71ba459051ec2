import pytest
from pydantic import ValidationError

from model.schema import LANGUAGES, MAX_CLIP_BYTES, MAX_CLIPS, MAX_TEXT_CHARS, SynthesisRequest

CLIP = "UklGRiQAAABXQVZF"  # valid base64; whether it is audio is the model's concern

# (body, field the error must name): every invalid input the core issue names.
INVALID = [
    ({}, "text"),
    ({"text": ""}, "text"),
    ({"text": "   \n\t"}, "text"),
    ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text"),
    ({"text": 42}, "text"),
    ({"text": "hi", "language": "xx"}, "language"),
    ({"text": "hi", "language": "EN"}, "language"),
    ({"text": "hi", "speaker": ""}, "speaker"),
    ({"text": "hi", "speaker": 3}, "speaker"),
    ({"text": "hi", "chunk_size": 0}, "chunk_size"),
    ({"text": "hi", "chunk_size": 401}, "chunk_size"),
    ({"text": "hi", "chunk_size": "20"}, "chunk_size"),
    ({"text": "hi", "chunk_size": 2.5}, "chunk_size"),
    ({"text": "hi", "format": "flac"}, "format"),
    ({"text": "hi", "sample_rate": 11025}, "sample_rate"),
    ({"text": "hi", "sample_rate": "8000"}, "sample_rate"),
    ({"text": "hi", "sample_rate": 8000.0}, "sample_rate"),
    ({"text": "hi", "format": "opus", "sample_rate": 22050}, "sample_rate"),
    ({"text": "hi", "format": "opus", "sample_rate": 44100}, "sample_rate"),
    ({"text": "hi", "format": "mulaw", "sample_rate": 16000}, "sample_rate"),
    ({"text": "hi", "format": "alaw", "sample_rate": 24000}, "sample_rate"),
    ({"text": "hi", "temperature": 0}, "temperature"),
    ({"text": "hi", "temperature": 2.5}, "temperature"),
    ({"text": "hi", "top_p": 0}, "top_p"),
    ({"text": "hi", "top_p": 1.5}, "top_p"),
    ({"text": "hi", "top_k": 0}, "top_k"),
    ({"text": "hi", "repetition_penalty": 0.5}, "repetition_penalty"),
    ({"text": "hi", "length_penalty": 11}, "length_penalty"),
    ({"text": "hi", "speed": 0.1}, "speed"),
    ({"text": "hi", "speed": 3}, "speed"),
    ({"text": "hi", "speed": "fast"}, "speed"),
    ({"text": "hi", "enable_text_splitting": "true"}, "enable_text_splitting"),
    ({"text": "hi", "seed": -1}, "seed"),
    ({"text": "hi", "voice": "x"}, "voice"),
    ({"text": "hi", "streamer": "fast"}, "streamer"),
    ({"text": "hi", "first_chunk_size": 0}, "first_chunk_size"),
    ({"text": "hi", "streamer": "upstream", "first_chunk_size": 4}, "first_chunk_size"),
    ({"text": "hi", "speaker_wav": "not base64!"}, "speaker_wav"),
    ({"text": "hi", "speaker_wav": 12}, "speaker_wav"),
    ({"text": "hi", "speaker_wav": []}, "speaker_wav"),
    ({"text": "hi", "speaker_wav": [CLIP] * (MAX_CLIPS + 1)}, "speaker_wav"),
    ({"text": "hi", "speaker_wav": "A" * (MAX_CLIP_BYTES + 4)}, "speaker_wav"),
    ({"text": "hi", "speaker": "Ana Florence", "speaker_wav": CLIP}, "speaker_wav"),
    ({"text": "hi", "voice_id": "../../etc/passwd"}, "voice_id"),
    ({"text": "hi", "speaker_wav": CLIP, "voice_id": "0" * 32}, "voice_id"),
    ({"list": "voices", "text": "hi"}, "text"),
    ({"list": "songs"}, "list"),
    ({"text": "hi", "first_chunk_size": 1, "speed": 1.25}, "speed"),
    ({"text": "hi", "streamer": "upstream", "chunk_size": 1, "speed": 2.0}, "speed"),
    ({"text": "hi", "voice_name": "Narrator"}, "voice_name"),  # names the voice of a clip: none sent
    ({"text": "hi", "voice_id": "0" * 32, "voice_name": "Narrator"}, "voice_name"),
    ({"text": "hi", "speaker_wav": CLIP, "voice_name": ""}, "voice_name"),
    ({"text": "hi", "speaker_wav": CLIP, "voice_name": "x" * 65}, "voice_name"),
    ({"text": "hi", "speaker_wav": CLIP, "voice_name": "../etc"}, "voice_name"),
    ({"text": "hi", "speaker_wav": CLIP, "voice_name": "Zoë"}, "voice_name"),
    ({"text": "hi", "speaker_wav": CLIP, "voice_name": "a\nb"}, "voice_name"),
    ({"text": "hi", "speaker_wav": CLIP, "voice_name": 7}, "voice_name"),
]


@pytest.mark.parametrize("body,field", INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_invalid_input_is_rejected_naming_the_field(body, field):
    with pytest.raises(ValidationError) as info:
        SynthesisRequest.model_validate(body)
    assert field in {str(part) for error in info.value.errors() for part in error["loc"]}


def test_the_tutorial_request_is_valid_with_xtts_defaults():
    request = SynthesisRequest.model_validate_json('{"text": "It is streaming.", "chunk_size": 20}')
    assert (request.language, request.format, request.chunk_size, request.speaker) == ("en", "pcm", 20, None)
    assert request.sample_rate == 24000
    assert (request.temperature, request.top_p, request.top_k) == (0.75, 0.85, 50)
    assert (request.repetition_penalty, request.length_penalty, request.speed) == (10.0, 1.0, 1.0)
    assert request.enable_text_splitting is False and request.seed is None


def test_an_integer_is_accepted_for_a_float_field():
    assert SynthesisRequest.model_validate_json('{"text": "hi", "temperature": 1}').temperature == 1.0


def test_all_seventeen_xtts_languages_are_accepted():
    assert len(LANGUAGES) == 17
    for language in LANGUAGES:
        assert SynthesisRequest(text="hi", language=language).language == language


def test_a_clip_may_come_wrapped_or_as_a_data_url_and_several_make_a_list():
    wrapped = SynthesisRequest(text="hi", speaker_wav=CLIP[:8] + "\n" + CLIP[8:])
    data_url = SynthesisRequest(text="hi", speaker_wav=["data:audio/wav;base64," + CLIP, CLIP])
    assert wrapped.reference_clips == [b"RIFF$\x00\x00\x00WAVE"]
    assert data_url.reference_clips == wrapped.reference_clips * 2


def test_a_list_request_needs_no_text():
    request = SynthesisRequest.model_validate({"list": "voices"})
    assert request.listing == "voices" and request.text is None


def test_each_format_defaults_to_a_rate_it_carries():
    assert {fmt: SynthesisRequest(text="hi", format=fmt).sample_rate for fmt in ("pcm", "wav", "opus", "mp3")} == {
        "pcm": 24000, "wav": 24000, "opus": 24000, "mp3": 24000}
    assert SynthesisRequest(text="hi", format="mulaw").sample_rate == 8000
    assert SynthesisRequest(text="hi", format="alaw").sample_rate == 8000


def test_a_rate_a_codec_cannot_carry_is_refused_listing_what_works():
    with pytest.raises(ValidationError, match=r"opus carries 8000, 16000, 24000 or 48000 Hz, not 22050"):
        SynthesisRequest(text="hi", format="opus", sample_rate=22050)
    with pytest.raises(ValidationError, match=r"11025 Hz is not offered; use 8000, 16000, 22050, 24000, 44100 or 48000"):
        SynthesisRequest(text="hi", sample_rate=11025)


def test_a_voice_name_comes_with_a_clip_and_takes_the_documented_characters():
    for name in ("a", "Narrator v2.final", "my_voice-1", "x" * 64):
        assert SynthesisRequest(text="hi", speaker_wav=CLIP, voice_name=name).voice_name == name
    # A bad clip is reported against speaker_wav only, not again against voice_name.
    with pytest.raises(ValidationError) as info:
        SynthesisRequest.model_validate({"text": "hi", "speaker_wav": "not base64!", "voice_name": "Narrator"})
    assert [error["loc"] for error in info.value.errors()] == [("speaker_wav",)]
