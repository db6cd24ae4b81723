"""The precision guard: rules that veto a cache hit between questions that only look alike.

Sentence embeddings score "How do I enable X?" and "How do I disable X?" at 0.96, and
"5 km in miles" against "5 miles in km" at 0.99: the vector says *same topic*, not *same answer*.
:func:`check` compares the two questions' facts that decide the answer (numbers, units,
negation, names, direction words, programming languages, dates, the order around "than" or
"to", the kind of thing asked for: a poem or a story, a summary or an analysis, a list or a
dict) and rejects the pair, with a reason, when one differs::

    >>> check("How do I enable dark mode?", "How do I disable dark mode?")
    GuardVerdict(accepted=False, reason='direction words differ: enable/disable')
    >>> check("What is 5 km in miles?", "How many miles is 5 kilometres?").accepted
    True

:func:`judge` is the whole decision for one candidate entry: scope, context, similarity
threshold, the guard, and a stricter threshold when the two questions differ by one swapped
subject word (:func:`substitution`); :func:`select_hit` picks the best accepted candidate among
those a vector search returned.

Rules are deliberately one-sided towards precision: a rule that fires on a true paraphrase costs
a cache miss (the model answers), a rule that stays silent on a near-duplicate costs a wrong
answer. Features of a text are cached, so comparing one query with k candidates extracts it once.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Final

from parley_cache.keying import (
    DEFAULT_CONTEXT_THRESHOLD,
    DEFAULT_SIMILARITY_THRESHOLD,
    DEFAULT_SUBSTITUTION_THRESHOLD,
    CacheKey,
    ContextMode,
)

__all__ = [
    "GuardVerdict",
    "MatchPolicy",
    "MatchVerdict",
    "TextFeatures",
    "check",
    "features",
    "judge",
    "select_hit",
    "substitution",
]

# ---------------------------------------------------------------------------------------------
# Word lists. Lowercase; a multi-word entry is matched as a phrase of whole tokens.
# ---------------------------------------------------------------------------------------------

NEGATIONS: Final = frozenset(
    {
        "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor",
        "without", "cannot", "except", "excluding", "non", "lack", "lacks", "lacking",
        # contractions typed without the apostrophe; "n't" itself is matched by suffix
        "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "cant", "wont",
        "shouldnt", "couldnt", "wouldnt", "havent", "hasnt", "hadnt", "aint",
    }
)  # fmt: skip

# "unhealthy" is "not healthy": a word that is another one behind one of these prefixes.
NEGATING_PREFIXES: Final = ("un", "in", "im", "il", "ir", "dis", "non", "non-")
NEGATING_PREFIX_MIN_STEM: Final = 4  # "in" + "to" is not a negation

# All-capital words that are not names.
NOT_NAMES: Final = frozenset(
    {"ok", "asap", "aka", "etc", "diy", "faq", "fyi", "btw", "eli5", "tldr"}
)

# Nationality and language adjectives compare as their country: "German highways" is about
# Germany. ("Polish" is left out: "how do I polish my shoes".)
DEMONYMS: Final[Mapping[str, str]] = {
    "american": "usa", "british": "uk", "english": "uk", "canadian": "canada",
    "mexican": "mexico", "brazilian": "brazil", "french": "france", "german": "germany",
    "spanish": "spain", "portuguese": "portugal", "italian": "italy", "dutch": "netherlands",
    "swedish": "sweden", "norwegian": "norway", "danish": "denmark", "finnish": "finland",
    "irish": "ireland", "greek": "greece", "turkish": "turkey", "russian": "russia",
    "ukrainian": "ukraine", "chinese": "china", "japanese": "japan", "korean": "korea",
    "indian": "india", "thai": "thailand", "vietnamese": "vietnam", "australian": "australia",
    "egyptian": "egypt", "roman": "rome", "parisian": "paris", "scottish": "scotland",
}  # fmt: skip

# Rewritten before tokenizing, so both spellings compare equal.
PHRASE_ALIASES: Final[Mapping[str, str]] = {
    "united states of america": "usa",
    "united states": "usa",
    "united kingdom": "uk",
    "great britain": "uk",
    "new york city": "nyc",
    "new york": "nyc",
    "c sharp": "c#",
    "f sharp": "f#",
    "objective-c": "objectivec",
    "node.js": "nodejs",
    "us dollars": "dollars",
    "us dollar": "dollar",
    "next.js": "nextjs",
    "vue.js": "vue",
    "react.js": "react",
    "visual studio code": "vscode",
    "vs code": "vscode",
    "scikit-learn": "sklearn",
    "e-mail": "email",
    "log in": "login",
    "log out": "logout",
    "sign in": "login",
    "sign out": "logout",
}
TOKEN_ALIASES: Final[Mapping[str, str]] = {
    "us": "usa",
    "america": "usa",
    "u.s.": "usa",
    "britain": "uk",
    "england": "uk",
    "js": "javascript",
    "ts": "typescript",
    "golang": "go",
    "py": "python",
    "python3": "python",
    "cpp": "c++",
    "csharp": "c#",
    "postgresql": "postgres",
    "psql": "postgres",
    "mongo": "mongodb",
    "k8s": "kubernetes",
    "osx": "macos",
    "mac": "macos",
    "win": "windows",
    "gcloud": "gcp",
    "tf": "tensorflow",
    "torch": "pytorch",
    "signin": "login",
    "logon": "login",
    "signout": "logout",
    "logoff": "logout",
    "okay": "ok",
}

PROGRAMMING_LANGUAGES: Final = frozenset(
    {
        "python", "javascript", "typescript", "java", "kotlin", "scala", "groovy", "clojure",
        "c", "c++", "c#", "f#", "go", "rust", "zig", "swift", "objectivec", "ruby", "php",
        "perl", "lua", "r", "julia", "matlab", "fortran", "cobol", "haskell", "ocaml", "elixir",
        "erlang", "dart", "bash", "powershell", "sql", "html", "css", "solidity", "assembly",
        "vba", "lisp", "scheme", "prolog", "delphi", "pascal", "nim", "crystal", "elm",
    }
)  # fmt: skip
# Languages that are also ordinary words or letters: only counted when written as a name (with a
# capital, not first in a sentence) or right after "in", as in "how do I do this in go".
AMBIGUOUS_LANGUAGES: Final = frozenset(
    {"go", "c", "r", "swift", "rust", "scheme", "elm", "crystal"}
)

# Names matched regardless of case ("install docker on ubuntu"): places, human languages,
# products and technologies that users rarely capitalize. Not exhaustive: capitalized names
# elsewhere are caught by the proper-name rule.
KNOWN_ENTITIES: Final = frozenset(
    {
        # countries and regions
        "usa", "uk", "canada", "mexico", "brazil", "argentina", "chile", "peru", "colombia",
        "france", "germany", "spain", "portugal", "italy", "netherlands", "belgium", "austria",
        "switzerland", "sweden", "norway", "denmark", "finland", "poland", "ireland", "greece",
        "turkey", "russia", "ukraine", "china", "japan", "korea", "india", "pakistan",
        "indonesia", "vietnam", "thailand", "philippines", "australia", "egypt", "nigeria",
        "kenya", "morocco", "israel", "iran", "iraq", "europe", "asia", "africa", "scotland",
        # cities
        "paris", "london", "berlin", "madrid", "rome", "lisbon", "amsterdam", "vienna",
        "tokyo", "beijing", "shanghai", "delhi", "mumbai", "sydney", "toronto", "nyc",
        "chicago", "boston", "seattle", "moscow", "cairo", "dubai", "singapore", "barcelona",
        # human languages and nationalities
        "english", "french", "spanish", "german", "italian", "portuguese", "dutch", "swedish",
        "polish", "russian", "ukrainian", "chinese", "mandarin", "cantonese", "japanese",
        "korean", "hindi", "arabic", "hebrew", "turkish", "greek", "latin", "vietnamese",
        # operating systems and platforms
        "linux", "windows", "macos", "ubuntu", "debian", "fedora", "centos", "android", "ios",
        "freebsd", "wsl", "iphone", "ipad", "macbook", "playstation", "xbox", "kindle",
        # data stores and infrastructure
        "postgres", "mysql", "mariadb", "sqlite", "mongodb", "redis", "cassandra", "dynamodb",
        "elasticsearch", "kafka", "rabbitmq", "nginx", "apache", "docker", "podman",
        "kubernetes", "helm", "terraform", "ansible", "aws", "azure", "gcp", "heroku",
        "vercel", "git", "github", "gitlab", "bitbucket", "jenkins", "s3", "ec2",
        # tools and libraries
        "vim", "emacs", "vscode", "intellij", "pycharm", "excel", "chrome", "firefox",
        "safari", "npm", "pip", "conda", "poetry", "yarn", "cargo", "maven", "gradle",
        "react", "vue", "angular", "svelte", "django", "flask", "fastapi", "rails", "spring",
        "nextjs", "laravel", "pandas", "numpy", "pytorch", "tensorflow", "keras",
        "sklearn", "jquery", "bootstrap", "tailwind", "flutter", "nodejs", "deno", "jupyter",
        "ssh", "http", "https", "tcp", "udp", "dns", "json", "yaml", "xml", "csv",
        # companies
        "google", "apple", "microsoft", "amazon", "facebook", "netflix", "tesla",
        "nvidia", "intel", "amd", "openai", "twitter", "samsung", "spotify", "uber",
    }
)  # fmt: skip

MONTHS: Final = frozenset(
    {
        "january", "february", "march", "april", "may", "june", "july", "august",
        "september", "october", "november", "december",
    }
)  # fmt: skip
TIME_WORDS: Final = frozenset(
    {
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
        "today", "tomorrow", "yesterday", "tonight", "weekend", "weekday", "morning",
        "afternoon", "evening", "night", "midnight", "noon", "spring", "summer", "autumn",
        "winter", "christmas", "easter", "bc", "ad",
    }
)  # fmt: skip
# "next week" and "coming week" mean the same; "last week" and "previous week" too.
RELATIVE_TIME: Final[Mapping[str, str]] = {
    "this": "this",
    "current": "this",
    "next": "next",
    "coming": "next",
    "following": "next",
    "last": "last",
    "previous": "last",
    "past": "last",
}
RELATIVE_TIME_UNITS: Final = frozenset(
    {"week", "weekend", "month", "year", "quarter", "decade", "century", "night", "season"}
)

NUMBER_WORDS: Final[Mapping[str, int]] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12,
}  # fmt: skip
NUMBER_SCALES: Final[Mapping[str, int]] = {
    "hundred": 100,
    "thousand": 1_000,
    "million": 1_000_000,
    "billion": 1_000_000_000,
    "trillion": 1_000_000_000_000,
}
ORDINALS: Final[Mapping[str, int]] = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "hundredth": 100, "thousandth": 1000,
}  # fmt: skip
# Words after which "a"/"an"/"one"/"per" + unit reads as a quantity of one.
UNIT_ARTICLES: Final = frozenset({"a", "an", "one", "per", "each", "every"})

# Dimension -> canonical unit -> spellings. Spellings in AMBIGUOUS_UNIT_SPELLINGS count only
# right after a number ("5 m", "30 c"): alone they are letters or ordinary words. Units are
# compared within a dimension: "how long" vs "how many minutes" is fine, minutes vs hours is not.
UNITS: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "length": {
        "km": ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"),
        "m": ("m", "meter", "meters", "metre", "metres"),
        "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
        "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
        "mile": ("mile", "miles", "mi"),
        "yard": ("yard", "yards", "yd", "yds"),
        "foot": ("foot", "feet", "ft"),
        "inch": ("inch", "inches"),
    },
    "mass": {
        "kg": ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms", "kilogramme"),
        "g": ("g", "gram", "grams", "gramme", "grammes"),
        "mg": ("mg", "milligram", "milligrams"),
        "lb": ("lb", "lbs", "pound", "pounds"),
        "oz": ("oz", "ounce", "ounces"),
        "ton": ("ton", "tons", "tonne", "tonnes"),
        "stone": ("stone", "stones"),
    },
    "volume": {
        "l": ("l", "liter", "liters", "litre", "litres"),
        "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
        "gallon": ("gallon", "gallons", "gal"),
        "quart": ("quart", "quarts"),
        "pint": ("pint", "pints"),
        "cup": ("cup", "cups"),
        "tbsp": ("tbsp", "tablespoon", "tablespoons"),
        "tsp": ("tsp", "teaspoon", "teaspoons"),
    },
    "temperature": {
        "celsius": ("celsius", "centigrade", "°c", "c"),
        "fahrenheit": ("fahrenheit", "°f", "f"),
        "kelvin": ("kelvin", "k"),
    },
    "time": {
        "ms": ("ms", "millisecond", "milliseconds"),
        "second": ("second", "seconds", "sec", "secs", "s"),
        "minute": ("minute", "minutes", "min", "mins"),
        "hour": ("hour", "hours", "hr", "hrs", "h"),
        "day": ("day", "days"),
        "week": ("week", "weeks"),
        "month": ("month", "months"),
        "year": ("year", "years", "yr", "yrs"),
    },
    "data": {
        "bit": ("bit", "bits"),
        "byte": ("byte", "bytes"),
        "kb": ("kb", "kilobyte", "kilobytes", "kib"),
        "mb": ("mb", "megabyte", "megabytes", "mib"),
        "gb": ("gb", "gigabyte", "gigabytes", "gib"),
        "tb": ("tb", "terabyte", "terabytes", "tib"),
    },
    "rate": {"mbps": ("mbps",), "gbps": ("gbps",), "ghz": ("ghz",), "mhz": ("mhz",)},
    "currency": {
        "usd": ("usd", "dollar", "dollars", "buck", "bucks", "$"),
        "eur": ("eur", "euro", "euros", "€"),
        "gbp": ("gbp", "sterling", "£"),
        "jpy": ("jpy", "yen", "¥"),
        "inr": ("inr", "rupee", "rupees", "₹"),
        "cny": ("cny", "yuan", "rmb"),
        "cad": ("cad",),
        "aud": ("aud",),
        "chf": ("chf", "franc", "francs"),
        "btc": ("btc", "bitcoin", "bitcoins"),
    },
    "speed": {"mph": ("mph",), "kmh": ("kph", "kmh", "kmph"), "knot": ("knot", "knots")},
    "energy": {
        "calorie": ("calorie", "calories", "cal"),
        "kcal": ("kcal", "kilocalorie", "kilocalories"),
        "joule": ("joule", "joules", "j"),
        "kwh": ("kwh",),
    },
    "power": {
        "watt": ("watt", "watts", "w"),
        "kw": ("kw", "kilowatt", "kilowatts"),
        "hp": ("hp", "horsepower"),
    },
    "electric": {"volt": ("volt", "volts", "v"), "amp": ("amp", "amps", "ampere", "amperes")},
    "pressure": {"psi": ("psi",), "bar": ("bar",), "pascal": ("pascal", "pascals", "pa", "kpa")},
    "area": {"acre": ("acre", "acres"), "hectare": ("hectare", "hectares", "ha")},
    "ratio": {"percent": ("percent", "percentage", "%")},
}
# "daily" is "per day": a quantity of one day.
UNIT_ADVERBS: Final[Mapping[str, str]] = {
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "yearly": "year",
    "annually": "year",
}
AMBIGUOUS_UNIT_SPELLINGS: Final = frozenset(
    {
        "m", "g", "l", "c", "f", "k", "s", "h", "j", "w", "v", "mi", "min", "ha", "pa", "gal",
        "cal", "bar", "cup", "cups", "stone", "stones", "second", "ms", "hp", "yd", "ft", "hr",
        "pound", "pounds", "franc", "francs",
    }
)  # fmt: skip


def _verb_forms(*bases: str) -> tuple[str, ...]:
    """Base verbs with their regular inflections: enable -> enables, enabled, enabling."""
    forms: list[str] = []
    for base in bases:
        forms.append(base)
        if " " in base:  # phrasal verb: inflect the verb, keep the particle ("turned on")
            verb, rest = base.split(" ", 1)
            forms.extend(f"{form} {rest}" for form in _verb_forms(verb)[1:])
            continue
        stem = base[:-1] if base.endswith("e") else base
        suffix_s = "es" if base.endswith(("s", "sh", "ch", "x", "z")) else "s"
        forms.extend((base + suffix_s, stem + "ed", stem + "ing"))
    return tuple(forms)


# Groups of words whose poles change the answer. A pair is rejected when both questions use a
# group and their poles differ: "enable" vs "disable", "ascending" vs "descending". Poles are
# tuples of synonyms, so "turn on" and "enable" agree.
DIRECTION_GROUPS: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "on/off": (
        _verb_forms("enable", "activate", "turn on", "switch on", "unmute", "unblock"),
        _verb_forms("disable", "deactivate", "turn off", "switch off", "mute", "block"),
    ),
    "install/uninstall": (_verb_forms("install"), _verb_forms("uninstall")),
    "add/remove": (
        _verb_forms("add", "insert", "append", "create", "attach", "include"),
        (
            *_verb_forms("remove", "delete", "erase", "destroy", "detach", "drop", "exclude"),
            "get rid of",
        ),
    ),
    "arithmetic": (
        (*_verb_forms("add", "sum"), "plus"),
        (*_verb_forms("subtract"), "minus"),
        (*_verb_forms("multiply"), "times", "multiplied"),
        (*_verb_forms("divide"), "divided"),
    ),
    "encrypt/decrypt": (_verb_forms("encrypt"), _verb_forms("decrypt")),
    "encode/decode": (_verb_forms("encode"), _verb_forms("decode")),
    "compress/decompress": (
        _verb_forms("compress", "zip"),
        _verb_forms("decompress", "unzip", "extract"),
    ),
    "serialize/deserialize": (_verb_forms("serialize"), _verb_forms("deserialize")),
    "import/export": (_verb_forms("import"), _verb_forms("export")),
    "upload/download": (_verb_forms("upload"), _verb_forms("download")),
    "push/pull": (_verb_forms("push"), _verb_forms("pull")),
    "send/receive": ((*_verb_forms("send"), "sent"), _verb_forms("receive")),
    "buy/sell": ((*_verb_forms("buy", "purchase"), "bought"), (*_verb_forms("sell"), "sold")),
    "lend/borrow": ((*_verb_forms("lend"), "lent"), _verb_forms("borrow")),
    "lock/unlock": (_verb_forms("lock"), _verb_forms("unlock")),
    "mount/unmount": (_verb_forms("mount"), _verb_forms("unmount")),
    "connect/disconnect": (_verb_forms("connect"), _verb_forms("disconnect")),
    "subscribe/unsubscribe": (_verb_forms("subscribe"), _verb_forms("unsubscribe")),
    "follow/unfollow": (_verb_forms("follow"), _verb_forms("unfollow")),
    "freeze/unfreeze": ((*_verb_forms("freeze"), "froze", "frozen"), _verb_forms("unfreeze")),
    "login/logout": (("login", "logged in", "logging in"), ("logout", "logged out")),
    "show/hide": ((*_verb_forms("show", "unhide", "display"), "shown"), _verb_forms("hide")),
    "allow/deny": (
        _verb_forms("allow", "permit", "whitelist", "accept", "approve"),
        _verb_forms("deny", "forbid", "ban", "blacklist", "reject", "prohibit"),
    ),
    "start/stop": (
        _verb_forms("start", "begin", "launch", "resume", "boot"),
        (
            *_verb_forms("stop", "halt", "terminate", "kill", "quit", "pause", "shut down"),
            "stopped", "stopping",
        ),
    ),
    "open/close": (_verb_forms("open"), _verb_forms("close")),
    "increase/decrease": (
        _verb_forms("increase", "raise", "boost", "increment", "enlarge", "speed up", "grow"),
        _verb_forms("decrease", "reduce", "lower", "shrink", "decrement", "slow down", "cut"),
    ),
    "maximize/minimize": (_verb_forms("maximize", "maximise"), _verb_forms("minimize", "minimise")),
    "expand/collapse": (_verb_forms("expand"), _verb_forms("collapse")),
    "merge/split": (
        _verb_forms("merge", "join", "combine", "concatenate"),
        _verb_forms("split", "separate", "divide"),
    ),
    "read/write": (_verb_forms("read"), (*_verb_forms("write"), "wrote", "written")),
    "save/load": (_verb_forms("save"), _verb_forms("load")),
    "upgrade/downgrade": (_verb_forms("upgrade"), _verb_forms("downgrade")),
    "win/lose": ((*_verb_forms("win", "gain"), "won"), (*_verb_forms("lose"), "lost")),
    "pass/fail": (_verb_forms("pass", "succeed"), _verb_forms("fail")),
    "rise/fall": ((*_verb_forms("rise"), "rose", "risen"), (*_verb_forms("fall"), "fell")),
    "heat/cool": (_verb_forms("heat", "warm"), _verb_forms("cool", "chill")),
    "charge/discharge": (_verb_forms("charge"), _verb_forms("discharge", "drain")),
    "zoom": (("zoom in", "zooming in"), ("zoom out", "zooming out")),
    "scroll": (("scroll up", "scrolling up"), ("scroll down", "scrolling down")),
    "scale": (("scale up", "scale out", "scaling up"), ("scale down", "scale in", "scaling down")),
    "round": (
        ("round up", "rounding up", "ceil", "ceiling"),
        ("round down", "rounding down", "floor"),
    ),
    "opt": (("opt in", "opt-in"), ("opt out", "opt-out")),
    "sort order": (
        ("ascending", "asc", "increasing order"),
        ("descending", "desc", "decreasing order", "reverse order"),
    ),
    "case": (
        ("uppercase", "upper case", "capital letters", "capitalize"),
        ("lowercase", "lower case", "small letters"),
    ),
    "before/after": (("before", "earlier than", "prior to"), ("after", "later than")),
    "above/below": (("above", "over"), ("below", "under", "beneath")),
    "inside/outside": (("inside", "within", "inner", "internal"), ("outside", "outer", "external")),
    "input/output": (("input", "inputs", "stdin"), ("output", "outputs", "stdout")),
    "min/max": (
        ("min", "minimum", "smallest", "lowest", "least", "fewest", "shortest"),
        ("max", "maximum", "largest", "biggest", "highest", "most", "longest", "greatest"),
    ),
    "more/less": (
        ("more", "bigger", "larger", "higher", "greater", "longer", "taller", "heavier"),
        ("less", "fewer", "smaller", "lower", "shorter", "lighter"),
    ),
    "fast/slow": (("faster", "fastest", "quicker", "quickest"), ("slower", "slowest")),
    "good/bad": (
        ("better", "best", "pros", "advantages", "benefits"),
        ("worse", "worst", "cons", "disadvantages", "drawbacks", "downsides"),
    ),
    "old/new": (
        ("older", "oldest", "earliest"),
        ("newer", "newest", "younger", "youngest", "latest"),
    ),
    "cheap/expensive": (
        ("cheaper", "cheapest"),
        ("pricier", "priciest", "more expensive", "most expensive"),
    ),
    "hot/cold": (
        ("hot", "hotter", "hottest", "warmer", "warmest"),
        ("cold", "colder", "coldest", "cooler"),
    ),
    "early/late": (("early", "earlier"), ("late", "later")),
    "first/last": (("first",), ("last", "final")),
    "true/false": (("true",), ("false",)),
    "positive/negative": (("positive",), ("negative",)),
    "public/private": (("public",), ("private",)),
    "sync/async": (
        ("sync", "synchronous", "synchronously", "blocking"),
        ("async", "asynchronous", "asynchronously", "non-blocking"),
    ),
    "client/server": (
        ("client", "client-side", "frontend", "front-end"),
        ("server", "server-side", "backend", "back-end"),
    ),
    "horizontal/vertical": (("horizontal", "horizontally"), ("vertical", "vertically")),
    "row/column": (("row", "rows"), ("column", "columns", "col", "cols")),
    "left/right": (("left",), ("right",)),
    "north/south": (("north", "northern"), ("south", "southern")),
    "east/west": (("east", "eastern"), ("west", "western")),
    "men/women": (
        ("men", "man", "male", "boys", "boy"),
        ("women", "woman", "female", "girls", "girl"),
    ),
    "odd/even": (("odd",), ("even",)),
    "prefix/suffix": (
        ("prefix", "starts with", "startswith", "leading"),
        ("suffix", "ends with", "endswith", "trailing"),
    ),
    "head/tail": (("head",), ("tail",)),
    "inbound/outbound": (("inbound", "incoming", "ingress"), ("outbound", "outgoing", "egress")),
    "upstream/downstream": (("upstream",), ("downstream",)),
    "up/down": (("up", "upward", "upwards"), ("down", "downward", "downwards")),
    "local/remote": (("local", "locally"), ("remote", "remotely")),
    "online/offline": (("online",), ("offline",)),
    "static/dynamic": (("static", "statically"), ("dynamic", "dynamically")),
    "absolute/relative": (("absolute",), ("relative",)),
    "development/production": (("development", "dev", "debug"), ("production", "prod", "release")),
    "singular/plural": (("singular",), ("plural",)),
    "import/export trade": (("imports", "importer"), ("exports", "exporter")),
}  # fmt: skip

# Kinds of thing asked for, where one kind never answers for another: a poem is not a story, a
# summary is not an analysis, sorting a list is not sorting a dict. Compared like the direction
# groups (only when both questions name one); a pole lists the spellings of one kind.
KIND_GROUPS: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "format": (
        ("poem", "poems", "poetry", "verse", "verses", "rhyme"),
        ("haiku", "haikus"),
        ("limerick", "limericks"),
        ("sonnet", "sonnets"),
        ("story", "stories", "short story", "tale", "fable", "narrative"),
        ("essay", "essays"),
        ("email", "emails"),
        ("letter", "letters"),
        ("tweet", "tweets"),
        ("joke", "jokes", "pun", "puns"),
        ("song", "songs", "lyrics"),
        ("speech", "speeches", "toast"),
        ("article", "articles", "blog post", "blog"),
        ("resume", "cv"),
        ("slogan", "slogans", "tagline", "taglines"),
        ("riddle", "riddles"),
        ("dialogue", "dialog", "script", "screenplay"),
    ),
    "task": (
        ("summarize", "summarise", "summarizing", "summary", "sum up", "tldr", "recap"),
        ("analyze", "analyse", "analyzing", "analysis"),
        ("translate", "translating", "translation"),
        ("rewrite", "rephrase", "paraphrase", "reword", "rewriting"),
        ("proofread", "proofreading"),
        ("critique", "review", "evaluate"),
        ("compare", "comparison", "contrast"),
        ("explain", "describe", "define", "explanation", "description", "definition"),
    ),
    "data structure": (
        ("list", "lists", "array", "arrays", "vector", "vectors", "slice", "slices"),
        ("dict", "dicts", "dictionary", "dictionaries", "map", "maps", "hashmap", "hash map",
         "hash table", "object"),
        ("a set", "the set", "sets", "hashset", "frozenset"),
        ("tuple", "tuples"),
        ("string", "strings", "str"),
        ("dataframe", "dataframes", "data frame"),
        ("queue", "queues", "deque"),
        ("stack", "stacks"),
        ("tree", "trees", "binary tree"),
        ("graph", "graphs"),
        ("linked list", "linked lists"),
        ("matrix", "matrices"),
    ),
}  # fmt: skip

# Question words that ask for different kinds of answer; "what" and "how" are too general.
WH_WORDS: Final = frozenset({"who", "where", "when", "why"})

# Markers of an ordered relation: swapping what stands on each side changes the answer
# ("is a cat bigger than a dog", "convert miles to km"). "vs", "and", "or" are symmetric.
RELATION_MARKERS: Final[Mapping[str, str]] = {
    "than": "than",
    "to": "to",
    "into": "to",
    "over": "over",
    "instead": "instead",
    "before": "before",
    "after": "after",
    "but": "but",
}

# Words that frame a request rather than name its subject. Swapping one for another is how
# people reword ("how do I stop" / "how can I halt", "the formula for" / "how to calculate"),
# so a swap of these is no substitution (see :func:`substitution`).
_REQUEST_VERBS: Final = _verb_forms(
    "make", "create", "write", "define", "declare", "get", "find", "see", "show", "open",
    "read", "load", "run", "use", "do", "check", "print", "stop", "halt", "kill", "delete",
    "remove", "add", "compute", "calculate", "convert", "change", "turn", "recommend",
    "suggest", "sort", "order", "list", "send", "set", "put", "fix", "solve", "build",
    "install", "update", "display", "view", "generate", "implement", "call", "pass",
    "return", "learn", "say", "tell", "give", "prepare", "handle", "manage", "configure",
    "brew", "cook", "eliminate", "access", "test", "count", "determine", "figure",
    "work", "help", "harm", "damage", "happen", "cause", "mean", "go", "come", "take",
)  # fmt: skip
REQUEST_WORDS: Final = frozenset(
    (
        *_REQUEST_VERBS,
        "made", "found", "wrote", "written", "ran", "gave", "given", "went", "came", "took",
        "formula", "way", "ways", "step", "steps", "command", "code", "syntax", "function",
        "method", "shortcut", "tip", "tips", "trick", "tricks", "guide", "example", "program",
        "meaning", "definition", "author", "able", "possible", "right", "correct", "proper",
        "best", "easiest", "simplest", "good", "bad", "usually", "typically", "normally",
        "quickly", "fast", "safely", "properly", "exactly", "one",
    )
)  # fmt: skip

STOPWORDS: Final = frozenset(
    {
        "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "am", "do",
        "does", "did", "doing", "have", "has", "had", "i", "me", "my", "you", "your", "we",
        "our", "it", "its", "this", "that", "these", "those", "there", "here", "of", "in",
        "on", "at", "by", "for", "with", "about", "as", "from", "and", "or", "so", "if",
        "then", "can", "could", "should", "would", "will", "shall", "may", "might", "must",
        "what", "which", "how", "who", "whom", "whose", "why", "when", "where", "please",
        "some", "any", "to", "into", "than", "over", "instead", "before", "after", "vs",
        "versus", "but", "really", "actually", "just", "also", "very", "much", "many", "get", "way",
        "tell", "explain", "give", "know", "want", "need", "like", "thing", "things", "best",
    }
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Tokenizing.
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<money>[$€£¥₹])\s?(?P<mnum>\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)   # $5, €1,200, £3.50
    | (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)*)             # 5, 1,000, 3.11.2
      (?P<suffix>k\b|%|st\b|nd\b|rd\b|th\b)?                          # 3k, 10%, 2nd
    | (?P<degree>°\s?[CFcf])\b                                        # °C, ° F
    | (?P<word>[A-Za-z][A-Za-z0-9]*                                   # words, x86, IPv6
        (?:\+\+|\#|-[A-Za-z]+)?                                       # C++, C#, opt-in
        (?:'[A-Za-z]+)?)                                              # don't, France's
    """,
    re.VERBOSE,
)
_SENTENCE_END: Final = frozenset(".!?\n")  # not ":": "Which is faster: Go or Rust?"
_ARROWS = re.compile(r"\s*(?:->|→|=>)\s*")
# Phrase aliases, longest first, not inside a longer word or a dotted name.
_PHRASE_ALIAS = re.compile(
    rf"(?<![\w.])({'|'.join(map(re.escape, sorted(PHRASE_ALIASES, key=len, reverse=True)))})(?!\w)",
    re.IGNORECASE,
)
_UNIT_BY_SPELLING: Final[Mapping[str, str]] = {
    spelling: unit
    for units in UNITS.values()
    for unit, spellings in units.items()
    for spelling in spellings
}
_DIMENSION: Final[Mapping[str, str]] = {
    unit: dimension for dimension, units in UNITS.items() for unit in units
}
_CURRENCY_SYMBOLS: Final[Mapping[str, str]] = {
    "$": "usd",
    "€": "eur",
    "£": "gbp",
    "¥": "jpy",
    "₹": "inr",
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word" or "num" (norm is then the canonical value)
    norm: str  # lowercase, possessive dropped, aliased
    orig: str
    initial: bool  # first word of a sentence (its capital says nothing)


def _canonical_number(digits: str) -> str:
    """ "1,000" -> "1000", "007" -> "7"; "3.10" stays apart from "3.1" (versions)."""
    whole, dot, rest = digits.replace(",", "").partition(".")
    return (whole.lstrip("0") or "0") + dot + rest


def _tokenize(text: str) -> tuple[list[_Token], dict[int, str]]:
    """Tokens, and the currency unit of each money token (by token index)."""
    text = unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'")
    text = _ARROWS.sub(" to ", text)
    text = _PHRASE_ALIAS.sub(lambda m: PHRASE_ALIASES[m.group(1).lower()], text)
    tokens: list[_Token] = []
    money: dict[int, str] = {}
    previous_end = -1
    for match in _TOKEN.finditer(text):
        # A word starts a sentence when nothing but spaces, quotes or brackets lie between it
        # and the start of the text or a sentence end: its capital then says nothing.
        gap = text[max(previous_end, 0) : match.start()]
        initial = previous_end < 0 or not _SENTENCE_END.isdisjoint(gap)
        previous_end = match.end()
        if match.group("money"):
            money[len(tokens)] = _CURRENCY_SYMBOLS[match.group("money")]
            value = _canonical_number(match.group("mnum"))
            tokens.append(_Token("num", value, match.group(0), initial))
        elif match.group("num"):
            value = _canonical_number(match.group("num"))
            suffix = (match.group("suffix") or "").lower()
            if suffix == "k" and value.count(".") <= 1:
                value = format((Decimal(value) * 1000).normalize(), "f")
            elif suffix in {"st", "nd", "rd", "th"}:
                value = f"#{value}"
            tokens.append(_Token("num", value, match.group("num"), initial))
            if suffix == "%":
                tokens.append(_Token("word", "%", "%", False))
        elif match.group("degree"):
            unit = "°" + match.group("degree")[-1].lower()
            tokens.append(_Token("word", unit, match.group("degree"), False))
        else:
            orig = match.group("word")
            norm = orig.lower()
            if norm.endswith("'s"):
                norm = norm[:-2]
            norm = TOKEN_ALIASES.get(norm, norm)
            norm = DEMONYMS.get(norm, norm)
            tokens.append(_Token("word", norm, orig, initial))
    return tokens, money


# ---------------------------------------------------------------------------------------------
# Features.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """What the rules compare, extracted once per text (see :func:`features`)."""

    words: frozenset[str]
    numbers: tuple[str, ...]
    units: frozenset[str]
    quantities: frozenset[tuple[str, str]]
    negated: bool
    contrasts: Mapping[str, Mapping[int, str]]  # direction or kind group -> pole -> word seen
    languages: frozenset[str]
    entities: frozenset[str]
    names: frozenset[str]
    times: frozenset[str]
    wh: frozenset[str]
    relations: Mapping[str, tuple[frozenset[str], frozenset[str]]]
    content: frozenset[str]  # words that are not STOPWORDS, in their _content form


def _phrase_index(
    entries: Iterable[tuple[str, tuple[str, int]]],
) -> tuple[dict[str, list[tuple[str, int]]], re.Pattern[str] | None]:
    """Entries by phrase, and one alternation that finds the multi-word ones in joined tokens."""
    index: dict[str, list[tuple[str, int]]] = {}
    for phrase, value in entries:
        index.setdefault(phrase, []).append(value)
    multi = sorted((p for p in index if " " in p), key=len, reverse=True)
    if not multi:
        return index, None
    # (?<!\S) and (?!\S): the phrase starts and ends on token boundaries of the joined text.
    return index, re.compile(rf"(?<!\S)(?:{'|'.join(map(re.escape, multi))})(?!\S)")


_GROUP_LABEL: Final[Mapping[str, str]] = {
    **{group: "direction words" for group in DIRECTION_GROUPS},
    **{group: group for group in KIND_GROUPS},
}
_CONTRAST_INDEX, _CONTRAST_PHRASES = _phrase_index(
    (word, (group, pole))
    for group, poles in (*DIRECTION_GROUPS.items(), *KIND_GROUPS.items())
    for pole, words in enumerate(poles)
    for word in words
)


_BEFORE_A_UNIT: Final = UNIT_ARTICLES | NUMBER_WORDS.keys()


def _number_word_run(tokens: list[_Token], start: int) -> tuple[int | None, int]:
    """Value of the number words from ``start`` ("two hundred and five" -> 205) and the index
    after them; None for a lone "one", which is usually a pronoun ("which one is faster")."""
    total, current, end = 0, 0, start
    while end < len(tokens):
        word = tokens[end].norm
        if word in NUMBER_WORDS:
            current += NUMBER_WORDS[word]
        elif word in NUMBER_SCALES:
            current = max(current, 1) * NUMBER_SCALES[word]
            if NUMBER_SCALES[word] >= 1000:
                total, current = total + current, 0
        elif not (
            word == "and"
            and end > start
            and end + 1 < len(tokens)
            and tokens[end + 1].norm in NUMBER_WORDS
        ):
            break
        end += 1
    if tokens[start].norm == "one" and end == start + 1:
        return None, end
    return total + current, end


def _unit_after(tokens: list[_Token], index: int, *, after_number: bool) -> str | None:
    """The unit spelled by ``tokens[index]``, if it reads as one in that position."""
    if index >= len(tokens) or tokens[index].kind != "word":
        return None
    spelling = tokens[index].norm
    if after_number and spelling in {"degree", "degrees"} and index + 1 < len(tokens):
        spelling = tokens[index + 1].norm  # "30 degrees celsius" is "30 °C"
    unit = _UNIT_BY_SPELLING.get(spelling)
    if unit is None or (spelling in AMBIGUOUS_UNIT_SPELLINGS and not after_number):
        # "in a pound", "per second": an article makes a longer ambiguous spelling a unit
        after_article = index > 0 and tokens[index - 1].norm in UNIT_ARTICLES
        if unit is None or not (after_article and len(spelling) > 2):
            return None
    return unit


def _numbers_and_quantities(
    tokens: list[_Token], money: Mapping[int, str]
) -> tuple[tuple[str, ...], frozenset[str], frozenset[tuple[str, str]]]:
    """Numbers in order of appearance, units mentioned, and (number, unit) quantities."""
    numbers: list[str] = []
    units: set[str] = set()
    quantities: set[tuple[str, str]] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        previous = tokens[i - 1] if i else None
        value: str | None = None
        if token.kind == "num":
            value, i = token.norm, i + 1
        elif token.norm in NUMBER_WORDS or token.norm in NUMBER_SCALES:
            number, i = _number_word_run(tokens, i)
            value = None if number is None else str(number)
        elif token.norm in ORDINALS and not (
            # "a second", "5 second delay": the unit, not the ordinal
            token.norm == "second"
            and previous is not None
            and (previous.kind == "num" or previous.norm in _BEFORE_A_UNIT)
        ):
            numbers.append(f"#{ORDINALS[token.norm]}")
            i += 1
            continue
        else:
            i += 1
        if value is not None:
            numbers.append(value)
            currency = money.get(i - 1)
            if currency is not None:
                quantities.add((value, currency))
                continue
            unit = _unit_after(tokens, i, after_number=True)
        else:
            # "how many km in a mile": the mile is a quantity of one
            article = tokens[i - 1].norm in UNIT_ARTICLES
            unit = _unit_after(tokens, i, after_number=False) if article else None
        if unit is not None:
            quantities.add((value or "1", unit))
    for token in tokens:
        if token.norm in UNIT_ADVERBS:
            quantities.add(("1", UNIT_ADVERBS[token.norm]))
    for index in range(len(tokens)):
        after_number = index > 0 and (
            tokens[index - 1].kind == "num" or tokens[index - 1].norm in NUMBER_WORDS
        )
        unit = _unit_after(tokens, index, after_number=after_number)
        if unit is None:
            unit = UNIT_ADVERBS.get(tokens[index].norm)
        if unit is not None:
            units.add(unit)
    units.update(money.values())
    return tuple(numbers), frozenset(units), frozenset(quantities)


def _contrasts(tokens: list[_Token], joined: str) -> dict[str, dict[int, str]]:
    found: dict[str, dict[int, str]] = {}
    spans: list[str] = [t.norm for t in tokens]
    if _CONTRAST_PHRASES is not None:
        spans.extend(m.group(0) for m in _CONTRAST_PHRASES.finditer(joined))
    for span in spans:
        for group, pole in _CONTRAST_INDEX.get(span, ()):
            found.setdefault(group, {}).setdefault(pole, span)
    return found


def _languages(tokens: list[_Token]) -> frozenset[str]:
    found: set[str] = set()
    for index, token in enumerate(tokens):
        if token.norm not in PROGRAMMING_LANGUAGES:
            continue
        if token.norm in AMBIGUOUS_LANGUAGES:
            written_as_name = token.orig[0].isupper() and not token.initial
            after_in = index > 0 and tokens[index - 1].norm in {"in", "using", "with"}
            single_letter = len(token.norm) == 1
            if single_letter and not token.orig.isupper():
                continue
            if single_letter and index + 1 < len(tokens) and tokens[index + 1].kind == "num":
                continue  # "C 3" is not a language
            if not (written_as_name or after_in):
                continue
        found.add(token.norm)
    return frozenset(found)


def _names(tokens: list[_Token]) -> frozenset[str]:
    """Proper names by their spelling: Capitalized mid-sentence, ACRONYMS, iPhone, IPv6."""
    names: set[str] = set()
    for token in tokens:
        orig = token.orig
        if token.kind != "word" or orig == "I" or (len(orig) < 2 and not orig.isupper()):
            continue
        lowered = orig.lower()
        if lowered == orig and orig.isalpha():
            continue  # the common case: a plain lowercase word
        has_digit = not orig.replace("-", "").replace("'", "").isalpha()
        acronym = len(orig) >= 2 and orig.isupper()
        mixed = orig[0].islower() and lowered != orig
        capitalized = orig[0].isupper() and not token.initial
        if (has_digit or acronym or mixed or capitalized) and (
            token.norm not in _UNIT_BY_SPELLING and token.norm not in NOT_NAMES
        ):
            names.add(token.norm)
    return frozenset(names)


def _times(tokens: list[_Token]) -> frozenset[str]:
    found: set[str] = set()
    for index, token in enumerate(tokens):
        word = token.norm
        if word in TIME_WORDS or (
            word in MONTHS and (word != "may" or (token.orig == "May" and not token.initial))
        ):
            found.add(word)
        elif word in RELATIVE_TIME and index + 1 < len(tokens):
            following = _UNIT_BY_SPELLING.get(tokens[index + 1].norm, tokens[index + 1].norm)
            if following in RELATIVE_TIME_UNITS or following in TIME_WORDS:
                found.add(f"{RELATIVE_TIME[word]} {following}")
    return frozenset(found)


def _question_words(tokens: list[_Token]) -> frozenset[str]:
    """Wh-words that open a sentence or close it ("..., why?"); elsewhere "when" and "where"
    are conjunctions ("why can't Python find my module when I run the script")."""
    last = len(tokens) - 1
    return frozenset(
        t.norm for i, t in enumerate(tokens) if t.norm in WH_WORDS and (t.initial or i == last)
    )


def _content(word: str) -> str:
    word = _UNIT_BY_SPELLING.get(word, word)
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _relations(tokens: list[_Token]) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """For each relation marker, the content words left and right of its last occurrence."""
    last: dict[str, int] = {}
    for index, token in enumerate(tokens):
        marker = RELATION_MARKERS.get(token.norm)
        if marker is not None:
            last[marker] = index
    relations: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    for marker, index in last.items():
        sides = (tokens[:index], tokens[index + 1 :])
        left, right = (
            frozenset(_content(t.norm) for t in side if t.norm not in STOPWORDS) for side in sides
        )
        relations[marker] = (left, right)
    return relations


@lru_cache(maxsize=8192)
def features(text: str) -> TextFeatures:
    """Extract what :func:`check` compares (cached: one query meets many candidates)."""
    tokens, money = _tokenize(text)
    joined = " ".join(t.norm for t in tokens)
    numbers, units, quantities = _numbers_and_quantities(tokens, money)
    words = frozenset(t.norm for t in tokens)
    negated = any(t.norm in NEGATIONS or t.norm.endswith("n't") for t in tokens)
    languages = _languages(tokens)
    entities = frozenset(
        word for word in words if word in KNOWN_ENTITIES and word not in PROGRAMMING_LANGUAGES
    )
    return TextFeatures(
        words=words | frozenset(_content(w) for w in words),
        numbers=numbers,
        units=units,
        quantities=quantities,
        negated=negated,
        contrasts=_contrasts(tokens, joined),
        languages=languages,
        entities=entities,
        names=_names(tokens) - languages - entities,
        times=_times(tokens),
        wh=_question_words(tokens),
        relations=_relations(tokens),
        content=frozenset(
            _content(t.norm) for t in tokens if t.kind == "word" and t.norm not in STOPWORDS
        ),
    )


# ---------------------------------------------------------------------------------------------
# Rules.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    accepted: bool
    reason: str = ""  # why it was rejected; "" when accepted

    def __bool__(self) -> bool:
        return self.accepted


_ACCEPT: Final = GuardVerdict(accepted=True)


def _show(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


def _differ(what: str, a: Iterable[str], b: Iterable[str]) -> GuardVerdict:
    return GuardVerdict(False, f"{what} differ: {_show(a)} vs {_show(b)}")


def _rule_language(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    if a.languages != b.languages:
        return GuardVerdict(
            False,
            f"programming language differs: {_show(a.languages - b.languages)} "
            f"vs {_show(b.languages - a.languages)}",
        )
    return _ACCEPT


def _negated_form(word: str, others: frozenset[str]) -> str | None:
    """The word of ``others`` that ``word`` negates by a prefix ("illegal" -> "legal")."""
    for prefix in NEGATING_PREFIXES:
        stem = word.removeprefix(prefix)
        if stem != word and len(stem) >= NEGATING_PREFIX_MIN_STEM and stem in others:
            return stem
    return None


def _rule_negation(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    if a.negated != b.negated:
        return GuardVerdict(False, "negation differs")
    for mine, theirs in ((a, b), (b, a)):
        for word in mine.words - theirs.words:
            stem = _negated_form(word, theirs.words)
            if stem is not None:
                return GuardVerdict(False, f"negation differs: {word} vs {stem}")
    return _ACCEPT


def _rule_numbers(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    if a.numbers == b.numbers:
        return _ACCEPT
    count_a, count_b = Counter(a.numbers), Counter(b.numbers)
    if count_a != count_b:
        return _differ("numbers", (count_a - count_b).keys(), (count_b - count_a).keys())
    return GuardVerdict(
        False, f"numbers in a different order: {' '.join(a.numbers)} vs {' '.join(b.numbers)}"
    )


def _rule_units(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    # Only dimensions both sides talk about: "how long" vs "how many minutes" is no conflict.
    shared = {_DIMENSION[u] for u in a.units} & {_DIMENSION[u] for u in b.units}
    units_a = {u for u in a.units if _DIMENSION[u] in shared}
    units_b = {u for u in b.units if _DIMENSION[u] in shared}
    if units_a != units_b:
        return _differ("units", units_a - units_b, units_b - units_a)
    quantities_a = {q for q in a.quantities if _DIMENSION[q[1]] in shared}
    quantities_b = {q for q in b.quantities if _DIMENSION[q[1]] in shared}
    if quantities_a != quantities_b:
        return _differ(
            "units",
            (f"{n} {u}" for n, u in quantities_a - quantities_b),
            (f"{n} {u}" for n, u in quantities_b - quantities_a),
        )
    return _ACCEPT


def _rule_times(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    return _ACCEPT if a.times == b.times else _differ("dates", a.times - b.times, b.times - a.times)


def _rule_contrasts(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    for group, poles_a in a.contrasts.items():
        poles_b = b.contrasts.get(group)
        if poles_b is not None and poles_a.keys() != poles_b.keys():
            word_a = (
                next(w for p, w in poles_a.items() if p not in poles_b)
                if poles_a.keys() - poles_b.keys()
                else next(iter(poles_a.values()))
            )
            word_b = (
                next(w for p, w in poles_b.items() if p not in poles_a)
                if poles_b.keys() - poles_a.keys()
                else next(iter(poles_b.values()))
            )
            label = _GROUP_LABEL[group]
            verb = "differ" if label.endswith("s") else "differs"
            return GuardVerdict(False, f"{label} {verb}: {word_a}/{word_b}")
    return _ACCEPT


def _rule_entities(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    if a.entities != b.entities:
        return _differ("entities", a.entities - b.entities, b.entities - a.entities)
    # A name on one side must appear on the other, in any case ("Hamlet" vs "hamlet").
    missing_a, missing_b = a.names - b.words, b.names - a.words
    if missing_a or missing_b:
        return _differ("entities", missing_a, missing_b)
    return _ACCEPT


def _rule_relations(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    for marker, (left_a, right_a) in a.relations.items():
        if marker not in b.relations:
            continue
        left_b, right_b = b.relations[marker]
        # Swapped when a word moves left-to-right and another right-to-left across the marker.
        moved_right = (left_a - right_a) & (right_b - left_b)
        moved_left = (right_a - left_a) & (left_b - right_b)
        if moved_right and moved_left:
            return GuardVerdict(
                False,
                f"order differs around {marker!r}: "
                f"{_show(moved_right)} and {_show(moved_left)} swapped",
            )
    return _ACCEPT


def _rule_wh(a: TextFeatures, b: TextFeatures) -> GuardVerdict:
    if a.wh and b.wh and a.wh != b.wh:
        return GuardVerdict(False, f"question word differs: {_show(a.wh)} vs {_show(b.wh)}")
    return _ACCEPT


_RULES: Final[tuple[Callable[[TextFeatures, TextFeatures], GuardVerdict], ...]] = (
    _rule_language,
    _rule_negation,
    _rule_numbers,
    _rule_units,
    _rule_times,
    _rule_contrasts,
    _rule_entities,
    _rule_relations,
    _rule_wh,
)


def _same_stem(a: str, b: str) -> bool:
    """ "cooked" and "cooking", "plural" and "pluralize", "dict" and "dictionary"."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= 4 and long.startswith(short):
        return True
    return len(short) >= 5 and long[:5] == short[:5]


def substitution(query: str, candidate: str) -> tuple[str, str] | None:
    """The one word swapped between two otherwise identical questions, if that is all that
    tells them apart and the word names the subject ("sugar" / "caffeine"), not the request
    ("stop" / "halt"). Such pairs need ``DEFAULT_SUBSTITUTION_THRESHOLD``."""
    a, b = features(query).content, features(candidate).content
    only_a = [w for w in a if not any(_same_stem(w, v) for v in b)]
    only_b = [w for w in b if not any(_same_stem(w, v) for v in a)]
    if len(only_a) != 1 or len(only_b) != 1 or len(a & b) < 2:
        return None
    if only_a[0] in REQUEST_WORDS or only_b[0] in REQUEST_WORDS:
        return None
    return only_a[0], only_b[0]


def check(query: str, candidate: str) -> GuardVerdict:
    """Accept the pair, or reject it with the first rule that tells the two questions apart."""
    if query == candidate:
        return _ACCEPT
    a, b = features(query), features(candidate)
    for rule in _RULES:
        verdict = rule(a, b)
        if not verdict.accepted:
            return verdict
    return _ACCEPT


# ---------------------------------------------------------------------------------------------
# The decision for a candidate entry.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchPolicy:
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    context_mode: ContextMode = ContextMode.EXACT
    context_threshold: float = DEFAULT_CONTEXT_THRESHOLD
    substitution_threshold: float = DEFAULT_SUBSTITUTION_THRESHOLD
    guard: bool = True  # off only to measure what it buys


@dataclass(frozen=True, slots=True)
class MatchVerdict:
    hit: bool
    score: float  # cosine of the question vectors
    reason: str  # why it missed; "" on a hit


def judge(
    query: CacheKey,
    entry: CacheKey,
    *,
    similarity: float,
    context_similarity: float | None = None,
    policy: MatchPolicy = MatchPolicy(),  # frozen: safe to share
) -> MatchVerdict:
    """Is ``entry`` (a stored question, ``similarity`` away by cosine) an answer for ``query``?

    ``context_similarity`` is the cosine of the two context vectors; only
    ``ContextMode.SEMANTIC`` reads it, and only when the query has prior turns.
    """

    def miss(reason: str) -> MatchVerdict:
        return MatchVerdict(hit=False, score=similarity, reason=reason)

    if query.scope_fingerprint != entry.scope_fingerprint:
        return miss("different bot, model or system prompt")
    if policy.context_mode is ContextMode.EXACT:
        if query.context_fingerprint != entry.context_fingerprint:
            return miss("different conversation context")
    else:
        if query.context_shape != entry.context_shape:
            return miss("different conversation context")
        if query.has_context:
            if context_similarity is None or context_similarity < policy.context_threshold:
                return miss("different conversation context")
            if policy.guard:
                for mine, theirs in zip(query.context, entry.context, strict=True):
                    verdict = check(mine.content, theirs.content)
                    if not verdict.accepted:
                        return miss(f"context: {verdict.reason}")
                    swapped = substitution(mine.content, theirs.content)
                    if swapped is not None and context_similarity < policy.substitution_threshold:
                        return miss(f"context: one word swapped ({swapped[0]}/{swapped[1]})")
    if similarity < policy.threshold:
        return miss(f"similarity {similarity:.3f} below {policy.threshold:.3f}")
    if policy.guard:
        verdict = check(query.question, entry.question)
        if not verdict.accepted:
            return miss(verdict.reason)
        swapped = substitution(query.question, entry.question)
        if swapped is not None and similarity < policy.substitution_threshold:
            return miss(
                f"one word swapped ({swapped[0]}/{swapped[1]}): similarity {similarity:.3f} "
                f"below {policy.substitution_threshold:.3f}"
            )
    return MatchVerdict(hit=True, score=similarity, reason="")


def select_hit(
    query: CacheKey,
    candidates: Iterable[tuple[CacheKey, float, float | None]],
    *,
    policy: MatchPolicy = MatchPolicy(),  # frozen: safe to share
) -> tuple[int, MatchVerdict] | None:
    """The best accepted candidate, as (index, verdict), among (entry, similarity, context
    similarity) triples from a vector search; None when every one is rejected."""
    best: tuple[int, MatchVerdict] | None = None
    for index, (entry, similarity, context_similarity) in enumerate(candidates):
        verdict = judge(
            query,
            entry,
            similarity=similarity,
            context_similarity=context_similarity,
            policy=policy,
        )
        if verdict.hit and (best is None or verdict.score > best[1].score):
            best = (index, verdict)
    return best
