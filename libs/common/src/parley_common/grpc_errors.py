"""A bad field travels as a structured `google.rpc.BadRequest` in the status details (the
`grpc-status-details-bin` trailer): the server names the field once, the client reads it back
instead of parsing the message."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

__all__ = ["abort_bad_field", "bad_field", "error_reason"]

_DETAILS_KEY = "grpc-status-details-bin"


async def abort_bad_field(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    *,
    field: str,
    description: str,
    reason: str = "",
) -> None:
    """Abort the call with `code` and `message`, naming `field` in a BadRequest detail and, when
    given, the refusal's `reason` in an ErrorInfo detail."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    details = [detail]
    if reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="parley"))
        details.append(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    await context.abort(
        code, message, trailing_metadata=((_DETAILS_KEY, status.SerializeToString()),)
    )


def _details(exc: grpc.aio.AioRpcError) -> list[any_pb2.Any]:
    for key, value in exc.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            return list(status_pb2.Status.FromString(value).details)
    return []


def bad_field(exc: grpc.aio.AioRpcError) -> str | None:
    """The first field a BadRequest detail of the failed call names, if it has one."""
    for detail in _details(exc):
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad) and bad.field_violations:
            field: str = bad.field_violations[0].field
            return field
    return None


def error_reason(exc: grpc.aio.AioRpcError) -> str | None:
    """The reason an ErrorInfo detail of the failed call gives, if it has one."""
    for detail in _details(exc):
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason:
            reason: str = info.reason
            return reason
    return None
