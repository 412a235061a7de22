"""Field types shared by request models: trimmed names, emails, and the strict base model."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints


class Body(BaseModel):
    """Request bodies. Unknown fields are ignored, so newer clients keep working."""

    model_config = ConfigDict(extra="ignore")


class Out(BaseModel):
    """Response bodies."""

    model_config = ConfigDict(extra="ignore")


def _no_controls(value: str) -> str:
    if any(ord(ch) < 32 and ch not in "\t" for ch in value) or "\x7f" in value:
        raise ValueError("must not contain control characters")
    return value


# Names, titles and labels: 1–500 characters after trimming (API.md Conventions).
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
                 AfterValidator(_no_controls)]


def _email(value: str) -> str:
    value = value.strip()
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain or "." not in domain.strip(".") or " " in value:
        raise ValueError("is not an email address")
    if len(value) > 320:
        raise ValueError("is longer than 320 characters")
    _no_controls(value)
    return value.lower()


Email = Annotated[str, AfterValidator(_email)]
