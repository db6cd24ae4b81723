"""Scope and privacy against the real Qdrant: whose entries a lookup can ever see."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from parley.v1 import types_pb2

if TYPE_CHECKING:
    from conftest import CacheService

pytestmark = pytest.mark.integration

QUESTION = "How do I undo the last git commit?"
REWORDED = "How can I revert my most recent commit in git?"
ANSWER = "Run `git reset --soft HEAD~1`."


async def test_one_user_never_receives_another_users_answer(cache: CacheService) -> None:
    await cache.ask("alice", QUESTION, answer=ANSWER)
    # Bob asks exactly the same thing, and a paraphrase: both miss under the default scope.
    for text in (QUESTION, REWORDED):
        seen = await cache.lookup("bob", text)
        assert not seen.hit
        assert seen.answer == ""
        assert seen.key.scope_key == "user:bob"
    # Nor does an explicit per-user scope, or a tenant scope request without a tenant, share it.
    for scope in (types_pb2.CACHE_SCOPE_USER, types_pb2.CACHE_SCOPE_TENANT):
        assert not (await cache.lookup("bob", QUESTION, scope=scope)).hit
    # Alice herself gets it back, with its score.
    again = await cache.lookup("alice", REWORDED)
    assert again.hit
    assert again.answer == ANSWER
    assert 0.79 <= again.score < 1.0


async def test_isolation_holds_among_many_users_with_the_same_question(
    cache: CacheService,
) -> None:
    users = [f"user-{n}" for n in range(6)]
    for user in users:
        await cache.ask(user, QUESTION, answer=f"answer for {user}")
    for user in users:
        seen = await cache.lookup(user, QUESTION)
        assert seen.hit
        assert seen.answer == f"answer for {user}"


async def test_tenant_scope_shares_within_the_tenant_only(cache: CacheService) -> None:
    tenant = {"scope": types_pb2.CACHE_SCOPE_TENANT}
    missed = await cache.lookup("alice", QUESTION, tenant_id="acme", **tenant)
    assert missed.key.scope_key == "tenant:acme"
    await cache.answer(missed, ANSWER, user_id="alice")

    colleague = await cache.lookup("carol", REWORDED, tenant_id="acme", **tenant)
    assert colleague.hit
    assert colleague.answer == ANSWER
    assert not (await cache.lookup("dave", QUESTION, tenant_id="globex", **tenant)).hit
    # The same user under a per-user profile does not see the tenant's entry either.
    assert not (await cache.lookup("carol", QUESTION, tenant_id="acme")).hit


async def test_global_scope_shares_with_everyone(cache: CacheService) -> None:
    shared = {"scope": types_pb2.CACHE_SCOPE_GLOBAL, "bot_id": "faq"}
    await cache.ask("alice", QUESTION, answer=ANSWER, **shared)
    hit = await cache.lookup("zoe", REWORDED, **shared)
    assert hit.hit
    assert hit.answer == ANSWER
    # Another bot profile never does, even a global one.
    assert not (await cache.lookup("zoe", QUESTION, scope=types_pb2.CACHE_SCOPE_GLOBAL)).hit


async def test_personal_data_in_prior_turns_keeps_a_shared_chat_per_user(
    cache: CacheService,
) -> None:
    shared = {"scope": types_pb2.CACHE_SCOPE_GLOBAL, "bot_id": "faq"}
    chat = ("My name is Ana Lopez, I work at Initech.", "Nice to meet you, Ana!")
    missed = await cache.lookup("ana", *chat, "Write a short bio for me.", **shared)
    assert missed.key.scope_key == "user:ana"
    await cache.answer(missed, "Ana Lopez works at Initech.", user_id="ana")

    # Someone else with the very same conversation gets nothing of Ana's ...
    other = await cache.lookup("eve", *chat, "Write a short bio for me.", **shared)
    assert not other.hit
    assert other.key.scope_key == "user:eve"
    # ... while Ana's own chat still benefits from the cache.
    own = await cache.lookup("ana", *chat, "Write a short bio for me.", **shared)
    assert own.hit
    assert own.answer == "Ana Lopez works at Initech."


async def test_a_shared_lookup_with_personal_data_neither_serves_nor_stores_shared(
    cache: CacheService,
) -> None:
    shared = {"scope": types_pb2.CACHE_SCOPE_GLOBAL, "bot_id": "faq"}
    question = "Can you send the invoice to ana.lopez@example.com?"
    # Even an entry that is already shared (written before the rule, or by a bug) is not served
    # to a question carrying personal data: the lookup runs in the asker's own scope.
    planted = await cache.lookup("eve", "Can you send the invoice to my accountant?", **shared)
    assert planted.key.scope_key == "global"
    await cache.answer(planted, "Sure, sent.", user_id="eve")

    missed = await cache.lookup("ana", question, **shared)
    assert not missed.hit
    assert missed.key.scope_key == "user:ana"
    await cache.answer(missed, "Sent to ana.lopez@example.com.", user_id="ana")
    assert not (await cache.lookup("bob", question, **shared)).hit
    assert (await cache.lookup("ana", question, **shared)).hit


async def test_an_answer_with_personal_data_is_stored_per_user(cache: CacheService) -> None:
    shared = {"scope": types_pb2.CACHE_SCOPE_GLOBAL, "bot_id": "faq"}
    missed = await cache.lookup("ana", "Who should I contact about refunds?", **shared)
    assert missed.key.scope_key == "global"
    await cache.answer(
        missed, "Write to Jo at jo.smith@example.com or +1 415 555 0132.", user_id="ana"
    )
    assert not (await cache.lookup("bob", "Who should I contact about refunds?", **shared)).hit
    assert (await cache.lookup("ana", "Who should I contact about refunds?", **shared)).hit


async def test_disabled_scope_and_anonymous_lookups_never_touch_the_cache(
    cache: CacheService,
) -> None:
    await cache.ask("alice", QUESTION, answer=ANSWER)
    disabled = await cache.lookup("alice", QUESTION, scope=types_pb2.CACHE_SCOPE_DISABLED)
    assert not disabled.hit
    assert not disabled.HasField("key")  # nothing would be stored either
    anonymous = await cache.lookup("", QUESTION)
    assert not anonymous.hit
    assert not anonymous.HasField("key")
