"""Personal data in a conversation: such a chat's answers are never shared beyond its user.

A cache entry in a tenant or global scope is served to other people. An answer written for a
chat in which someone gave their e-mail address, phone number, card number or name may repeat
it, so such a chat is cached per user only, whatever its bot profile allows::

    found = find_personal_data(["My name is Ana Lopez.", "Write me a short bio."])
    found.kinds    # frozenset({'self-identification'})
    bool(found)    # True: keep the entry per user

The rules are a small, deliberate set of regular expressions tuned to over-report: a false alarm
only costs a shared hit (the entry is still cached for its user), a miss would leak. Numbers that
merely look like data are confirmed where a checksum exists (Luhn for cards, ISO 7064 for IBANs)
and otherwise flagged on shape alone.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["PersonalData", "find_personal_data", "is_shared_scope", "user_scope"]

# An e-mail address is looked for around each "@" only, through bounded windows: a pattern
# scanning the whole text would take quadratic time on a long run of word characters.
_EMAIL_LOCAL: Final = re.compile(r"[\w.+-]{1,64}\Z")
_EMAIL_DOMAIN: Final = re.compile(
    r"[\w-]{1,63}(?:\.[\w-]{1,63}){0,8}\.[a-z]{2,24}\b", re.IGNORECASE
)

# International numbers (+44 20 7946 0958, 0049 30 1234567), North American ones
# ((415) 555-0132, 415.555.0132), national ones (0171 2345678) and any run of 9+ digits joined
# by phone separators.
_PHONE: Final = re.compile(
    r"(?<![\w+])(?:"
    r"(?:\+|00)\d{1,3}[\s./-]?(?:\(\d{1,4}\)[\s./-]?)?\d(?:[\s./-]?\d){5,12}"
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4}"
    r"|0\d{2,4}[\s/-]\d{5,8}"
    r"|\d{2,4}(?:[ -]\d{2,4}){2,4}"
    r")(?!\w)"
)

# 13-19 digits, optionally grouped by spaces or dashes: a payment card when Luhn agrees.
_CARD: Final = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
# Country, check digits, then groups of four (spaced or not) and a short last group.
_IBAN: Final = re.compile(
    r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b", re.IGNORECASE
)
# US social security numbers and other national id shapes: 3-2-4, and 9+ bare digits.
_NATIONAL_ID: Final = re.compile(r"(?<!\d)(?:\d{3}-\d{2}-\d{4}|\d{9,})(?!\d)")

_STREET_TYPES: Final = (
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
    "terrace|close|square|sq|crescent|parkway|pkwy|highway|hwy"
)
# "221B Baker Street", "1600 Pennsylvania Ave", "12 oak street", "Hauptstraße 5",
# "calle Mayor 12", "Springfield, IL 62704". Street types that are also common words ("way",
# "close", "court") count only after a capitalised name, so "3 in a row" stays a question.
_ADDRESS: Final = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?,?\s+(?:[A-Z][\w'.-]*\s+){{1,3}}(?i:{_STREET_TYPES})\b"
    r"|\b\d{1,5}[a-z]?,?\s+(?:[\w'.-]+\s+){1,3}(?i:street|avenue|boulevard|road)\b"
    r"|\b\w*(?i:straße|strasse|gasse|platz)\s+\d{1,4}[a-z]?\b"
    r"|\b(?i:calle|rue|via|avenida)\s+(?:[\w'.-]+\s+){1,3}\d{1,4}\b"
    r"|\b[A-Z][a-z]+,\s*[A-Z]{2}\s+\d{5}(?:-\d{4})?\b"
)

# Someone saying who they are, where they live, or handing over something of theirs.
_SELF: Final = re.compile(
    r"\bmy\s+(?:full\s+|first\s+|last\s+|real\s+|maiden\s+|legal\s+)?(?:name|surname)\s+is\b"
    r"|\b(?:i\s+am|i'm)\s+called\b|\bi\s+was\s+born\s+(?:on|in)\b"
    r"|\bi\s+live\s+(?:at|on|in)\b"
    # "my password is ...", "my phone: ...": the value follows. "How do I reset my password?" or
    # "my account is locked" give nothing away and stay shareable.
    r"|\bmy\s+(?:home\s+|postal\s+|street\s+|mailing\s+|work\s+|personal\s+)?"
    r"(?:address|e-?mail|phone|mobile|cell|telephone|birthday|date\s+of\s+birth|dob|ssn|"
    r"social\s+security|passport|driver'?s?\s+licen[cs]e|licen[cs]e\s+plate|"
    r"(?:bank\s+)?account|credit\s+card|debit\s+card|card|iban|routing|tax\s+id|"
    r"national\s+id|insurance|policy|patient|medical|diagnosis|salary|"
    r"password|passcode|pin|api\s+key|secret|token|username|login)"
    r"(?:\s+(?:address|number|code|no\.?|id))?\s*"
    r"(?:[:=]|(?:is|was)\b(?!\s+(?:not|no|too|being|still|locked|blocked|expired|wrong|"
    r"incorrect|invalid|disabled|suspended|compromised|hacked|missing|empty|gone|reset)\b))",
    re.IGNORECASE,
)
# Introductions need the capitals of a name: "call me Ana", "I'm Ana Lopez", "this is Ana Lopez".
_INTRODUCTION: Final = re.compile(
    r"\b(?:[Cc]all\s+me\s+[A-Z][a-z]+"
    r"|(?:[Tt]his\s+is|I\s+am|I'm)\s+[A-Z][a-z]+\s+[A-Z][a-z]+)\b"
)

# Credentials pasted into a chat: provider key prefixes, JWTs, private keys.
_SECRET: Final = re.compile(
    r"\b(?:sk|pk|rk)[-_](?:live|test|proj|ant)?[-_]?[A-Za-z0-9_-]{16,}"
    r"|\b(?:ghp|gho|ghu|ghs|github_pat|glpat|xox[abprs])[-_][A-Za-z0-9_-]{16,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"
)


@dataclass(frozen=True, slots=True)
class PersonalData:
    """What kinds of personal data a text holds (empty: none found)."""

    kinds: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.kinds)


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _iban(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _has_email(text: str) -> bool:
    at = text.find("@")
    while at != -1:
        if _EMAIL_LOCAL.search(text, max(0, at - 64), at) and _EMAIL_DOMAIN.match(
            text, at + 1, at + 1 + 320
        ):
            return True
        at = text.find("@", at + 1)
    return False


def _kinds(text: str) -> set[str]:
    found: set[str] = set()
    if _has_email(text):
        found.add("email")
    if _SECRET.search(text):
        found.add("credential")
    if any(_luhn(_digits(m.group(0))) for m in _CARD.finditer(text)):
        found.add("card number")
    if any(_iban(m.group(0)) for m in _IBAN.finditer(text)):
        found.add("iban")
    if _NATIONAL_ID.search(text):
        found.add("id number")
    for match in _PHONE.finditer(text):
        digits = _digits(match.group(0))
        # Grouped digits with fewer than 9 in all are dates, sizes or sums, not phone numbers.
        if 9 <= len(digits) <= 15:
            found.add("phone number")
            break
    if _ADDRESS.search(text):
        found.add("address")
    if _SELF.search(text) or _INTRODUCTION.search(text):
        found.add("self-identification")
    return found


def find_personal_data(texts: Iterable[str]) -> PersonalData:
    """The kinds of personal data in any of ``texts`` (the turns of a conversation)."""
    kinds: set[str] = set()
    for text in texts:
        if text:
            kinds |= _kinds(text)
    return PersonalData(frozenset(kinds))


def user_scope(user_id: str) -> str:
    """The scope key of one user's own entries."""
    return f"user:{user_id}"


def is_shared_scope(scope: str) -> bool:
    """Whether entries of ``scope`` are served to people other than the one who asked."""
    return not scope.startswith("user:")
