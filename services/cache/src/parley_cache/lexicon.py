"""Word data the decision reads, kept apart from the code that reads it.

Every list here is general vocabulary of a language (its negation words, its words for "now"),
never a word picked to fix one evaluation pair. Lowercase, compared after NFKC and casefolding.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NEGATIONS", "NEGATION_SUFFIXES", "TIME_SENSITIVE"]

# Words that negate what follows, in the languages users of the platform write most. A pair
# whose negation count differs is one feature of the verifier, not a veto.
NEGATIONS: Final = frozenset(
    {
        # English
        "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor",
        "without", "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt",
        "werent", "wont", "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt",
        # French
        "ne", "pas", "jamais", "rien", "personne", "aucun", "aucune", "sans", "non", "plus",
        # German
        "nicht", "kein", "keine", "keinen", "keinem", "keiner", "nie", "niemals", "nichts",
        "ohne", "nein",
        # Spanish, Italian, Portuguese
        "nunca", "nada", "nadie", "ningún", "ninguno", "ninguna", "sin", "mai", "niente",
        "nessuno", "senza", "não", "nem", "sem", "nenhum",
        # Dutch, Russian
        "niet", "geen", "nooit", "zonder", "не", "нет", "никогда", "без",
    }
)  # fmt: skip
# English contractions written with an apostrophe: "doesn't" tokenizes to "doesn" + "t".
NEGATION_SUFFIXES: Final = ("n't", "n’t")

# Words that make a question's answer depend on when it is asked ("the latest version", "today's
# weather"): such an entry is kept for a short TTL only (see parley_cache.freshness).
TIME_SENSITIVE: Final = frozenset(
    {
        # English
        "today", "tonight", "tomorrow", "yesterday", "now", "currently", "current", "latest",
        "newest", "recent", "recently", "this week", "this month", "this year", "right now",
        "breaking", "live", "upcoming", "score", "weather", "forecast", "price", "stock",
        # French
        "aujourd'hui", "demain", "hier", "maintenant", "actuel", "actuelle", "dernier",
        "dernière", "météo", "prix",
        # German
        "heute", "morgen", "gestern", "jetzt", "aktuell", "aktuelle", "neueste", "wetter",
        "preis",
        # Spanish, Italian, Portuguese
        "hoy", "mañana", "ayer", "ahora", "actual", "último", "última", "oggi", "domani",
        "adesso", "attuale", "hoje", "amanhã", "agora", "atual",
    }
)  # fmt: skip
