"""A chat's attached files: upload (multipart/form-data, field `file`), list, download, delete.

The session service decides a file's kind from its content and stores it in GridFS; the gateway
bounds the upload while it is read and serves the bytes back with headers that keep a browser
from running anything (`nosniff`, a sandboxing CSP, `attachment` for all but raster images)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Path, Request, Response
from starlette.datastructures import UploadFile

from parley.v1 import session_pb2
from parley_common.ids import is_id
from parley_gateway.deps import PartsDep, User
from parley_gateway.errors import ApiError
from parley_gateway.schemas import AttachmentList, AttachmentOut, ErrorBody

__all__ = ["UPLOAD_OVERHEAD_BYTES", "UPLOAD_PATH", "router"]

router = APIRouter(tags=["attachments"])

# The upload route's path, given a larger body limit than JSON bodies: the file and its
# multipart framing.
UPLOAD_PATH: Final = re.compile(r"/chat/[^/]+/attachments")
UPLOAD_OVERHEAD_BYTES: Final = 64 * 1024
_READ_CHUNK: Final = 256 * 1024
_INLINE_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/webp")
TEXT_MEDIA_TYPE: Final = "text/plain; charset=utf-8"

ChatId = Annotated[str, Path(description="a chat id (32 hexadecimal characters)")]
AttachmentId = Annotated[str, Path(description="an attachment id of this chat")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, malformed or revoked credentials"},
    404: {"model": ErrorBody, "description": "no such chat or attachment (or not yours)"},
}
_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    413: {
        "model": ErrorBody,
        "description": "`attachment_too_large` (over ATTACHMENT_MAX_BYTES) or "
        "`attachment_limit` (the chat holds the most files or bytes it may)",
    },
    415: {
        "model": ErrorBody,
        "description": "`unsupported_media_type`: the content is not text, PDF, PNG, JPEG, "
        "GIF or WebP (the message names what it is)",
    },
    422: {"model": ErrorBody, "description": "no `file` field in a multipart/form-data body"},
}


def _ids(chat_id: str, attachment_id: str = "") -> tuple[str, str]:
    if not is_id(chat_id):
        raise ApiError(404, "not_found", f"chat {chat_id!r} not found")
    if attachment_id and not is_id(attachment_id):
        raise ApiError(404, "not_found", f"attachment {attachment_id!r} not found in this chat")
    return chat_id, attachment_id


def _out(a: session_pb2.Attachment) -> AttachmentOut:
    return AttachmentOut(
        id=a.attachment_id,
        chat_id=a.chat_id,
        name=a.name,
        media_type=a.media_type,
        kind=a.kind,
        size=a.size,
        tokens=a.tokens if a.HasField("tokens") else None,
        created_at=a.created_unix_ms,
    )


async def _read_file(request: Request, max_bytes: int) -> tuple[str, bytes]:
    """The `file` part's name and bytes, read in chunks and refused once over `max_bytes`."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(
            422, "invalid_request", "send the file as multipart/form-data, in the field `file`"
        )
    form = await request.form(max_files=1, max_fields=10)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "file: a multipart file field is required")
        data = bytearray()
        while chunk := await upload.read(_READ_CHUNK):
            data += chunk
            if len(data) > max_bytes:
                raise ApiError(
                    413, "attachment_too_large", f"the file is over {max_bytes} bytes, the limit"
                )
        return upload.filename or "", bytes(data)
    finally:
        await form.close()


@router.post(
    "/chat/{chat_id}/attachments",
    status_code=201,
    response_model=AttachmentOut,
    responses=_UPLOAD_ERRORS,
    summary="Attach a file to a chat",
    # Read from the request itself (bounded while read), so FastAPI does not describe the body.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload_attachment(
    chat_id: ChatId, request: Request, user: User, parts: PartsDep
) -> AttachmentOut:
    """Upload a file (multipart/form-data, field `file`): UTF-8 text, Markdown or code, a PDF,
    or a PNG, JPEG, GIF or WebP image, told apart by content (never by name). Send its id in
    `attachment_ids` with a message of this chat."""
    chat_id, _ = _ids(chat_id)
    name, data = await _read_file(request, parts.settings.attachment_max_bytes)
    added = await parts.session.upload_attachment(
        session_pb2.UploadAttachmentRequest(
            user_id=user.user_id, chat_id=chat_id, name=name, data=data
        )
    )
    return _out(added)


@router.get(
    "/chat/{chat_id}/attachments",
    response_model=AttachmentList,
    responses=_ERRORS,
    summary="List a chat's files",
)
async def list_attachments(chat_id: ChatId, user: User, parts: PartsDep) -> AttachmentList:
    """The chat's attached files, oldest first."""
    chat_id, _ = _ids(chat_id)
    listed = await parts.session.list_attachments(
        session_pb2.ListAttachmentsRequest(user_id=user.user_id, chat_id=chat_id)
    )
    return AttachmentList(attachments=[_out(a) for a in listed.attachments])


@router.get(
    "/chat/{chat_id}/attachments/{attachment_id}",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "the file's bytes, with the type detected at upload",
            "content": {t: {} for t in (TEXT_MEDIA_TYPE, "application/pdf", *_INLINE_TYPES)},
        },
    },
    summary="Download a file",
)
async def get_attachment(
    chat_id: ChatId, attachment_id: AttachmentId, user: User, parts: PartsDep
) -> Response:
    """The file's bytes with its detected type; only raster images may be shown inline."""
    chat_id, attachment_id = _ids(chat_id, attachment_id)
    got = await parts.session.get_attachment(
        session_pb2.GetAttachmentRequest(
            user_id=user.user_id, chat_id=chat_id, attachment_id=attachment_id
        )
    )
    media_type = got.attachment.media_type
    disposition = "inline" if media_type in _INLINE_TYPES else "attachment"
    # Names are sanitized (no quotes or control characters) by the session service; the
    # RFC 6266 `filename*` form carries what is not ASCII.
    name = got.attachment.name
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_")
    return Response(
        content=got.data,
        media_type=media_type,
        headers={
            "Content-Disposition": (
                f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=3600",
            "Vary": "Authorization, Cookie",
        },
    )


@router.delete(
    "/chat/{chat_id}/attachments/{attachment_id}",
    status_code=204,
    responses=_ERRORS,
    summary="Delete a file",
)
async def delete_attachment(
    chat_id: ChatId, attachment_id: AttachmentId, user: User, parts: PartsDep
) -> Response:
    """Delete the file (messages it was sent with keep its name, and the text the model read)."""
    chat_id, attachment_id = _ids(chat_id, attachment_id)
    await parts.session.delete_attachment(
        session_pb2.DeleteAttachmentRequest(
            user_id=user.user_id, chat_id=chat_id, attachment_id=attachment_id
        )
    )
    return Response(status_code=204)
