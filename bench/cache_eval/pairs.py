"""Labelled pairs for the cache's evaluation: a stored conversation ``a`` and a lookup ``b``.

Two line formats are read:

- the scoring command's, ``{"id", "a", "b", "same"?, "kind"?}``, where ``a`` and ``b`` are a
  question (a string) or a conversation (a list of ``{"role", "content"}`` messages ending with
  the user's question; a ``system`` message sets the system prompt);
- ``pairs.jsonl``'s, where ``a`` and ``b`` are ``{"turns": [...]}`` (with optional
  ``system_prompt``, ``bot_id`` and ``model``) and each line also names its ``kind`` and ``split`` (``tune``: looked at while developing; ``test``: written after).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from parley_cache.keying import CacheKey, Role, Turn

__all__ = [
    "DEFAULT_BOT",
    "DEFAULT_MODEL",
    "DEFAULT_SYSTEM_PROMPT",
    "PAIRS_PATH",
    "Pair",
    "load_pairs",
]

PAIRS_PATH = Path(__file__).with_name("pairs.jsonl")
DEFAULT_BOT = "default"
DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True, slots=True)
class Pair:
    id: str
    entry: CacheKey  # what the cache holds ("a")
    lookup: CacheKey  # what is asked ("b")
    same: bool | None
    kind: str
    split: str
    a: Side
    b: Side


@dataclass(frozen=True, slots=True)
class Side:
    bot_id: str
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content), system prompt first


def _side(side: object) -> Side:
    meta = side if isinstance(side, dict) else {}
    messages = _messages(side)
    if "system_prompt" in meta:
        messages = (("system", str(meta["system_prompt"])), *messages[1:])
    return Side(
        bot_id=str(meta.get("bot_id", DEFAULT_BOT)),
        model=str(meta.get("model", DEFAULT_MODEL)),
        messages=messages,
    )


def _messages(side: object) -> tuple[tuple[str, str], ...]:
    if isinstance(side, str):
        turns: list[dict[str, str]] = [{"role": "user", "content": side}]
    elif isinstance(side, dict) and isinstance(side.get("turns"), list):
        turns = side["turns"]
    elif isinstance(side, list):
        turns = side
    else:
        raise ValueError(f"a side is a string, a list of messages or {{'turns': [...]}}: {side!r}")
    messages = [(str(t["role"]), str(t["content"])) for t in turns]
    if not any(role == "system" for role, _ in messages):
        messages.insert(0, ("system", DEFAULT_SYSTEM_PROMPT))
    return tuple(messages)


def _key(side: Side) -> CacheKey:
    return CacheKey.build(
        bot_id=side.bot_id,
        model=side.model,
        system_prompt="\n".join(c for r, c in side.messages if r == "system"),
        turns=[Turn(Role(r), c) for r, c in side.messages if r != "system"],
    )


def load_pairs(path: Path) -> list[Pair]:
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        a, b = _side(row["a"]), _side(row["b"])
        same = row.get("same")
        pairs.append(
            Pair(
                id=str(row.get("id", number)),
                entry=_key(a),
                lookup=_key(b),
                same=None if same is None else bool(same),
                kind=str(row.get("kind", "")),
                split=str(row.get("split", "")),
                a=a,
                b=b,
            )
        )
    return pairs
