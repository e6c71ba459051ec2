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

