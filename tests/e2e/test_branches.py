"""Branches through the public API of the running platform: regenerate an answer (answered by
a worker, stored beside the first one), edit a question (a new branch the next turn follows),
list siblings, choose a branch, delete one; and ids that do not belong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]


def _path(client: httpx.Client, chat_id: str, count: int) -> list[dict[str, Any]]:
    """The chat's active branch once it holds `count` messages (answers are stored a moment
    after they are returned)."""

    def stored() -> list[dict[str, Any]] | None:
        got = client.get(f"/chat/{chat_id}")
        assert got.status_code == 200, got.text
        messages: list[dict[str, Any]] = got.json()["messages"]
        return messages if len(messages) == count and messages[-1]["role"] == "assistant" else None

    return eventually(stored, what=f"{count} messages on the active branch")


def test_regenerate_edit_choose_and_delete(new_user: NewUser) -> None:
    alice = new_user("alice")
    started = alice.post("/chat", json={"message": "Name a colour.", "max_tokens": 6})
    assert started.status_code == 200, started.text
    chat_id = started.json()["chat_id"]
    first_answer = _path(alice, chat_id, 2)[1]

    again = alice.post(
        f"/chat/{chat_id}/messages/{first_answer['message_id']}/regenerate",
        json={"max_tokens": 6, "request_id": "regen-1"},
    )
    assert again.status_code == 200, again.text
    assert again.json()["answer"]["cached"] is False
    messages = _path(alice, chat_id, 2)
    assert messages[1]["message_id"] != first_answer["message_id"]
    assert messages[1]["parent_id"] == messages[0]["message_id"]
    assert (messages[1]["sibling_count"], messages[1]["sibling_index"]) == (2, 1)
    # the same request id again: the same answer, no third sibling
    retried = alice.post(
        f"/chat/{chat_id}/messages/{first_answer['message_id']}/regenerate",
        json={"max_tokens": 6, "request_id": "regen-1"},
    )
    assert retried.status_code == 200, retried.text
    assert retried.json()["answer"]["content"] == again.json()["answer"]["content"]
    siblings = alice.get(f"/chat/{chat_id}/messages/{first_answer['message_id']}/siblings")
    assert siblings.status_code == 200, siblings.text
    assert [s["message_id"] for s in siblings.json()["siblings"]] == [
        first_answer["message_id"],
        messages[1]["message_id"],
    ]
    assert siblings.json()["active_message_id"] == messages[1]["message_id"]

    edited = alice.post(
        f"/chat/{chat_id}/messages/{messages[0]['message_id']}/edit",
        json={"message": "Name a fruit.", "max_tokens": 6},
    )
    assert edited.status_code == 200, edited.text
    branch = _path(alice, chat_id, 2)
    assert branch[0]["content"] == "Name a fruit."
    assert (branch[0]["sibling_count"], branch[0]["parent_id"]) == (2, None)
    follow = alice.post(
        f"/chat/{chat_id}/completion", json={"message": "Another?", "max_tokens": 4}
    )
    assert follow.status_code == 200, follow.text
    assert _path(alice, chat_id, 4)[0]["content"] == "Name a fruit."

    chosen = alice.post(f"/chat/{chat_id}/branch", json={"message_id": messages[0]["message_id"]})
    assert chosen.status_code == 200, chosen.text
    assert [m["message_id"] for m in chosen.json()["messages"]] == [
        messages[0]["message_id"],
        messages[1]["message_id"],
    ]

    deleted = alice.delete(f"/chat/{chat_id}/messages/{branch[0]['message_id']}")
    assert deleted.status_code == 200, deleted.text
    assert len(deleted.json()["messages"]) == 2
    assert (
        alice.get(f"/chat/{chat_id}/messages/{branch[0]['message_id']}/siblings").status_code == 404
    )


def test_ids_that_do_not_belong(new_user: NewUser) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    one = alice.post("/chat", json={"message": "First chat", "max_tokens": 4}).json()
    other = alice.post("/chat", json={"message": "Second chat", "max_tokens": 4}).json()
    question = one["message_id"]
    elsewhere = other["message_id"]

    # a message of another chat of the same user
    response = alice.post(
        f"/chat/{one['chat_id']}/messages/{elsewhere}/edit", json={"message": "x"}
    )
    assert response.status_code == 422, response.text
    assert "no message" in response.json()["error"]["message"]
    response = alice.post(f"/chat/{one['chat_id']}/branch", json={"message_id": elsewhere})
    assert response.status_code == 404, response.text
    # a question is edited, not regenerated; the only first message is not deleted
    response = alice.post(f"/chat/{one['chat_id']}/messages/{question}/regenerate")
    assert response.status_code == 422, response.text
    assert "edit" in response.json()["error"]["message"]
    response = alice.delete(f"/chat/{one['chat_id']}/messages/{question}")
    assert response.status_code == 422, response.text
    assert "delete the chat" in response.json()["error"]["message"]
    # not an id at all, and another user's chat
    assert alice.post(f"/chat/{one['chat_id']}/messages/nope/regenerate").status_code == 404
    response = bob.post(f"/chat/{one['chat_id']}/messages/{question}/edit", json={"message": "x"})
    assert response.status_code == 404, response.text
    assert bob.get(f"/chat/{one['chat_id']}/messages/{question}/siblings").status_code == 404
