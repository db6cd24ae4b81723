"""What the verifier reads of a pair of questions: a fixed vector of numbers, no verdict.

Each signal is cheap, language-agnostic where it can be, and says something a sentence embedding
misses: the embedding scores "x+1" against "x-1", "enable" against "disable" or "a poem" against
"a sad poem" near 1.0 because it reads topic, not the detail that changes the answer. Which
signal matters how much is not decided here but fitted (``parley_cache.verifier``).

Tokens are Unicode: ``\\w+`` runs (letters of any script, digits) and runs of symbols, so code
("//" vs "/", "--hard" vs "--soft") and accented or non-Latin words are compared like any other.
Texts are read up to ``MAX_CHARS`` from each end, which bounds the cost of a decision whatever
the length of the message.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from parley_cache.lexicon import NEGATION_SUFFIXES, NEGATIONS

__all__ = [
    "FEATURE_NAMES",
    "MAX_CHARS",
    "TextSignals",
    "pair_features",
    "same_words",
    "text_signals",
]

# Characters of a text the checks read: the first and the last half of this. A long prompt's
# changed word is most often in its instruction, at one end; a word changed in the middle of a
# long pasted text is missed (the embedding alone judges it). Measured by
# bench.cache_eval.decision_cost: the decision stays under 5 ms at p99 up to 32 000 chars.
MAX_CHARS: Final = 1200

_TOKEN = re.compile(r"\w+|[^\w\s]+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Punctuation that ends or separates a sentence says nothing about the answer.
_PLAIN_PUNCTUATION: Final = frozenset({".", "?", "!", ",", ";", ":", "...", "?!", "'", '"', "¿"})


@dataclass(frozen=True, slots=True)
class TextSignals:
    """One text's parts that the pair features compare, extracted once per text."""

    tokens: tuple[str, ...]  # casefolded words and symbols in order, sentence punctuation out
    words: Counter[str]
    symbols: Counter[str]
    numbers: Counter[str]
    trigrams: frozenset[str]
    names: frozenset[str]  # capitalised words not at a sentence start
    negations: int
    length: int  # words


def _cap(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    half = MAX_CHARS // 2
    return text[:half] + " " + text[-half:]


@lru_cache(maxsize=8192)
def text_signals(text: str) -> TextSignals:
    text = unicodedata.normalize("NFKC", _cap(text)).replace("’", "'")
    tokens: list[str] = []
    words: Counter[str] = Counter()
    symbols: Counter[str] = Counter()
    names: set[str] = set()
    negations = 0
    sentence_start = True
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token[0].isalnum() or token[0] == "_":
            folded = token.casefold()
            tokens.append(folded)
            words[folded] += 1
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
            symbols[token] += 1
        sentence_start = sentence_start or any(c in ".!?\n" for c in token)
    compact = " " + " ".join(text.casefold().split()) + " "
    return TextSignals(
        tokens=tuple(tokens),
        words=words,
        symbols=symbols,
        numbers=Counter(_NUMBER.findall(text)),
        trigrams=frozenset(compact[i : i + 3] for i in range(len(compact) - 2)),
        names=frozenset(names),
        negations=negations,
        length=sum(words.values()),
    )


def _jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


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
)


def pair_features(stored: str, asked: str, cosine: float) -> list[float]:
    """The verifier's input for a stored question and the one asked, in ``FEATURE_NAMES`` order."""
    a, b = text_signals(stored), text_signals(asked)
    words_a, words_b = set(a.words), set(b.words)
    only_a, only_b = len(words_a - words_b), len(words_b - words_a)
    return [
        cosine,
        max(0.0, cosine - 0.85),
        max(0.0, cosine - 0.93),
        _jaccard(words_a, words_b),
        _jaccard(a.trigrams, b.trigrams),
        min(max(only_a, only_b), 8) / 8,
        min(min(only_a, only_b), 8) / 8,
        float((only_a == 0) != (only_b == 0)),
        float(1 <= only_a <= 2 and 1 <= only_b <= 2),
        float(a.numbers != b.numbers),
        float(a.symbols != b.symbols),
        float(a.negations != b.negations),
        float(bool((a.names - words_b) | (b.names - words_a))),
        abs(math.log((a.length + 1) / (b.length + 1))),
        # The same words in another order: "a dog bigger than a cat" / "a cat bigger than a dog".
        float(a.words == b.words and a.symbols == b.symbols and a.tokens != b.tokens),
    ]


def same_words(stored: str, asked: str) -> bool:
    """The same words and symbols in the same order: the two differ in case, spacing or
    sentence punctuation only, which never changes an answer."""
    return text_signals(stored).tokens == text_signals(asked).tokens
