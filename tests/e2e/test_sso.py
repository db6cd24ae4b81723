"""Single sign-on against a real OpenID Provider (node-oidc-provider, installed from npm by
scripts/install-oidc-provider.sh and started here): the authorization code flow with PKCE
through a gateway replica; users created or matched from the ID token's claims, groups mapped
to roles; a forged or replayed `state`, a tampered ID token, a replayed nonce and an ID token of
another key refused."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import secrets
import subprocess
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from playwright.sync_api import Browser, Page, expect

from parley_devstack.platform import Platform
from parley_devstack.ports import pick_free_ports
from parley_gateway.errors import ApiError
from parley_gateway.oidc import OidcClient, group_roles
from tests.conftest import REPO
from tests.e2e.extra_gateways import extra_gateways, gateway_url
from tests.e2e.test_web_page import ARTIFACTS, browser

__all__ = ["browser"]  # the web page tests' Chromium, used here too

pytestmark = pytest.mark.e2e

SECRET = secrets.token_urlsafe(24)
ROLES = "parley-admins=admin,readers=viewer"
ACCOUNTS = {
    "alice": {
        "email": "alice@sso.example",
        "email_verified": True,
        "name": "Alice",
        "groups": ["parley-admins", "readers"],
    },
    "bob": {"email": "bob@sso.example", "email_verified": True, "name": "Bob", "groups": []},
    "carol": {
        "email": "carol@sso.example",
        "email_verified": False,
        "name": "Carol",
        "groups": ["readers"],
    },
}


@dataclass
class Provider:
    issuer: str
    process: subprocess.Popen[bytes]


def _start_provider(port: int, redirect_uris: list[str], log: Path) -> Provider:
    folder = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-oidc-provider.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout.strip()
    env = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "OIDC_PROVIDER_MODULE": f"{folder}/node_modules/oidc-provider/lib/index.js",
        "PORT": str(port),
        "OIDC_CLIENT_SECRET": SECRET,
        "OIDC_REDIRECT_URI": ",".join(redirect_uris),
        "OIDC_ACCOUNTS": json.dumps(ACCOUNTS),
    }
    process = subprocess.Popen(
        ["node", str(REPO / "tests" / "oidc" / "provider.mjs")],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    issuer = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200:
                return Provider(issuer, process)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the OpenID Provider did not start: {log.read_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sso(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(gateway URL, issuer): a gateway replica signing in through the provider."""
    run_dir = tmp_path_factory.mktemp("sso")
    provider_port, gateway_port = pick_free_ports(2)
    gateway = f"http://127.0.0.1:{gateway_port}"
    provider = _start_provider(
        provider_port,
        [f"{gateway}/auth/oidc/callback", "http://127.0.0.1:9/direct"],
        run_dir / "provider.log",
    )
    env = {
        "OIDC_ISSUER": provider.issuer,
        "OIDC_CLIENT_ID": "parley",
        "OIDC_CLIENT_SECRET": SECRET,
        "OIDC_REDIRECT_URI": f"{gateway}/auth/oidc/callback",
        "OIDC_GROUP_ROLES": ROLES,
    }
    try:
        with extra_gateways(platform, run_dir, 1, env, ports=[gateway_port]) as gateways:
            yield gateway_url(gateways[0]), provider.issuer
    finally:
        provider.process.terminate()
        provider.process.wait(timeout=10)


_FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', re.DOTALL)
_INPUT = re.compile(r"<input([^>]*)>")
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')


def _through_provider(client: httpx.Client, url: str, login: str, *, stop_at: str) -> str:
    """Follow redirects and the provider's login and consent forms until a redirect to a URL
    starting with `stop_at`, which is returned (not followed)."""
    response = client.get(url)
    for _ in range(20):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if location.startswith(stop_at):
                return location
            response = client.get(location)
            continue
        assert response.status_code == 200, response.text
        match = _FORM.search(response.text)
        assert match, response.text
        fields = {}
        for attributes in _INPUT.findall(match[2]):
            named = dict(_ATTRIBUTE.findall(attributes))
            if "name" in named:
                fields[named["name"]] = html.unescape(named.get("value", ""))
        if "login" in fields:
            fields |= {"login": login, "password": "any"}
        response = client.post(urljoin(str(response.url), html.unescape(match[1])), data=fields)
    raise AssertionError("the provider's pages did not lead back")


def _sso_sign_in(gateway: str, login: str, next_: str = "/chats") -> tuple[httpx.Client, str]:
    """A browser signed in through the provider as `login`, and the callback URL it used."""
    browser = httpx.Client(timeout=60)
    started = browser.get(f"{gateway}/auth/oidc/login", params={"next": next_})
    assert started.status_code == 302, started.text
    query = parse_qs(urlsplit(started.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["state"]
    assert query["nonce"]
    assert query["code_challenge"]
    callback = _through_provider(
        browser, started.headers["location"], login, stop_at=f"{gateway}/auth/oidc/callback"
    )
    landed = browser.get(callback)
    assert landed.status_code == 303, landed.text
    assert landed.headers["location"] == next_
    assert "parley_session" in landed.cookies
    return browser, callback


def _me(gateway: str, browser: httpx.Client) -> dict[str, str]:
    me = browser.get(f"{gateway}/auth/me")
    assert me.status_code == 200, me.text
    body: dict[str, str] = me.json()
    return body


def test_sso_creates_the_user_maps_groups_and_matches_them_again(
    sso: tuple[str, str], admin: httpx.Client
) -> None:
    gateway, issuer = sso
    browser, _ = _sso_sign_in(gateway, "alice")
    first = _me(gateway, browser)
    assert first["email"] == "alice@sso.example"
    assert browser.get(f"{gateway}/chats").status_code == 200
    again, _ = _sso_sign_in(gateway, "alice", next_="/")
    assert _me(gateway, again)["user_id"] == first["user_id"]
    events = admin.get("/admin/audit", params={"user_id": first["user_id"]}).json()["events"]
    assert [e["type"] for e in events] == ["sign_in", "sign_in", "user_created"]
    assert events[0]["detail"] == f"oidc {issuer}"
    assert first["role"] == "admin"  # the highest of its groups' roles: admin and viewer


def test_a_verified_address_links_an_existing_account(
    sso: tuple[str, str], new_user: object, admin: httpx.Client
) -> None:
    gateway, _ = sso
    existing = admin.post(
        "/admin/users",
        json={"name": "Bob", "email": "bob@sso.example", "password": "bobs long password"},
    ).json()
    browser, _ = _sso_sign_in(gateway, "bob")
    assert _me(gateway, browser)["user_id"] == existing["user_id"]


def test_an_unverified_address_does_not_take_over_an_account(
    sso: tuple[str, str], admin: httpx.Client
) -> None:
    gateway, _ = sso
    victim = admin.post(
        "/admin/users",
        json={"name": "C", "email": "carol@sso.example", "password": "carols long password"},
    ).json()
    browser, _ = _sso_sign_in(gateway, "carol")
    me = _me(gateway, browser)
    assert me["user_id"] != victim["user_id"]
    assert me["email"] == ""
    # readers=viewer: a read-only user.
    assert (
        browser.post(f"{gateway}/bots", json={"name": "x"}, headers={"Origin": gateway}).status_code
        == 403
    )


def test_a_replayed_or_forged_state_is_refused(sso: tuple[str, str]) -> None:
    gateway, _ = sso
    browser, callback = _sso_sign_in(gateway, "bob")
    replayed = browser.get(callback)  # the sign-in's cookie is gone: state used once
    assert replayed.status_code == 400, replayed.text
    # A callback whose state is not the one this browser started with.
    victim = httpx.Client(timeout=60)
    started = victim.get(f"{gateway}/auth/oidc/login")
    assert started.status_code == 302
    forged = urlsplit(callback)._replace(
        query=re.sub(r"state=[^&]+", "state=forged", urlsplit(callback).query)
    )
    refused = victim.get(forged.geturl())
    assert refused.status_code == 400, refused.text
    assert "state" in refused.json()["error"]["message"]
    no_flow = httpx.get(f"{gateway}/auth/oidc/callback", params={"state": "x", "code": "y"})
    assert no_flow.status_code == 400
    off_site = httpx.get(f"{gateway}/auth/oidc/login", params={"next": "https://evil.example"})
    assert off_site.status_code == 400


def _id_token_for(issuer: str, login: str) -> tuple[str, str]:
    """A genuine ID token from the provider (code flow with PKCE), and its nonce."""
    nonce, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(__import__("hashlib").sha256(verifier.encode()).digest())
        .decode()
        .rstrip("=")
    )
    with httpx.Client(timeout=60) as client:
        redirect = "http://127.0.0.1:9/direct"
        authorize = httpx.URL(
            f"{issuer}/auth",
            params={
                "client_id": "parley",
                "response_type": "code",
                "scope": "openid email groups",
                "redirect_uri": redirect,
                "state": "s",
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        back = _through_provider(client, str(authorize), login, stop_at=redirect)
        code = parse_qs(urlsplit(back).query)["code"][0]
        tokens = client.post(
            f"{issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "code_verifier": verifier,
            },
            auth=("parley", SECRET),
        )
        assert tokens.status_code == 200, tokens.text
        return str(tokens.json()["id_token"]), nonce


def _run(check: Coroutine[Any, Any, None]) -> None:
    """Run an async check in a thread of its own: the browser tests' Playwright holds this
    thread's event loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, check).result()


def test_tampered_replayed_and_foreign_id_tokens_are_refused(sso: tuple[str, str]) -> None:
    _run(_tampered_replayed_and_foreign(sso[1]))


async def _tampered_replayed_and_foreign(issuer: str) -> None:
    token, nonce = _id_token_for(issuer, "alice")
    client = OidcClient(
        issuer=issuer,
        client_id="parley",
        client_secret=SECRET,
        redirect_uri="http://127.0.0.1:9/direct",
        scopes="openid",
        groups_claim="groups",
        roles=group_roles(ROLES),
    )
    try:
        claims = await client.check_id_token(token, nonce=nonce)
        assert claims["sub"] == "alice"

        header, payload, signature = token.split(".")
        claims_json = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims_json["email"] = "mallory@evil.example"
        tampered_payload = base64.urlsafe_b64encode(json.dumps(claims_json).encode()).decode()
        tampered = f"{header}.{tampered_payload.rstrip('=')}.{signature}"
        with pytest.raises(ApiError, match="signature"):
            await client.check_id_token(tampered, nonce=nonce)

        with pytest.raises(ApiError, match="not valid here"):
            await client.check_id_token(token, nonce="another sign-in's nonce")

        own_key = RSAKey.generate_key(2048, parameters={"kid": "not-the-providers"})
        foreign = jwt.encode({"alg": "RS256", "kid": "not-the-providers"}, claims, own_key)
        with pytest.raises(ApiError, match="signature"):
            await client.check_id_token(foreign, nonce=nonce)
    finally:
        await client.aclose()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors  # (the provider's own pages ask for web fonts: offline here)


def test_sso_in_a_browser(page: Page, sso: tuple[str, str]) -> None:
    """The page's single sign-on button, the provider's own login and consent pages in
    headless Chromium, and back in the app with an HttpOnly session cookie."""
    gateway, _ = sso
    page.goto(gateway + "/")
    expect(page.locator("#sso-link")).to_be_visible()
    page.click("#sso-link")
    page.fill("input[name=login]", "alice")
    page.fill("input[name=password]", "any")
    page.click("button[type=submit]")
    page.click("button[type=submit]")  # consent
    expect(page.locator("#app")).to_be_visible(timeout=30_000)
    # The provider's groups made Alice an admin.
    expect(page.locator("#whoami")).to_have_text("Signed in as Alice (alice@sso.example), admin")
    assert page.evaluate("document.cookie") == ""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sso-signed-in.png"), full_page=True)
    assert (ARTIFACTS / "sso-signed-in.png").stat().st_size > 5_000


def test_a_rotated_signing_key_is_fetched_again(tmp_path: Path) -> None:
    """The provider restarts with a new signing key: a token of the new key makes the client
    read the JWKS again, once, and check it; the old key's tokens no longer check."""
    _run(_rotated(tmp_path))


async def _rotated(tmp_path: Path) -> None:
    (port,) = pick_free_ports(1)
    redirect = "http://127.0.0.1:9/direct"
    old = _start_provider(port, [redirect], tmp_path / "old.log")
    client = OidcClient(
        issuer=old.issuer,
        client_id="parley",
        client_secret=SECRET,
        redirect_uri=redirect,
        scopes="openid",
        groups_claim="groups",
        roles={},
    )
    try:
        old_token, old_nonce = _id_token_for(old.issuer, "bob")
        assert (await client.check_id_token(old_token, nonce=old_nonce))["sub"] == "bob"
        old.process.terminate()
        old.process.wait(timeout=10)
        new = _start_provider(port, [redirect], tmp_path / "new.log")
        try:
            token, nonce = _id_token_for(new.issuer, "bob")
            assert (await client.check_id_token(token, nonce=nonce))["sub"] == "bob"
            with pytest.raises(ApiError, match="signature"):
                await client.check_id_token(old_token, nonce=old_nonce)
        finally:
            new.process.terminate()
            new.process.wait(timeout=10)
    finally:
        await client.aclose()
        if old.process.poll() is None:
            old.process.kill()
