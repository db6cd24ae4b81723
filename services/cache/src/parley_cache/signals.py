"""What the verifier reads of a pair of questions: a fixed vector of numbers, no verdict.

Each signal is cheap, language-agnostic where it can be, and says something a sentence embedding
misses: the embedding scores "x+1" against "x-1", "enable" against "disable" or "a poem" against
"a sad poem" near 1.0 because it reads topic, not the detail that changes the answer. Which
signal matters how much is not decided here but fitted (``parley_cache.verifier``).

Tokens are Unicode: ``\\w+`` runs (letters of any script, digits) and runs of symbols, so code
("//" vs "/", "--hard" vs "--soft") and accented or non-Latin words are compared like any other.
Texts are read up to ``MAX_CHARS`` from each end, which bounds the cost of a decision whatever
the length of the message. One signal, :func:`difference`, compares the whole texts: the span
where they differ, found by their common prefix and suffix on the raw characters (slice
comparisons in C, by halving), then tokenized (at most ``SPAN_CHARS`` of it). So a word changed in
the middle of a long prompt ("... in Python" / "... in Rust" inside 2,000 characters, cosine
0.997) is seen at any length up to the gateway's limit; it is counted in tokens (absolutely) and
in characters relative to the shorter text. It also decides :func:`same_words`.
"""

from __future__ import annotations

import gc
import itertools
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from parley_cache.lexicon import NEGATION_SUFFIXES, NEGATIONS

__all__ = [
    "FEATURE_NAMES",
    "MAX_CHARS",
    "SPAN_CHARS",
    "Difference",
    "TextSignals",
    "difference",
    "pair_features",
    "same_words",
    "text_signals",
]

# Characters of a text the word, number, symbol, negation and name checks read: the first and
# the last half of this (a word changed in the middle of a long text is seen by ``difference``),
# so the decision's cost is flat beyond ~1 000 chars (bench.cache_eval.decision_cost, figures in
# bench/results/cache_decision.md).
MAX_CHARS: Final = 1200

# A differing span up to this many characters is tokenized whole; of a longer one only the
# first _HEAD_CHARS (more than the 8 tokens counted), the rest counted in characters only.
SPAN_CHARS: Final = MAX_CHARS
_HEAD_CHARS: Final = 256
# How far a differing span is widened to the whitespace before and after it.
_WIDEN: Final = 64
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Punctuation that ends or separates a sentence says nothing about the answer.
_PLAIN_PUNCTUATION: Final = frozenset({".", "?", "!", ",", ";", ":", "...", "?!", "'", '"', "¿"})


@dataclass(frozen=True, slots=True)
class TextSignals:
    """One text's parts that the pair features compare, extracted once per text.

    Thousands are memoized, so they are held in shapes that CPython's garbage collector does not
    walk: plain dicts of str → int and tuples of str are untracked, where a Counter or a
    frozenset of a thousand trigrams was walked by every young collection until it grew old (the
    decision's p99, `bench/results/gc_pauses.md`). Sets are built where they are compared.
    """

    tokens: tuple[str, ...]  # casefolded words and symbols in order, sentence punctuation out
    words: dict[str, int]
    symbols: dict[str, int]
    numbers: dict[str, int]
    trigrams: tuple[str, ...]  # distinct, in no particular order
    names: tuple[str, ...]  # distinct capitalised words not at a sentence start
    negations: int
    length: int  # words


def _cap(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    half = MAX_CHARS // 2
    return text[:half] + " " + text[-half:]


# The memo below is full in a running service: each new text evicts an old one, and CPython counts
# a freed old object against the allocations that trigger a young collection, so the young
# generation grows for thousands of texts and is then walked in one long pause (117 ms at 14,000
# objects, `bench.cache_eval.decision_cost`). Collecting it every so many new texts keeps each
# walk short; the work is the same.
_NEW_TEXTS_PER_YOUNG_COLLECTION: Final = 128
_new_texts = itertools.count(1)


@lru_cache(maxsize=8192)
def text_signals(text: str) -> TextSignals:
    if next(_new_texts) % _NEW_TEXTS_PER_YOUNG_COLLECTION == 0:
        gc.collect(0)
    text = unicodedata.normalize("NFKC", _cap(text)).replace("’", "'")
    tokens: list[str] = []
    # Plain dicts of str → int, filled one key at a time, are never tracked by the collector.
    words: dict[str, int] = {}
    symbols: dict[str, int] = {}
    names: set[str] = set()
    negations = 0
    sentence_start = True
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token[0].isalnum() or token[0] == "_":
            folded = token.casefold()
            tokens.append(folded)
            words[folded] = words.get(folded, 0) + 1
            if folded in NEGATIONS:
                negations += 1
            if token[0].isupper() and not sentence_start:
                names.add(folded)
            sentence_start = False
            continue
        if token.startswith("'") and text[match.end() : match.end() + 1] == "t":
            # "doesn't": the "t" that follows is a negation, not a word.
            negations += any(
                text[match.start() - 1 : match.end() + 1].endswith(s) for s in NEGATION_SUFFIXES
            )
        if token not in _PLAIN_PUNCTUATION:
            tokens.append(token)
            symbols[token] = symbols.get(token, 0) + 1
        sentence_start = sentence_start or any(c in ".!?\n" for c in token)
    compact = " " + " ".join(text.casefold().split()) + " "
    return TextSignals(
        tokens=tuple(tokens),
        words=words,
        symbols=symbols,
        numbers=_counts(_NUMBER.findall(text)),
        trigrams=tuple({compact[i : i + 3] for i in range(len(compact) - 2)}),
        names=tuple(names),
        negations=negations,
        length=sum(words.values()),
    )


def _counts(items: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix, by halving: each step one slice comparison in C."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common suffix, at most ``limit``, by halving like the prefix."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle : len(a) - low] == b[len(b) - middle : len(b) - low]:
            low = middle
        else:
            high = middle - 1
    return low


def _span_tokens(span: str) -> list[str]:
    """A span's tokens as ``text_signals`` reads them: NFKC, casefolded, sentence punctuation
    out."""
    span = unicodedata.normalize("NFKC", span).replace("’", "'").casefold()
    return [t for t in _TOKEN.findall(span) if t not in _PLAIN_PUNCTUATION]


@dataclass(frozen=True, slots=True)
class Difference:
    """Where two texts differ: the tokens between their common start and end, and how many
    characters that is (of the shorter text)."""

    stored: list[str]
    asked: list[str]
    chars: int  # 0 only when the texts have the same tokens
    shorter: int

    @property
    def same(self) -> bool:
        return self.chars == 0


def difference(a: str, b: str) -> Difference:
    """The differing span of two whole texts, found on the raw characters first (compared in C:
    tens of microseconds at 32 000 chars), then, within the span widened to whole words, on
    tokens: a difference in case, spacing or sentence punctuation alone leaves no differing
    token. A span longer than ``SPAN_CHARS`` is not tokenized beyond its first few hundred
    characters, and never taken for the same words: differences that far apart are read as one
    long changed passage."""
    shorter = min(len(a), len(b))
    start = _common_prefix(a, b)
    end = _common_suffix(a, b, shorter - start)
    if start == len(a) == len(b):
        return Difference([], [], 0, shorter)
    # Widen to whitespace (at most _WIDEN chars each way: a run without spaces is cut there);
    # what is widened over is the same text on both sides.
    start = max(start - _WIDEN, 0) + _last_space(a[max(start - _WIDEN, 0) : start])
    end -= _first_space(a[len(a) - end : len(a) - end + _WIDEN])
    span_a, span_b = a[start : len(a) - end], b[start : len(b) - end]
    if max(len(span_a), len(span_b)) > SPAN_CHARS:
        tokens_a, tokens_b = _span_tokens(span_a[:_HEAD_CHARS]), _span_tokens(span_b[:_HEAD_CHARS])
        return Difference(tokens_a, tokens_b, max(len(span_a), len(span_b)), shorter)
    tokens_a, tokens_b = _span_tokens(span_a), _span_tokens(span_b)
    # Tokens equal at either end of the spans are not part of the difference.
    same_start = 0
    for x, y in zip(tokens_a, tokens_b, strict=False):
        if x != y:
            break
        same_start += 1
    tokens_a, tokens_b = tokens_a[same_start:], tokens_b[same_start:]
    same_end = 0
    for x, y in zip(reversed(tokens_a), reversed(tokens_b), strict=False):
        if x != y:
            break
        same_end += 1
    tokens_a = tokens_a[: len(tokens_a) - same_end]
    tokens_b = tokens_b[: len(tokens_b) - same_end]
    chars = max(sum(map(len, tokens_a)) + len(tokens_a), sum(map(len, tokens_b)) + len(tokens_b))
    return Difference(tokens_a, tokens_b, chars, shorter)


def _last_space(text: str) -> int:
    """Index just after the last whitespace in ``text``, 0 when there is none."""
    for index in range(len(text) - 1, -1, -1):
        if text[index].isspace():
            return index + 1
    return 0


def _first_space(text: str) -> int:
    """Index of the first whitespace in ``text``, ``len(text)`` when there is none."""
    for index, char in enumerate(text):
        if char.isspace():
            return index
    return len(text)


def _jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _distinct_jaccard(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """`_jaccard` of two tuples of distinct items: one set, of the shorter, is built."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    common = len(set(small).intersection(large))
    union = len(a) + len(b) - common
    return common / union if union else 1.0


FEATURE_NAMES: Final = (
    "cosine",
    "cosine_above_0.85",
    "cosine_above_0.93",
    "word_jaccard",
    "trigram_jaccard",
    "unmatched_words_max",
    "unmatched_words_min",
    "one_side_adds_words",
    "few_words_swapped",
    "numbers_differ",
    "symbols_differ",
    "negation_differs",
    "names_differ",
    "length_log_ratio",
    "reordered",
    "differing_tokens",
    "differing_share",
    "few_differ_in_long_text",
    "near_copy_changed_number",
    "near_copy_changed_symbol",
    "near_copy_changed_accents",
)


def pair_features(
    stored: str, asked: str, cosine: float, diff: Difference | None = None
) -> list[float]:
    """The verifier's input for a stored question and the one asked, in ``FEATURE_NAMES`` order
    (``diff``: their ``difference``, when the caller has it already)."""
    a, b = text_signals(stored), text_signals(asked)
    words_a, words_b = set(a.words), set(b.words)
    only_a, only_b = len(words_a - words_b), len(words_b - words_a)
    diff = diff if diff is not None else difference(stored, asked)
    differing = max(len(diff.stored), len(diff.asked))
    share = min(diff.chars / max(diff.shorter, 1), 1.0)
    changed = (*diff.stored, *diff.asked)
    return [
        cosine,
        max(0.0, cosine - 0.85),
        max(0.0, cosine - 0.93),
        _jaccard(words_a, words_b),
        _distinct_jaccard(a.trigrams, b.trigrams),
        min(max(only_a, only_b), 8) / 8,
        min(min(only_a, only_b), 8) / 8,
        float((only_a == 0) != (only_b == 0)),
        float(1 <= only_a <= 2 and 1 <= only_b <= 2),
        float(a.numbers != b.numbers),
        float(a.symbols != b.symbols),
        float(a.negations != b.negations),
        float(bool(set(a.names).difference(words_b) or set(b.names).difference(words_a))),
        abs(math.log((a.length + 1) / (b.length + 1))),
        # The same words in another order: "a dog bigger than a cat" / "a cat bigger than a dog".
        float(a.words == b.words and a.symbols == b.symbols and a.tokens != b.tokens),
        # Any differing token counts in absolute terms too: in a near-identical long prompt one
        # changed word is a small share but a different request.
        min(differing, 8) / 8,
        share,
        (1.0 - share) if 1 <= differing <= 3 else 0.0,
        # What the differing span holds, read over the whole texts (the checks above read the
        # capped text), weighed by how much of the texts is the same: a number ("March 14" /
        # "March 4"), a symbol ("x > 0" / "x >= 0"), or only accents ("pêcher" / "pécher": the
        # embedding's vocabulary drops them) changed in an otherwise identical text.
        (1.0 - share) * any(_has_digit(t) for t in changed),
        (1.0 - share) * any(not _is_word(t) for t in changed),
        (1.0 - share) * (bool(diff.stored) and _unaccented(diff.stored) == _unaccented(diff.asked)),
    ]


def _has_digit(token: str) -> bool:
    return any(c.isdigit() for c in token)


def _is_word(token: str) -> bool:
    return token[0].isalnum() or token[0] == "_"


def _unaccented(tokens: list[str]) -> list[str]:
    """Tokens without their combining marks: "pécher" and "pêcher" both read "pecher"."""
    return [
        "".join(c for c in unicodedata.normalize("NFD", t) if not unicodedata.combining(c))
        for t in tokens
    ]


def same_words(stored: str, asked: str) -> bool:
    """The same words and symbols in the same order, in the whole texts: the two differ in case,
    spacing or sentence punctuation only, which never changes an answer."""
    return difference(stored, asked).same
