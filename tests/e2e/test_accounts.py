"""Accounts and browser sessions on the running platform: sign-up by mode, password sign-in with
a hardened cookie, CSRF, open redirects, session fixation, sign-out (here and everywhere), idle
and absolute expiry, password change and reset, and lock-out after repeated failures shared by
two gateway replicas."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, connect_ws
from pymongo import MongoClient

from parley_devstack.platform import Platform
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
PASSWORD = "correct horse battery staple"
COOKIE = "parley_session"
MAX_FAILURES = 3
IDLE_S = 3
ABSOLUTE_S = 7


@pytest.fixture(scope="module")
def open_replicas(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Two replicas with open sign-up and a lock-out after MAX_FAILURES failures."""
    env = {
        "SIGN_UP_MODE": "open",
        "SIGN_IN_MAX_FAILURES_PER_ACCOUNT": str(MAX_FAILURES),
        "SIGN_IN_MAX_FAILURES_PER_ADDRESS": "0",
    }
    with extra_gateways(platform, tmp_path_factory.mktemp("accounts"), 2, env) as gateways:
        yield [gateway_url(g) for g in gateways]


@pytest.fixture(scope="module")
def short_lived(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A replica with closed sign-up and sessions of a few seconds."""
    env = {
        "SIGN_UP_MODE": "closed",
        "SESSION_IDLE_TIMEOUT_S": str(IDLE_S),
        "SESSION_ABSOLUTE_TIMEOUT_S": str(ABSOLUTE_S),
    }
    with extra_gateways(platform, tmp_path_factory.mktemp("short"), 1, env) as gateways:
        yield gateway_url(gateways[0])


def _email() -> str:
    return f"u-{secrets.token_hex(5)}@example.com"


def _browser(url: str) -> httpx.Client:
    """A client that behaves as the site's own page: cookies kept, its own Origin sent."""
    return httpx.Client(base_url=url, headers={"Origin": url}, timeout=60)


def _sign_up(url: str, email: str, **extra: str) -> httpx.Client:
    browser = _browser(url)
    response = browser.post("/auth/sign-up", json={"email": email, "password": PASSWORD, **extra})
    assert response.status_code == 201, response.text
    return browser


def _sign_in(browser: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return browser.post("/auth/sign-in", json={"email": email, "password": password})


def _set_cookie(response: httpx.Response) -> SimpleCookie:
    cookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie


def test_sign_up_signs_in_with_a_hardened_cookie(
    open_replicas: list[str], platform: Platform
) -> None:
    email = _email()
    browser = _browser(open_replicas[0])
    response = browser.post(
        "/auth/sign-up", json={"email": email.upper(), "password": PASSWORD, "name": "Ann"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["user"]["email"] == email
    morsel = _set_cookie(response)[COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP here
    assert int(morsel["max-age"]) > 0
    token = morsel.value
    assert token not in response.text
    assert response.headers["cache-control"] == "no-store"
    me = browser.get("/auth/me")
    assert me.status_code == 200
    assert me.json()["email"] == email
    assert browser.get("/chats").status_code == 200  # the cookie works for the API
    # Only the token's hash is stored.
    with MongoClient(platform.session.env["MONGODB_URI"]) as mongo:
        stored = mongo.get_default_database("parley")["browser_sessions"]
        assert stored.count_documents({"_id": token}) == 0
        assert stored.count_documents({"user_id": me.json()["user_id"]}) == 1

    # Behind a TLS proxy (X-Forwarded-Proto from a trusted address) the cookie is Secure.
    over_tls = httpx.post(
        f"{open_replicas[0]}/auth/sign-in",
        json={"email": email, "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert over_tls.status_code == 200, over_tls.text
    assert _set_cookie(over_tls)[COOKIE]["secure"] is True

    again = httpx.post(
        f"{open_replicas[1]}/auth/sign-up", json={"email": email, "password": PASSWORD}
    )
    assert again.status_code == 409, again.text
    assert "exists" in again.json()["error"]["message"]
    weak = httpx.post(
        f"{open_replicas[0]}/auth/sign-up", json={"email": _email(), "password": "short"}
    )
    assert weak.status_code == 422, weak.text
    not_email = httpx.post(
        f"{open_replicas[0]}/auth/sign-up", json={"email": "not-an-address", "password": PASSWORD}
    )
    assert not_email.status_code == 422, not_email.text
    assert "e-mail" in not_email.json()["error"]["message"]


def test_sign_up_by_invite_or_closed(
    platform: Platform, admin: httpx.Client, short_lived: str
) -> None:
    url = platform.gateway_url  # SIGN_UP_MODE defaults to invite
    body = {"email": _email(), "password": PASSWORD}
    refused = httpx.post(f"{url}/auth/sign-up", json=body)
    assert refused.status_code == 403, refused.text
    assert "invite" in refused.json()["error"]["message"]
    wrong = httpx.post(f"{url}/auth/sign-up", json={**body, "invite_code": "pi-nonsense"})
    assert wrong.status_code == 403, wrong.text
    invite = admin.post("/admin/invites", json={"tenant_id": "acme"})
    assert invite.status_code == 201, invite.text
    code = invite.json()["invite_code"]
    joined = httpx.post(f"{url}/auth/sign-up", json={**body, "invite_code": code})
    assert joined.status_code == 201, joined.text
    assert joined.json()["user"]["tenant_id"] == "acme"
    reused = httpx.post(
        f"{url}/auth/sign-up", json={"email": _email(), "password": PASSWORD, "invite_code": code}
    )
    assert reused.status_code == 403, reused.text
    closed = httpx.post(
        f"{short_lived}/auth/sign-up", json={"email": _email(), "password": PASSWORD}
    )
    assert closed.status_code == 403, closed.text
    assert "closed" in closed.json()["error"]["message"]


def test_wrong_password_and_unknown_account_look_the_same(open_replicas: list[str]) -> None:
    email = _email()
    _sign_up(open_replicas[0], email).close()
    wrong = _sign_in(_browser(open_replicas[0]), email, "not the password")
    unknown = _sign_in(_browser(open_replicas[0]), _email())
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "set-cookie" not in wrong.headers


def test_session_fixation_is_prevented(open_replicas: list[str]) -> None:
    email = _email()
    _sign_up(open_replicas[0], email).close()
    # A session id chosen by an attacker and planted in the browser is never adopted.
    browser = _browser(open_replicas[0])
    browser.cookies.set(COOKIE, "ps-planted-by-an-attacker")
    signed_in = _sign_in(browser, email)
    assert signed_in.status_code == 200, signed_in.text
    first = _set_cookie(signed_in)[COOKIE].value
    assert first != "ps-planted-by-an-attacker"
    planted = httpx.get(
        f"{open_replicas[0]}/auth/me", cookies={COOKIE: "ps-planted-by-an-attacker"}
    )
    assert planted.status_code == 401
    # Signing in again rotates the session: the one before ends.
    again = _sign_in(browser, email)
    second = _set_cookie(again)[COOKIE].value
    assert second != first
    assert httpx.get(f"{open_replicas[0]}/auth/me", cookies={COOKIE: first}).status_code == 401
    assert httpx.get(f"{open_replicas[1]}/auth/me", cookies={COOKIE: second}).status_code == 200


def test_csrf_needs_this_sites_origin(open_replicas: list[str], new_user: NewUser) -> None:
    url = open_replicas[0]
    email = _email()
    browser = _sign_up(url, email)
    token = browser.cookies[COOKIE]
    change = {"current_password": "not the password", "new_password": "another long password"}

    def post(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"{url}/auth/password", json=change, headers=headers, cookies={COOKIE: token}
        )

    for headers in (
        {"Origin": "https://evil.example"},
        {},
        {"Referer": "https://evil.example/x"},
        {"Origin": "null"},
    ):
        refused = post(headers)
        assert refused.status_code == 403, (headers, refused.text)
        assert refused.json()["error"]["type"] == "csrf_refused"
    # From the site itself the request goes through (and fails on its merits).
    for headers in ({"Origin": url}, {"Referer": f"{url}/"}):
        allowed = post(headers)
        assert allowed.status_code == 403, allowed.text
        assert allowed.json()["error"]["type"] == "permission_error"
    chat = httpx.post(
        f"{url}/chat",
        json={"message": "hi"},
        headers={"Origin": "https://evil.example"},
        cookies={COOKIE: token},
    )
    assert chat.status_code == 403
    assert chat.json()["error"]["type"] == "csrf_refused"
    # Reads need no Origin; API keys are not cookies, so no CSRF check applies to them.
    assert httpx.get(f"{url}/chats", cookies={COOKIE: token}).status_code == 200
    user = new_user("keyed")
    keyed = httpx.post(
        f"{url}/chat",
        json={},
        headers={"Origin": "https://evil.example", "Authorization": user.headers["Authorization"]},
    )
    assert keyed.status_code == 422, keyed.text  # checked, found wanting a message
    # Login CSRF: another site's page cannot sign a browser in.
    forced = httpx.post(
        f"{url}/auth/sign-in",
        json={"email": email, "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert forced.status_code == 403, forced.text


def test_websocket_with_the_cookie_checks_the_origin(open_replicas: list[str]) -> None:
    url = open_replicas[0]
    browser = _sign_up(url, _email())
    token = browser.cookies[COOKIE]
    ws_url = url.replace("http://", "ws://") + "/chat/ws"
    cookie = f"{COOKIE}={token}"
    with httpx.Client() as client:
        with connect_ws(ws_url, client, headers={"Origin": url, "Cookie": cookie}) as ws:
            assert ws.receive_json()["type"] == "ready"
        with connect_ws(
            ws_url, client, headers={"Origin": "https://evil.example", "Cookie": cookie}
        ) as ws:
            assert ws.receive_json()["error"]["type"] == "csrf_refused"
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/path",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/ok\r\nLocation: https://evil.example",
    ],
)
def test_next_off_site_is_refused(open_replicas: list[str], target: str) -> None:
    email = _email()
    _sign_up(open_replicas[0], email).close()
    response = httpx.post(
        f"{open_replicas[0]}/auth/sign-in",
        json={"email": email, "password": PASSWORD, "next": target},
    )
    assert response.status_code == 400, response.text
    assert "next must be a path on this site" in response.json()["error"]["message"]
    assert "set-cookie" not in response.headers


def test_next_on_site_is_kept(open_replicas: list[str]) -> None:
    email = _email()
    _sign_up(open_replicas[0], email).close()
    response = httpx.post(
        f"{open_replicas[0]}/auth/sign-in",
        json={"email": email, "password": PASSWORD, "next": "/chats?limit=5"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["next"] == "/chats?limit=5"


def test_sign_out_here_and_everywhere(open_replicas: list[str]) -> None:
    email = _email()
    laptop = _sign_up(open_replicas[0], email)
    phone, tablet = _browser(open_replicas[1]), _browser(open_replicas[0])
    assert _sign_in(phone, email).status_code == 200
    assert _sign_in(tablet, email).status_code == 200
    laptop_token = laptop.cookies[COOKIE]

    out = laptop.post("/auth/sign-out")
    assert out.status_code == 204
    assert COOKIE not in laptop.cookies  # the cookie is deleted
    # Revoked at once, on every replica (sessions are not cached).
    for url in open_replicas:
        revoked = httpx.get(f"{url}/auth/me", cookies={COOKIE: laptop_token})
        assert revoked.status_code == 401, revoked.text
    assert phone.get("/auth/me").status_code == 200

    everywhere = phone.post("/auth/sign-out", json={"everywhere": True})
    assert everywhere.status_code == 204
    assert tablet.get("/auth/me").status_code == 401
    assert tablet.get("/chats").status_code == 401


def test_password_change_and_admin_reset(open_replicas: list[str], admin: httpx.Client) -> None:
    email, new_password = _email(), "a brand new passphrase"
    here = _sign_up(open_replicas[0], email)
    elsewhere = _browser(open_replicas[1])
    assert _sign_in(elsewhere, email).status_code == 200
    wrong = here.post(
        "/auth/password", json={"current_password": "nope", "new_password": new_password}
    )
    assert wrong.status_code == 403, wrong.text
    short = here.post("/auth/password", json={"current_password": PASSWORD, "new_password": "x"})
    assert short.status_code == 422, short.text
    changed = here.post(
        "/auth/password", json={"current_password": PASSWORD, "new_password": new_password}
    )
    assert changed.status_code == 204, changed.text
    assert here.get("/auth/me").status_code == 200  # this session stays
    assert elsewhere.get("/auth/me").status_code == 401  # every other one ends
    assert _sign_in(_browser(open_replicas[0]), email).status_code == 401
    assert _sign_in(_browser(open_replicas[0]), email, new_password).status_code == 200

    user_id = here.get("/auth/me").json()["user_id"]
    reset = admin.post(f"/admin/users/{user_id}/password", json={"new_password": PASSWORD})
    assert reset.status_code == 204, reset.text
    assert here.get("/auth/me").status_code == 401  # a reset ends every session
    assert _sign_in(_browser(open_replicas[1]), email).status_code == 200
    missing = admin.post("/admin/users/nobody/password", json={"new_password": PASSWORD})
    assert missing.status_code == 404, missing.text


def test_brute_force_locks_the_account_on_every_replica(open_replicas: list[str]) -> None:
    email = _email()
    _sign_up(open_replicas[0], email).close()
    for i in range(MAX_FAILURES):
        failed = _sign_in(_browser(open_replicas[i % 2]), email, f"guess {i}")
        assert failed.status_code == 401, failed.text
    for url in open_replicas:
        locked = _sign_in(_browser(url), email)  # the right password, too late
        assert locked.status_code == 429, locked.text
        assert "too many failed sign-ins for this account" in locked.json()["error"]["message"]
        assert 1 <= int(locked.headers["Retry-After"]) <= 900
        assert "set-cookie" not in locked.headers


def test_concurrent_guesses_cannot_pass_the_limit(open_replicas: list[str]) -> None:
    email = _email()
    _sign_up(open_replicas[0], email).close()

    def guess(i: int) -> int:
        return _sign_in(_browser(open_replicas[i % 2]), email, f"guess {i}").status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(guess, range(20)))
    assert codes.count(401) <= MAX_FAILURES, codes
    assert codes.count(429) >= 20 - MAX_FAILURES, codes


def test_sessions_end_when_idle_and_at_their_absolute_end(
    short_lived: str, new_user: NewUser
) -> None:
    email = _email()
    new_user("short", email=email, password=PASSWORD)
    idle = _browser(short_lived)
    assert _sign_in(idle, email).status_code == 200
    time.sleep(IDLE_S + 1)
    assert idle.get("/auth/me").status_code == 401

    busy = _browser(short_lived)
    assert _sign_in(busy, email).status_code == 200
    started = time.monotonic()
    while time.monotonic() - started < ABSOLUTE_S - 2:
        assert busy.get("/auth/me").status_code == 200  # each use moves the idle end on
        time.sleep(1)
    time.sleep(3)
    assert busy.get("/auth/me").status_code == 401
