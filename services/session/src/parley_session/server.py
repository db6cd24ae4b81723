"""SessionService over gRPC: translates the wire into store and domain calls.

Status codes mean what they say: NOT_FOUND for an id the caller cannot see (another user's chat
included), INVALID_ARGUMENT naming the field (also as a google.rpc.BadRequest in the status
details), PERMISSION_DENIED for a profile the caller sees but may not change, UNAVAILABLE when
MongoDB stays unreachable through the retry policy, DEADLINE_EXCEEDED when the caller's deadline
passes first (every MongoDB operation of a call is bounded by it).
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from pymongo.errors import PyMongoError

from parley.v1 import session_pb2, session_pb2_grpc, types_pb2
from parley_common.ids import is_id
from parley_session.completions import (
    CompletionService,
    ContextLengthExceededError,
    ModelNotFoundError,
)
from parley_session.config import Settings
from parley_session.context import BuiltContext, ContextBuilder
from parley_session.domain import (
    BotNotFoundError,
    BotProfile,
    ChatNotFoundError,
    HistoryPolicy,
    InvalidArgumentError,
    MessageNotFoundError,
    PermissionDeniedError,
    StoredMessage,
    check_message_fits,
)
from parley_session.profiles import (
    DEFAULT_BOT_ID,
    POLICY_FROM_PB,
    POLICY_TO_PB,
    SCOPE_TO_PB,
    ProfileRules,
    bot_pb,
)
from parley_session.retry import (
    DeadlineExceededError,
    StoreUnavailableError,
    deadline,
    is_transient,
)
from parley_session.stores import (
    ChatDoc,
    FeedbackDoc,
    FeedbackQuery,
    LoadedHistory,
    MessageDoc,
    Stores,
    TurnSlot,
    from_ms,
)
from parley_session.summaries import Summarizer
from parley_session.tokens import TokenCounter

__all__ = ["SessionServicer"]

log = logging.getLogger(__name__)

MAX_CONTENT_CHARS = 100_000
MAX_LIST_LIMIT = 100
_RELEASE_S = 1.0
_NO_LATER_THAN = 2**31  # an ordinal past any chat's last message

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
_RATING_FROM_PB = {session_pb2.RATING_UP: "up", session_pb2.RATING_DOWN: "down"}
_RATING_TO_PB = {v: k for k, v in _RATING_FROM_PB.items()}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


async def _abort_invalid(
    context: grpc.aio.ServicerContext[Any, Any], exc: InvalidArgumentError
) -> None:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=exc.field, description=exc.description
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[detail])
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        str(exc),
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


async def _abort_for(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    """Abort the call with the status that `exc` means; re-raise what is not ours to map."""
    if isinstance(exc, ChatNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"chat {exc} not found")
    if isinstance(exc, BotNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"bot profile {exc} not found")
    if isinstance(exc, MessageNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"message {exc} not found in this chat")
    if isinstance(exc, PermissionDeniedError):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, InvalidArgumentError):
        await _abort_invalid(context, exc)
    if isinstance(exc, DeadlineExceededError):
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the deadline passed before the session store answered",
        )
    if isinstance(exc, StoreUnavailableError) or (
        isinstance(exc, PyMongoError) and is_transient(exc)
    ):
        log.warning("mongodb unavailable", extra={"error": repr(exc)})
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "the session store (MongoDB) is unavailable; retry shortly"
        )
    if isinstance(exc, PyMongoError):
        if exc.timeout:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the deadline passed before the session store answered",
            )
        log.error("mongodb error", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"session store error: {type(exc).__name__}")
    raise exc


_MAPPED = (
    ChatNotFoundError,
    BotNotFoundError,
    MessageNotFoundError,
    PermissionDeniedError,
    InvalidArgumentError,
    DeadlineExceededError,
    StoreUnavailableError,
    PyMongoError,
)


def _rpc(method: Method[Req, Resp]) -> Method[Req, Resp]:
    """Bound the call's store work by its deadline and map errors to status codes."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            with deadline(context.time_remaining()):
                return await method(self, request, context)
        except _MAPPED as exc:
            await _abort_for(context, exc)
        raise AssertionError("unreachable")  # context.abort always raises

    return wrapper


def _chat_pb(chat: ChatDoc) -> session_pb2.Chat:
    pb = session_pb2.Chat(
        chat_id=chat.chat_id,
        title=chat.title,
        bot_id=chat.bot_id,
        created_unix_ms=chat.created_ms,
        updated_unix_ms=chat.updated_ms,
        message_count=chat.message_count,
    )
    if chat.summary is not None:
        pb.summary = chat.summary.text
        pb.summary_through_ordinal = chat.summary.through_ordinal
    return pb


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


def _feedback_pb(f: FeedbackDoc) -> session_pb2.Feedback:
    return session_pb2.Feedback(
        feedback_id=f.feedback_id,
        chat_id=f.chat_id,
        message_id=f.message_id,
        user_id=f.user_id,
        bot_id=f.bot_id,
        rating=_RATING_TO_PB[f.rating],
        comment=f.comment,
        tags=f.tags,
        request_id=f.request_id,
        cache_entry_id=f.cache_entry_id,
        created_unix_ms=f.created_ms,
        updated_unix_ms=f.updated_ms,
        model=f.model,
        question=f.question,
        answer=f.answer,
    )


def _context_pb(built: BuiltContext) -> session_pb2.Context:
    pb = session_pb2.Context(
        messages=[
            types_pb2.ChatMessage(role=_ROLE_TO_PB[role], content=text)
            for role, text in built.plan.messages
        ],
        prompt_tokens=built.plan.prompt_tokens,
        policy=POLICY_TO_PB[built.policy],
        dropped_messages=built.dropped_messages,
        summary_used=built.summary_through_ordinal is not None,
    )
    if built.summary_through_ordinal is not None:
        pb.summary_through_ordinal = built.summary_through_ordinal
    return pb


def _encode_cursor(at_ms: int, item_id: str) -> str:
    return base64.urlsafe_b64encode(f"{at_ms}:{item_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ms, item_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        return from_ms(int(ms)), item_id
    # OverflowError, OSError: a time far outside what datetime or the platform can represent.
    except (ValueError, OverflowError, OSError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgumentError("cursor", "not a cursor returned by this API") from exc


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


def _check_chat_id(chat_id: str) -> None:
    if not is_id(chat_id):
        raise ChatNotFoundError(chat_id)


def _check_content(content: str) -> None:
    if not content.strip():
        raise InvalidArgumentError("content", "must not be empty")
    if len(content) > MAX_CONTENT_CHARS:
        raise InvalidArgumentError("content", f"longer than {MAX_CONTENT_CHARS} characters")


def _clean_tags(tags: list[str]) -> list[str]:
    cleaned = list(dict.fromkeys(t.strip().lower() for t in tags if t.strip()))
    if len(cleaned) > 10:
        raise InvalidArgumentError("tags", "at most 10")
    for tag in cleaned:
        if len(tag) > 40:
            raise InvalidArgumentError("tags", f"{tag[:40]!r}…: at most 40 characters a tag")
    return cleaned


def _feedback_query(bot_id: str, since_ms: int, until_ms: int, cursor: str = "") -> FeedbackQuery:
    if since_ms < 0 or until_ms < 0:
        raise InvalidArgumentError("since", "Unix milliseconds, not negative")
    if since_ms and until_ms and until_ms <= since_ms:
        raise InvalidArgumentError("until", "must be after since")
    return FeedbackQuery(
        bot_id=bot_id,
        since=from_ms(since_ms) if since_ms else None,
        until=from_ms(until_ms) if until_ms else None,
        before=_decode_cursor(cursor) if cursor else None,
    )


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    def __init__(
        self,
        store: Stores,
        tokens: TokenCounter,
        settings: Settings,
        *,
        summarizer: Summarizer | None = None,
        completions: CompletionService | None = None,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._settings = settings
        self._completions = completions or CompletionService.for_store(
            store,
            tokens,
            model_name=settings.model_name,
            context_window=settings.context_window,
            default_max_tokens=settings.default_max_tokens,
        )
        self._profiles = ProfileRules(settings, tokens)
        self._contexts = ContextBuilder(
            store, tokens, window=settings.context_window, summarizer=summarizer
        )

    # bot profiles of chats

    async def _chat_bot(self, chat: ChatDoc) -> BotProfile:
        """The profile a chat was started with (or moved to), even if it was deleted since."""
        if chat.bot_id in ("", DEFAULT_BOT_ID):
            return self._profiles.default
        try:
            return await self._store.bots.get_bot(
                chat.bot_id, visible_to=None, include_deleted=True
            )
        except BotNotFoundError:
            log.warning("chat's bot profile is gone", extra={"bot_id": chat.bot_id})
            return self._profiles.default

    async def _pickable_bot(self, user_id: str, bot_id: str) -> BotProfile:
        """A profile a user may start (or move) a chat with."""
        if bot_id in ("", DEFAULT_BOT_ID):
            return self._profiles.default
        try:
            if not is_id(bot_id):
                raise BotNotFoundError(bot_id)
            return await self._store.bots.get_bot(bot_id, visible_to=user_id, include_deleted=False)
        except BotNotFoundError:
            raise InvalidArgumentError("bot_id", f"no bot profile {bot_id!r}") from None

    def _reply_budget(self, bot: BotProfile, requested: int) -> int:
        budget = requested or bot.max_tokens
        if budget >= self._settings.context_window:
            raise InvalidArgumentError(
                "max_tokens", f"less than the model's window of {self._settings.context_window}"
            )
        return budget

    # users and keys

    @_rpc
    async def AuthenticateKey(
        self,
        request: session_pb2.AuthenticateKeyRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.User:
        user = await self._store.users.authenticate(request.api_key)
        if user is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
        assert user is not None
        return session_pb2.User(user_id=user.user_id, name=user.name, tenant_id=user.tenant_id)

    @_rpc
    async def CreateUser(
        self, request: session_pb2.CreateUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.User:
        name = request.name.strip()
        if not name or len(name) > 200:
            raise InvalidArgumentError("name", "must be 1 to 200 characters")
        user = await self._store.users.create_user(name, request.tenant_id)
        return session_pb2.User(user_id=user.user_id, name=user.name, tenant_id=user.tenant_id)

    @_rpc
    async def CreateApiKey(
        self, request: session_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.CreateApiKeyResponse:
        if not is_id(request.user_id):
            raise InvalidArgumentError("user_id", f"no user {request.user_id}")
        key = await self._store.users.create_api_key(request.user_id, request.name)
        return session_pb2.CreateApiKeyResponse(key_id=key.key_id, api_key=key.api_key)

    @_rpc
    async def RevokeApiKey(
        self, request: session_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.RevokeApiKeyResponse:
        if not (is_id(request.key_id) and await self._store.users.revoke_api_key(request.key_id)):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no active API key {request.key_id}")
        return session_pb2.RevokeApiKeyResponse()

    # turns

    @_rpc
    async def StartTurn(
        self, request: session_pb2.StartTurnRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.StartTurnResponse:
        _check_content(request.content)
        if not request.request_id or len(request.request_id) > 128:
            raise InvalidArgumentError("request_id", "must be 1 to 128 characters")
        if request.chat_id:
            _check_chat_id(request.chat_id)
            return await self._next_turn(request, request.chat_id)
        return await self._first_turn(request)

    async def _first_turn(
        self, request: session_pb2.StartTurnRequest
    ) -> session_pb2.StartTurnResponse:
        """A new chat: its question is stored in the same two writes that create it, and the
        context is built from what is known (no history to read)."""
        content = request.content
        token_count = self._tokens.count(content)
        try:
            bot = await self._pickable_bot(request.user_id, request.bot_id)
            max_tokens = self._reply_budget(bot, request.max_tokens)
            # Refused before anything is stored: a turn that cannot be sent is never kept.
            self._check_fits(bot, content, token_count, max_tokens)
        except InvalidArgumentError:
            # Unless the request was accepted before (a retry): it goes on in its chat.
            chat = await self._store.chats.find_chat_by_request(request.user_id, request.request_id)
            if chat is None:
                raise
            return await self._next_turn(request, chat.chat_id)
        opened = await self._store.chats.open_chat(
            request.user_id,
            bot_id=bot.bot_id,
            title=_title_from(content),
            request_id=request.request_id,
            content=content,
            token_count=token_count,
        )
        if opened.question is None:
            return await self._next_turn(request, opened.chat.chat_id)
        if not opened.created:
            return await self._replay(request, opened.chat.chat_id, opened.question)
        policy = POLICY_FROM_PB.get(request.history_policy, bot.history_policy)
        built = await self._contexts.build(
            chat=opened.chat,
            bot=bot,
            policy=policy,
            reply_budget=max_tokens,
            through_ordinal=opened.question.ordinal,
            known=LoadedHistory(
                [opened.question.stored()],
                created_ms={opened.question.ordinal: opened.question.created_ms},
            ),
        )
        return self._turn_response(opened.chat, bot, opened.question, built, max_tokens, None)

    async def _next_turn(
        self, request: session_pb2.StartTurnRequest, chat_id: str
    ) -> session_pb2.StartTurnResponse:
        """A question in an existing chat: reserve its ordinal (reading the chat, its owner
        checked), store it, read the history once."""
        content = request.content
        token_count = self._tokens.count(content)
        slot = await self._store.chats.reserve_turn(request.user_id, chat_id)
        try:
            bot = await self._chat_bot(slot.chat)
            policy = POLICY_FROM_PB.get(request.history_policy, bot.history_policy)
            max_tokens = self._reply_budget(bot, request.max_tokens)
            self._check_fits(bot, content, token_count, max_tokens)
            if policy is HistoryPolicy.FULL:
                await self._contexts.build(
                    chat=slot.chat,
                    bot=bot,
                    policy=policy,
                    reply_budget=max_tokens,
                    through_ordinal=slot.ordinal - 1,
                    draft=StoredMessage(slot.ordinal, "user", content, token_count),
                    summarize=False,
                )
        except InvalidArgumentError:
            await self._store.chats.release_turn(slot)
            # A question stored before (a retry) is answered as it was accepted then.
            stored = await self._store.messages.find_message(chat_id, request.request_id, "user")
            if stored is None:
                raise
            return await self._replay(request, chat_id, stored)
        except Exception:
            await self._release_quietly(slot)
            raise
        question, placed = await self._store.chats.place_question(
            slot, content=content, token_count=token_count, request_id=request.request_id
        )
        if not placed:
            await self._store.chats.release_turn(slot)
            return await self._replay(request, chat_id, question)
        built = await self._contexts.build(
            chat=slot.chat,
            bot=bot,
            policy=policy,
            reply_budget=max_tokens,
            through_ordinal=question.ordinal,
            answer_wait_s=self._settings.previous_answer_wait_s,
        )
        return self._turn_response(slot.chat, bot, question, built, max_tokens, None)

    async def _replay(
        self, request: session_pb2.StartTurnRequest, chat_id: str, question: MessageDoc
    ) -> session_pb2.StartTurnResponse:
        """A turn delivered again: its stored question, its context and its answer if stored."""
        chat = await self._store.chats.get_chat(request.user_id, chat_id)
        bot = await self._chat_bot(chat)
        max_tokens = self._reply_budget(bot, request.max_tokens)
        existing_answer = await self._store.messages.find_message(
            chat_id, request.request_id, "assistant"
        )
        built = await self._contexts.build(
            chat=chat,
            bot=bot,
            policy=POLICY_FROM_PB.get(request.history_policy, bot.history_policy),
            reply_budget=max_tokens,
            through_ordinal=question.ordinal,
            answer_wait_s=self._settings.previous_answer_wait_s,
        )
        return self._turn_response(chat, bot, question, built, max_tokens, existing_answer)

    async def _release_quietly(self, slot: TurnSlot) -> None:
        """Give back the slot of a turn that failed before its question was stored, if MongoDB
        still answers (otherwise the chat's count keeps it: a display figure, nothing else)."""
        try:
            with deadline(_RELEASE_S):
                await self._store.chats.release_turn(slot)
        except _MAPPED as exc:
            log.warning("could not give back a turn's slot", extra={"error": repr(exc)})

    def _check_fits(self, bot: BotProfile, content: str, tokens: int, reply_budget: int) -> None:
        check_message_fits(
            system_prompt=bot.system_prompt,
            content=content,
            content_tokens=tokens,
            window=self._settings.context_window,
            reply_budget=reply_budget,
            fmt=self._tokens,
        )

    def _turn_response(
        self,
        chat: ChatDoc,
        bot: BotProfile,
        question: MessageDoc,
        built: BuiltContext,
        max_tokens: int,
        existing_answer: MessageDoc | None,
    ) -> session_pb2.StartTurnResponse:
        sampling = types_pb2.SamplingParams(max_tokens=max_tokens)
        if bot.temperature is not None:
            sampling.temperature = bot.temperature
        if bot.top_p is not None:
            sampling.top_p = bot.top_p
        response = session_pb2.StartTurnResponse(
            chat=_chat_pb(chat),
            user_message=_message_pb(question),
            context=_context_pb(built),
            model=bot.model,
            sampling=sampling,
            cache_scope=SCOPE_TO_PB[bot.cache_scope],
            system_prompt=bot.system_prompt,
            replayed=existing_answer is not None,
        )
        if existing_answer is not None:
            response.existing_answer.CopyFrom(_message_pb(existing_answer))
        return response

    @_rpc
    async def BuildContext(
        self, request: session_pb2.BuildContextRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.Context:
        _check_chat_id(request.chat_id)
        _check_content(request.content)
        chat = await self._store.chats.get_chat(request.user_id, request.chat_id)
        bot = await self._chat_bot(chat)
        max_tokens = self._reply_budget(bot, request.max_tokens)
        built = await self._contexts.build(
            chat=chat,
            bot=bot,
            policy=POLICY_FROM_PB.get(request.history_policy, bot.history_policy),
            reply_budget=max_tokens,
            through_ordinal=_NO_LATER_THAN - 1,
            draft=StoredMessage(
                _NO_LATER_THAN, "user", request.content, self._tokens.count(request.content)
            ),
            summarize=False,
        )
        return _context_pb(built)

    # chats

    @_rpc
    async def GetChat(
        self, request: session_pb2.GetChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.GetChatResponse:
        _check_chat_id(request.chat_id)
        chat = await self._store.chats.get_chat(request.user_id, request.chat_id)
        response = session_pb2.GetChatResponse(chat=_chat_pb(chat))
        if request.include_messages:
            response.messages.extend(
                _message_pb(m) for m in await self._store.messages.chat_messages(chat.chat_id)
            )
        return response

    @_rpc
    async def ListChats(
        self, request: session_pb2.ListChatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListChatsResponse:
        limit = request.limit or 20
        if limit > MAX_LIST_LIMIT:
            raise InvalidArgumentError("limit", f"at most {MAX_LIST_LIMIT}")
        before = _decode_cursor(request.cursor) if request.cursor else None
        chats = await self._store.chats.list_chats(request.user_id, limit=limit + 1, before=before)
        response = session_pb2.ListChatsResponse(chats=[_chat_pb(c) for c in chats[:limit]])
        if len(chats) > limit:
            last = chats[limit - 1]
            response.next_cursor = _encode_cursor(last.updated_ms, last.chat_id)
        return response

    @_rpc
    async def UpdateChat(
        self, request: session_pb2.UpdateChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.Chat:
        _check_chat_id(request.chat_id)
        title: str | None = None
        bot_id: str | None = None
        if request.HasField("title"):
            title = " ".join(request.title.split())
            if not title or len(title) > 200:
                raise InvalidArgumentError("title", "must be 1 to 200 characters")
        if request.HasField("bot_id"):
            await self._store.chats.get_chat(
                request.user_id, request.chat_id
            )  # NOT_FOUND comes first
            bot_id = (await self._pickable_bot(request.user_id, request.bot_id)).bot_id
        if title is None and bot_id is None:
            raise InvalidArgumentError("title", "give a title or a bot_id to change")
        chat = await self._store.chats.update_chat(
            request.user_id, request.chat_id, title=title, bot_id=bot_id
        )
        return _chat_pb(chat)

    @_rpc
    async def DeleteChat(
        self, request: session_pb2.DeleteChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.DeleteChatResponse:
        _check_chat_id(request.chat_id)
        await self._store.chats.delete_chat(request.user_id, request.chat_id)
        return session_pb2.DeleteChatResponse()

    # bot profiles

    def _owner(self, user_id: str, admin: bool) -> str:
        """Whose profiles a call manages: the admin's are the shared ones (no owner)."""
        if admin:
            return ""
        if not is_id(user_id):
            raise InvalidArgumentError("user_id", "required (or the admin flag)")
        return user_id

    async def _own_bot(self, user_id: str, admin: bool, bot_id: str) -> BotProfile:
        """A profile the caller may change; a visible one that is not theirs is refused."""
        owner = self._owner(user_id, admin)
        if bot_id == DEFAULT_BOT_ID:
            raise PermissionDeniedError("the default profile is set by the service's configuration")
        if not is_id(bot_id):
            raise BotNotFoundError(bot_id)
        bot = await self._store.bots.get_bot(
            bot_id, visible_to=None if admin else owner, include_deleted=False
        )
        if bot.owner_user_id != owner:
            if bot.shared:
                raise PermissionDeniedError("shared profiles are managed with the admin key")
            raise BotNotFoundError(bot_id)  # another user's: not told apart from none
        return bot

    @_rpc
    async def ListBots(
        self, request: session_pb2.ListBotsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListBotsResponse:
        owner = self._owner(request.user_id, request.admin)
        bots = await self._store.bots.list_bots(owner or None)
        return session_pb2.ListBotsResponse(
            bots=[bot_pb(b) for b in [self._profiles.default, *bots]]
        )

    @_rpc
    async def GetBot(
        self, request: session_pb2.GetBotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.BotProfile:
        owner = self._owner(request.user_id, request.admin)
        if request.bot_id == DEFAULT_BOT_ID:
            return bot_pb(self._profiles.default)
        if not is_id(request.bot_id):
            raise BotNotFoundError(request.bot_id)
        bot = await self._store.bots.get_bot(
            request.bot_id, visible_to=owner or None, include_deleted=False
        )
        if request.admin and not bot.shared:
            raise BotNotFoundError(request.bot_id)  # users' own profiles are theirs alone
        return bot_pb(bot)

    @_rpc
    async def CreateBot(
        self, request: session_pb2.CreateBotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.BotProfile:
        owner = self._owner(request.user_id, request.admin)
        bot = self._profiles.new(request.bot, owner_user_id=owner, admin=request.admin)
        if owner and await self._store.bots.count_bots(owner) >= self._settings.max_bots_per_user:
            raise InvalidArgumentError(
                "bot", f"at most {self._settings.max_bots_per_user} profiles a user; delete one"
            )
        return bot_pb(await self._store.bots.create_bot(bot))

    @_rpc
    async def UpdateBot(
        self, request: session_pb2.UpdateBotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.BotProfile:
        current = await self._own_bot(request.user_id, request.admin, request.bot.bot_id)
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgumentError("update_mask", "name the fields to change")
        changed = self._profiles.update(current, request.bot, paths, admin=request.admin)
        return bot_pb(await self._store.bots.replace_bot(changed))

    @_rpc
    async def DeleteBot(
        self, request: session_pb2.DeleteBotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.DeleteBotResponse:
        bot = await self._own_bot(request.user_id, request.admin, request.bot_id)
        await self._store.bots.delete_bot(bot.bot_id, bot.owner_user_id)
        return session_pb2.DeleteBotResponse()

    # feedback

    @_rpc
    async def SubmitFeedback(
        self,
        request: session_pb2.SubmitFeedbackRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.Feedback:
        _check_chat_id(request.chat_id)
        rating = _RATING_FROM_PB.get(request.rating)
        if rating is None:
            raise InvalidArgumentError("rating", "up or down")
        comment = request.comment.strip()
        if len(comment) > 4000:
            raise InvalidArgumentError("comment", "at most 4000 characters")
        tags = _clean_tags(list(request.tags))
        chat = await self._store.chats.get_chat(request.user_id, request.chat_id)
        message = (
            await self._store.messages.get_message(chat.chat_id, request.message_id)
            if is_id(request.message_id)
            else None
        )
        if message is None:
            raise MessageNotFoundError(request.message_id)
        if message.role != "assistant":
            raise InvalidArgumentError("message_id", "feedback is given on the assistant's answers")
        feedback = await self._store.feedback.put_feedback(
            user_id=request.user_id,
            chat=chat,
            message=message,
            rating=rating,
            comment=comment,
            tags=tags,
        )
        return _feedback_pb(feedback)

    @_rpc
    async def ListFeedback(
        self, request: session_pb2.ListFeedbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListFeedbackResponse:
        limit = request.limit or 50
        if limit > MAX_LIST_LIMIT:
            raise InvalidArgumentError("limit", f"at most {MAX_LIST_LIMIT}")
        query = _feedback_query(
            request.bot_id, request.since_unix_ms, request.until_unix_ms, request.cursor
        )
        found = await self._store.feedback.list_feedback(query, limit=limit + 1)
        response = session_pb2.ListFeedbackResponse(
            feedback=[_feedback_pb(f) for f in found[:limit]]
        )
        if len(found) > limit:
            last = found[limit - 1]
            response.next_cursor = _encode_cursor(last.updated_ms, last.feedback_id)
        return response

    async def ExportFeedback(
        self,
        request: session_pb2.ExportFeedbackRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[session_pb2.Feedback]:
        try:
            query = _feedback_query(request.bot_id, request.since_unix_ms, request.until_unix_ms)
            async for item in self._store.feedback.export_feedback(query):
                yield _feedback_pb(item)
        except _MAPPED as exc:
            await _abort_for(context, exc)

    # stateless and asynchronous completions, rate limits: parley_session.completions

    @_rpc
    async def PrepareCompletion(
        self,
        request: session_pb2.PrepareCompletionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.PrepareCompletionResponse:
        try:
            return self._completions.prepare(request)
        except ModelNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ContextLengthExceededError as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        raise AssertionError("unreachable")  # context.abort always raises

    @_rpc
    async def ListModels(
        self, request: session_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListModelsResponse:
        return self._completions.list_models()

    @_rpc
    async def CreateCompletion(
        self,
        request: session_pb2.CreateCompletionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.CreateCompletionResponse:
        return await self._completions.create(request)

    @_rpc
    async def GetCompletion(
        self, request: session_pb2.GetCompletionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.Completion:
        found = await self._completions.get(request.user_id, request.completion_id)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"completion {request.completion_id!r} not found"
            )
        assert found is not None
        return found

    @_rpc
    async def MarkCompletionRunning(
        self,
        request: session_pb2.MarkCompletionRunningRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.Completion:
        found = await self._completions.mark_running(request.user_id, request.completion_id)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"completion {request.completion_id!r} not found"
            )
        assert found is not None
        return found

    @_rpc
    async def ConsumeQuota(
        self, request: session_pb2.ConsumeQuotaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ConsumeQuotaResponse:
        return await self._completions.consume_quota(request)
