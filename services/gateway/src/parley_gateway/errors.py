"""One error shape for the whole API, and the handlers that produce it."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "from_grpc", "install_error_handlers"]

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client can act on: `{"error": {"type", "message", ...}}` with a status."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        retry_after_s: int | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = details

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.details:
            body["details"] = self.details
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else None
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


def from_grpc(exc: grpc.aio.AioRpcError, what: str) -> ApiError:
    code = exc.code()
    detail = exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return ApiError(404, "not_found", detail or f"{what} not found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ApiError(422, "invalid_request", detail)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ApiError(401, "authentication_error", detail)
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                ctx = err.get("ctx", {})
                return ApiError(
                    400,
                    "invalid_json",
                    f"the body is not valid JSON: {ctx.get('error', 'parse error')}",
                ).response()
            details.append(
                {"field": _field(tuple(err.get("loc", ()))), "message": err.get("msg", "")}
            )
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return ApiError(422, "invalid_request", summary, details=details).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed", 401: "authentication_error"}.get(
            exc.status_code, "http_error"
        )
        return ApiError(exc.status_code, type_, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return ApiError(
            500, "internal_error", "the gateway failed; the error was logged"
        ).response()
