"""SessionService over gRPC: translates the wire into store and domain calls.

Status codes mean what they say: NOT_FOUND for an id the caller cannot see (another user's chat
included), INVALID_ARGUMENT naming the field (also as a google.rpc.BadRequest in the status
details), PERMISSION_DENIED for a profile the caller sees but may not change, UNAVAILABLE when
MongoDB stays unreachable through the retry policy, DEADLINE_EXCEEDED when the caller's deadline
passes first (every MongoDB operation of a call is bounded by it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from pymongo.errors import PyMongoError

from parley.v1 import session_pb2, session_pb2_grpc
from parley_common.grpc_errors import abort_bad_field
from parley_common.ids import is_id
from parley_common.vocabulary import AccountRole
from parley_session import wire
from parley_session.accounts import Accounts, ExternalIdentity
from parley_session.attachments import Attachments
from parley_session.bot_access import BotAccess
from parley_session.completions import (
    CompletionService,
    ContextLengthExceededError,
)
from parley_session.config import Settings
from parley_session.context import ContextBuilder
from parley_session.domain import (
    AlreadyExistsError,
    AttachmentNotFoundError,
    BotNotFoundError,
    ChatNotFoundError,
    CompletionNotFoundError,
    InvalidArgumentError,
    MessageNotFoundError,
    ModelNotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UserNotFoundError,
)
from parley_session.failures import EXPECTED_FAILURES
from parley_session.feedback import submit_feedback
from parley_session.profiles import ProfileRules, bot_pb
from parley_session.retry import (
    DeadlineExceededError,
    StoreUnavailableError,
    deadline,
    is_transient,
)
from parley_session.search import check_query, snippet
from parley_session.stores import AuditEvent, ChatDoc, MessageDoc, Stores, from_ms
from parley_session.stores._mongo import ms
from parley_session.summaries import Summarizer
from parley_session.tokens import TokenCounter
from parley_session.turns import Turns, check_chat_id

__all__ = ["SessionServicer"]


def _role(value: str) -> AccountRole:
    role = AccountRole.parse(value)
    if role is None:
        raise InvalidArgumentError("role", "must be admin, member or viewer")
    return role


log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 100

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


async def _abort_invalid(
    context: grpc.aio.ServicerContext[Any, Any], exc: InvalidArgumentError
) -> None:
    # OUT_OF_RANGE: the request is well formed, it just does not fit the model's window.
    code = (
        grpc.StatusCode.OUT_OF_RANGE
        if isinstance(exc, ContextLengthExceededError)
        else grpc.StatusCode.INVALID_ARGUMENT
    )
    await abort_bad_field(
        context, code, str(exc), field=exc.field, description=exc.description, reason=exc.reason
    )


async def _abort_for(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    """Abort the call with the status that `exc` means; re-raise what is not ours to map."""
    if isinstance(exc, ChatNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"chat {exc} not found")
    if isinstance(exc, BotNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"bot profile {exc} not found")
    if isinstance(exc, CompletionNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"completion {exc.args[0]!r} not found")
    if isinstance(exc, ModelNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, UserNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no user {exc}")
    if isinstance(exc, AttachmentNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"attachment {exc} not found in this chat")
    if isinstance(exc, MessageNotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"message {exc} not found in this chat")
    if isinstance(exc, PermissionDeniedError):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, AlreadyExistsError):
        await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, UnauthenticatedError):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
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


def _rpc(method: Method[Req, Resp]) -> Method[Req, Resp]:
    """Bound the call's store work by its deadline and map errors to status codes."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            with deadline(context.time_remaining()):
                return await method(self, request, context)
        except EXPECTED_FAILURES as exc:
            await _abort_for(context, exc)
        raise AssertionError("unreachable")  # context.abort always raises

    return wrapper


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    """The wire to plain calls and back: each method checks what only the wire can get wrong,
    calls the stores or a use-case (`turns.py`, `bot_access.py`, `completions.py`) and converts
    the answer (`wire.py`); `_rpc` maps the domain's errors to status codes."""

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
        self._settings = settings
        self._completions = completions or CompletionService.for_store(
            store,
            tokens,
            model_name=settings.model_name,
            context_window=settings.context_window,
            default_max_tokens=settings.default_max_tokens,
        )
        self._profiles = ProfileRules(settings, tokens)
        self._bots = BotAccess(store.bots, self._profiles.default)
        contexts = ContextBuilder(
            store, tokens, window=settings.context_window, summarizer=summarizer
        )
        self._turns = Turns(store, self._bots, contexts, tokens, settings)
        self._accounts = Accounts(store)
        self._attachments = Attachments(store, tokens, settings)

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
        if user.disabled:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "this key's account is disabled by an admin"
            )
        return wire.user_pb(user)

    async def _tenant_user(self, user_id: str, tenant_id: str) -> None:
        """Refuse a user who does not exist, or (with `tenant_id`: a tenant admin's call) is
        not in that tenant: the two are not told apart."""
        if not is_id(user_id) or (
            await self._store.users.get_user(user_id, tenant_id=tenant_id or None) is None
        ):
            raise UserNotFoundError(user_id)

    @_rpc
    async def CreateUser(
        self, request: session_pb2.CreateUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.User:
        name = request.name.strip()
        if not name or len(name) > 200:
            raise InvalidArgumentError("name", "must be 1 to 200 characters")
        role = _role(request.role or AccountRole.MEMBER)
        if request.email or request.password:
            user = await self._accounts.create(
                email=request.email,
                password=request.password,
                name=name,
                tenant_id=request.tenant_id,
                role=role,
            )
        else:
            user = await self._store.users.create_user(name, request.tenant_id, role=role)
            await self._store.audit.record(
                AuditEvent("user_created", user.user_id, detail=f"tenant={request.tenant_id}")
            )
        return wire.user_pb(user)

    @_rpc
    async def CreateApiKey(
        self, request: session_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.CreateApiKeyResponse:
        if not is_id(request.user_id):
            raise InvalidArgumentError("user_id", f"no user {request.user_id}")
        if request.tenant_id:
            await self._tenant_user(request.user_id, request.tenant_id)
        key = await self._store.users.create_api_key(request.user_id, request.name)
        await self._store.audit.record(
            AuditEvent("key_created", request.user_id, detail=f"key_id={key.key_id}")
        )
        return session_pb2.CreateApiKeyResponse(key_id=key.key_id, api_key=key.api_key)

    @_rpc
    async def ListApiKeys(
        self, request: session_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListApiKeysResponse:
        await self._tenant_user(request.user_id, request.tenant_id)
        keys = await self._store.users.list_api_keys(request.user_id)
        return wire.api_keys_pb(keys)

    @_rpc
    async def SetRole(
        self, request: session_pb2.SetRoleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.User:
        role = _role(request.role)
        user = None
        if is_id(request.user_id):
            user = await self._store.users.set_role(
                request.user_id, role, tenant_id=request.tenant_id or None
            )
        if user is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no user {request.user_id}")
        assert user is not None
        await self._store.audit.record(
            AuditEvent("role_changed", user.user_id, detail=f"{role} by {request.changed_by}")
        )
        return wire.user_pb(user)

    @_rpc
    async def RevokeApiKey(
        self, request: session_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.RevokeApiKeyResponse:
        if request.tenant_id:
            await self._tenant_user(request.user_id, request.tenant_id)
        owner = None
        if is_id(request.key_id):
            owner = await self._store.users.revoke_api_key(request.key_id, user_id=request.user_id)
        if owner is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no active API key {request.key_id}")
        assert owner is not None
        by = f" by {request.revoked_by}" if request.revoked_by else ""
        await self._store.audit.record(
            AuditEvent("key_revoked", owner, detail=f"key_id={request.key_id}{by}")
        )
        return session_pb2.RevokeApiKeyResponse()

    # accounts and browser sessions: parley_session.accounts

    @_rpc
    async def SignUp(
        self, request: session_pb2.SignUpRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.User:
        if len(request.name) > 200:
            raise InvalidArgumentError("name", "must be at most 200 characters")
        user = await self._accounts.sign_up(
            email=request.email,
            password=request.password,
            name=request.name.strip(),
            invite_code=request.invite_code,
            require_invite=request.require_invite,
        )
        return wire.user_pb(user)

    @_rpc
    async def SignIn(
        self, request: session_pb2.SignInRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.SignInResponse:
        result = await self._accounts.sign_in(
            email=request.email,
            password=request.password,
            client_address=request.client_address,
            policy=wire.sign_in_policy(request),
            replaces_token=request.replaces_session_token,
        )
        return wire.sign_in_pb(result)

    @_rpc
    async def SignInWithIdentity(
        self,
        request: session_pb2.SignInWithIdentityRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.SignInResponse:
        if not request.issuer or not request.subject:
            raise InvalidArgumentError("subject", "an identity needs its issuer and subject")
        identity = ExternalIdentity(
            issuer=request.issuer,
            subject=request.subject,
            email=request.email,
            email_verified=request.email_verified,
            name=request.name.strip()[:200],
            role=_role(request.role) if request.role else "",
            tenant_id=request.tenant_id,
            client_address=request.client_address,
        )
        result = await self._accounts.sign_in_with_identity(
            identity,
            policy=wire.session_policy(request.session),
            replaces_token=request.replaces_session_token,
        )
        return wire.sign_in_pb(result)

    @_rpc
    async def AuthenticateSession(
        self,
        request: session_pb2.AuthenticateSessionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.User:
        user = await self._accounts.authenticate(
            request.session_token, wire.session_policy(request.session)
        )
        return wire.user_pb(user)

    @_rpc
    async def SignOut(
        self, request: session_pb2.SignOutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.SignOutResponse:
        await self._accounts.sign_out(request.session_token, everywhere=request.everywhere)
        return session_pb2.SignOutResponse()

    @_rpc
    async def ChangePassword(
        self,
        request: session_pb2.ChangePasswordRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.ChangePasswordResponse:
        await self._accounts.change_password(
            request.user_id,
            current=request.current_password,
            new=request.new_password,
            keep_token=request.keep_session_token,
        )
        return session_pb2.ChangePasswordResponse()

    @_rpc
    async def SetPassword(
        self, request: session_pb2.SetPasswordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ChangePasswordResponse:
        if not is_id(request.user_id):
            raise UserNotFoundError(request.user_id)
        await self._accounts.set_password(
            request.user_id,
            request.new_password,
            tenant_id=request.tenant_id or None,
            by=request.changed_by,
        )
        return session_pb2.ChangePasswordResponse()

    @_rpc
    async def ListTenantUsers(
        self,
        request: session_pb2.ListTenantUsersRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.ListTenantUsersResponse:
        if request.role:
            _role(request.role)
        if request.state not in ("", "active", "disabled"):
            raise InvalidArgumentError("state", "must be active or disabled")
        if len(request.query) > 200:
            raise InvalidArgumentError("query", "must be at most 200 characters")
        page = await self._store.users.list_users(
            tenant_id=None if request.any_tenant else request.tenant_id,
            role=request.role,
            query=request.query,
            disabled=None if not request.state else request.state == "disabled",
            offset=request.offset,
            limit=min(request.limit or 50, MAX_LIST_LIMIT),
        )
        return session_pb2.ListTenantUsersResponse(
            users=[wire.user_pb(u) for u in page.users], total=page.total
        )

    @_rpc
    async def SetUserDisabled(
        self,
        request: session_pb2.SetUserDisabledRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.User:
        if not is_id(request.user_id):
            raise UserNotFoundError(request.user_id)
        user = await self._accounts.set_disabled(
            request.user_id,
            request.disabled,
            tenant_id=request.tenant_id or None,
            by=request.changed_by,
        )
        return wire.user_pb(user)

    @_rpc
    async def DeleteAccount(
        self, request: session_pb2.DeleteAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.DeleteAccountResponse:
        if not is_id(request.user_id):
            raise UserNotFoundError(request.user_id)

        async def delete_data(user_id: str) -> int:
            # What DeleteUserData deletes (the gateway's DELETE /chats), whatever it grows to.
            deleted = await self.DeleteUserData(
                session_pb2.DeleteUserDataRequest(user_id=user_id), context
            )
            return int(deleted.chats_deleted)

        done = await self._accounts.delete_account(
            request.user_id,
            password=request.password,
            confirmed=request.confirmed,
            delete_data=delete_data,
        )
        return session_pb2.DeleteAccountResponse(
            chats_deleted=done.chats, keys_deleted=done.keys, sessions_ended=done.sessions
        )

    @_rpc
    async def CreateInvite(
        self, request: session_pb2.CreateInviteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.CreateInviteResponse:
        valid_for = timedelta(seconds=request.valid_for_s or 7 * 24 * 3600)
        invite = await self._store.sign_in.create_invite(request.tenant_id, valid_for)
        return session_pb2.CreateInviteResponse(
            invite_code=invite.code, expires_at_ms=ms(invite.expires_at)
        )

    @_rpc
    async def ListAuditEvents(
        self,
        request: session_pb2.ListAuditEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.ListAuditEventsResponse:
        query = wire.audit_query(request, max_limit=MAX_LIST_LIMIT)
        events = await self._store.audit.list(query)
        return wire.audit_pb(events, query.limit)

    # turns: parley_session.turns

    @_rpc
    async def StartTurn(
        self, request: session_pb2.StartTurnRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.StartTurnResponse:
        return wire.turn_pb(await self._turns.start(wire.turn_request(request)))

    @_rpc
    async def BuildContext(
        self, request: session_pb2.BuildContextRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.Context:
        return wire.context_pb(await self._turns.build_context(wire.draft_request(request)))

    # chats

    @_rpc
    async def GetChat(
        self, request: session_pb2.GetChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.GetChatResponse:
        check_chat_id(request.chat_id)
        chat = await self._store.chats.get_chat(request.user_id, request.chat_id)
        if not request.include_messages:
            return session_pb2.GetChatResponse(chat=wire.chat_pb(chat))
        return await self._chat_with_path(chat)

    async def _chat_with_path(self, chat: ChatDoc) -> session_pb2.GetChatResponse:
        """The chat and its active path, each message with its place among its siblings."""
        path = await self._store.branches.active_path(chat)
        siblings = await self._store.branches.sibling_counts(chat.chat_id, path)
        return session_pb2.GetChatResponse(
            chat=wire.chat_pb(chat),
            messages=[wire.message_pb(m, siblings[m.message_id]) for m in path],
        )

    # branches: parley_session.stores.branches

    @_rpc
    async def ListSiblings(
        self, request: session_pb2.ListSiblingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListSiblingsResponse:
        check_chat_id(request.chat_id)
        chat = await self._store.chats.get_chat(request.user_id, request.chat_id)
        message = await self._message_of(chat, request.message_id)
        siblings = await self._store.branches.siblings(chat.chat_id, message)
        on_path = {m.message_id for m in await self._store.branches.active_path(chat)}
        count = len(siblings)
        return session_pb2.ListSiblingsResponse(
            siblings=[wire.message_pb(m, (count, i)) for i, m in enumerate(siblings)],
            active_message_id=next((m.message_id for m in siblings if m.message_id in on_path), ""),
        )

    @_rpc
    async def SelectBranch(
        self, request: session_pb2.SelectBranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.GetChatResponse:
        check_chat_id(request.chat_id)
        chat = await self._store.chats.get_chat(request.user_id, request.chat_id)
        message = await self._message_of(chat, request.message_id)
        await self._store.branches.select(request.user_id, chat.chat_id, message)
        return await self._chat_with_path(
            await self._store.chats.get_chat(request.user_id, request.chat_id)
        )

    @_rpc
    async def DeleteBranch(
        self, request: session_pb2.DeleteBranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.GetChatResponse:
        check_chat_id(request.chat_id)
        chat = await self._store.chats.get_chat(request.user_id, request.chat_id)
        message = await self._message_of(chat, request.message_id)
        if not message.parent_id:
            siblings = await self._store.branches.siblings(chat.chat_id, message)
            if len(siblings) < 2:
                raise InvalidArgumentError(
                    "message_id", "this is the chat's only first message: delete the chat instead"
                )
            other = next(m for m in siblings if m.message_id != message.message_id)
            if chat.active_leaf:
                await self._store.branches.select(request.user_id, chat.chat_id, other)
                chat = await self._store.chats.get_chat(request.user_id, request.chat_id)
        await self._store.branches.delete(request.user_id, chat, message)
        return await self._chat_with_path(
            await self._store.chats.get_chat(request.user_id, request.chat_id)
        )

    # search: parley_session.search

    @_rpc
    async def SearchChats(
        self, request: session_pb2.SearchChatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.SearchChatsResponse:
        query = wire.search_query(request)
        check_query(query)
        hits = await self._store.search.search(query)
        page = hits[query.offset : query.offset + query.limit]
        more = len(hits) > query.offset + query.limit
        return session_pb2.SearchChatsResponse(
            hits=[wire.search_hit_pb(h, snippet(h.text, query.text)) for h in page],
            next_offset=query.offset + query.limit if more else 0,
        )

    # export, deletion and usage

    async def ExportChats(
        self, request: session_pb2.ExportChatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[session_pb2.ExportedChat]:
        try:
            async for chat, messages in self._store.chats.export_chats(request.user_id):
                yield session_pb2.ExportedChat(
                    chat=wire.chat_pb(chat),
                    messages=[wire.message_pb(m) for m in messages],
                    active_leaf_id=chat.active_leaf,
                )
        except EXPECTED_FAILURES as exc:
            await _abort_for(context, exc)

    @_rpc
    async def DeleteUserData(
        self,
        request: session_pb2.DeleteUserDataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.DeleteUserDataResponse:
        deleted = await self._store.chats.delete_user_chats(request.user_id)
        return session_pb2.DeleteUserDataResponse(chats_deleted=deleted)

    @_rpc
    async def GetUsage(
        self, request: session_pb2.GetUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.GetUsageResponse:
        since = from_ms(request.since_unix_ms) if request.since_unix_ms else None
        until = from_ms(request.until_unix_ms) if request.until_unix_ms else None
        if since is not None and until is not None and since > until:
            raise InvalidArgumentError("since", "must not be after until")
        rows = await self._store.usage.usage(since=since, until=until, bot_id=request.bot_id)
        return session_pb2.GetUsageResponse(
            rows=[
                session_pb2.UsageRow(
                    bot_id=r.bot_id,
                    day=r.day,
                    turns=r.turns,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    cache_hits=r.cache_hits,
                    cache_hit_ratio=r.cache_hit_ratio,
                    thumbs_up=r.thumbs_up,
                    thumbs_down=r.thumbs_down,
                )
                for r in rows
            ]
        )

    # attachments: parley_session.attachments

    @_rpc
    async def UploadAttachment(
        self,
        request: session_pb2.UploadAttachmentRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.Attachment:
        check_chat_id(request.chat_id)
        added = await self._attachments.upload(
            request.user_id, request.chat_id, name=request.name, data=request.data
        )
        return wire.attachment_pb(added)

    @_rpc
    async def ListAttachments(
        self,
        request: session_pb2.ListAttachmentsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.ListAttachmentsResponse:
        check_chat_id(request.chat_id)
        await self._store.chats.get_chat(request.user_id, request.chat_id)
        found = await self._store.attachments.list_for_chat(request.user_id, request.chat_id)
        return session_pb2.ListAttachmentsResponse(
            attachments=[wire.attachment_pb(a) for a in found]
        )

    @_rpc
    async def GetAttachment(
        self, request: session_pb2.GetAttachmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.GetAttachmentResponse:
        check_chat_id(request.chat_id)
        if not is_id(request.attachment_id):
            raise AttachmentNotFoundError(request.attachment_id)
        found = await self._store.attachments.get(
            request.user_id, request.chat_id, request.attachment_id
        )
        data = await self._store.attachments.read(found.attachment_id)
        return session_pb2.GetAttachmentResponse(attachment=wire.attachment_pb(found), data=data)

    @_rpc
    async def DeleteAttachment(
        self,
        request: session_pb2.DeleteAttachmentRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.DeleteAttachmentResponse:
        check_chat_id(request.chat_id)
        if not is_id(request.attachment_id):
            raise AttachmentNotFoundError(request.attachment_id)
        await self._store.attachments.delete(
            request.user_id, request.chat_id, request.attachment_id
        )
        return session_pb2.DeleteAttachmentResponse()

    async def _message_of(self, chat: ChatDoc, message_id: str) -> MessageDoc:
        if not is_id(message_id):
            raise MessageNotFoundError(message_id)
        return await self._store.branches.message(chat.chat_id, message_id)

    @_rpc
    async def ListChats(
        self, request: session_pb2.ListChatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListChatsResponse:
        limit = request.limit or 20
        if limit > MAX_LIST_LIMIT:
            raise InvalidArgumentError("limit", f"at most {MAX_LIST_LIMIT}")
        before = wire.decode_cursor(request.cursor) if request.cursor else None
        chats = await self._store.chats.list_chats(request.user_id, limit=limit + 1, before=before)
        response = session_pb2.ListChatsResponse(chats=[wire.chat_pb(c) for c in chats[:limit]])
        if len(chats) > limit:
            last = chats[limit - 1]
            response.next_cursor = wire.encode_cursor(last.updated_ms, last.chat_id)
        return response

    @_rpc
    async def UpdateChat(
        self, request: session_pb2.UpdateChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.Chat:
        check_chat_id(request.chat_id)
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
            bot_id = (await self._bots.pickable(request.user_id, request.bot_id)).bot_id
        if title is None and bot_id is None:
            raise InvalidArgumentError("title", "give a title or a bot_id to change")
        chat = await self._store.chats.update_chat(
            request.user_id, request.chat_id, title=title, bot_id=bot_id
        )
        return wire.chat_pb(chat)

    @_rpc
    async def DeleteChat(
        self, request: session_pb2.DeleteChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.DeleteChatResponse:
        check_chat_id(request.chat_id)
        await self._store.chats.delete_chat(request.user_id, request.chat_id)
        return session_pb2.DeleteChatResponse()

    # bot profiles: who may use or change which, parley_session.bot_access

    @_rpc
    async def ListBots(
        self, request: session_pb2.ListBotsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListBotsResponse:
        owner = self._bots.owner(request.user_id, request.admin)
        bots = await self._store.bots.list_bots(owner or None)
        return session_pb2.ListBotsResponse(
            bots=[bot_pb(b) for b in [self._profiles.default, *bots]]
        )

    @_rpc
    async def GetBot(
        self, request: session_pb2.GetBotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.BotProfile:
        return bot_pb(await self._bots.visible(request.user_id, request.admin, request.bot_id))

    @_rpc
    async def CreateBot(
        self, request: session_pb2.CreateBotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.BotProfile:
        owner = self._bots.owner(request.user_id, request.admin)
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
        current = await self._bots.own(request.user_id, request.admin, request.bot.bot_id)
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgumentError("update_mask", "name the fields to change")
        changed = self._profiles.update(current, request.bot, paths, admin=request.admin)
        return bot_pb(await self._store.bots.replace_bot(changed))

    @_rpc
    async def DeleteBot(
        self, request: session_pb2.DeleteBotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.DeleteBotResponse:
        bot = await self._bots.own(request.user_id, request.admin, request.bot_id)
        await self._store.bots.delete_bot(bot.bot_id, bot.owner_user_id)
        return session_pb2.DeleteBotResponse()

    # feedback

    @_rpc
    async def SubmitFeedback(
        self,
        request: session_pb2.SubmitFeedbackRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.Feedback:
        feedback = await submit_feedback(self._store, wire.feedback_request(request))
        return wire.feedback_pb(feedback)

    @_rpc
    async def ListFeedback(
        self, request: session_pb2.ListFeedbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListFeedbackResponse:
        limit = request.limit or 50
        if limit > MAX_LIST_LIMIT:
            raise InvalidArgumentError("limit", f"at most {MAX_LIST_LIMIT}")
        query = wire.feedback_query(
            request.bot_id, request.since_unix_ms, request.until_unix_ms, request.cursor
        )
        found = await self._store.feedback.list_feedback(query, limit=limit + 1)
        response = session_pb2.ListFeedbackResponse(
            feedback=[wire.feedback_pb(f) for f in found[:limit]]
        )
        if len(found) > limit:
            last = found[limit - 1]
            response.next_cursor = wire.encode_cursor(last.updated_ms, last.feedback_id)
        return response

    async def ExportFeedback(
        self,
        request: session_pb2.ExportFeedbackRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[session_pb2.Feedback]:
        try:
            query = wire.feedback_query(
                request.bot_id, request.since_unix_ms, request.until_unix_ms
            )
            async for item in self._store.feedback.export_feedback(query):
                yield wire.feedback_pb(item)
        except EXPECTED_FAILURES as exc:
            await _abort_for(context, exc)

    # stateless and asynchronous completions, rate limits: parley_session.completions

    @_rpc
    async def PrepareCompletion(
        self,
        request: session_pb2.PrepareCompletionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.PrepareCompletionResponse:
        prepared = self._completions.prepare(
            request.model, wire.client_messages(request.messages), request.max_tokens
        )
        return wire.prepared_pb(prepared)

    @_rpc
    async def ListModels(
        self, request: session_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ListModelsResponse:
        return wire.models_pb(self._completions.list_models())

    @_rpc
    async def CreateCompletion(
        self,
        request: session_pb2.CreateCompletionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.CreateCompletionResponse:
        completion, created = await self._completions.create(
            request.user_id,
            request.completion_id,
            chat_id=request.chat_id,
            message_id=request.message_id,
            model=request.model,
            request_params=request.request_params,
        )
        return session_pb2.CreateCompletionResponse(
            completion=wire.completion_pb(completion), created=created
        )

    @_rpc
    async def GetCompletion(
        self, request: session_pb2.GetCompletionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.Completion:
        found = await self._completions.get(request.user_id, request.completion_id)
        if found is None:
            raise CompletionNotFoundError(request.completion_id)
        return wire.completion_pb(found)

    @_rpc
    async def MarkCompletionRunning(
        self,
        request: session_pb2.MarkCompletionRunningRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> session_pb2.Completion:
        found = await self._completions.mark_running(request.user_id, request.completion_id)
        if found is None:
            raise CompletionNotFoundError(request.completion_id)
        return wire.completion_pb(found)

    @_rpc
    async def ConsumeQuota(
        self, request: session_pb2.ConsumeQuotaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.ConsumeQuotaResponse:
        decision = await self._completions.consume_quota(
            request.user_id,
            requests_per_minute=request.requests_per_minute,
            tokens_per_minute=request.tokens_per_minute,
            tenant_id=request.tenant_id,
            budgets=wire.budgets(request.budgets),
            hold=wire.token_hold(request),
        )
        return wire.quota_pb(decision)

    @_rpc
    async def AddTokens(
        self, request: session_pb2.AddTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> session_pb2.AddTokensResponse:
        await self._completions.add_tokens(request.user_id, request.tokens)
        return session_pb2.AddTokensResponse()
