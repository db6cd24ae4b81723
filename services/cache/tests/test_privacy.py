"""The personal-data rules: what keeps a chat's answers out of shared cache scopes."""

from __future__ import annotations

import time

import pytest

from parley_cache.privacy import find_personal_data


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("You can reach me at ana.lopez@example.com", "email"),
        ("Mail jan+news@mail.example.co.uk please", "email"),
        ("Call me on +44 20 7946 0958 tomorrow", "phone number"),
        ("My number: (415) 555-0132", "phone number"),
        ("it's 415.555.0132", "phone number"),
        ("ring 0171 2345678", "phone number"),
        ("Pay with 4111 1111 1111 1111", "card number"),
        ("card 5500-0000-0000-0004 expires soon", "card number"),
        ("Send it to DE89 3704 0044 0532 0130 00", "iban"),
        ("GB29NWBK60161331926819 is the account", "iban"),
        ("SSN 123-45-6789", "id number"),
        ("my customer number 123456789", "id number"),
        ("I live at 221B Baker Street", "address"),
        ("Ship it to 1600 Pennsylvania Ave", "address"),
        ("deliver to 12 oak street", "address"),
        ("Hauptstraße 5, Berlin", "address"),
        ("Springfield, IL 62704", "address"),
        ("My name is Ana Lopez.", "self-identification"),
        ("my full name is ana lopez", "self-identification"),
        ("Hi, I'm Ana Lopez and I need a CV", "self-identification"),
        ("Call me Ana.", "self-identification"),
        ("my password is hunter2", "self-identification"),
        ("My date of birth is 3 May 1990", "self-identification"),
        ("my email: someone at somewhere", "self-identification"),
        ("I was born in 1990 in Porto", "self-identification"),
        ("I live in Lyon, what's the weather like?", "self-identification"),
        ("my key is sk-proj-abcdefghijklmnopqrstuvwx", "credential"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123", "credential"),
        ("AKIAIOSFODNN7EXAMPLE", "credential"),
        ("-----BEGIN RSA PRIVATE KEY-----", "credential"),
    ],
)
def test_finds_personal_data(text: str, kind: str) -> None:
    assert kind in find_personal_data([text]).kinds


@pytest.mark.parametrize(
    "text",
    [
        # Generic questions, the ones a shared cache is for, must stay shareable.
        "How do I reset my password?",
        "My account is locked, what do I do?",
        "my password is not working",
        "How do I change my email address?",
        "How do I reverse a list in Python?",
        "How many grams are in 2 cups of flour?",
        "What year was 1984 published?",
        "Convert 2024-05-12 to ISO week format",
        "What is 1 000 000 divided by 3?",
        "Is an M2 8GB enough for Docker?",
        "Print 10 lines in a row",
        "What's the fastest way to learn Go?",
        "Explain HTTP status 404 and 503",
        "What is the boiling point of water at 1 atm?",
        "Call the function twice",
    ],
)
def test_leaves_generic_questions_alone(text: str) -> None:
    assert not find_personal_data([text]), find_personal_data([text]).kinds


def test_checksums_tell_cards_and_ibans_from_other_numbers() -> None:
    # Same shapes, wrong check digits: not a card, not an IBAN (still a long number, though).
    assert "card number" not in find_personal_data(["4111 1111 1111 1112"]).kinds
    assert "iban" not in find_personal_data(["DE88 3704 0044 0532 0130 00"]).kinds


def test_looks_at_every_turn() -> None:
    turns = ["What's a good name for a cat?", "Maybe Luna.", "My name is Ana Lopez.", "Thanks!"]
    assert find_personal_data(turns).kinds == {"self-identification"}
    assert not find_personal_data(turns[:2])
    assert not find_personal_data([])


@pytest.mark.parametrize("text", ["a" * 32_000, "1" * 32_000, "a." * 16_000, "x@" * 16_000])
def test_time_stays_linear_on_long_hostile_messages(text: str) -> None:
    # A pattern scanning for "local@domain" from every position took 37 s on 32k digits.
    started = time.perf_counter()
    find_personal_data([text])
    assert time.perf_counter() - started < 2.0
