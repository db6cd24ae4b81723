"""Attachments through the public API of the running platform: the kind decided by content,
limits, safe downloads, documents' text in the context with exact counts, and deletion of the
files (GridFS files and chunks) with their chat, their branch and `DELETE /chats`."""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from pymongo.database import Database
from transformers import AutoTokenizer

from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
DEFAULT_SYSTEM = "You are a helpful AI assistant named Parley."


def _png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _pdf(text: str) -> bytes:
    """A one-page PDF whose page shows `text` (Helvetica), with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="module")
def mongo(platform: Platform) -> Iterator[Database[dict[str, Any]]]:
    with MongoClient(platform.session.env["MONGODB_URI"]) as client:
        yield client["parley"]


def _chat(client: httpx.Client) -> str:
    started = client.post("/chat", json={"message": "Hello", "max_tokens": 4})
    assert started.status_code == 200, started.text
    chat_id: str = started.json()["chat_id"]
    return chat_id


def _upload(
    client: httpx.Client, chat_id: str, name: str, data: bytes, declared: str
) -> httpx.Response:
    return client.post(f"/chat/{chat_id}/attachments", files={"file": (name, data, declared)})


def _question(client: httpx.Client, chat_id: str, turn: httpx.Response) -> dict[str, Any]:
    """The stored user message of `turn` (its answer may not be stored yet)."""
    messages = client.get(f"/chat/{chat_id}").json()["messages"]
    found: dict[str, Any] = next(
        m for m in messages if m["message_id"] == turn.json()["message_id"]
    )
    return found


def _stored(mongo: Database[dict[str, Any]], attachment_id: str) -> tuple[int, int]:
    return (
        mongo["attachments.files"].count_documents({"_id": attachment_id}),
        mongo["attachments.chunks"].count_documents({"files_id": attachment_id}),
    )


def test_each_kind_by_content_not_by_name(new_user: NewUser, tokenizer: Any) -> None:
    alice = new_user("alice")
    chat_id = _chat(alice)
    text = "# Notes\n\nThe fjord is deep.\n```python\nprint('hi')\n```\n"
    cases = [
        ("notes.md", text.encode(), "text/markdown", "text", "text/plain; charset=utf-8"),
        # A text file named .png and declared as one is text; a PNG named .txt is an image.
        (
            "photo.png",
            b"plain words, not pixels\n",
            "image/png",
            "text",
            "text/plain; charset=utf-8",
        ),
        ("readme.txt", _png(), "text/plain", "image", "image/png"),
        ("report.pdf", _pdf("Quarterly fjord report"), "application/pdf", "pdf", "application/pdf"),
    ]
    for name, data, declared, kind, media_type in cases:
        uploaded = _upload(alice, chat_id, name, data, declared)
        assert uploaded.status_code == 201, uploaded.text
        body = uploaded.json()
        assert (body["name"], body["kind"], body["media_type"], body["size"]) == (
            name,
            kind,
            media_type,
            len(data),
        )
        assert body["chat_id"] == chat_id
        if kind == "image":
            assert body["tokens"] is None
    first = alice.get(f"/chat/{chat_id}/attachments").json()["attachments"]
    assert [a["name"] for a in first] == [c[0] for c in cases]
    # The served tokenizer's exact count of the document's text.
    assert first[0]["tokens"] == len(tokenizer.encode(text, add_special_tokens=False))
    pdf_text = "Quarterly fjord report"
    assert first[3]["tokens"] == len(tokenizer.encode(pdf_text, add_special_tokens=False))


@pytest.mark.parametrize(
    ("name", "data", "detected"),
    [
        (
            "report.pdf",
            b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
            "text/html",
        ),
        (
            "drawing.svg",
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
            "image/svg+xml",
        ),
        (
            "logo.png",
            b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
            "image/svg+xml",
        ),
        ("tool.txt", b"MZ\x90\x00\x03" + bytes(60), "application/x-msdownload"),
        ("blob.txt", bytes(range(256)), "application/octet-stream"),
        ("broken.pdf", b"%PDF-1.7\n<html>not a pdf at all</html>", "application/pdf"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"garbage", "image/png"),
    ],
)
def test_refused_content_is_415_naming_what_it_is(
    new_user: NewUser, name: str, data: bytes, detected: str
) -> None:
    alice = new_user("alice")
    chat_id = _chat(alice)
    refused = _upload(alice, chat_id, name, data, "application/pdf")
    assert refused.status_code == 415, refused.text
    error = refused.json()["error"]
    assert error["type"] == "unsupported_media_type"
    assert detected in error["message"]
    assert alice.get(f"/chat/{chat_id}/attachments").json()["attachments"] == []


def test_oversize_is_413_and_names_are_sanitized(new_user: NewUser) -> None:
    alice = new_user("alice")
    chat_id = _chat(alice)
    too_big = _upload(alice, chat_id, "big.txt", b"a" * (10 * 1024 * 1024 + 1), "text/plain")
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["error"]["type"] == "attachment_too_large"
    way_too_big = _upload(alice, chat_id, "huge.txt", b"a" * (11 * 1024 * 1024), "text/plain")
    assert way_too_big.status_code == 413, way_too_big.text
    odd = _upload(alice, chat_id, "../../etc/evil\u202e\u200f  name.txt", b"hi", "text/plain")
    assert odd.status_code == 201, odd.text
    assert odd.json()["name"] == "evil name.txt"


def test_downloads_carry_safe_headers_and_other_users_get_404(new_user: NewUser) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    chat_id = _chat(alice)
    text = _upload(alice, chat_id, "notes.md", b"# hi\n", "text/html").json()
    image = _upload(alice, chat_id, "pic.png", _png(), "image/png").json()
    got = alice.get(f"/chat/{chat_id}/attachments/{text['id']}")
    assert got.status_code == 200
    assert got.content == b"# hi\n"
    assert got.headers["content-type"] == "text/plain; charset=utf-8"
    assert got.headers["content-disposition"].startswith('attachment; filename="notes.md"')
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert got.headers["cache-control"].startswith("private")
    shown = alice.get(f"/chat/{chat_id}/attachments/{image['id']}")
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["content-disposition"].startswith("inline")
    for response in (
        bob.get(f"/chat/{chat_id}/attachments/{text['id']}"),
        bob.get(f"/chat/{chat_id}/attachments"),
        bob.delete(f"/chat/{chat_id}/attachments/{text['id']}"),
        _upload(bob, chat_id, "x.txt", b"x", "text/plain"),
        bob.post(
            f"/chat/{_chat(bob)}/completion",
            json={"message": "read it", "attachment_ids": [text["id"]], "max_tokens": 4},
        ),
    ):
        assert response.status_code in (404, 422), response.text
    assert bob.get(f"/chat/{chat_id}/attachments/{text['id']}").status_code == 404
    assert alice.delete(f"/chat/{chat_id}/attachments/{text['id']}").status_code == 204
    assert alice.get(f"/chat/{chat_id}/attachments/{text['id']}").status_code == 404


def test_document_text_reaches_the_engine_counted_exactly(
    new_user: NewUser, tokenizer: Any
) -> None:
    alice = new_user("alice")
    first = alice.post("/chat", json={"message": "Hello", "max_tokens": 4}).json()
    chat_id = first["chat_id"]
    text = "The fjord is 1308 metres deep.\n"
    doc = _upload(alice, chat_id, "fjord.txt", text.encode(), "text/plain").json()
    turn = alice.post(
        f"/chat/{chat_id}/completion",
        json={"message": "How deep?", "attachment_ids": [doc["id"]], "max_tokens": 4},
    )
    assert turn.status_code == 200, turn.text
    assert turn.json()["context_notice"] is None
    question = _question(alice, chat_id, turn)
    assert question["content"] == "How deep?"
    assert question["attachments"] == [
        {k: doc[k] for k in ("id", "name", "media_type", "kind", "size", "tokens")}
    ]
    sent = f'<attachment name="fjord.txt">\n{text}\n</attachment>\n\nHow deep?'
    assert question["token_count"] == len(tokenizer.encode(sent, add_special_tokens=False))
    history = [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first["answer"]["content"]},
        {"role": "user", "content": sent},
    ]
    expected = len(
        tokenizer.apply_chat_template(
            history, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )
    # The worker counts the prompt it fed the model: the document was in it.
    assert turn.json()["answer"]["usage"]["prompt_tokens"] == expected


def test_a_document_too_long_is_cut_and_the_user_told(new_user: NewUser) -> None:
    alice = new_user("alice")
    chat_id = _chat(alice)
    long_text = "".join(f"Line {i} of a long report about fjords.\n" for i in range(600))
    doc = _upload(alice, chat_id, "long.txt", long_text.encode(), "text/plain").json()
    assert doc["tokens"] > 2048
    turn = alice.post(
        f"/chat/{chat_id}/completion",
        json={"message": "Summarize", "attachment_ids": [doc["id"]], "max_tokens": 16},
    )
    assert turn.status_code == 200, turn.text
    notice = turn.json()["context_notice"]
    assert notice is not None
    assert "long.txt" in notice
    assert f"of {doc['tokens']} tokens" in notice
    assert turn.json()["answer"]["usage"]["prompt_tokens"] <= 2048 - 16
    question = _question(alice, chat_id, turn)
    assert question["context_notice"] == notice


def test_an_image_on_a_text_only_model_is_refused(new_user: NewUser) -> None:
    alice = new_user("alice")
    chat_id = _chat(alice)
    image = _upload(alice, chat_id, "pic.png", _png(), "image/png").json()
    refused = alice.post(
        f"/chat/{chat_id}/completion",
        json={"message": "What is this?", "attachment_ids": [image["id"]], "max_tokens": 4},
    )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["type"] == "image_input_unsupported"
    assert "parley-tiny" in error["message"]
    assert len(alice.get(f"/chat/{chat_id}").json()["messages"]) == 2  # nothing stored


def test_files_go_with_their_chat_their_branch_and_all_chats(
    new_user: NewUser, mongo: Database[dict[str, Any]]
) -> None:
    alice = new_user("alice")
    chat_id = _chat(alice)
    kept = _upload(alice, chat_id, "kept.txt", b"kept", "text/plain").json()["id"]
    sent = _upload(alice, chat_id, "sent.txt", b"sent " * 40_000, "text/plain").json()["id"]
    assert _stored(mongo, sent) == (1, 1)
    turn = alice.post(
        f"/chat/{chat_id}/completion",
        json={"message": "Read", "attachment_ids": [sent], "max_tokens": 4},
    )
    assert turn.status_code == 200, turn.text
    # Deleting the branch of the message it was sent with deletes it; the unsent one stays.
    deleted = alice.delete(f"/chat/{chat_id}/messages/{turn.json()['message_id']}")
    assert deleted.status_code == 200, deleted.text
    assert _stored(mongo, sent) == (0, 0)
    assert _stored(mongo, kept) == (1, 1)
    assert alice.delete(f"/chat/{chat_id}").status_code == 204
    assert _stored(mongo, kept) == (0, 0)

    first, second = _chat(alice), _chat(alice)
    ids = [_upload(alice, c, "a.txt", b"a", "text/plain").json()["id"] for c in (first, second)]
    assert alice.delete("/chats").status_code == 200
    assert [_stored(mongo, i) for i in ids] == [(0, 0), (0, 0)]


@pytest.fixture(scope="module")
def vision_platform(
    local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """A platform whose model takes images (the fake engine does), on the shared stack with
    topics and a worker group of its own."""
    with Platform(
        local_stack.addresses,
        run_dir=tmp_path_factory.mktemp("vision"),
        model_dir=None,
        engine="fake",
        env={"TOPIC_PREFIX": "vision.", "WORKER_GROUP": "vision-workers"},
        service_env={"session": {"VISION_MODELS": "fake"}},
    ) as running:
        yield running


def test_images_go_to_a_vision_model_as_image_parts(vision_platform: Platform) -> None:
    admin = httpx.Client(
        base_url=vision_platform.gateway_url,
        headers={"Authorization": f"Bearer {vision_platform.admin_api_key}"},
        timeout=60,
    )
    with admin:
        user = admin.post("/admin/users", json={"name": "carol"}).json()
        key = admin.post(f"/admin/users/{user['user_id']}/keys", json={"name": "t"}).json()
    with httpx.Client(
        base_url=vision_platform.gateway_url,
        headers={"Authorization": f"Bearer {key['api_key']}"},
        timeout=60,
    ) as carol:
        chat_id = _chat(carol)
        image = _upload(carol, chat_id, "pic.png", _png(), "image/png").json()
        ask = {"message": "What is this?", "max_tokens": 4}
        plain = carol.post(f"/chat/{chat_id}/completion", json=ask)
        assert plain.status_code == 200, plain.text
        seen = carol.post(
            f"/chat/{chat_id}/completion", json={**ask, "attachment_ids": [image["id"]]}
        )
        assert seen.status_code == 200, seen.text
        # The fake engine counts 85 tokens an image part: it received the image (and the turn
        # before, with its answer, is the difference in history).
        history = plain.json()["answer"]["usage"]["prompt_tokens"]
        grown = seen.json()["answer"]["usage"]["prompt_tokens"]
        answer_tokens = 4 + -(-len(plain.json()["answer"]["content"]) // 4)
        question_tokens = 4 + -(-len("What is this?") // 4)
        assert grown == history + answer_tokens + question_tokens + 85
        question = _question(carol, chat_id, seen)
        assert [a["kind"] for a in question["attachments"]] == ["image"]
