"""Answers that must not be served for a week: questions about "now", and requests for variety.

Two small decisions, both before any search:

- :func:`is_time_sensitive`: a question that names a moment relative to when it is asked
  ("today", "the latest version", "aktuell", "aujourd'hui") or a calendar date has an answer that
  goes stale; its entry is stored with a short TTL (``CACHE_FRESH_TTL_SECONDS``) instead of the
  default one. The words are general vocabulary (``parley_cache.lexicon.TIME_SENSITIVE``).
- :func:`asks_for_variety`: a request sampled above ``CACHE_MAX_TEMPERATURE`` wants a different
  answer each time ("tell me a joke" at temperature 1): it is never answered from the cache,
  though its answer is still stored for calmer requests.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from parley_cache.lexicon import TIME_SENSITIVE
from parley_cache.signals import MAX_CHARS

__all__ = ["asks_for_variety", "is_time_sensitive"]

_WORD = re.compile(r"\w+(?:'\w+)?")
# 2026-12-03, 03/12/2026, 12.3.2026, and a bare year from 1900 on: "the 2026 election".
_DATE = re.compile(r"\b(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./]\d{1,2}[./]\d{2,4}|(?:19|20)\d{2})\b")
_PHRASES: Final = frozenset(p for p in TIME_SENSITIVE if " " in p)
_WORDS: Final = TIME_SENSITIVE - _PHRASES


def is_time_sensitive(question: str) -> bool:
    text = unicodedata.normalize("NFKC", question[:MAX_CHARS]).replace("’", "'").casefold()
    if _DATE.search(text):
        return True
    words = _WORD.findall(text)
    if not _WORDS.isdisjoint(words):
        return True
    joined = " ".join(words)
    return any(phrase in joined for phrase in _PHRASES)


def asks_for_variety(temperature: float, max_temperature: float) -> bool:
    return temperature > max_temperature
