"""The OpenAPI schema as the API really answers: every error an operation can give, in the
shape it has (Parley's on the chat API, OpenAI's under `/v1/`), and bearer authentication.

FastAPI documents what each route declares; the errors that come from the layers around the
routes (the key check, the body-size limit, JSON parsing, the validation handler, a backing
service that is down) are added here for every operation they apply to.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from parley_gateway.errors import OPENAI_PREFIX
from parley_gateway.openai_schemas import OpenAIErrorBody
from parley_gateway.schemas import ErrorBody

__all__ = ["DESCRIPTION", "install_openapi"]

DESCRIPTION = """\
Every operation takes `Authorization: Bearer <API key>`: a user's key for the chat API and the
OpenAI-compatible API, the admin key for `/admin`.

- **Chat API**: start and continue stored chats; answers as JSON, as Server-Sent Events
  (`"stream": true`), or asynchronously (`?mode=async` or `Prefer: respond-async`: `202` with a
  completion to read at `/completions/{id}` or follow at `/completions/{id}/events`).
- **WebSocket** `/chat/ws` (not describable in OpenAPI): JSON frames; authenticate with the header
  or a first frame `{"type": "auth", "api_key": "..."}`, then `{"type": "message", "message":
  "...", "chat_id"?: "..."}` is answered with `chat`, `chunk`s and `done`; `{"type": "stop"}`
  stops the turn being generated.
- **Streams** end with the stored answer: `done` carries its whole text. A `reset` event (SSE)
  or frame (WebSocket) says the text received so far is void and the chunks that follow start
  the answer over (its worker stopped and another generated it again differently). A failed
  turn ends with `error`.
- **OpenAI-compatible API** under `/v1`: point an OpenAI SDK at `<this server>/v1`. Errors there
  have OpenAI's shape and status codes. `chat_id` (in the body, or the header
  `X-Parley-Chat-Id`) answers within a stored chat, whose history is then the context.

Limits: per-user requests and tokens per minute (`429` with `Retry-After`), a bound on the
workers' queue (`503` with `Retry-After`), body and message sizes (`413`).
"""

_ERROR = "#/components/schemas/ErrorBody"
_OPENAI_ERROR = "#/components/schemas/OpenAIErrorBody"

_COMMON: dict[str, str] = {
    "400": "the body is not valid JSON (or not UTF-8, or nested too deep)",
    "401": "missing, malformed, unknown or revoked API key",
    "403": "a key of the wrong kind (the admin key where a user's key is needed, or the reverse)",
    "413": "the body, or a message, is too large",
    "422": "a parameter or field is missing or invalid (named in the message)",
    "500": "an unexpected error in the gateway (logged)",
    "502": "a backing service failed",
    "503": "a backing service is unavailable; retry after Retry-After",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def _error_response(description: str, ref: str, status: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ref}}},
    }
    if status in ("429", "503"):
        response["headers"] = _RETRY_AFTER
    return response


def _complete(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, OpenAIErrorBody):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in model_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, model_schema)
    for path, operations in schema.get("paths", {}).items():
        openai = path.startswith(OPENAI_PREFIX)
        ref = _OPENAI_ERROR if openai else _ERROR
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            statuses = ["500", "502", "503"]
            if operation.get("security"):
                statuses += ["401", "403"]
            if "requestBody" in operation:
                statuses += ["400", "413"]
            if operation.get("parameters") or "requestBody" in operation:
                statuses.append("422")
            for status in statuses:
                current = responses.get(status)
                if current is None:
                    responses[status] = _error_response(_COMMON[status], ref, status)
                elif status == "422":
                    # FastAPI's default 422 body is not what the validation handler sends.
                    current["content"] = {"application/json": {"schema": {"$ref": ref}}}
            for status in ("429", "503"):
                if status in responses:
                    responses[status].setdefault("headers", _RETRY_AFTER)
            if openai and "422" in responses:
                # OpenAI's clients expect an invalid request as 400, and so it is answered.
                del responses["422"]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description or DESCRIPTION,
                    routes=app.routes,
                    tags=app.openapi_tags,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
