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


# The types the session handles, and the model of the fields each takes; session.config's fields
# are the request schema's to judge (model/schema.py session_config).
FIELDS: dict[str, type[_Fields] | None] = {
    "session.config": None,
    "input.text": InputText,
    "input.flush": NoFields,
    "input.done": NoFields,
    "cancel": NoFields,
}


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
    if first["type"] == "extra_forbidden" and kind is not None:
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
