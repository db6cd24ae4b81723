"""The web chat page in a real headless Chromium against the running platform: sign in, chat
with streamed answers, stop a generation, rate an answer, Markdown rendered safely, the chat
list, signing out. A screenshot is saved under test-artifacts/."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from pymongo import MongoClient

from parley_devstack.platform import Platform
from tests.conftest import REPO, eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"
ARTIFACTS = REPO / "test-artifacts"
MARKDOWN = """## Boiling an egg

Put it in **boiling** water for `7` minutes:

- lower it gently
- cool it in *cold* water

```python
def boil(minutes: int) -> str:
    return "egg" * minutes
```

See [the guide](https://example.org/eggs). <img src=x onerror="window.__xss = 1">
<script>window.__xss = 2</script>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("Chromium is missing: `make install` installs it (apt package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: ConsoleMessage) -> None:
        # Refusals the test asks for (a wrong key, a server without bots or feedback) are
        # logged by the browser as failed resources; anything else is a problem.
        expected = ("status of 401", "status of 404")  # a wrong password, signed out
        if message.type == "error" and not any(e in message.text for e in expected):
            problems.append(f"console: {message.text}")

    page.on("console", console)
    yield page
    context.close()
    assert not problems, problems


def _assistant_messages(user: httpx.Client, chat_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = user.get(f"/chat/{chat_id}").json()["messages"]
    return [m for m in messages if m["role"] == "assistant"]


def test_web_chat(page: Page, platform: Platform, new_user: NewUser) -> None:
    email = f"browser-{secrets.token_hex(4)}@example.com"
    user = new_user("browser-user", email=email, password=PASSWORD)
    url = platform.gateway_url
    schema_paths = httpx.get(f"{url}/openapi.json").json()["paths"]

    # Sign in: a wrong password is refused, the right one opens the app.
    page.goto(url + "/")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#email", email)
    page.fill("#password", "not the password")
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_contain_text("Wrong e-mail address or password")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signin-button")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#chat-title")).to_have_text("New chat")
    expect(page.locator(".chat-item")).to_have_count(0)

    # Bot profiles where the server has them; no picker where it has not.
    bots = user.get("/bots")
    if bots.status_code == 200:
        listed = bots.json()
        count = len(listed if isinstance(listed, list) else listed["bots"])
        expect(page.locator("#bot-picker")).to_be_visible()
        expect(page.locator("#bot-select option")).to_have_count(count)
    else:
        expect(page.locator("#bot-picker")).to_be_hidden()

    # A first message: streamed in, listed in the sidebar, stored.
    page.fill("#input", "Hello from a browser")
    page.press("#input", "Enter")
    answer = page.locator(".message.assistant").last
    expect(answer).not_to_have_class("message assistant streaming", timeout=30_000)
    expect(answer.locator(".bubble")).not_to_be_empty()
    expect(page.locator(".chat-item")).to_have_count(1)
    expect(page.locator(".chat-item.active .chat-open")).to_have_text("Hello from a browser")
    chat_id = page.locator(".chat-item").first.get_attribute("data-chat-id")
    assert chat_id
    stored = eventually(lambda: _assistant_messages(user, chat_id), what="the stored answer")

    # Thumbs up, where the server takes feedback; a clear word where it does not.
    thumbs_up = answer.locator(".rate-up")
    expect(thumbs_up).to_be_visible(timeout=10_000)
    assert answer.get_attribute("data-message-id") == stored[0]["message_id"]
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as rated:
        thumbs_up.click()
    if "/chat/{chat_id}/messages/{message_id}/feedback" in schema_paths:
        assert rated.value.ok, rated.value.text()
        expect(thumbs_up).to_have_attribute("aria-pressed", "true")
        expect(answer.locator(".rate-down")).to_have_attribute("aria-pressed", "false")
    else:
        assert rated.value.status == 404
        expect(page.locator("#status")).to_contain_text("not available")

    # A long answer, stopped half way: the text so far stays, and so it is stored.
    page.click(".options summary")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "2000")
    page.fill("#input", "Count to a million")
    page.press("#input", "Enter")
    long_answer = page.locator(".message.assistant").last
    expect(page.locator("#stop")).to_be_visible()
    expect(long_answer.locator(".bubble")).not_to_be_empty(timeout=30_000)
    page.click("#stop")
    expect(long_answer.locator(".note")).to_have_text("stopped", timeout=15_000)
    expect(page.locator("#send")).to_be_visible()

    def cancelled() -> dict[str, Any] | None:
        answers = _assistant_messages(user, chat_id)
        return answers[1] if len(answers) == 2 else None

    assert eventually(cancelled, what="the stopped answer")["finish_reason"] == "cancelled"

    # Markdown, from a stored answer: rendered, and nothing in it runs.
    with MongoClient(platform.session.env["MONGODB_URI"]) as mongo:
        database = platform.session.env.get("MONGODB_DATABASE", "parley")
        mongo[database]["messages"].update_one(
            {"_id": stored[0]["message_id"]}, {"$set": {"content": MARKDOWN}}
        )
    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    page.click(".chat-item .chat-open")
    first = page.locator(".message.assistant").first.locator(".bubble")
    expect(first.locator("h2")).to_have_text("Boiling an egg")
    expect(first.locator("strong")).to_have_text("boiling")
    expect(first.locator("em")).to_have_text("cold")
    expect(first.locator("li")).to_have_count(2)
    expect(first.locator("p code")).to_have_text("7")
    expect(first.locator("pre code.language-python")).to_have_text(
        'def boil(minutes: int) -> str:\n    return "egg" * minutes'
    )
    expect(first.locator("a")).to_have_attribute("href", "https://example.org/eggs")
    expect(first.locator("a")).to_have_attribute("rel", "noopener noreferrer")
    expect(first.locator("img, script")).to_have_count(0)
    expect(first).to_contain_text("<script>window.__xss = 2</script>")
    assert page.evaluate("window.__xss") is None
    expect(page.locator(".message.assistant").last.locator(".note")).to_have_text("stopped")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-chat.png"), full_page=True)

    # The session (an HttpOnly cookie the page cannot read) lasts across a reload, until
    # signing out; nothing secret is kept in the page's storage.
    assert page.evaluate("document.cookie") == ""
    assert set(page.evaluate("Object.keys(localStorage)")) <= {"parley.botId"}
    page.reload()
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator(".chat-item")).to_have_count(1)
    page.click(".chat-item .chat-delete")
    expect(page.locator(".chat-item")).to_have_count(0)
    assert user.get(f"/chat/{chat_id}").status_code == 404
    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    page.reload()
    expect(page.locator("#signin")).to_be_visible()
    # The page loads nothing from elsewhere.
    assert (ARTIFACTS / "web-chat.png").stat().st_size > 10_000


def test_password_sign_in(page: Page, platform: Platform, new_user: NewUser) -> None:
    """The sign-in form: the session is an HttpOnly cookie the page cannot read; signing out
    ends it on the server too."""
    email = f"form-{secrets.token_hex(4)}@example.com"
    new_user("form-user", email=email, password=PASSWORD)
    page.goto(platform.gateway_url + "/")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/auth/sign-in")) as signed_in:
        page.click("#signin-button")
    assert signed_in.value.status == 200
    expect(page.locator("#app")).to_be_visible()
    assert page.evaluate("document.cookie") == ""
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["parley_session"]["httpOnly"] is True
    assert cookies["parley_session"]["sameSite"] == "Lax"
    token = cookies["parley_session"]["value"]
    assert token not in page.content()
    assert token not in page.evaluate("JSON.stringify(localStorage)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "password-signed-in.png"), full_page=True)
    assert (ARTIFACTS / "password-signed-in.png").stat().st_size > 5_000
    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    revoked = httpx.get(f"{platform.gateway_url}/auth/me", cookies={"parley_session": token})
    assert revoked.status_code == 401


def test_page_is_public_and_locked_down(platform: Platform) -> None:
    index = httpx.get(platform.gateway_url + "/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    policy = index.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    for name, kind in (
        ("app.js", "text/javascript"),
        ("markdown.js", "text/javascript"),
        ("style.css", "text/css"),
    ):
        asset = httpx.get(f"{platform.gateway_url}/static/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(kind)
        assert "http://" not in asset.text.replace("http://example", "")
    for missing in ("nope.js", "..%2Fapp.py", ".hidden.css", "app.py"):
        assert httpx.get(f"{platform.gateway_url}/static/{missing}").status_code == 404


def test_web_chat_on_the_real_model(page: Page, real_platform: Platform) -> None:
    """SmolLM2 behind the page: a question, a streamed answer that makes sense, a screenshot."""
    with httpx.Client(
        base_url=real_platform.gateway_url,
        headers={"Authorization": f"Bearer {real_platform.admin_api_key}"},
        timeout=30,
    ) as admin:
        email = f"real-{secrets.token_hex(4)}@example.com"
        body = {"name": "browser-real", "email": email, "password": PASSWORD}
        assert admin.post("/admin/users", json=body).status_code == 201
    page.goto(real_platform.gateway_url + "/")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signin-button")
    expect(page.locator("#app")).to_be_visible()
    page.click(".options summary")
    page.fill("#temperature", "0")

    page.fill("#input", "What is the capital of France?")
    page.press("#input", "Enter")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_class("message assistant streaming", timeout=30_000)
    expect(answer).not_to_have_class("message assistant streaming", timeout=120_000)
    expect(answer.locator(".bubble")).to_contain_text("Paris")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-chat-real-model.png"), full_page=True)
    assert (ARTIFACTS / "web-chat-real-model.png").stat().st_size > 10_000
