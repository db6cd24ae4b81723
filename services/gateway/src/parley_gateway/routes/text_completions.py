"""`POST /v1/completions`: OpenAI's legacy prompt completion, for old clients.

The prompt goes the way of a stateless chat completion (the same workers, cache and limits) as
the user's message: the engines serve chat models through their chat template, and answer a
prompt as a question to continue from. Nothing is stored in a chat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse

from parley_gateway.deps import Admitted, PartsDep
from parley_gateway.errors import ApiError
from parley_gateway.legacy_completion_schemas import (
    TextChoice,
    TextCompletion,
    TextCompletionRequest,
)
from parley_gateway.openai_schemas import dump
from parley_gateway.routes.openai import (
    _COMPLETION_ERRORS,
    _check_stream_options,
    _data,
    _finish_reason,
    _model_not_found,
    _restarted,
    _usage,
)
from parley_gateway.turns import Reset, Sampling, TextChunk, Turn

router = APIRouter(prefix="/v1", tags=["openai"])


def _prompt(parts: PartsDep, body: TextCompletionRequest) -> str:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ApiError(
                422,
                "invalid_request",
                "prompt: one text a request (a list of one string is taken); token arrays and "
                "batches of prompts are not supported",
                param="prompt",
            )
        prompt = prompt[0]
    if not prompt.strip():
        raise ApiError(422, "invalid_request", "prompt: a prompt needs text", param="prompt")
    limit = parts.settings.max_message_chars
    if len(prompt) > limit:
        raise ApiError(
            413,
            "message_too_large",
            f"prompt is {len(prompt)} characters; the limit is {limit}",
            param="prompt",
        )
    return prompt


def _check(parts: PartsDep, body: TextCompletionRequest) -> None:
    _check_stream_options(body.stream, body.stream_options)
    limit = parts.settings.max_tokens_limit
    if body.max_tokens is not None and body.max_tokens > limit:
        raise ApiError(422, "invalid_request", f"max_tokens: at most {limit}", param="max_tokens")


def _sampling(body: TextCompletionRequest) -> Sampling:
    temperature, top_p = body.temperature, body.top_p
    if top_p == 0:
        temperature, top_p = 0.0, None  # greedy, as on /v1/chat/completions
    return Sampling(temperature=temperature, top_p=top_p, stop=body.stop_strings(), seed=body.seed)


@router.post(
    "/completions",
    response_model=TextCompletion,
    responses=_COMPLETION_ERRORS,
    summary="Create a completion (legacy)",
)
async def create_completion(
    body: TextCompletionRequest, user: Admitted, parts: PartsDep
) -> Response:
    """OpenAI's legacy completion of `prompt`: JSON, or Server-Sent Events with `stream: true`."""
    _check(parts, body)
    prompt = _prompt(parts, body)
    try:
        turn = await parts.turns.start_stateless(
            user,
            messages=[("user", prompt)],
            model=body.model,
            max_tokens=body.max_tokens,
            sampling=_sampling(body),
            no_cache=body.no_cache,
        )
    except ApiError as exc:
        if exc.status == 404:
            raise _model_not_found(body.model) from exc
        raise
    headers = {"X-Parley-Request-Id": turn.request_id}
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            _stream(turn, include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    answer = await turn.answer()
    completion = TextCompletion(
        id=f"cmpl-{turn.request_id}",
        created=turn.created_unix_s,
        model=turn.model,
        choices=[TextChoice(text=answer.content, finish_reason=_finish_reason(answer))],
        usage=_usage(answer),
    )
    return JSONResponse(dump(completion), headers=headers)


async def _stream(turn: Turn, include_usage: bool) -> AsyncIterator[bytes]:
    def chunk(text: str, finish: str | None = None) -> bytes:
        payload = dump(
            TextCompletion(
                id=f"cmpl-{turn.request_id}",
                created=turn.created_unix_s,
                model=turn.model,
                choices=[TextChoice(text=text, finish_reason=finish)],
            )
        )
        if not include_usage:
            del payload["usage"]
        return _data(payload)

    restarted = False
    try:
        async for event in turn.events():
            if isinstance(event, Reset):
                restarted = True  # as on /v1/chat/completions: the stream cannot take text back
            elif isinstance(event, TextChunk):
                if event.text and not restarted:
                    yield chunk(event.text)
            elif restarted:
                raise _restarted(turn)
            else:
                yield chunk("", _finish_reason(event))
                if include_usage:
                    usage = TextCompletion(
                        id=f"cmpl-{turn.request_id}",
                        created=turn.created_unix_s,
                        model=turn.model,
                        choices=[],
                        usage=_usage(event),
                    )
                    yield _data(dump(usage))
    except ApiError as exc:
        yield _data(exc.openai_body())
        return
    finally:
        await turn.close()
    yield b"data: [DONE]\n\n"
