"""Export and deletion of a user's chats, and the admin's usage figures, through the public API
of the running platform."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]


def test_export_then_delete_your_chats(new_user: NewUser, admin: httpx.Client) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    started = alice.post("/chat", json={"message": "Remember the fjords", "max_tokens": 4})
    assert started.status_code == 200, started.text
    chat_id = started.json()["chat_id"]
    again = alice.post(
        f"/chat/{chat_id}/messages/{started.json()['message_id']}/edit",
        json={"message": "Remember the glaciers", "max_tokens": 4},
    )
    assert again.status_code == 200, again.text
    bob.post("/chat", json={"message": "Bob's own", "max_tokens": 4})

    def exported() -> dict[str, Any] | None:
        got = alice.get("/chats/export")
        assert got.status_code == 200, got.text
        assert got.headers["content-disposition"].startswith("attachment")
        document: dict[str, Any] = got.json()
        return document if len(document["chats"][0]["messages"]) == 4 else None

    document = eventually(exported, what="both branches answered")
    assert [c["chat_id"] for c in document["chats"]] == [chat_id]
    questions = [m["content"] for m in document["chats"][0]["messages"] if m["role"] == "user"]
    assert questions == ["Remember the fjords", "Remember the glaciers"]
    assert "Bob" not in str(document)

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    usage = admin.get("/usage", params={"since": f"{today}T00:00:00Z"})
    assert usage.status_code == 200, usage.text
    assert sum(r["turns"] for r in usage.json()["rows"] if r["day"] == today) >= 2
    assert alice.get("/usage").status_code in (401, 403)
    bad = admin.get(
        "/usage", params={"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    )
    assert bad.status_code == 422, bad.text

    deleted = alice.delete("/chats")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"chats_deleted": 1}
    assert alice.get(f"/chat/{chat_id}").status_code == 404
    assert alice.get("/chats/export").json()["chats"] == []
    assert len(bob.get("/chats").json()["chats"]) == 1
