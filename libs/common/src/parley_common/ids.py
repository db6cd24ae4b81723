"""Identifiers: random 128-bit ids written as 32 lowercase hex characters."""

from __future__ import annotations

import re
import uuid

__all__ = ["is_id", "new_id"]

_ID = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None
