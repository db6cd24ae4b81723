"""Roles per tenant (admin, member, viewer), users' own API keys, and the audit log of security
events, on the running platform."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import httpx
import pytest

from parley_devstack.platform import Platform
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
PASSWORD = "correct horse battery staple"


def _email() -> str:
    return f"r-{secrets.token_hex(5)}@example.com"


def _signed_in(platform: Platform, email: str, password: str = PASSWORD) -> httpx.Client:
    url = platform.gateway_url
    browser = httpx.Client(base_url=url, headers={"Origin": url}, timeout=60)
    signed_in = browser.post("/auth/sign-in", json={"email": email, "password": password})
    assert signed_in.status_code == 200, signed_in.text
    return browser


def _create(admin: httpx.Client, **body: str) -> dict[str, str]:
    created = admin.post("/admin/users", json={"name": "someone", **body})
    assert created.status_code == 201, created.text
    user: dict[str, str] = created.json()
    return user


def _key_of(admin: httpx.Client, user_id: str) -> dict[str, str]:
    return {
        "Authorization": "Bearer "
        + admin.post(f"/admin/users/{user_id}/keys", json={}).json()["api_key"]
    }


def test_users_create_list_and_revoke_their_own_keys(
    platform: Platform, admin: httpx.Client
) -> None:
    email = _email()
    _create(admin, email=email, password=PASSWORD)
    browser = _signed_in(platform, email)
    created = browser.post("/keys", json={"name": "laptop script"})
    assert created.status_code == 201, created.text
    key = created.json()
    bearer = {"Authorization": f"Bearer {key['api_key']}"}
    assert httpx.get(f"{platform.gateway_url}/chats", headers=bearer).status_code == 200
    listed = browser.get("/keys").json()["keys"]
    assert [(k["key_id"], k["name"], k["revoked_at"]) for k in listed] == [
        (key["key_id"], "laptop script", None)
    ]
    assert key["api_key"] not in browser.get("/keys").text

    other = _create(admin)
    foreign = httpx.delete(
        f"{platform.gateway_url}/keys/{key['key_id']}", headers=_key_of(admin, other["user_id"])
    )
    assert foreign.status_code == 404, foreign.text

    assert browser.delete(f"/keys/{key['key_id']}").status_code == 204
    assert browser.get("/keys").json()["keys"][0]["revoked_at"] is not None
    eventually(
        lambda: httpx.get(f"{platform.gateway_url}/chats", headers=bearer).status_code == 401,
        what="the revoked key refused (after the gateway's key cache)",
    )


def test_a_viewer_reads_but_does_not_write(platform: Platform, admin: httpx.Client) -> None:
    viewer = _create(admin, role="viewer")
    headers = _key_of(admin, viewer["user_id"])
    url = platform.gateway_url
    assert httpx.get(f"{url}/chats", headers=headers).status_code == 200
    for path, body in (("/chat", {"message": "hi"}), ("/bots", {"name": "b"})):
        refused = httpx.post(f"{url}{path}", json=body, headers=headers)
        assert refused.status_code == 403, refused.text
        assert "read-only" in refused.json()["error"]["message"]
    openai = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    assert openai.status_code == 403, openai.text
    # Their own keys are theirs to manage.
    assert httpx.post(f"{url}/keys", json={}, headers=headers).status_code == 201


def test_roles_are_managed_per_tenant(platform: Platform, admin: httpx.Client) -> None:
    tenant = f"t-{secrets.token_hex(4)}"
    boss = _create(admin, tenant_id=tenant, role="admin")
    member = _create(admin, tenant_id=tenant)
    outsider = _create(admin, tenant_id="another")
    boss_key = _key_of(admin, boss["user_id"])
    member_key = _key_of(admin, member["user_id"])
    url = platform.gateway_url

    demoted = httpx.put(
        f"{url}/admin/users/{member['user_id']}/role", json={"role": "viewer"}, headers=boss_key
    )
    assert demoted.status_code == 200, demoted.text
    assert demoted.json()["role"] == "viewer"
    eventually(
        lambda: (
            httpx.post(f"{url}/bots", json={"name": "b"}, headers=member_key).status_code == 403
        ),
        what="the new viewer refused a write (after the gateway's key cache)",
    )
    not_theirs = httpx.put(
        f"{url}/admin/users/{outsider['user_id']}/role", json={"role": "viewer"}, headers=boss_key
    )
    assert not_theirs.status_code == 404, not_theirs.text
    by_member = httpx.put(
        f"{url}/admin/users/{boss['user_id']}/role",
        json={"role": "viewer"},
        headers=_key_of(admin, outsider["user_id"]),
    )
    assert by_member.status_code == 403, by_member.text
    bad = admin.put(f"/admin/users/{member['user_id']}/role", json={"role": "owner"})
    assert bad.status_code == 422, bad.text
    assert (
        admin.put(f"/admin/users/{outsider['user_id']}/role", json={"role": "admin"}).json()["role"]
        == "admin"
    )


def test_the_audit_log_records_security_events(platform: Platform, admin: httpx.Client) -> None:
    email = _email()
    user = _create(admin, email=email, password=PASSWORD)
    url = platform.gateway_url
    failed = httpx.post(f"{url}/auth/sign-in", json={"email": email, "password": "wrong one"})
    assert failed.status_code == 401
    browser = _signed_in(platform, email)
    key = browser.post("/keys", json={"name": "k"}).json()
    assert browser.delete(f"/keys/{key['key_id']}").status_code == 204
    admin.put(f"/admin/users/{user['user_id']}/role", json={"role": "viewer"})
    assert browser.post("/auth/sign-out").status_code == 204

    events = admin.get("/admin/audit", params={"user_id": user["user_id"]}).json()["events"]
    types = [e["type"] for e in events]
    assert types == [
        "sign_out",
        "role_changed",
        "key_revoked",
        "key_created",
        "sign_in",
        "sign_in_failed",
        "user_created",
    ], types
    assert events[0]["at"] >= events[-1]["at"]
    assert events[5]["email"] == email
    assert events[5]["client_address"] == "127.0.0.1"
    assert events[5]["detail"] == "wrong password"

    only_failures = admin.get(
        "/admin/audit", params={"user_id": user["user_id"], "type": "sign_in_failed"}
    ).json()["events"]
    assert [e["event_id"] for e in only_failures] == [events[5]["event_id"]]
    first = admin.get("/admin/audit", params={"user_id": user["user_id"], "limit": 4}).json()
    rest = admin.get(
        "/admin/audit",
        params={"user_id": user["user_id"], "limit": 4, "cursor": first["next_cursor"]},
    ).json()
    paged = [e["event_id"] for e in first["events"] + rest["events"]]
    assert paged == [e["event_id"] for e in events]

    assert browser.get("/admin/audit").status_code == 401  # signed out
    as_user = httpx.get(f"{url}/admin/audit", headers=_key_of(admin, user["user_id"]))
    assert as_user.status_code == 403, as_user.text
    assert admin.get("/admin/audit", params={"cursor": "not-a-cursor"}).status_code == 422
