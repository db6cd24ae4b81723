"""What an attachment is by its content, and how documents are fitted into the window."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from parley_session.attachments import (
    AttachmentKind,
    Document,
    UnsupportedMediaError,
    classify,
    document_text,
    fit_documents,
    sanitize_name,
    with_documents,
)
from parley_session.tokens import TokenCounter


def _image(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_raster_images_by_their_bytes(fmt: str, media_type: str) -> None:
    found = classify(_image(fmt))
    assert (found.kind, found.media_type) == (AttachmentKind.IMAGE, media_type)


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (b"  <!doctype html><p>hi", "text/html"),
        (b"<p>a paragraph</p>", "text/html"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
        (b"\x7fELF\x02\x01\x01" + bytes(20), "application/x-executable"),
        (b"PK\x03\x04" + bytes(20), "application/zip"),
        (b"text with a NUL\x00 byte", "application/octet-stream"),
        (b"\xff\xfe not utf-8", "application/octet-stream"),
        (b"%PDF-1.4\n<html></html>", "application/pdf"),
        (b"GIF89a-truncated", "image/gif"),
        (b"", "empty"),
    ],
)
def test_refused_content_names_what_it_is(data: bytes, detected: str) -> None:
    with pytest.raises(UnsupportedMediaError) as refused:
        classify(data)
    assert refused.value.detected == detected
    assert refused.value.reason == "unsupported_media_type"


def test_text_markdown_and_code_are_text() -> None:
    for data in (b"plain", "# Titre\n\n*émoji* 😀".encode(), b"def f():\n\treturn 1\n"):
        assert classify(data).kind is AttachmentKind.TEXT
    # Markdown may mention HTML: only a document that starts as HTML is HTML.
    assert classify(b"Use <b>bold</b> sparingly").kind is AttachmentKind.TEXT
    assert document_text(AttachmentKind.TEXT, "\ufeffhello".encode()) == "hello"


def test_names_are_made_safe_to_show() -> None:
    assert sanitize_name("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert sanitize_name('a"b<c>\u202e\x00d.txt') == "abc d.txt"
    assert sanitize_name("...") == "attachment"
    assert len(sanitize_name("x" * 500)) == 120


def test_documents_that_fit_are_whole() -> None:
    counter = TokenCounter()
    docs = [Document("a.txt", "alpha " * 10, counter.count("alpha " * 10))]
    fitted = fit_documents("Q?", docs, system_prompt="Be brief.", budget=1000, fmt=counter)
    assert fitted.content == with_documents("Q?", docs)
    assert fitted.notice == ""
    assert fitted.tokens == counter.count(fitted.content)


def test_documents_are_cut_from_the_last_and_the_cut_is_told() -> None:
    counter = TokenCounter()
    first = Document("first.txt", "a" * 400, counter.count("a" * 400))
    last = Document("last.txt", "b" * 4000, counter.count("b" * 4000))
    budget = 400
    fitted = fit_documents("Q?", [first, last], system_prompt="S", budget=budget, fmt=counter)
    assert counter.prompt_tokens([("system", "S"), ("user", fitted.content)]) <= budget
    assert "a" * 400 in fitted.content  # the first document whole
    assert "last.txt (kept" in fitted.notice
    assert f"of {last.tokens} tokens" in fitted.notice
    assert "first.txt" not in fitted.notice
