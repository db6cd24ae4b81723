"""One error type for the whole API, and the handlers that render it.

The chat API answers `{"error": {"type", "message", "details"?}}`; the OpenAI-compatible routes
under `/v1/` answer OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with
OpenAI's status codes (400 rather than 422 for an invalid request), so that its SDKs raise the
exception a client of OpenAI expects.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from parley_common.grpc_errors import bad_field, error_reason

__all__ = ["OPENAI_PREFIX", "ApiError", "from_grpc", "install_error_handlers", "is_openai_path"]

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"

# Parley's error types, as OpenAI's (type, code).
_OPENAI_TYPES: dict[str, tuple[str, str | None]] = {
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found": ("invalid_request_error", "not_found"),
    "invalid_request": ("invalid_request_error", None),
    "invalid_json": ("invalid_request_error", "invalid_json"),
    "body_too_large": ("invalid_request_error", "request_too_large"),
    "message_too_large": ("invalid_request_error", "message_too_large"),
    "context_length_exceeded": ("invalid_request_error", "context_length_exceeded"),
    "method_not_allowed": ("invalid_request_error", "method_not_allowed"),
    "rate_limited": ("requests", "rate_limit_exceeded"),
    "overloaded": ("server_error", "overloaded"),
    "service_unavailable": ("server_error", "service_unavailable"),
    "timeout": ("server_error", "timeout"),
    "upstream_error": ("server_error", "upstream_error"),
    "generation_failed": ("server_error", "generation_failed"),
    "answer_restarted": ("server_error", "answer_restarted"),
    "internal_error": ("server_error", None),
}


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


class ApiError(Exception):
    """An error a client can act on, with its status; `param` names the field at fault and
    `code` refines `type` (both shown by the OpenAI-compatible routes)."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        retry_after_s: int | None = None,
        details: list[dict[str, Any]] | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = details
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}

    def openai_body(self) -> dict[str, Any]:
        type_, code = _OPENAI_TYPES.get(
            self.type, ("server_error" if self.status >= 500 else "invalid_request_error", None)
        )
        if self.type == "rate_limited" and self.code == "tokens_per_minute":
            type_ = "tokens"
        return {
            "error": {
                "message": self.message,
                "type": type_,
                "param": self.param,
                "code": self.code if self.code and self.type != "rate_limited" else code,
            }
        }

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else None

    def response(self, *, openai: bool = False) -> JSONResponse:
        if openai:
            return JSONResponse(
                self.openai_body(),
                status_code=400 if self.status == 422 else self.status,
                headers=self.headers(),
            )
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


# Refusals the session service names (an ErrorInfo reason): their own status, the reason as type.
_REASON_STATUS: dict[str, int] = {
    "unsupported_media_type": 415,
    "attachment_too_large": 413,
    "attachment_limit": 413,
    "image_input_unsupported": 400,
}


def from_grpc(exc: grpc.aio.AioRpcError, what: str) -> ApiError:
    code = exc.code()
    detail = exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return ApiError(404, "not_found", detail or f"{what} not found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        reason = error_reason(exc)
        status = _REASON_STATUS.get(reason or "", 422)
        return ApiError(status, reason or "invalid_request", detail, param=bad_field(exc))
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return ApiError(422, "context_length_exceeded", detail, param=bad_field(exc))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ApiError(401, "authentication_error", detail)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ApiError(403, "permission_error", detail)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return ApiError(409, "conflict", detail)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ApiError(
            503,
            "service_unavailable",
            f"the {what} service is unavailable; retry shortly",
            retry_after_s=2,
        )
    log.error("unexpected gRPC error", extra={"code": code.name, "detail": detail, "what": what})
    return ApiError(502, "upstream_error", f"the {what} service failed ({code.name})")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


_PYDANTIC_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
}


# What FastAPI answers when parsing a JSON body raises anything but a JSONDecodeError (the
# exception is the HTTPException's cause). Bodies that are not UTF-8 or nest too deep are
# refused before, with their own messages (limits.JsonBodyCheck).
_FASTAPI_PARSE_ERROR = "There was an error parsing the body"


def _unparsable(cause: BaseException | None) -> ApiError:
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        message = f"the body has a number of more than {sys.get_int_max_str_digits()} digits"
    else:
        message = "the body could not be parsed as JSON"
    return ApiError(400, "invalid_json", message)


def install_error_handlers(app: FastAPI) -> None:
    def render(request: Request, error: ApiError) -> JSONResponse:
        return error.response(openai=is_openai_path(request.url.path))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                ctx = err.get("ctx", {})
                return render(
                    request,
                    ApiError(
                        400,
                        "invalid_json",
                        f"the body is not valid JSON: {ctx.get('error', 'parse error')}",
                    ),
                )
            details.append(
                {"field": _field(tuple(err.get("loc", ()))), "message": err.get("msg", "")}
            )
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        first = exc.errors()[0] if exc.errors() else {}
        return render(
            request,
            ApiError(
                422,
                "invalid_request",
                summary,
                details=details,
                param=details[0]["field"] if details else None,
                code=_PYDANTIC_CODES.get(first.get("type", ""), "invalid_value"),
            ),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _FASTAPI_PARSE_ERROR:
            return render(request, _unparsable(exc.__cause__))
        type_ = {
            404: "not_found",
            405: "method_not_allowed",
            401: "authentication_error",
            413: "body_too_large",
        }.get(exc.status_code, "http_error")
        return render(request, ApiError(exc.status_code, type_, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return render(
            request, ApiError(500, "internal_error", "the gateway failed; the error was logged")
        )
