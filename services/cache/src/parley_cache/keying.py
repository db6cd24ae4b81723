"""What the semantic cache compares: the question *in its context*, never the last message alone.

A lookup is described by a :class:`CacheKey`, built from the bot profile, the model, the system
prompt and the conversation so far (the last turn is the user's question)::

    key = CacheKey.build(
        bot_id="support",
        model="llama-3.1-8b",
        system_prompt="You are a helpful assistant.",
        turns=[Turn(Role.USER, "I write Rust."), Turn(Role.ASSISTANT, "Great!"),
               Turn(Role.USER, "How do I read a file?")],
    )
    key.question_text        # what the question vector embeds
    key.context_text         # what the context vector embeds ("" without prior turns)
    key.scope_fingerprint    # equality filter: bot, model, system prompt
    key.context_fingerprint  # equality filter in exact mode: scope + the prior turns

The prior turns that count are the last ``DEFAULT_CONTEXT_WINDOW`` messages before the question
(user and assistant: "double it" depends on the number the assistant picked). Two kinds of
match on them are offered (:class:`ContextMode`):

``EXACT`` (the default)
    The prior turns are hashed into ``context_fingerprint`` and an entry matches only when that
    hash is equal. Two chats whose last message is the same but whose earlier turns differ by
    more than case and spacing never share an answer. The cost is recall on multi-turn
    paraphrases: a follow-up asked after a *reworded* earlier question always misses (half of
    the multi-turn paraphrases in bench/cache_eval).

``SEMANTIC``
    The prior turns are embedded as a second vector; a match needs the same turn shape (same
    number of prior turns and the same roles), the context vector above
    ``DEFAULT_CONTEXT_THRESHOLD`` and the verifier to pass on every aligned pair of prior user
    turns. It recovers most multi-turn paraphrases; ``python -m bench.cache_eval`` measures both.

The question vector embeds the question alone: the context is compared on its own vector (or
hash), so mixing it into the question text would only dilute the signal that tells two
questions apart.

Everything here is pure: no I/O, no model.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from parley_common.vocabulary import Role

__all__ = [
    "DEFAULT_CONTEXT_THRESHOLD",
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "KEY_VERSION",
    "CacheKey",
    "ContextMode",
    "InvalidKeyError",
    "Role",
    "Turn",
    "normalize_text",
    "question_text_of",
    "scope_fingerprint",
]

# The cosine below which a stored question is not even a candidate for the verifier: on all
# 20 000 Quora pairs, the verifier at a probability of 0.70 or more accepts no pair whose cosine
# is below 0.75.
DEFAULT_SIMILARITY_THRESHOLD: Final = 0.70
# Cosine of the two context vectors required in ContextMode.SEMANTIC. On the tune split,
# reworded contexts score 0.85-1.0; the verifier on each prior user turn catches closer ones.
DEFAULT_CONTEXT_THRESHOLD: Final = 0.85
# Prior messages (user and assistant) that a follow-up is taken to depend on: three exchanges.
DEFAULT_CONTEXT_WINDOW: Final = 6
# Bumped when normalization or rendering changes, so that old fingerprints stop matching.
# 2: turns before the window are part of the key (``earlier_fingerprint``).
KEY_VERSION: Final = 2

# Per turn, how much of the text goes into the context vector. all-MiniLM-L6-v2 reads 256
# word pieces at most; long assistant answers would otherwise crowd out the user turns.
_CONTEXT_CHARS_PER_TURN: Final = 300

_WHITESPACE = re.compile(r"\s+")


class ContextMode(StrEnum):
    EXACT = "exact"
    SEMANTIC = "semantic"


class InvalidKeyError(ValueError):
    """The conversation cannot be turned into a cache key (no question, unknown role...)."""


_TURN_ROLES: Final = frozenset({Role.USER.value, Role.ASSISTANT.value})


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str

    def __post_init__(self) -> None:
        # The system prompt is part of the key on its own, not a turn.
        role = Role.parse(self.role) if self.role in _TURN_ROLES else None
        if role is None:
            raise InvalidKeyError(
                f"unknown role {self.role!r}: a turn is 'user' or 'assistant' "
                "(the system prompt is passed separately)"
            )
        object.__setattr__(self, "role", role)


def normalize_text(text: str) -> str:
    """Fold what does not change meaning: Unicode forms, case, runs of whitespace."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def _squash(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def question_text_of(content: str) -> str:
    """The text a question vector embeds for a last user message of ``content``
    (``CacheKey.question_text``)."""
    return _squash(content)


def _sha256(parts: object) -> str:
    data = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def scope_fingerprint(*, bot_id: str, model: str, system_prompt: str) -> str:
    """Hash of what must always be equal between a lookup and an entry."""
    return _sha256(
        [
            "scope",
            KEY_VERSION,
            bot_id.strip(),
            model.strip().casefold(),
            normalize_text(system_prompt),
        ]
    )


@dataclass(frozen=True, slots=True)
class CacheKey:
    """A question in its context. Build it with :meth:`build` or :meth:`from_payload`.

    The system prompt is only kept as part of ``scope_fingerprint``: it can be long and
    private, and the equality filter on the fingerprint is all a lookup needs of it.
    """

    bot_id: str
    model: str
    scope_fingerprint: str
    question: str
    context: tuple[Turn, ...]
    # Hash of the turns before the window ("" when there are none): a name or a choice made
    # long before the question can change its answer, so two chats match only when their
    # earlier turns are the same too. Only the hash is kept: they are never compared otherwise.
    earlier_fingerprint: str = ""

    @classmethod
    def build(
        cls,
        *,
        bot_id: str,
        model: str,
        system_prompt: str,
        turns: Sequence[Turn],
        window: int = DEFAULT_CONTEXT_WINDOW,
    ) -> CacheKey:
        """Key for the last turn of ``turns``, which must be a non-empty user message.

        ``window`` is how many messages before the question are kept as its context.
        """
        if window < 0:
            raise InvalidKeyError(f"window must be >= 0, got {window}")
        if not turns:
            raise InvalidKeyError("no turns: the last turn must be the user's question")
        *prior, last = turns
        if last.role is not Role.USER:
            raise InvalidKeyError(
                f"the last turn is from {last.role.value!r}: the cache looks up user questions"
            )
        if not last.content.strip():
            raise InvalidKeyError("the question is empty")
        context = tuple(prior[len(prior) - window :]) if window else ()
        earlier = prior[: len(prior) - len(context)]
        return cls(
            bot_id=bot_id.strip(),
            model=model.strip(),
            scope_fingerprint=scope_fingerprint(
                bot_id=bot_id, model=model, system_prompt=system_prompt
            ),
            question=question_text_of(last.content),
            context=context,
            earlier_fingerprint=_sha256(
                ["earlier", [[t.role.value, normalize_text(t.content)] for t in earlier]]
            )
            if earlier
            else "",
        )

    @property
    def question_text(self) -> str:
        """The text the question vector embeds."""
        return self.question

    @property
    def has_context(self) -> bool:
        return bool(self.context)

    @property
    def context_shape(self) -> str:
        """Roles of the prior turns, oldest first, one letter each ("uau"); "" without any."""
        return "".join("u" if turn.role is Role.USER else "a" for turn in self.context)

    @property
    def context_text(self) -> str:
        """The text the context vector embeds: prior turns, newest first, each trimmed."""
        return "\n".join(
            f"{turn.role.value}: {_squash(turn.content)[:_CONTEXT_CHARS_PER_TURN]}"
            for turn in reversed(self.context)
        )

    @property
    def context_fingerprint(self) -> str:
        """Hash of the scope and the normalized prior turns, all of them (the window's and the
        earlier ones'): equal only for the same context."""
        turns = [[turn.role.value, normalize_text(turn.content)] for turn in self.context]
        return _sha256(
            ["context", KEY_VERSION, self.scope_fingerprint, turns, self.earlier_fingerprint]
        )

    def payload(self) -> dict[str, object]:
        """What a stored entry keeps besides its vectors and answer (see :meth:`from_payload`)."""
        return {
            "key_version": KEY_VERSION,
            "bot_id": self.bot_id,
            "model": self.model,
            "scope_fingerprint": self.scope_fingerprint,
            "context_fingerprint": self.context_fingerprint,
            "context_shape": self.context_shape,
            "question": self.question,
            "context": [{"role": t.role.value, "content": t.content} for t in self.context],
            "earlier_fingerprint": self.earlier_fingerprint,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> CacheKey:
        """Rebuild a stored entry's key, to compare it with a lookup (the verifier reads its texts)."""
        try:
            context_raw = payload["context"]
            if not isinstance(context_raw, list):
                raise TypeError("'context' is not a list")
            context = tuple(
                Turn(Role(str(item["role"])), str(item["content"])) for item in context_raw
            )
            return cls(
                bot_id=str(payload["bot_id"]),
                model=str(payload["model"]),
                scope_fingerprint=str(payload["scope_fingerprint"]),
                question=str(payload["question"]),
                context=context,
                earlier_fingerprint=str(payload.get("earlier_fingerprint", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidKeyError(f"not a cache entry payload: {exc!r}") from exc
