"""The web chat page in a real headless Chromium against the running platform: sign in, chat
with streamed answers, stop a generation, rate an answer, Markdown (tables, highlighted code with
a copy button, math) rendered safely, edits, regenerations and the arrows between branches,
search, bot profiles, attachments, dark mode, a phone-sized screen, an axe-core accessibility
check, the chat list, signing out. Screenshots are saved under test-artifacts/."""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from pymongo import MongoClient

from parley_devstack.platform import Platform
from tests.conftest import REPO, eventually
from tests.e2e.test_attachments import vision_platform

pytestmark = pytest.mark.e2e
__all__ = ["vision_platform"]  # the attachments tests' platform with a vision model

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
        # a wrong password, signed out; a refused avatar; a refused attachment
        expected = (
            "status of 400",
            "status of 401",
            "status of 404",
            "status of 422",
            "status of 413",
            "status of 415",
        )
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
    assert set(page.evaluate("Object.keys(localStorage)")) <= {"parley.botId", "parley.theme"}
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
    expect(page.locator("#whoami")).to_have_text(f"Signed in as form-user ({email})")
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
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    for name, kind in (
        ("app.js", "text/javascript"),
        ("markdown.js", "text/javascript"),
        ("style.css", "text/css"),
    ):
        asset = httpx.get(f"{platform.gateway_url}/static/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(kind)
        assert "http://" not in asset.text.replace("http://example", "")
    # The libraries, vendored at build time, from this origin (KaTeX's fonts too).
    for name, kind in (
        ("markdown-it.min.js", "text/javascript"),
        ("purify.min.js", "text/javascript"),
        ("highlight.min.js", "text/javascript"),
        ("katex.min.js", "text/javascript"),
        ("katex.min.css", "text/css"),
        ("fonts/KaTeX_Main-Regular.woff2", "font/woff2"),
    ):
        asset = httpx.get(f"{platform.gateway_url}/static/vendor/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].startswith(kind)
        assert asset.headers["x-content-type-options"] == "nosniff"
    for missing in ("nope.js", "..%2Fapp.py", ".hidden.css", "app.py"):
        assert httpx.get(f"{platform.gateway_url}/static/{missing}").status_code == 404
    for missing in ("..%2Fapp.js", "fonts/..%2F..%2Fapp.js", "a/b/c.js", ".x.js", "fonts/.x.woff2"):
        assert httpx.get(f"{platform.gateway_url}/static/vendor/{missing}").status_code == 404


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


# --- conversations, search, bots, rendering, accessibility ------------------------------------

AXE = REPO / "web" / "node_modules" / "axe-core" / "axe.min.js"
RICH = r"""| planet | moons |
|---|---|
| Mars | 2 |
| Jupiter | 95 |

Euler: $e^{i\pi} + 1 = 0$, and

$$\int_0^1 x^2\,dx = \frac{1}{3}$$

```python
def square(x):
    return x * x
```

<img src=x onerror="window.__xss = 3"> [click](javascript:window.__xss=4) ![pixel](x" onerror="window.__xss=5)"""


def _sign_in(page: Page, url: str, email: str) -> None:
    page.goto(url + "/")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signin-button")
    expect(page.locator("#app")).to_be_visible()


def _signed_in_user(page: Page, platform: Platform, new_user: NewUser, name: str) -> httpx.Client:
    email = f"{name}-{secrets.token_hex(4)}@example.com"
    user = new_user(name, email=email, password=PASSWORD)
    _sign_in(page, platform.gateway_url, email)
    return user


def _ask(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")
    expect(page.locator("#send")).to_be_visible(timeout=30_000)
    expect(page.locator(".message.assistant").last).to_have_attribute("aria-busy", "false")


def _png(width: int = 4, height: int = 4) -> bytes:
    """A real PNG, red, made here (no image library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + b"\xff\0\0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations of the page as it is now. axe is evaluated
    through the browser's debugging protocol, so the page's policy (no inline script) stays."""
    if not AXE.is_file():
        pytest.fail("axe-core is missing: `make install` (scripts/build-web.sh) installs web/")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    found: list[dict[str, Any]] = page.evaluate(
        """async () => {
          const result = await axe.run(document, { resultTypes: ["violations"] });
          return result.violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ")),
          }));
        }"""
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


def _wait_path(user: httpx.Client, chat_id: str, count: int) -> list[dict[str, Any]]:
    def stored() -> list[dict[str, Any]] | None:
        messages: list[dict[str, Any]] = user.get(f"/chat/{chat_id}").json()["messages"]
        done = len(messages) == count and messages[-1]["role"] == "assistant"
        return messages if done else None

    return eventually(stored, what=f"{count} messages stored")


def test_web_edit_regenerate_branches_and_search(
    page: Page, platform: Platform, new_user: NewUser
) -> None:
    user = _signed_in_user(page, platform, new_user, "branches")
    _ask(page, "Tell me about penguins")
    chat_id = page.locator(".chat-item").first.get_attribute("data-chat-id")
    assert chat_id
    first = _wait_path(user, chat_id, 2)
    # The chat is read again once its answer is stored: the answer gets its actions.
    page.click(".chat-item .chat-open")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-message-id", first[1]["message_id"])
    expect(answer.locator(".branches")).to_have_count(0)

    # Regenerate: a second answer beside the first, and arrows between them.
    answer.locator(".regenerate").click()
    expect(page.locator(".message.assistant .branch-position")).to_have_text("2/2", timeout=30_000)
    regenerated = _wait_path(user, chat_id, 2)[1]
    assert regenerated["message_id"] != first[1]["message_id"]
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-message-id", regenerated["message_id"])
    expect(answer.locator(".branch-next")).to_be_disabled()
    answer.locator(".branch-prev").click()
    expect(page.locator(".message.assistant .branch-position")).to_have_text("1/2")
    expect(page.locator(".message.assistant").last).to_have_attribute(
        "data-message-id", first[1]["message_id"]
    )
    assert _wait_path(user, chat_id, 2)[1]["message_id"] == first[1]["message_id"]

    # Edit the question: a new branch from there, answered; arrows on the question.
    page.locator(".message.user .edit").click()
    page.fill(".edit-input", "Tell me about puffins")
    page.click(".edit-save")
    expect(page.locator(".message.user .branch-position")).to_have_text("2/2", timeout=30_000)
    expect(page.locator(".message.user .bubble")).to_have_text("Tell me about puffins")
    expect(page.locator(".message.assistant")).to_have_count(1)
    assert _wait_path(user, chat_id, 2)[0]["content"] == "Tell me about puffins"
    # Back to the first question: its branch, to its newest answer (the regenerated one).
    page.locator(".message.user .branch-prev").click()
    expect(page.locator(".message.user .bubble")).to_have_text("Tell me about penguins")
    expect(page.locator(".message.user .branch-position")).to_have_text("1/2")
    expect(page.locator(".message.assistant").last).to_have_attribute(
        "data-message-id", regenerated["message_id"]
    )
    expect(page.locator(".message.assistant .branch-position")).to_have_text("2/2")
    page.locator(".message.user .branch-next").click()
    expect(page.locator(".message.user .bubble")).to_have_text("Tell me about puffins")

    # Search: the hit's matching words marked, nothing in the text parsed; a click opens it.
    page.click("#new-chat")
    _ask(page, 'Zebras <img src=x onerror="window.__xss = 6"> gallop')
    page.fill("#search-input", "puffins")
    hit = page.locator(".search-hit .hit-open").first
    expect(hit).to_be_visible(timeout=10_000)
    expect(hit.locator("mark").first).to_have_text(re.compile("puffins", re.I))
    expect(page.locator("#chat-list")).to_be_hidden()
    hit.click()
    expect(page.locator(".message.user .bubble")).to_have_text("Tell me about puffins")
    assert page.evaluate("document.querySelector('.chat-item.active')?.dataset.chatId") == chat_id
    page.fill("#search-input", "zebras")
    # The title and the message match: both listed, as text.
    expect(page.locator(".search-hit")).to_have_count(2, timeout=10_000)
    expect(page.locator(".search-hit mark").first).to_have_text(re.compile("zebras", re.I))
    expect(page.locator(".search-results img")).to_have_count(0)
    expect(page.locator(".search-hit .hit-snippet").first).to_contain_text("<img src=x")
    page.fill("#search-input", "wombats")
    expect(page.locator("#search-empty")).to_be_visible(timeout=10_000)
    page.press("#search-input", "Escape")
    expect(page.locator("#chat-list")).to_be_visible()
    assert page.evaluate("window.__xss") is None
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-branches.png"), full_page=True)


def test_web_bot_profiles(page: Page, platform: Platform, new_user: NewUser) -> None:
    user = _signed_in_user(page, platform, new_user, "bots")
    expect(page.locator("#bot-picker")).to_be_visible()

    # Create one: name, an uploaded avatar image, description, prompt, sampling, history.
    page.click("#manage-bots")
    expect(page.locator("#bot-dialog")).to_be_visible()
    expect(page.locator("#bot-edit-select")).to_have_value("")
    page.fill("#bot-name", "Captain")
    png = _png()
    page.set_input_files(
        "#bot-avatar-file", files=[{"name": "captain.png", "mimeType": "image/png", "buffer": png}]
    )
    expect(page.locator("#bot-avatar-preview img")).to_have_attribute(
        "src", re.compile("^data:image/png")
    )
    page.fill("#bot-description", "Talks like a ship's captain.")
    page.fill("#bot-system", "Answer like a ship's captain.")
    page.fill("#bot-temperature", "0.3")
    page.fill("#bot-top-p", "0.9")
    page.select_option("#bot-history", "summarize")
    violations = _axe_violations(page)  # the dialog, open
    assert not violations, json.dumps(violations, indent=1)
    page.click("#bot-save")
    expect(page.locator("#bot-dialog")).to_be_hidden()
    mine = [b for b in user.get("/bots").json()["bots"] if b["name"] == "Captain"]
    assert len(mine) == 1
    bot = mine[0]
    assert bot["avatar"] == "data:image/png;base64," + base64.b64encode(png).decode()
    assert bot["description"] == "Talks like a ship's captain."
    assert bot["system_prompt"] == "Answer like a ship's captain."
    assert bot["sampling"]["temperature"] == pytest.approx(0.3)
    assert bot["sampling"]["top_p"] == pytest.approx(0.9)
    assert bot["history_policy"] == "summarize"
    # Chosen, with its avatar and description shown.
    expect(page.locator("#bot-select")).to_have_value(bot["bot_id"])
    expect(page.locator("#bot-card-avatar img")).to_have_attribute("src", bot["avatar"])
    expect(page.locator("#bot-card-description")).to_have_text("Talks like a ship's captain.")

    # A file that says PNG and is not one is refused by the server, which reads its bytes.
    page.click("#manage-bots")
    expect(page.locator("#bot-edit-select")).to_have_value(bot["bot_id"])
    fake = b"<html><script>alert(1)</script></html>"
    page.set_input_files(
        "#bot-avatar-file", files=[{"name": "evil.png", "mimeType": "image/png", "buffer": fake}]
    )
    page.click("#bot-save")
    expect(page.locator("#bot-error")).to_contain_text("avatar")
    expect(page.locator("#bot-error")).to_contain_text("not a PNG")
    # Edit it: an emoji instead, another description and history policy.
    page.fill("#bot-avatar-text", "\u2693")
    page.fill("#bot-description", "A calmer captain.")
    page.select_option("#bot-history", "full")
    page.click("#bot-save")
    expect(page.locator("#bot-dialog")).to_be_hidden()
    expect(page.locator("#bot-card-avatar")).to_have_text("\u2693")
    expect(page.locator("#bot-card-description")).to_have_text("A calmer captain.")
    edited = user.get(f"/bots/{bot['bot_id']}").json()
    assert (edited["avatar"], edited["history_policy"]) == ("\u2693", "full")
    assert edited["sampling"]["temperature"] == pytest.approx(0.3)

    # A chat with the chosen bot keeps it; the default can be chosen again for the next.
    _ask(page, "Ahoy")
    expect(page.locator("#chat-bot")).to_have_text("Captain")
    expect(page.locator("#chat-avatar")).to_have_text("\u2693")
    chat_id = page.locator(".chat-item").first.get_attribute("data-chat-id")
    assert user.get(f"/chat/{chat_id}").json()["bot_id"] == bot["bot_id"]
    expect(page.locator("#bot-select")).to_be_disabled()
    page.click("#new-chat")
    default = user.get("/bots").json()["bots"][0]
    page.select_option("#bot-select", default["bot_id"])
    expect(page.locator("#bot-card-description")).to_have_text(default["description"])
    # Deleting it from the dialog.
    page.select_option("#bot-select", bot["bot_id"])
    page.click("#manage-bots")
    page.click("#bot-delete")
    expect(page.locator("#bot-dialog")).to_be_hidden()
    expect(page.locator(f'#bot-select option[value="{bot["bot_id"]}"]')).to_have_count(0)
    assert user.get(f"/bots/{bot['bot_id']}").status_code == 404


def test_web_rendering_themes_phone_and_accessibility(
    page: Page, platform: Platform, new_user: NewUser
) -> None:
    user = _signed_in_user(page, platform, new_user, "render")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    ARTIFACTS.mkdir(exist_ok=True)
    violations = _axe_violations(page)
    assert not violations, json.dumps(violations, indent=1)
    started = user.post("/chat", json={"message": "Show me planets", "max_tokens": 4})
    assert started.status_code == 200, started.text
    chat_id = started.json()["chat_id"]
    answer_id = _wait_path(user, chat_id, 2)[1]["message_id"]
    with MongoClient(platform.session.env["MONGODB_URI"]) as mongo:
        database = platform.session.env.get("MONGODB_DATABASE", "parley")
        mongo[database]["messages"].update_one({"_id": answer_id}, {"$set": {"content": RICH}})
    page.reload()
    expect(page.locator(".chat-item")).to_have_count(1)
    page.click(".chat-item .chat-open")
    bubble = page.locator(".message.assistant .bubble").first
    # A table.
    expect(bubble.locator("table th")).to_have_text(["planet", "moons"])
    expect(bubble.locator("table tbody tr")).to_have_count(2)
    # Math by KaTeX, inline and displayed (its fonts from this origin).
    expect(bubble.locator(".math .katex")).to_have_count(2)
    expect(bubble.locator(".katex-display")).to_have_count(1)
    expect(bubble.locator(".katex-mathml annotation").first).to_have_text(r"e^{i\pi} + 1 = 0")
    # Code highlighted by highlight.js, with a copy button.
    code = bubble.locator("pre code.language-python")
    expect(code).to_have_text("def square(x):\n    return x * x")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    bubble.locator(".copy-code").click()
    expect(bubble.locator(".copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def square(x):\n    return x * x"
    # Nothing in it runs: raw HTML is text, javascript: links and broken images are dropped.
    expect(bubble).to_contain_text('<img src=x onerror="window.__xss = 3">')
    expect(bubble.locator("[onerror]")).to_have_count(0)
    for href in bubble.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))"):
        assert href is None or not href.lower().startswith("javascript"), href
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    violations = _axe_violations(page)
    assert not violations, json.dumps(violations, indent=1)
    page.screenshot(path=str(ARTIFACTS / "web-desktop.png"), full_page=True)

    # Dark mode: the system's by default, or the toggle's choice, kept across a reload.
    background = "getComputedStyle(document.documentElement).backgroundColor"
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(background)
    assert dark != light
    page.emulate_media(color_scheme="light")
    page.click("#theme-toggle")
    expect(page.locator("#theme-toggle")).to_have_text("Theme: dark")
    assert page.evaluate(background) == dark
    assert page.evaluate("localStorage.getItem('parley.theme')") == "dark"
    page.reload()
    expect(page.locator("#app")).to_be_visible()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate(background) == dark
    page.click(".chat-item .chat-open")
    expect(page.locator(".message.assistant .katex").first).to_be_visible()
    violations = _axe_violations(page)
    assert not violations, json.dumps(violations, indent=1)
    page.screenshot(path=str(ARTIFACTS / "web-desktop-dark.png"), full_page=True)
    page.click("#theme-toggle")  # light
    page.click("#theme-toggle")  # back to the system's
    expect(page.locator("#theme-toggle")).to_have_text("Theme: auto")
    assert page.evaluate("localStorage.getItem('parley.theme')") is None

    # A phone-sized screen: the chat list is behind the header's button.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#menu-toggle")).to_be_visible()
    expect(page.locator("#menu-toggle")).to_have_attribute("aria-expanded", "false")
    violations = _axe_violations(page)
    assert not violations, json.dumps(violations, indent=1)
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"), full_page=True)
    page.click("#menu-toggle")
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#menu-toggle")).to_have_attribute("aria-expanded", "true")
    page.screenshot(path=str(ARTIFACTS / "web-phone-chats.png"), full_page=True)
    page.click(".chat-item .chat-open")
    expect(page.locator("#sidebar")).to_be_hidden()
    box = page.locator(".message.assistant").first.bounding_box()
    assert box is not None
    assert box["x"] + box["width"] <= 390 + 1, box

    # The keyboard: the composer's controls in order, the answer announced when complete.
    page.set_viewport_size({"width": 1280, "height": 860})
    page.focus("#input")
    order = []
    for _ in range(3):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert order == ["SUMMARY", "attach-input", "send"], order
    assert page.get_attribute("#messages", "role") == "log"
    for name in ("web-desktop.png", "web-desktop-dark.png", "web-phone.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000


def test_web_page_without_its_libraries(page: Page, platform: Platform, new_user: NewUser) -> None:
    """A gateway whose static/vendor/ was not built still serves the page: it says so, and shows
    answers as plain text (never as HTML)."""
    page.route("**/static/vendor/**", lambda route: route.fulfill(status=404, body="not built"))
    user = _signed_in_user(page, platform, new_user, "unbuilt")
    expect(page.locator("#not-built")).to_be_visible()
    started = user.post("/chat", json={"message": "Plain, please", "max_tokens": 4})
    chat_id = started.json()["chat_id"]
    answer_id = _wait_path(user, chat_id, 2)[1]["message_id"]
    with MongoClient(platform.session.env["MONGODB_URI"]) as mongo:
        database = platform.session.env.get("MONGODB_DATABASE", "parley")
        mongo[database]["messages"].update_one({"_id": answer_id}, {"$set": {"content": MARKDOWN}})
    page.reload()
    page.click(".chat-item .chat-open")
    bubble = page.locator(".message.assistant .bubble").first
    expect(bubble).to_contain_text("## Boiling an egg")
    expect(bubble.locator("h2, img, script, a")).to_have_count(0)
    assert page.evaluate("window.__xss") is None


def _drop(page: Page, name: str, media_type: str, data: bytes) -> None:
    """Drop a file on the composer as a user dragging it from their desktop would."""
    transfer = page.evaluate_handle(
        """([name, type, bytes]) => {
          const transfer = new DataTransfer();
          transfer.items.add(new File([new Uint8Array(bytes)], name, { type }));
          return transfer;
        }""",
        [name, media_type, list(data)],
    )
    page.dispatch_event("#composer", "drop", {"dataTransfer": transfer})


def _question_with_files(user: httpx.Client, chat_id: str) -> dict[str, Any]:
    return eventually(
        lambda: next(
            (
                m
                for m in user.get(f"/chat/{chat_id}").json()["messages"]
                if m["role"] == "user" and m.get("attachments")
            ),
            None,
        ),
        what="the message with its attachments",
    )


def test_web_attachments(page: Page, platform: Platform, new_user: NewUser) -> None:
    """Files dropped on the composer are uploaded to the chat and go with the next message, shown
    on it as a download link; an image for a model without vision is refused when sent, and the
    question keeps its text and files; a file of a refused kind is refused when dropped."""
    user = _signed_in_user(page, platform, new_user, "files")
    _ask(page, "Here comes a file")
    chat_id = page.locator(".chat-item").first.get_attribute("data-chat-id")
    assert chat_id
    page.click(".chat-item .chat-open")

    _drop(page, "notes.md", "text/markdown", b"# Notes\n\nThe password is swordfish.\n")
    expect(page.locator(".attachment-chip")).to_contain_text("notes.md", timeout=10_000)
    expect(page.locator(".attachment-chip.uploading")).to_have_count(0, timeout=10_000)
    _ask(page, "What is the password?")
    expect(page.locator(".attachment-chip")).to_have_count(0)
    stored = _question_with_files(user, chat_id)
    assert [a["name"] for a in stored["attachments"]] == ["notes.md"]
    assert stored["attachments"][0]["tokens"] > 0  # its text went to the model, counted
    question = page.locator(".message.user").last
    expect(question.locator("a.attachment-link")).to_contain_text("notes.md", timeout=10_000)
    link = question.locator("a.attachment-link").get_attribute("href")
    assert link == f"/chat/{chat_id}/attachments/{stored['attachments'][0]['id']}"

    # The default model takes no images: the question is refused and loses nothing.
    _drop(page, "red.png", "image/png", _png())
    expect(page.locator(".attachment-chip.uploading")).to_have_count(0, timeout=10_000)
    page.fill("#input", "What colour is this?")
    page.press("#input", "Enter")
    expect(page.locator("#status")).to_contain_text("does not accept image input", timeout=10_000)
    expect(page.locator(".attachment-chip")).to_contain_text("red.png")
    expect(page.locator("#input")).to_have_value("What colour is this?")
    expect(page.locator(".message.user .bubble").last).to_have_text("What is the password?")

    # A refused file: its error is shown, nothing is attached.
    page.click(".attachment-chip .chip-remove")
    _drop(page, "program.exe", "application/octet-stream", b"MZ\x90\x00" + bytes(64))
    expect(page.locator("#status")).to_contain_text("program.exe was refused", timeout=10_000)
    expect(page.locator(".attachment-chip")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "web-attachments.png"), full_page=True)


def test_web_image_on_a_vision_model(page: Page, vision_platform: Platform) -> None:
    """An image sent to a model that takes images is shown in the question, inline."""
    email = f"pictures-{secrets.token_hex(4)}@example.com"
    with httpx.Client(
        base_url=vision_platform.gateway_url,
        headers={"Authorization": f"Bearer {vision_platform.admin_api_key}"},
        timeout=60,
    ) as admin:
        made = admin.post(
            "/admin/users", json={"name": "pictures", "email": email, "password": PASSWORD}
        )
        assert made.status_code == 201, made.text
    _sign_in(page, vision_platform.gateway_url, email)
    _ask(page, "Here comes a picture")
    page.click(".chat-item .chat-open")
    _drop(page, "red.png", "image/png", _png(32, 24))
    expect(page.locator(".attachment-chip")).to_contain_text("red.png", timeout=10_000)
    expect(page.locator(".attachment-chip.uploading")).to_have_count(0, timeout=10_000)
    _ask(page, "What colour is this?")
    question = page.locator(".message.user").last
    image = question.locator("img.attachment-image")
    expect(image).to_have_attribute("alt", "red.png", timeout=10_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.attachment-image')]"
        ".some((img) => img.complete && img.naturalWidth === 32)"
    )
    page.screenshot(path=str(ARTIFACTS / "web-attachments-image.png"), full_page=True)
