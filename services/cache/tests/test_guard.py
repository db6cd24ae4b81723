from __future__ import annotations

import pytest

from parley_cache.guard import MatchPolicy, check, features, judge, select_hit, substitution
from parley_cache.keying import (
    DEFAULT_SIMILARITY_THRESHOLD,
    DEFAULT_SUBSTITUTION_THRESHOLD,
    CacheKey,
    ContextMode,
    Role,
    Turn,
)

# Near-duplicates with different answers, and the start of the reason the guard gives.
REJECTED = [
    ("What is 15% of 200?", "What is 15% of 300?", "numbers differ: 200 vs 300"),
    ("Is 17 a prime number?", "Is eighteen a prime number?", "numbers differ: 17 vs 18"),
    ("What's 10 minus 3?", "What's 3 minus 10?", "numbers in a different order"),
    ("Explain the first amendment", "Explain the second amendment", "numbers differ"),
    ("How many km are in 5 miles?", "How many miles are in 5 km?", "units differ: 5 mile vs 5 km"),
    ("How many km in a mile?", "How many miles in a km?", "units differ: 1 mile vs 1 km"),
    ("Convert 100 USD to EUR", "Convert 100 EUR to USD", "units differ"),
    ("Set a timer for 10 minutes", "Set a timer for 10 seconds", "units differ: minute vs second"),
    ("Why does my code compile?", "Why doesn't my code compile?", "negation differs"),
    ("Pancakes with eggs?", "Pancakes without eggs?", "negation differs"),
    (
        "Is it legal to fish here?",
        "Is it illegal to fish here?",
        "negation differs: illegal vs legal",
    ),
    ("What's the capital of France?", "What's the capital of Germany?", "entities differ"),
    ("Who wrote Hamlet?", "Who wrote Macbeth?", "entities differ: hamlet vs macbeth"),
    ("Install docker on ubuntu", "Install docker on fedora", "entities differ"),
    ("How do I enable dark mode?", "How do I disable dark mode?", "direction words differ"),
    ("How do I turn on Bluetooth?", "How do I switch off Bluetooth?", "direction words differ"),
    ("Sort a list in ascending order", "Sort a list in descending order", "direction words differ"),
    ("Round a number up in Excel", "Round a number down in Excel", "direction words differ"),
    ("Reverse a list in Python", "Reverse a list in Rust", "programming language differs"),
    ("Read a file in Java", "Read a file in go", "programming language differs: java vs go"),
    ("Hello world in C", "Hello world in C++", "programming language differs"),
    ("Reverse a string", "Reverse a string in JavaScript", "programming language differs"),
    ("Weather in London today", "Weather in London tomorrow", "dates differ"),
    ("Events this weekend in Berlin", "Events next weekend in Berlin", "dates differ"),
    ("Is a cat bigger than a dog?", "Is a dog bigger than a cat?", "order differs around 'than'"),
    ("Convert a string to an int", "Convert an int to a string", "order differs around 'to'"),
    ("Where was Einstein born?", "When was Einstein born?", "question word differs"),
    ("Write a poem about the sea", "Write a short story about the sea", "format differs"),
    ("Summarize the plot of Hamlet", "Analyze the plot of Hamlet", "task differs"),
    ("Sort a list in Python", "Sort a dictionary in Python", "data structure differs"),
]

# True paraphrases, including ones that carry numbers, units, names or negation on both sides.
ACCEPTED = [
    ("What is 5 km in miles?", "How many miles is 5 kilometres?"),
    ("What is 2 + 2?", "What is two plus two?"),
    ("Is 17 a prime number?", "Is seventeen prime?"),
    ("Convert $100 to euros", "How much is 100 US dollars in EUR?"),
    ("What's 20 degrees Celsius in Fahrenheit?", "Convert 20°C to °F"),
    ("How many ounces are in a pound?", "How many oz make one lb?"),
    ("Who wrote Hamlet?", "Who is the author of hamlet?"),
    ("How do I reverse a list in Python?", "What's the way to reverse a Python list?"),
    ("How do I turn off notifications?", "How can I disable notifications?"),
    ("Why isn't my Wi-Fi working?", "My Wi-Fi doesn't work, what should I do?"),
    ("Which is faster: Go or Rust?", "Which one is faster, Go or Rust?"),
    ("How long does it take to walk 10 km?", "How many hours does it take to walk 10 km?"),
    ("How do I convert a string to an int?", "How do I turn a string into an integer?"),
    ("What is the speed limit on German highways?", "Speed limit on highways in Germany?"),
    ("Why can't Python find my module when I run it?", "Why doesn't Python find my module?"),
]


@pytest.mark.parametrize(("query", "candidate", "reason"), REJECTED)
def test_near_duplicates_are_rejected_with_a_reason(
    query: str, candidate: str, reason: str
) -> None:
    verdict = check(query, candidate)
    assert not verdict.accepted
    assert not verdict
    assert verdict.reason.startswith(reason), verdict.reason
    # Which side is stored and which is asked does not change the outcome.
    assert not check(candidate, query).accepted


@pytest.mark.parametrize(("query", "candidate"), ACCEPTED)
def test_paraphrases_are_accepted(query: str, candidate: str) -> None:
    verdict = check(query, candidate)
    assert verdict.accepted, verdict.reason
    assert verdict.reason == ""
    assert check(candidate, query).accepted


def test_features_are_cached_per_text() -> None:
    text = "How many km are in 5 miles, and is it more than 8 km?"
    assert features(text) is features(text)
    found = features(text)
    assert found.numbers == ("5", "8")
    assert found.quantities == {("5", "mile"), ("8", "km")}


@pytest.mark.parametrize(
    ("query", "candidate", "expected"),
    [
        ("How many grams of sugar in a Coke?", "How many grams of caffeine in a Coke?", True),
        ("How do I stop a Docker container?", "How do I halt a Docker container?", False),
        ("How do I delete a git branch?", "How can I remove a git branch?", False),
        ("What is the capital of France?", "Which city is the capital of France?", False),
    ],
)
def test_substitution_finds_a_swapped_subject_word_but_not_a_reworded_request(
    query: str, candidate: str, expected: bool
) -> None:
    assert (substitution(query, candidate) is not None) is expected


# --- judge -------------------------------------------------------------------------------------


def key(*texts: str, system_prompt: str = "You are a helpful assistant.") -> CacheKey:
    roles = (Role.USER, Role.ASSISTANT)
    turns = [Turn(roles[i % 2], text) for i, text in enumerate(texts)]
    return CacheKey.build(bot_id="b", model="m", system_prompt=system_prompt, turns=turns)


def test_judge_hits_above_the_threshold_and_returns_the_score() -> None:
    verdict = judge(key("How do I exit vim?"), key("How can I quit vim?"), similarity=0.9)
    assert verdict.hit
    assert verdict.score == 0.9
    assert verdict.reason == ""


def test_judge_misses_below_the_threshold() -> None:
    below = DEFAULT_SIMILARITY_THRESHOLD - 0.01
    verdict = judge(key("How do I exit vim?"), key("How can I quit vim?"), similarity=below)
    assert not verdict.hit
    assert verdict.score == below
    assert "below" in verdict.reason


def test_judge_applies_the_guard() -> None:
    verdict = judge(key("Enable dark mode"), key("Disable dark mode"), similarity=0.97)
    assert not verdict.hit
    assert verdict.reason.startswith("direction words differ")
    unguarded = judge(
        key("Enable dark mode"), key("Disable dark mode"), similarity=0.97,
        policy=MatchPolicy(guard=False),
    )  # fmt: skip
    assert unguarded.hit


def test_judge_needs_a_higher_score_for_a_one_word_substitution() -> None:
    stored = key("How many grams of sugar are in a can of Coke?")
    asked = key("How many grams of caffeine are in a can of Coke?")
    assert not judge(asked, stored, similarity=DEFAULT_SUBSTITUTION_THRESHOLD - 0.01).hit
    assert judge(asked, stored, similarity=DEFAULT_SUBSTITUTION_THRESHOLD).hit


def test_judge_never_shares_across_bots_models_or_system_prompts() -> None:
    verdict = judge(
        key("Write a greeting", system_prompt="Answer in French."),
        key("Write a greeting", system_prompt="Answer in German."),
        similarity=1.0,
    )
    assert not verdict.hit
    assert verdict.reason == "different bot, model or system prompt"


def test_exact_context_mode_separates_chats_whose_earlier_turns_differ() -> None:
    rust = key("I'm learning Rust.", "Great!", "How do I read a file?")
    python = key("I'm learning Python.", "Great!", "How do I read a file?")
    assert not judge(python, rust, similarity=1.0).hit
    assert judge(
        rust, key("I'm learning Rust.", "Great!", "How do I read a file?"), similarity=1.0
    ).hit
    # A follow-up never matches the same words asked without that context.
    assert not judge(key("How do I read a file?"), rust, similarity=1.0).hit


def test_semantic_context_mode_accepts_reworded_earlier_turns_and_guards_them() -> None:
    semantic = MatchPolicy(context_mode=ContextMode.SEMANTIC)
    stored = key("I'm learning Rust.", "Great!", "How do I read a file?")
    reworded = key("I have started learning Rust.", "Great!", "How do I read a file?")
    other_language = key("I have started learning Go.", "Great!", "How do I read a file?")
    assert judge(reworded, stored, similarity=1.0, context_similarity=0.95, policy=semantic).hit
    assert not judge(reworded, stored, similarity=1.0, context_similarity=0.6, policy=semantic).hit
    assert not judge(reworded, stored, similarity=1.0, context_similarity=None, policy=semantic).hit
    verdict = judge(
        other_language, stored, similarity=1.0, context_similarity=0.95, policy=semantic
    )
    assert not verdict.hit
    assert verdict.reason.startswith("context: programming language differs")


def test_select_hit_picks_the_best_accepted_candidate() -> None:
    asked = key("How do I enable dark mode in VS Code?")
    candidates = [
        (key("How do I disable dark mode in VS Code?"), 0.97, None),  # best score, rejected
        (key("How can I turn on dark mode in VS Code?"), 0.91, None),
        (key("How do I switch VS Code to dark mode?"), 0.88, None),
    ]
    best = select_hit(asked, candidates)
    assert best is not None
    index, verdict = best
    assert index == 1
    assert verdict.score == 0.91
    assert select_hit(asked, candidates[:1]) is None
