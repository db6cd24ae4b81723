"""Search of a user's chats, the plain part (no I/O): the query checked, and a snippet of the
matching text with the ranges that match, for a client to highlight (ranges, not markup, so that
no text of a message is ever taken as HTML)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from parley_session.domain import InvalidArgumentError

__all__ = ["MAX_QUERY_CHARS", "SearchQuery", "Snippet", "check_query", "snippet"]

MAX_QUERY_CHARS: Final = 200
MAX_SEARCH_LIMIT: Final = 50
_SNIPPET_CHARS: Final = 160
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    user_id: str
    text: str
    bot_id: str = ""
    since_ms: int = 0  # 0: no bound
    until_ms: int = 0
    limit: int = 20
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Snippet:
    text: str
    highlights: list[tuple[int, int]]  # [start, end) in `text`


def check_query(query: SearchQuery) -> None:
    if not _WORD.search(query.text):
        raise InvalidArgumentError("q", "give at least one word to search for")
    if len(query.text) > MAX_QUERY_CHARS:
        raise InvalidArgumentError("q", f"at most {MAX_QUERY_CHARS} characters")
    if not 1 <= query.limit <= MAX_SEARCH_LIMIT:
        raise InvalidArgumentError("limit", f"1 to {MAX_SEARCH_LIMIT}")
    if query.since_ms and query.until_ms and query.since_ms > query.until_ms:
        raise InvalidArgumentError("since", "must not be after until")


def _stems(query: str) -> list[str]:
    """The query's words, cut to a stem-like prefix: MongoDB matches "running" for "runs"; a
    prefix of the word marks what it matched closely enough to see."""
    words = {w.lower() for w in _WORD.findall(query) if not w.startswith("-")}
    return sorted((w if len(w) <= 4 else w[: max(4, len(w) - 3)] for w in words), key=len)


def snippet(text: str, query: str) -> Snippet:
    """Up to ~160 characters of `text` around its first match of the query, with every match
    of the query's words (by stem prefix) in it."""
    stems = _stems(query)
    pattern = re.compile(
        r"\b(?:" + "|".join(re.escape(s) for s in reversed(stems)) + r")\w*", re.IGNORECASE
    )
    first = pattern.search(text)
    start = 0
    if first is not None and first.start() > _SNIPPET_CHARS // 3:
        start = first.start() - _SNIPPET_CHARS // 3
        space = text.rfind(" ", 0, start + 1)
        start = space + 1 if space > start - 20 else start
    end = min(len(text), start + _SNIPPET_CHARS)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > end - 20 else end
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(text) else ""
    body = text[start:end]
    offset = len(prefix)
    highlights = [(m.start() + offset, m.end() + offset) for m in pattern.finditer(body)]
    return Snippet(prefix + body + suffix, highlights)
