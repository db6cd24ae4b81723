"""Search through the public API of the running platform: your own chats only, highlighted,
paged, and refusals for a query that cannot be searched."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]


def test_search_finds_your_own_chats_only(new_user: NewUser) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    mine = alice.post("/chat", json={"message": "Pelicans nest near lakes", "max_tokens": 4})
    assert mine.status_code == 200, mine.text
    theirs = bob.post("/chat", json={"message": "Pelicans are bob's secret", "max_tokens": 4})
    assert theirs.status_code == 200, theirs.text

    def hits() -> list[dict[str, object]] | None:
        got = alice.get("/chats/search", params={"q": "pelican"})
        assert got.status_code == 200, got.text
        found: list[dict[str, object]] = got.json()["hits"]
        return found if any(h["message_id"] for h in found) else None

    found = eventually(hits, what="alice's hits")
    assert {h["chat_id"] for h in found} == {mine.json()["chat_id"]}
    message = next(h for h in found if h["message_id"] == mine.json()["message_id"])
    (start, end), *_ = message["highlights"]  # type: ignore[misc]
    assert str(message["snippet"])[start:end] == "Pelicans"

    page = alice.get("/chats/search", params={"q": "pelican", "limit": 1})
    assert page.status_code == 200, page.text
    assert len(page.json()["hits"]) == 1
    assert page.json()["next_cursor"] == "1"
    rest = alice.get("/chats/search", params={"q": "pelican", "limit": 1, "cursor": "1"})
    assert rest.status_code == 200, rest.text
    assert rest.json()["hits"][0] != page.json()["hits"][0]

    assert bob.get("/chats/search", params={"q": "lakes"}).json()["hits"] == []
    for params in ({"q": "!!!"}, {"q": ""}, {"q": "a", "cursor": "x"}, {"q": "a", "limit": 0}):
        refused = alice.get("/chats/search", params=params)
        assert refused.status_code == 422, (params, refused.text)
        assert refused.json()["error"]["message"]
