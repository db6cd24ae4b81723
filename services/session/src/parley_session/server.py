"""SessionService over gRPC: translates the wire into store and domain calls."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from parley.v1 import session_pb2, session_pb2_grpc, types_pb2
from parley_common.ids import is_id
from parley_common.timeutil import now_ms
from parley_session.config import Settings
from parley_session.domain import (
    BotProfile,
    ChatNotFoundError,
    HistoryPolicy,
    InvalidArgumentError,
    build_context,
)
from parley_session.store import ChatDoc, MessageDoc, SessionStore
from parley_session.tokens import TokenCounter

__all__ = ["SessionServicer"]

log = logging.getLogger(__name__)

MAX_CONTENT_CHARS = 100_000
MAX_LIST_LIMIT = 100
_ANSWER_PENDING_MS = 120_000

_ROLE_TO_PB = {
    "system": types_pb2.ROLE_SYSTEM,
    "user": types_pb2.ROLE_USER,
    "assistant": types_pb2.ROLE_ASSISTANT,
}
_FINISH_TO_PB = {
    "stop": types_pb2.FINISH_REASON_STOP,
    "length": types_pb2.FINISH_REASON_LENGTH,
    "cancelled": types_pb2.FINISH_REASON_CANCELLED,
    "error": types_pb2.FINISH_REASON_ERROR,
}
_POLICY_FROM_PB = {
    session_pb2.HISTORY_POLICY_FULL: HistoryPolicy.FULL,
    session_pb2.HISTORY_POLICY_TRUNCATE: HistoryPolicy.TRUNCATE,
    session_pb2.HISTORY_POLICY_SUMMARIZE: HistoryPolicy.SUMMARIZE,
}
_POLICY_TO_PB = {v: k for k, v in _POLICY_FROM_PB.items()}
_SCOPE_TO_PB = {
    "user": types_pb2.CACHE_SCOPE_USER,
    "tenant": types_pb2.CACHE_SCOPE_TENANT,
    "global": types_pb2.CACHE_SCOPE_GLOBAL,
    "disabled": types_pb2.CACHE_SCOPE_DISABLED,
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


def _status_codes(method: Method[Req, Resp]) -> Method[Req, Resp]:
    """Map domain and MongoDB errors to status codes that mean what they say."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await method(self, request, context)
        except ChatNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"chat {exc} not found")
        except InvalidArgumentError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (ConnectionFailure, OperationFailure) as exc:
            log.warning("mongodb unavailable", extra={"error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the session store is unavailable")
        except PyMongoError as exc:
            log.exception("mongodb error")
            await context.abort(
                grpc.StatusCode.INTERNAL, f"session store error: {type(exc).__name__}"
            )
        raise AssertionError("unreachable")  # context.abort always raises

    return wrapper


def _chat_pb(chat: ChatDoc) -> session_pb2.Chat:
    return session_pb2.Chat(
        chat_id=chat.chat_id,
        title=chat.title,
        bot_id=chat.bot_id,
        created_unix_ms=chat.created_ms,
        updated_unix_ms=chat.updated_ms,
        message_count=chat.message_count,
    )


def _message_pb(m: MessageDoc) -> session_pb2.Message:
    return session_pb2.Message(
        message_id=m.message_id,
        ordinal=m.ordinal,
        role=_ROLE_TO_PB.get(m.role, types_pb2.ROLE_UNSPECIFIED),
        content=m.content,
        token_count=m.token_count,
        request_id=m.request_id,
        created_unix_ms=m.created_ms,
        finish_reason=_FINISH_TO_PB.get(m.finish_reason, types_pb2.FINISH_REASON_UNSPECIFIED),
    )


def _encode_cursor(chat: ChatDoc) -> str:
    return base64.urlsafe_b64encode(f"{chat.updated_ms}:{chat.chat_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ms, chat_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        return datetime.fromtimestamp(int(ms) / 1000, UTC), chat_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgumentError("cursor", "not a cursor returned by this API") from exc


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


def _check_chat_id(chat_id: str) -> None:
    if not is_id(chat_id):
        raise ChatNotFoundError(chat_id)


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    def __init__(self, store: SessionStore, tokens: TokenCounter, settings: Settings) -> None:
        self._store = store
        self._tokens = tokens
        self._settings = settings
        self._default_bot = BotProfile(
            bot_id="default",
            name="Assistant",
            system_prompt=settings.default_system_prompt,
            model=settings.model_name,
            max_tokens=settings.default_max_tokens,
        )

    def _bot(self, bot_id: str) -> BotProfile:
        if bot_id in ("", self._default_bot.bot_id):
            return self._default_bot
        raise InvalidArgumentError("bot_id", f"no bot profile {bot_id!r}")

    @_status_codes
    async def AuthenticateKey(
        self,
        request: session_pb2.AuthenticateKeyRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.User:
        user = await self._store.authenticate(request.api_key)
        if user is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
        assert user is not None
        return session_pb2.User(user_id=user.user_id, name=user.name, tenant_id=user.tenant_id)

    @_status_codes
    async def CreateUser(
        self, request: session_pb2.CreateUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.User:
        name = request.name.strip()
        if not name or len(name) > 200:
            raise InvalidArgumentError("name", "must be 1 to 200 characters")
        user = await self._store.create_user(name, request.tenant_id)
        return session_pb2.User(user_id=user.user_id, name=user.name, tenant_id=user.tenant_id)

    @_status_codes
    async def CreateApiKey(
        self, request: session_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.CreateApiKeyResponse:
        if not is_id(request.user_id):
            raise InvalidArgumentError("user_id", f"no user {request.user_id}")
        key = await self._store.create_api_key(request.user_id, request.name)
        return session_pb2.CreateApiKeyResponse(key_id=key.key_id, api_key=key.api_key)

    @_status_codes
    async def RevokeApiKey(
        self, request: session_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.RevokeApiKeyResponse:
        if not (is_id(request.key_id) and await self._store.revoke_api_key(request.key_id)):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no active API key {request.key_id}")
        return session_pb2.RevokeApiKeyResponse()

    @_status_codes
    async def StartTurn(
        self, request: session_pb2.StartTurnRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.StartTurnResponse:
        content = request.content
        if not content.strip():
            raise InvalidArgumentError("content", "must not be empty")
        if len(content) > MAX_CONTENT_CHARS:
            raise InvalidArgumentError("content", f"longer than {MAX_CONTENT_CHARS} characters")
        if not request.request_id or len(request.request_id) > 128:
            raise InvalidArgumentError("request_id", "must be 1 to 128 characters")
        if request.chat_id:
            _check_chat_id(request.chat_id)
            chat = await self._store.get_chat(request.user_id, request.chat_id)
            bot = self._bot(chat.bot_id)
        else:
            bot = self._bot(request.bot_id)
            chat = await self._store.create_chat(
                request.user_id,
                bot_id=bot.bot_id,
                title=_title_from(content),
                request_id=request.request_id,
            )
        user_message = await self._store.append_user_message(
            user_id=request.user_id,
            chat_id=chat.chat_id,
            content=content,
            token_count=self._tokens.count(content),
            request_id=request.request_id,
        )
        await self._await_previous_answer(chat.chat_id, user_message.ordinal)
        existing_answer = await self._store.find_message(
            chat.chat_id, request.request_id, "assistant"
        )
        policy = _POLICY_FROM_PB.get(request.history_policy, bot.history_policy)
        if policy is HistoryPolicy.SUMMARIZE:
            policy = HistoryPolicy.TRUNCATE  # until summaries exist, summarize degrades to truncate
        max_tokens = request.max_tokens or bot.max_tokens
        history = [
            m.stored()
            for m in await self._store.chat_messages(chat.chat_id)
            if m.ordinal <= user_message.ordinal and m.role in ("user", "assistant")
        ]
        plan = build_context(
            system_prompt=bot.system_prompt,
            history=history,
            policy=policy,
            window=self._settings.context_window,
            reply_budget=max_tokens,
            count_tokens=self._tokens.count,
        )
        sampling = types_pb2.SamplingParams(max_tokens=max_tokens)
        if bot.temperature is not None:
            sampling.temperature = bot.temperature
        if bot.top_p is not None:
            sampling.top_p = bot.top_p
        response = session_pb2.StartTurnResponse(
            chat=_chat_pb(await self._store.get_chat(request.user_id, chat.chat_id)),
            user_message=_message_pb(user_message),
            context=session_pb2.Context(
                messages=[
                    types_pb2.ChatMessage(role=_ROLE_TO_PB[role], content=text)
                    for role, text in plan.messages
                ],
                prompt_tokens=plan.prompt_tokens,
                policy=_POLICY_TO_PB[policy],
                dropped_messages=plan.dropped_messages,
            ),
            model=bot.model,
            sampling=sampling,
            cache_scope=_SCOPE_TO_PB[bot.cache_scope],
            system_prompt=bot.system_prompt,
            replayed=existing_answer is not None,
        )
        if existing_answer is not None:
            response.existing_answer.CopyFrom(_message_pb(existing_answer))
        return response

    async def _await_previous_answer(self, chat_id: str, ordinal: int) -> None:
        """Answers are stored from the results topic, a moment after the client has read them:
        a quick next question waits briefly for the previous answer, so that the model sees it."""
        if ordinal < 2 or await self._store.message_at(chat_id, ordinal - 1) is not None:
            return
        previous = await self._store.message_at(chat_id, ordinal - 2)
        if previous is None or now_ms() - previous.created_ms > _ANSWER_PENDING_MS:
            return  # no question before, or its answer is not coming (failed, expired)
        deadline = time.monotonic() + self._settings.previous_answer_wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if await self._store.message_at(chat_id, ordinal - 1) is not None:
                return

    @_status_codes
    async def GetChat(
        self, request: session_pb2.GetChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.GetChatResponse:
        _check_chat_id(request.chat_id)
        chat = await self._store.get_chat(request.user_id, request.chat_id)
        response = session_pb2.GetChatResponse(chat=_chat_pb(chat))
        if request.include_messages:
            response.messages.extend(
                _message_pb(m) for m in await self._store.chat_messages(chat.chat_id)
            )
        return response

    @_status_codes
    async def ListChats(
        self, request: session_pb2.ListChatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListChatsResponse:
        limit = request.limit or 20
        if limit > MAX_LIST_LIMIT:
            raise InvalidArgumentError("limit", f"at most {MAX_LIST_LIMIT}")
        before = _decode_cursor(request.cursor) if request.cursor else None
        chats = await self._store.list_chats(request.user_id, limit=limit + 1, before=before)
        response = session_pb2.ListChatsResponse(chats=[_chat_pb(c) for c in chats[:limit]])
        if len(chats) > limit:
            response.next_cursor = _encode_cursor(chats[limit - 1])
        return response

    @_status_codes
    async def DeleteChat(
        self, request: session_pb2.DeleteChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.DeleteChatResponse:
        _check_chat_id(request.chat_id)
        await self._store.delete_chat(request.user_id, request.chat_id)
        return session_pb2.DeleteChatResponse()
