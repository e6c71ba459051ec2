"""model/messages.py: a realtime client message parsed within bounds, each refusal naming its field."""

import json

import pytest

from model.messages import MAX_DEPTH, MessageError, parse


@pytest.mark.parametrize("raw, field, says", [
    ("[" * 25000 + "]" * 25000, None, "nested too deep"),  # 50 KB: json.loads itself stops at its recursion limit
    ('{"a": ' * 13000 + "1" + "}" * 13000, None, "nested too deep"),
    ('{"type": "cancel", "x": ' + "[" * 500 + "]" * 500 + "}", None, "nested too deep"),  # under json's limit
    ('{"type": "cancel", "x": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", None, "nested too deep"),
    ("not json", None, "not JSON"),
    ('"a string"', None, "a JSON object"),
    ("[]", None, "a JSON object"),
    ('{"type": 5}', "type", "unknown type 'int'"),
    ('{"type": "input.txt"}', "type", "unknown type 'input.txt'"),
    ('{"type": "input.text"}', "text", "Field required"),
    ('{"type": "input.text", "text": 5}', "text", "valid string"),
    ('{"type": "input.text", "text": NaN}', "text", "valid string"),
    ('{"type": "input.text", "text": "\\ud800 hello."}', "text", "lone surrogate"),
    ('{"type": "input.text", "text": "x", "flush": true}', "flush", "input.text takes `text`"),
    ('{"type": "cancel", "now": 1}', "now", "cancel takes no fields"),
])
def test_each_bad_message_is_refused_naming_its_field(raw, field, says):
    with pytest.raises(MessageError) as refused:
        parse(raw)
    assert refused.value.field == field and says in str(refused.value), (refused.value.field, str(refused.value))


def test_good_messages_parse_to_their_type_and_fields():
    assert parse('{"type": "input.text", "text": "A pair \\ud83d\\ude00."}') == ("input.text", {"text": "A pair \U0001f600."})
    assert parse('{"type": "input.text", "text": ""}') == ("input.text", {"text": ""})
    assert parse('{"type": "input.flush"}') == ("input.flush", {})
    config = {"speaker_wav": ["AAAA"], "format": "mp3"}  # the schema judges session.config's fields
    assert parse(json.dumps({"type": "session.config", **config})) == ("session.config", config)



# Baseten's session.config names (LiveKit's plugin sends them) -------------------------------------

from model.messages import config_fields, sent_name  # noqa: E402

PLUGIN_CONFIG = {"task_type": "Base", "response_format": "pcm", "stream_audio": True, "speed": 1.0,
                 "voice": "Ana Florence", "language": "Auto"}


def test_the_plugins_config_maps_to_ours():
    assert config_fields(PLUGIN_CONFIG) == {"format": "pcm", "speed": 1.0, "speaker": "Ana Florence", "language": "Auto"}
    assert config_fields({"voice": "0123456789abcdef0123456789abcdef"}) == {"voice_id": "0123456789abcdef0123456789abcdef"}
    clip = {"ref_audio": "data:audio/wav;base64,AAAA", "ref_text": "words", "voice": "label", "initial_codec_chunk_frames": 3,
            "max_new_tokens": 200, "instructions": "", "x_vector_only_mode": False}
    assert config_fields(clip) == {"speaker_wav": "data:audio/wav;base64,AAAA", "first_chunk_size": 3, "max_new_tokens": 200}
    assert config_fields({"format": "mp3", "speaker": "x"}) == {"format": "mp3", "speaker": "x"}  # ours pass as they are


@pytest.mark.parametrize("fields, field, says", [
    ({"stream_audio": False}, "stream_audio", "only true"),
    ({"task_type": "VoiceDesign"}, "task_type", 'only "Base"'),
    ({"instructions": "cheerful"}, "instructions", "no style instructions"),
    ({"x_vector_only_mode": True}, "x_vector_only_mode", "only false"),
    ({"timestamp_type": "word", "timestamp_transport_strategy": "sync"}, "timestamp_type", "no word alignment"),
    ({"ref_audio": "https://example.com/clip.wav"}, "ref_audio", "fetches nothing"),
    ({"response_format": "pcm", "format": "pcm"}, "response_format", "not both"),
    ({"voice": "a", "speaker": "b"}, "voice", "not both"),
    ({"voice": 5}, "voice", "a string"),
])
def test_a_value_xtts_cannot_honour_is_refused_by_name(fields, field, says):
    with pytest.raises(MessageError) as refused:
        config_fields(fields)
    assert refused.value.field == field and says in str(refused.value)


def test_errors_name_the_field_the_client_sent():
    assert sent_name("speaker_wav", {"ref_audio": "x"}) == "ref_audio"
    assert sent_name("speaker", {"voice": "x"}) == "voice"
    assert sent_name("first_chunk_size", {"initial_codec_chunk_frames": 1}) == "initial_codec_chunk_frames"
    assert sent_name("speaker", {"speaker": "x"}) == "speaker" and sent_name(None, {}) is None


def test_voice_messages_parse():
    add = {"type": "voice.add", "name": "Agent", "audio_data": "AAAA", "audio_format": "wav", "consent": "user_consent"}
    assert parse(json.dumps(add))[1] == {"name": "Agent", "audio_data": "AAAA", "audio_format": "wav", "consent": "user_consent", "ref_text": None}
    assert parse('{"type": "voice.list"}') == ("voice.list", {})
    assert parse('{"type": "session.close"}') == ("session.close", {})
    with pytest.raises(MessageError) as refused:
        parse('{"type": "voice.add", "name": "Agent"}')
    assert refused.value.field == "audio_data"
