"""What an uploaded file is, decided by its bytes alone (its name and declared type are never
trusted), and the text a document gives the model.

Accepted: UTF-8 text (plain, Markdown, source code), PDF (``%PDF-`` and readable by pypdf), PNG,
JPEG, GIF and WebP (their magic bytes, and dimensions Pillow can decode). Refused, naming what
was found: HTML and SVG (a browser would run their scripts), executables, archives, anything
else::

    found = classify(data)        # raises UnsupportedMediaError
    found.kind, found.media_type  # AttachmentKind.PDF, "application/pdf"
    document_text(found.kind, data)
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from PIL import Image, UnidentifiedImageError
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from parley_common.ids import new_id
from parley_session.config import Settings
from parley_session.domain import InvalidArgumentError
from parley_session.stores import AttachmentDoc, Stores
from parley_session.tokens import TokenCounter

__all__ = [
    "AttachmentKind",
    "Attachments",
    "Classified",
    "Document",
    "FittedQuestion",
    "UnsupportedMediaError",
    "classify",
    "document_text",
    "fit_documents",
    "sanitize_name",
    "with_documents",
]

TEXT_MEDIA_TYPE: Final = "text/plain; charset=utf-8"
MAX_IMAGE_PIXELS: Final = 50_000_000  # larger is a decompression bomb, not a photo
MAX_NAME_CHARS: Final = 120

# Raster images by their signatures, with the Pillow format that must decode them.
_IMAGES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "PNG"),
    (b"\xff\xd8\xff", "image/jpeg", "JPEG"),
    (b"GIF87a", "image/gif", "GIF"),
    (b"GIF89a", "image/gif", "GIF"),
)
# Signatures of what is refused outright, to name it in the refusal.
_REFUSED: Final = (
    (b"MZ", "application/x-msdownload"),
    (b"\x7fELF", "application/x-executable"),
    (b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xca\xfe\xba\xbe", "application/java-vm"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!", "application/vnd.rar"),
)
# WHATWG MIME sniffing's HTML patterns: a document starting (after blanks) with one of these tags,
# followed by a space or `>`, is HTML to a browser.
_HTML_START: Final = re.compile(
    rb"\s*<(!doctype html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p"
    rb"|!--)[\s>]",
    re.IGNORECASE,
)
_SVG: Final = re.compile(rb"<svg[\s>]", re.IGNORECASE)
_XML_START: Final = re.compile(rb"\s*<\?xml", re.IGNORECASE)
_BOM: Final = b"\xef\xbb\xbf"
_CONTROL_ALLOWED: Final = frozenset("\t\n\r\f\v")


class AttachmentKind(StrEnum):
    TEXT = "text"
    PDF = "pdf"
    IMAGE = "image"

    @property
    def is_document(self) -> bool:
        return self is not AttachmentKind.IMAGE


@dataclass(frozen=True, slots=True)
class Classified:
    kind: AttachmentKind
    media_type: str


class UnsupportedMediaError(InvalidArgumentError):
    """The file's content is not one of the accepted kinds; `detected` names what it is."""

    def __init__(self, detected: str, why: str) -> None:
        super().__init__(
            "file",
            f"{why} ({detected}); attach UTF-8 text, Markdown or code, a PDF, or a PNG, "
            "JPEG, GIF or WebP image",
            reason="unsupported_media_type",
        )
        self.detected = detected


def classify(data: bytes) -> Classified:
    """The kind and media type of `data`, from its content."""
    if not data:
        raise UnsupportedMediaError("empty", "the file is empty")
    for signature, media_type, pillow_format in _IMAGES:
        if data.startswith(signature):
            return _image(data, media_type, pillow_format)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _image(data, "image/webp", "WEBP")
    if data.startswith(b"%PDF-"):
        _read_pdf(data)
        return Classified(AttachmentKind.PDF, "application/pdf")
    for signature, media_type in _REFUSED:
        if data.startswith(signature):
            raise UnsupportedMediaError(media_type, "executables and archives are not accepted")
    head = data[:4096].removeprefix(_BOM)
    if _HTML_START.match(head):
        raise UnsupportedMediaError("text/html", "HTML is not accepted")
    if (head.lstrip().startswith(b"<") or _XML_START.match(head)) and _SVG.search(head):
        raise UnsupportedMediaError("image/svg+xml", "SVG is not accepted")
    if _text(data) is None:
        raise UnsupportedMediaError("application/octet-stream", "the file is not UTF-8 text")
    return Classified(AttachmentKind.TEXT, TEXT_MEDIA_TYPE)


def document_text(kind: AttachmentKind, data: bytes) -> str:
    """What the model reads of a document: a text file as it is, a PDF's extracted text."""
    if kind is AttachmentKind.TEXT:
        text = _text(data)
        assert text is not None, "classified as text"
        return text
    if kind is AttachmentKind.PDF:
        return _read_pdf(data)
    raise ValueError(f"{kind} is not a document")


def sanitize_name(name: str, fallback: str = "attachment") -> str:
    """A file name safe to show: no path, no control or bidirectional-override characters, no
    quotes, at most MAX_NAME_CHARS characters."""
    base = re.split(r"[/\\]", name)[-1]
    kept = "".join(
        " " if unicodedata.category(c).startswith(("C", "Z")) else c
        for c in unicodedata.normalize("NFC", base)
        if c not in '"<>'
    )
    cleaned = " ".join(kept.split()).strip(". ")
    return cleaned[:MAX_NAME_CHARS] or fallback


def _text(data: bytes) -> str | None:
    try:
        text = data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(unicodedata.category(c) == "Cc" and c not in _CONTROL_ALLOWED for c in text[:65536]):
        return None  # NUL and other control bytes: binary data that happens to decode
    return text


def _image(data: bytes, media_type: str, pillow_format: str) -> Classified:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
                width, height = image.size
                image.verify()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
    ):
        raise UnsupportedMediaError(media_type, "the image cannot be decoded") from None
    if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
        raise UnsupportedMediaError(
            media_type, f"the image is {width}x{height}; at most {MAX_IMAGE_PIXELS} pixels"
        )
    return Classified(AttachmentKind.IMAGE, media_type)


def _read_pdf(data: bytes) -> str:
    """The PDF's text, page after page; a file pypdf cannot read (or encrypted) is refused."""
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)  # a sloppy but readable PDF is not worth a warning a page
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnsupportedMediaError("application/pdf", "the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise UnsupportedMediaError("application/pdf", "the PDF cannot be read") from None
    finally:
        pypdf_log.setLevel(level)
    return "\n\n".join(p.strip() for p in pages if p.strip())


@dataclass(frozen=True, slots=True)
class Document:
    name: str
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class FittedQuestion:
    """A question with its documents' text, as the model reads it."""

    content: str
    tokens: int  # content tokens of `content`
    notice: str  # empty: every document whole


class QuestionFormat(Protocol):
    def count(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...

    def prompt_tokens(self, messages: Sequence[tuple[str, str]]) -> int: ...


_CUT_MARK: Final = "\n[… the rest of this document was cut to fit the context window]"
_FIT_ROUNDS: Final = 4


def with_documents(question: str, documents: Sequence[Document]) -> str:
    """The question after its documents, each in an <attachment> block naming its file."""
    blocks = [f'<attachment name="{d.name}">\n{d.text}\n</attachment>' for d in documents]
    return "\n\n".join([*blocks, question])


def fit_documents(
    question: str,
    documents: Sequence[Document],
    *,
    system_prompt: str,
    budget: int,
    fmt: QuestionFormat,
) -> FittedQuestion:
    """The question with as much of its documents as fits `budget` prompt tokens alone (the
    history policy then decides on older turns); documents are cut from the last one back, and
    the notice says what was left out. A question that fits with no document text at all is
    refused later, like any message too long for the window."""
    head = [("system", system_prompt)] if system_prompt else []
    kept = [d.tokens for d in documents]
    for _ in range(_FIT_ROUNDS):
        shown = [
            d if k >= d.tokens else Document(d.name, fmt.truncate(d.text, k) + _CUT_MARK, k)
            for d, k in zip(documents, kept, strict=True)
        ]
        content = with_documents(question, shown)
        over = fmt.prompt_tokens([*head, ("user", content)]) - budget
        if over <= 0:
            break
        # Take the excess (and the cut marks' tokens) off the last documents first.
        excess = over + fmt.count(_CUT_MARK)
        for i in reversed(range(len(kept))):
            taken = min(kept[i], excess)
            kept[i] -= taken
            excess -= taken
            if excess <= 0:
                break
    cut = [
        f"{d.name} (kept {k} of {d.tokens} tokens)"
        for d, k in zip(documents, kept, strict=True)
        if k < d.tokens
    ]
    notice = f"Cut to fit the model's context window: {', '.join(cut)}." if cut else ""
    return FittedQuestion(content, fmt.count(content), notice)


class Attachments:
    """The upload use-case: the chat's owner checked, the content classified and its text
    counted, the chat's limits kept, the file stored."""

    def __init__(self, stores: Stores, tokens: TokenCounter, settings: Settings) -> None:
        self._stores = stores
        self._tokens = tokens
        self._settings = settings

    async def upload(self, user_id: str, chat_id: str, *, name: str, data: bytes) -> AttachmentDoc:
        await self._stores.chats.get_chat(user_id, chat_id)  # NOT_FOUND for another user's
        settings = self._settings
        if len(data) > settings.attachment_max_bytes:
            raise InvalidArgumentError(
                "file",
                f"the file is {len(data)} bytes; at most {settings.attachment_max_bytes}",
                reason="attachment_too_large",
            )
        found = classify(data)
        tokens = (
            self._tokens.count(document_text(found.kind, data)) if found.kind.is_document else None
        )
        usage = await self._stores.attachments.usage(user_id, chat_id)
        if usage.count >= settings.attachment_max_per_chat:
            raise InvalidArgumentError(
                "file",
                f"this chat holds {usage.count} files, the most it may; delete one first",
                reason="attachment_limit",
            )
        if usage.bytes + len(data) > settings.attachment_max_chat_bytes:
            raise InvalidArgumentError(
                "file",
                f"this chat's files would take {usage.bytes + len(data)} bytes; at most "
                f"{settings.attachment_max_chat_bytes}",
                reason="attachment_limit",
            )
        return await self._stores.attachments.add(
            attachment_id=new_id(),
            user_id=user_id,
            chat_id=chat_id,
            name=sanitize_name(name),
            media_type=found.media_type,
            kind=found.kind.value,
            tokens=tokens,
            data=data,
        )
