"""Tenant administration by a tenant's admin (the admin role), on the running platform: the
user list, creating users, password resets, disabling and enabling, a user's keys and the audit
log, each of their own tenant only (another tenant's user is a 404), refused to members and
viewers (403), and in the audit log. And account deletion by the user: chats, keys, sessions
and the account go, the browser is signed out, the audit log keeps no personal data."""

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
    return f"t-{secrets.token_hex(5)}@example.com"


def _tenant() -> str:
    return f"tenant-{secrets.token_hex(4)}"


def _create(client: httpx.Client, **body: str) -> dict[str, str]:
    created = client.post("/admin/users", json={"name": "someone", **body})
    assert created.status_code == 201, created.text
    user: dict[str, str] = created.json()
    return user


def _key_of(admin: httpx.Client, platform: Platform, user_id: str) -> httpx.Client:
    key = admin.post(f"/admin/users/{user_id}/keys", json={"name": "k"}).json()["api_key"]
    return httpx.Client(
        base_url=platform.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def _browser(platform: Platform) -> httpx.Client:
    url = platform.gateway_url
    return httpx.Client(base_url=url, headers={"Origin": url}, timeout=60)


def _sign_in(platform: Platform, email: str, password: str = PASSWORD) -> httpx.Client:
    browser = _browser(platform)
    signed_in = browser.post("/auth/sign-in", json={"email": email, "password": password})
    assert signed_in.status_code == 200, signed_in.text
    return browser


@pytest.fixture
def tenants(platform: Platform, admin: httpx.Client) -> tuple[httpx.Client, str, str]:
    """A tenant admin's client (signed in with a password), their tenant and another one."""
    mine, theirs = _tenant(), _tenant()
    email = _email()
    _create(admin, email=email, password=PASSWORD, tenant_id=mine, role="admin")
    return _sign_in(platform, email), mine, theirs


def test_a_tenant_admin_manages_their_own_tenants_users(
    platform: Platform, admin: httpx.Client, tenants: tuple[httpx.Client, str, str]
) -> None:
    tadmin, mine, theirs = tenants
    # Created in the admin's own tenant (the body's tenant_id may be empty, not another).
    email = _email()
    member = _create(tadmin, name="Ada", email=email, password=PASSWORD)
    assert (member["tenant_id"], member["role"], member["disabled"]) == (mine, "member", False)
    other_tenant = tadmin.post("/admin/users", json={"name": "x", "tenant_id": theirs})
    assert other_tenant.status_code == 403, other_tenant.text
    stranger = _create(admin, name="Stranger", tenant_id=theirs)

    listed = tadmin.get("/admin/users").json()
    assert listed["total"] == 2
    assert [u["user_id"] for u in listed["users"]][1:] == [member["user_id"]]  # oldest first
    assert stranger["user_id"] not in {u["user_id"] for u in listed["users"]}
    assert [
        u["user_id"] for u in tadmin.get("/admin/users", params={"q": "ad"}).json()["users"]
    ] == [member["user_id"]]
    page = tadmin.get("/admin/users", params={"role": "admin", "limit": 1}).json()
    assert (page["total"], len(page["users"]), page["users"][0]["role"]) == (1, 1, "admin")
    assert tadmin.get("/admin/users", params={"tenant_id": theirs}).status_code == 404
    # The admin key sees every tenant, or one.
    everyone = admin.get("/admin/users", params={"tenant_id": theirs}).json()
    assert [u["user_id"] for u in everyone["users"]] == [stranger["user_id"]]
    assert admin.get("/admin/users", params={"state": "sleeping"}).status_code == 422

    # Another tenant's user is not found, whatever the operation.
    sid = stranger["user_id"]
    for method, path, body in (
        ("POST", f"/admin/users/{sid}/password", {"new_password": "another long password"}),
        ("POST", f"/admin/users/{sid}/disable", None),
        ("POST", f"/admin/users/{sid}/enable", None),
        ("GET", f"/admin/users/{sid}/keys", None),
        ("POST", f"/admin/users/{sid}/keys", {"name": "x"}),
        ("PUT", f"/admin/users/{sid}/role", {"role": "viewer"}),
    ):
        refused = tadmin.request(method, path, json=body)
        assert refused.status_code == 404, (method, path, refused.text)

    # A password reset ends the user's sessions; the new password signs in.
    user_browser = _sign_in(platform, email)
    reset = tadmin.post(
        f"/admin/users/{member['user_id']}/password", json={"new_password": "a brand new password"}
    )
    assert reset.status_code == 204, reset.text
    assert user_browser.get("/auth/me").status_code == 401
    _sign_in(platform, email, "a brand new password")

    # Keys: listed and revoked by the tenant admin.
    user_key = _key_of(admin, platform, member["user_id"])
    assert user_key.get("/chats").status_code == 200
    keys = tadmin.get(f"/admin/users/{member['user_id']}/keys").json()["keys"]
    assert len(keys) == 1
    revoked = tadmin.delete(f"/admin/users/{member['user_id']}/keys/{keys[0]['key_id']}")
    assert revoked.status_code == 204, revoked.text
    assert tadmin.get(f"/admin/users/{member['user_id']}/keys").json()["keys"][0]["revoked_at"]
    foreign_key = _key_of(admin, platform, sid)
    listed_foreign = admin.get(f"/admin/users/{sid}/keys").json()["keys"]
    cross = tadmin.delete(f"/admin/users/{sid}/keys/{listed_foreign[0]['key_id']}")
    assert cross.status_code == 404, cross.text
    assert foreign_key.get("/chats").status_code == 200

    # Disabled: no sign-in, no key; enabled again: both work.
    second_key = _key_of(admin, platform, member["user_id"])
    disabled = tadmin.post(f"/admin/users/{member['user_id']}/disable")
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["disabled"] is True
    refused_sign_in = _browser(platform).post(
        "/auth/sign-in", json={"email": email, "password": "a brand new password"}
    )
    assert refused_sign_in.status_code == 403, refused_sign_in.text
    assert "disabled" in refused_sign_in.json()["error"]["message"]
    eventually(
        lambda: second_key.get("/chats").status_code == 401,
        what="the disabled user's key refused (after the gateway's key cache)",
    )
    assert [
        u["user_id"]
        for u in tadmin.get("/admin/users", params={"state": "disabled"}).json()["users"]
    ] == [member["user_id"]]
    assert tadmin.post(f"/admin/users/{member['user_id']}/enable").json()["disabled"] is False
    eventually(lambda: second_key.get("/chats").status_code == 200, what="the key works again")
    _sign_in(platform, email, "a brand new password")

    # The tenant's audit log: these events, with who made them, and none of the other tenant.
    events = tadmin.get("/admin/audit", params={"limit": 100}).json()["events"]
    types = {(e["type"], e["user_id"]) for e in events}
    mid = member["user_id"]
    for expected in (
        "user_created",
        "password_reset",
        "key_revoked",
        "user_disabled",
        "user_enabled",
    ):
        assert (expected, mid) in types, expected
    assert all(e["tenant_id"] == mine for e in events)
    assert sid not in {e["user_id"] for e in events}
    disabled_event = next(e for e in events if e["type"] == "user_disabled")
    assert "by " in disabled_event["detail"]
    assert any(
        e["user_id"] == sid
        for e in admin.get("/admin/audit", params={"limit": 100}).json()["events"]
    )


def test_members_and_viewers_are_refused_tenant_administration(
    platform: Platform, admin: httpx.Client
) -> None:
    tenant = _tenant()
    target = _create(admin, tenant_id=tenant)
    for role in ("member", "viewer"):
        user = _create(admin, tenant_id=tenant, role=role)
        client = _key_of(admin, platform, user["user_id"])
        for method, path, body in (
            ("GET", "/admin/users", None),
            ("POST", "/admin/users", {"name": "x"}),
            (
                "POST",
                f"/admin/users/{target['user_id']}/password",
                {"new_password": "long enough pw"},
            ),
            ("POST", f"/admin/users/{target['user_id']}/disable", None),
            ("GET", f"/admin/users/{target['user_id']}/keys", None),
            ("GET", "/admin/audit", None),
        ):
            refused = client.request(method, path, json=body)
            assert refused.status_code == 403, (role, method, path, refused.text)


def test_a_user_deletes_their_account(platform: Platform, admin: httpx.Client) -> None:
    email = _email()
    user = _create(admin, email=email, password=PASSWORD)
    browser = _sign_in(platform, email)
    other_browser = _sign_in(platform, email)
    key = _key_of(admin, platform, user["user_id"])
    chat = key.post("/chat", json={"message": "hi", "max_tokens": 1, "no_cache": True})
    assert chat.status_code == 200, chat.text
    chat_id = chat.json()["chat_id"]
    assert key.get(f"/chat/{chat_id}").status_code == 200

    # Confirmed with the password; a wrong one, or none, deletes nothing.
    wrong = browser.request("DELETE", "/account", json={"password": "not the password"})
    assert wrong.status_code == 403, wrong.text
    missing = browser.request("DELETE", "/account", json={})
    assert missing.status_code == 422, missing.text
    cross_site = browser.request(
        "DELETE",
        "/account",
        json={"password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403, cross_site.text
    assert key.get(f"/chat/{chat_id}").status_code == 200

    deleted = browser.request("DELETE", "/account", json={"password": PASSWORD})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"chats_deleted": 1, "keys_deleted": 1, "sessions_ended": 2}
    cookie = deleted.headers["set-cookie"]
    assert "Max-Age=0" in cookie or "expires=Thu, 01 Jan 1970" in cookie
    assert browser.get("/auth/me").status_code == 401
    assert other_browser.get("/auth/me").status_code == 401
    assert key.get("/chats").status_code == 401
    refused = _browser(platform).post("/auth/sign-in", json={"email": email, "password": PASSWORD})
    assert refused.status_code == 401
    assert admin.get(f"/admin/users/{user['user_id']}/keys").status_code == 404
    # The e-mail address is free again, and the audit log has the deletion without it.
    _create(admin, email=email, password=PASSWORD)
    events = admin.get("/admin/audit", params={"user_id": user["user_id"], "limit": 100}).json()
    assert events["events"][0]["type"] == "account_deleted"
    assert all(e["email"] == "" and e["client_address"] == "" for e in events["events"])
    assert email not in str(events)


def test_an_account_without_a_password_is_deleted_with_a_confirmation(
    platform: Platform, admin: httpx.Client
) -> None:
    user = _create(admin)
    key = _key_of(admin, platform, user["user_id"])
    unconfirmed = key.request("DELETE", "/account", json={})
    assert unconfirmed.status_code == 422, unconfirmed.text
    assert "confirm" in unconfirmed.text
    deleted = key.request("DELETE", "/account", json={"confirm": True})
    assert deleted.status_code == 200, deleted.text
    assert key.get("/chats").status_code == 401
    assert admin.request("DELETE", "/account", json={"confirm": True}).status_code == 403
