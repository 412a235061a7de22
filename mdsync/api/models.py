"""Field types shared by request models: trimmed names, emails, and the strict base model."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints


class Body(BaseModel):
    """Request bodies. Unknown fields are ignored, so newer clients keep working."""

    model_config = ConfigDict(extra="ignore")


class Out(BaseModel):
    """Response bodies."""

    model_config = ConfigDict(extra="ignore")


class Opaque:
    """Marks a string field whose text is never stored or shown, only checked (a password: only
    its hash is kept), so it may hold any character the user can type twice, NUL included:
    `routing.parse_json` refuses NUL in every other string of a body."""

    def __repr__(self) -> str:
        return "OPAQUE"


OPAQUE = Opaque()


# Bidi embeddings, overrides and isolates reorder how *other* people's screens show the text
# around them (the "Trojan Source" trick); the plain marks U+200E/U+200F stay allowed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _no_controls(value: str) -> str:
    for ch in value:
        code = ord(ch)
        if code < 32 or 0x7F <= code < 0xA0:
            raise ValueError("must not contain control characters")
        if 0xD800 <= code < 0xE000:
            raise ValueError("must not contain unpaired surrogates")
        if ch in _BIDI_CONTROLS:
            raise ValueError("must not contain bidirectional override characters")
    return value


# Names, titles and labels: 1–500 characters after trimming (docs/api.md "Conventions").
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
                 AfterValidator(_no_controls)]


def _email(value: str) -> str:
    # one spelling per address: "é" typed precomposed or as e + combining accent is one account
    value = unicodedata.normalize("NFC", value.strip())
    if len(value) > 320:
        raise ValueError("is longer than 320 characters")
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain or "." not in domain.strip(".") or "@" in local:
        raise ValueError("is not an email address")
    # letters, digits, marks, punctuation and symbols only: no spaces, controls, invisible
    # format characters (zero-width, bidi) or surrogates, which would make look-alike accounts
    if any(unicodedata.category(ch)[0] in "CZ" for ch in value):
        raise ValueError("must not contain spaces, control or invisible characters")
    return value.lower()


Email = Annotated[str, AfterValidator(_email)]
