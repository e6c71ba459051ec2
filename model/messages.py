"""The realtime protocol's client messages (README "Realtime protocol"): one websocket text frame in,
its type and fields out, or a MessageError naming the field at fault. Pure: no session state.

Parsing is bounded: the session checks a message's size before it gets here, and nesting is bounded
while parsing (Python's json stops at its recursion limit, which a 50 KB run of brackets passes) and
after it (no message of the protocol nests deeper than MAX_DEPTH). Each type's fields are validated by
pydantic with the HTTP schema's strictness, and `text` is refused where HTTP refuses it: a lone
surrogate (`"\\ud800"`, which JSON can spell but UTF-8 cannot, and the tokenizer chokes on), which HTTP
answers with a 400 naming `text` ("unable to parse raw data as a unicode string").
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

# session.config's speaker_wav list in the message object is 2 deep; nothing else nests at all.
MAX_DEPTH = 4


class MessageError(ValueError):
    """A message the session answers with an `error` naming `field` (None: the frame as a whole)."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class InputText(_Fields):
    text: str  # any length, even empty: a token of an LLM's stream

    @field_validator("text")
    @classmethod
    def _whole_characters(cls, text: str) -> str:
        # HTTP's `text` is refused by pydantic itself, which checks this only for a str with constraints
        # (HTTP's has length bounds; this one has none): said here in words a client can act on.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"not valid Unicode: a lone surrogate {text[exc.start]!r} at character {exc.start}; "
                "send whole characters (a pair of surrogates in one message is one character)"
            ) from None
        return text


class NoFields(_Fields):
    pass


class VoiceAdd(_Fields):
    """LiveKit's register_voice (Baseten's convention): a name for the voice of a base64 clip."""

    name: str  # the voice store's rules are model/voices.py's to judge, naming `name`
    audio_data: str  # base64 or a data URL; decoded off the event loop, errors naming `audio_data`
    audio_format: str | None = None  # unused: the clip's own bytes say what it is (model/clips.py)
    consent: str | None = None  # accepted and unused
    ref_text: str | None = None  # unused: XTTS clones from audio alone


# The types the session handles, and the model of the fields each takes; session.config's fields
# are mapped by config_fields below, then judged by the request schema (model/schema.py session_config).
FIELDS: dict[str, type[_Fields] | None] = {
    "session.config": None,
    "input.text": InputText,
    "input.flush": NoFields,
    "input.done": NoFields,
    "cancel": NoFields,
    "session.close": NoFields,
    "voice.add": VoiceAdd,
    "voice.list": NoFields,
}

# Baseten's TTS websocket convention (its Qwen3-TTS truss; LiveKit's Baseten plugin sends these), taken
# beside our own names in session.config. Each is either one of ours under another name, or accepted
# only at the value XTTS honours.
RENAMED = {"response_format": "format", "ref_audio": "speaker_wav", "initial_codec_chunk_frames": "first_chunk_size"}
_ONLY = {
    "stream_audio": (True, "audio always streams as it is made"),
    "task_type": ("Base", "XTTS has one task: speaking in a given or cloned voice"),
    "x_vector_only_mode": (False, "XTTS always conditions on the clip's latents and speaker embedding together"),
}
_NO_TIMESTAMPS = (
    "XTTS produces no word alignment, and guessed timestamps would be worse than none: "
    "turn word timestamps off (README \"Use with LiveKit Agents\")"
)


def config_fields(fields: dict) -> dict:
    """A session.config's fields in the request schema's names: Baseten's mapped to ours, those with
    one possible value checked and dropped. MessageError names the client's field."""
    mapped = dict(fields)
    for name in ("timestamp_type", "timestamp_transport_strategy"):
        if name in mapped:
            raise MessageError(name, _NO_TIMESTAMPS)
    for name, (value, why) in _ONLY.items():
        if name in mapped:
            if mapped.pop(name) != value:
                raise MessageError(name, f"only {json.dumps(value)} is supported: {why}")
    if "instructions" in mapped:
        if mapped.pop("instructions") not in (None, ""):
            raise MessageError("instructions", "XTTS takes no style instructions: leave it empty (the voice sets the style)")
    mapped.pop("ref_text", None)  # accepted, unused: XTTS clones from the audio alone
    ref_audio = mapped.get("ref_audio")
    if isinstance(ref_audio, str) and ref_audio.lstrip().lower().startswith(("http://", "https://")):
        raise MessageError("ref_audio", "the server fetches nothing: send the clip itself, base64 or a data: URL")
    for theirs, ours in RENAMED.items():
        if theirs in mapped:
            if ours in mapped:
                raise MessageError(theirs, f"send {theirs} or {ours}, not both")
            mapped[ours] = mapped.pop(theirs)
    if "voice" in mapped:
        voice = mapped.pop("voice")
        taken = [name for name in ("speaker", "voice_id") if name in mapped]
        if taken:
            raise MessageError("voice", f"send voice or {taken[0]}, not both")
        if not isinstance(voice, str):
            raise MessageError("voice", "a voice is a name or a voice id (a string)")
        if "speaker_wav" not in mapped:  # with a clip (ref_audio) the clip is the voice, and `voice` only a label
            mapped["voice_id" if re.fullmatch(r"[0-9a-f]{32}", voice) else "speaker"] = voice
    return mapped


def sent_name(field: str | None, fields: dict) -> str | None:
    """The name the client used for `field` (Baseten's, if it sent that one; `voice` for the voice it chose)."""
    if field is None:
        return None
    root, dot, rest = field.partition(".")
    for theirs, ours in (*RENAMED.items(), ("voice", "speaker"), ("voice", "voice_id")):
        if root == ours and theirs in fields:
            return theirs + dot + rest
    return field


def parse(raw: str) -> tuple[str, dict]:
    """A text frame's type and its other fields (validated, except session.config's)."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise MessageError(None, f"nested too deep: a message nests at most {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise MessageError(None, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(None, "a message is a JSON object with a `type`")
    if _depth(data) > MAX_DEPTH:
        raise MessageError(None, f"nested too deep: a message nests at most {MAX_DEPTH} levels")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
        raise MessageError("type", f"unknown type {shown!r}; send one of {', '.join(FIELDS)}")
    fields = {key: value for key, value in data.items() if key != "type"}
    model = FIELDS[kind]
    if model is None:
        return kind, fields
    try:
        return kind, model.model_validate(fields).model_dump()
    except ValidationError as exc:
        raise validation_error(exc, kind) from None


def validation_error(exc: ValidationError, kind: str | None = None) -> MessageError:
    """pydantic's first error as a MessageError naming its field, as HTTP's 400 names it."""
    first = exc.errors()[0]
    name = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "value_error":  # our own validators' words, without pydantic's "Value error, "
        return MessageError(name, str(first["ctx"]["error"]))
    if first["type"] == "extra_forbidden" and FIELDS.get(kind) is not None:
        allowed = FIELDS[kind].model_fields
        return MessageError(name, f"{kind} takes {' and '.join(f'`{f}`' for f in allowed) or 'no fields'}")
    return MessageError(name, first["msg"])


def _depth(value: Any) -> int:
    """How deep `value` nests (an object of scalars: 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
