"""The session's values to and from protobuf (no I/O): chats, messages, feedback, contexts,
turns, list cursors."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from parley.v1 import session_pb2, types_pb2
from parley_common.vocabulary import FinishReason, FinishReasonPb, Role, RolePb
from parley_session.accounts import SessionPolicy, SignInOutcome, SignInPolicy, SignInResult
from parley_session.completions import ModelInfo, PreparedCompletion, TokenHold
from parley_session.context import BuiltContext
from parley_session.domain import InvalidArgumentError, StoredMessage, ToolCall, ToolResult
from parley_session.feedback import FeedbackRequest
from parley_session.profiles import POLICY_FROM_PB, POLICY_TO_PB, SCOPE_TO_PB
from parley_session.quotas import Budgets, QuotaDecision
from parley_session.search import SearchQuery, Snippet
from parley_session.stores import (
    ApiKeyInfo,
    AttachmentDoc,
    AuditEvent,
    AuditQuery,
    ChatDoc,
    FeedbackDoc,
    FeedbackQuery,
    MessageDoc,
    TextHit,
    UserDoc,
    from_ms,
)
from parley_session.stores._mongo import Doc, ms
from parley_session.stores.completions import CompletionDoc
from parley_session.turns import Turn, TurnRequest

__all__ = [
    "api_keys_pb",
    "audit_pb",
    "audit_query",
    "budgets",
    "chat_pb",
    "client_messages",
    "completion_pb",
    "context_pb",
    "decode_cursor",
    "draft_request",
    "encode_cursor",
    "feedback_pb",
    "feedback_query",
    "feedback_request",
    "message_pb",
    "models_pb",
    "prepared_pb",
    "quota_pb",
    "search_hit_pb",
    "search_query",
    "session_policy",
    "sign_in_pb",
    "sign_in_policy",
    "turn_pb",
    "turn_request",
    "user_pb",
]

_RATING_FROM_PB = {session_pb2.RATING_UP: "up", session_pb2.RATING_DOWN: "down"}
_RATING_TO_PB = {v: k for k, v in _RATING_FROM_PB.items()}


def _role_pb(stored: str) -> RolePb:
    role = Role.parse(stored)
    return types_pb2.ROLE_UNSPECIFIED if role is None else role.to_pb()


def _finish_pb(stored: str) -> FinishReasonPb:
    """A question's (empty) or an answer's finish reason; answers never end `expired`."""
    finish = FinishReason.parse(stored)
    return types_pb2.FINISH_REASON_UNSPECIFIED if finish is None else finish.to_pb()


def chat_pb(chat: ChatDoc) -> session_pb2.Chat:
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


def attachment_pb(a: AttachmentDoc) -> session_pb2.Attachment:
    pb = session_pb2.Attachment(
        attachment_id=a.attachment_id,
        chat_id=a.chat_id,
        name=a.name,
        media_type=a.media_type,
        kind=a.kind,
        size=a.size,
        created_unix_ms=a.created_ms,
    )
    if a.tokens is not None:
        pb.tokens = a.tokens
    return pb


def _attachment_ref_pb(ref: Doc) -> session_pb2.Attachment:
    pb = session_pb2.Attachment(
        attachment_id=ref["id"],
        name=ref["name"],
        media_type=ref["media_type"],
        kind=ref["kind"],
        size=ref["size"],
    )
    if ref.get("tokens") is not None:
        pb.tokens = ref["tokens"]
    return pb


def message_pb(m: MessageDoc, siblings: tuple[int, int] = (1, 0)) -> session_pb2.Message:
    return session_pb2.Message(
        attachments=[_attachment_ref_pb(a) for a in m.attachments],
        context_notice=m.context_notice,
        parent_id=m.parent_id,
        sibling_count=siblings[0],
        sibling_index=siblings[1],
        message_id=m.message_id,
        ordinal=m.ordinal,
        # A tool turn is stored in a question's place; it reads as the tool's messages.
        role=types_pb2.ROLE_TOOL if m.tool_results else _role_pb(m.role),
        content=m.content,
        token_count=m.token_count,
        request_id=m.request_id,
        created_unix_ms=m.created_ms,
        finish_reason=_finish_pb(m.finish_reason),
        tool_calls=_tool_calls_pb(m.tool_calls),
        tool_results=_tool_messages_pb(m.tool_results),
        cached=bool(m.cache_entry_id),
        cache_score=m.cache_score,
        cache_reason=m.cache_reason,
    )


def _tool_calls_pb(calls: tuple[ToolCall, ...]) -> list[types_pb2.ToolCall]:
    return [types_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls]


def _tool_messages_pb(results: tuple[ToolResult, ...]) -> list[types_pb2.ChatMessage]:
    return [
        types_pb2.ChatMessage(
            role=types_pb2.ROLE_TOOL, content=r.content, tool_call_id=r.tool_call_id
        )
        for r in results
    ]


def _model_messages(m: StoredMessage) -> list[types_pb2.ChatMessage]:
    """A history message as the model sees it: a tool turn is a tool message per result."""
    if m.tool_results:
        return _tool_messages_pb(m.tool_results)
    return [
        types_pb2.ChatMessage(
            role=Role(m.role).to_pb(), content=m.content, tool_calls=_tool_calls_pb(m.tool_calls)
        )
    ]


def feedback_pb(f: FeedbackDoc) -> session_pb2.Feedback:
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


def context_pb(built: BuiltContext) -> session_pb2.Context:
    plan = built.plan
    head = plan.messages[: len(plan.messages) - len(plan.kept)]  # the system prompt
    pb = session_pb2.Context(
        messages=[
            *(types_pb2.ChatMessage(role=Role(role).to_pb(), content=text) for role, text in head),
            *(message for kept in plan.kept for message in _model_messages(kept)),
        ],
        prompt_tokens=built.plan.prompt_tokens,
        policy=POLICY_TO_PB[built.policy],
        dropped_messages=built.dropped_messages,
        summary_used=built.summary_through_ordinal is not None,
    )
    if built.summary_through_ordinal is not None:
        pb.summary_through_ordinal = built.summary_through_ordinal
    return pb


def turn_request(request: session_pb2.StartTurnRequest) -> TurnRequest:
    return TurnRequest(
        user_id=request.user_id,
        request_id=request.request_id,
        content=request.content,
        chat_id=request.chat_id,
        bot_id=request.bot_id,
        max_tokens=request.max_tokens,
        history_policy=POLICY_FROM_PB.get(request.history_policy),
        edit_message_id=request.edit_message_id,
        regenerate_message_id=request.regenerate_message_id,
        tool_results=tuple(ToolResult(r.tool_call_id, r.content) for r in request.tool_results),
        attachment_ids=tuple(request.attachment_ids),
    )


def search_query(request: session_pb2.SearchChatsRequest) -> SearchQuery:
    return SearchQuery(
        user_id=request.user_id,
        text=request.query.strip(),
        bot_id=request.bot_id,
        since_ms=request.since_unix_ms,
        until_ms=request.until_unix_ms,
        limit=request.limit or 20,
        offset=request.offset,
    )


def search_hit_pb(hit: TextHit, shown: Snippet) -> session_pb2.SearchHit:
    return session_pb2.SearchHit(
        chat_id=hit.chat_id,
        chat_title=hit.chat_title,
        bot_id=hit.bot_id,
        message_id=hit.message_id,
        role=_role_pb(hit.role) if hit.role else types_pb2.ROLE_UNSPECIFIED,
        snippet=shown.text,
        highlight_starts=[a for a, _ in shown.highlights],
        highlight_ends=[b for _, b in shown.highlights],
        score=hit.score,
        created_unix_ms=hit.created_ms,
    )


def draft_request(request: session_pb2.BuildContextRequest) -> TurnRequest:
    return TurnRequest(
        user_id=request.user_id,
        request_id="",
        content=request.content,
        chat_id=request.chat_id,
        max_tokens=request.max_tokens,
        history_policy=POLICY_FROM_PB.get(request.history_policy),
    )


def turn_pb(turn: Turn) -> session_pb2.StartTurnResponse:
    bot = turn.bot
    sampling = types_pb2.SamplingParams(max_tokens=turn.max_tokens)
    if bot.temperature is not None:
        sampling.temperature = bot.temperature
    if bot.top_p is not None:
        sampling.top_p = bot.top_p
    response = session_pb2.StartTurnResponse(
        chat=chat_pb(turn.chat),
        user_message=message_pb(turn.question),
        context=context_pb(turn.context),
        model=bot.model,
        sampling=sampling,
        cache_scope=SCOPE_TO_PB[bot.cache_scope],
        system_prompt=bot.system_prompt,
        replayed=turn.existing_answer is not None,
        answer_slot=turn.question.ordinal if turn.answer_slot is None else turn.answer_slot,
        cache_max_error_rate=bot.cache_max_error_rate,
        regenerated_cache_entry_id=turn.regenerated_cache_entry_id,
    )
    if turn.existing_answer is not None:
        response.existing_answer.CopyFrom(message_pb(turn.existing_answer))
    if turn.images:
        question = response.context.messages[-1]
        question.images.extend(
            types_pb2.ImagePart(media_type=i.media_type, data=i.data) for i in turn.images
        )
    return response


def encode_cursor(at_ms: int, item_id: str) -> str:
    return base64.urlsafe_b64encode(f"{at_ms}:{item_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ms, item_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        return from_ms(int(ms)), item_id
    # OverflowError, OSError: a time far outside what datetime or the platform can represent.
    except (ValueError, OverflowError, OSError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgumentError("cursor", "not a cursor returned by this API") from exc


def feedback_request(request: session_pb2.SubmitFeedbackRequest) -> FeedbackRequest:
    return FeedbackRequest(
        user_id=request.user_id,
        chat_id=request.chat_id,
        message_id=request.message_id,
        rating=_RATING_FROM_PB.get(request.rating),
        comment=request.comment,
        tags=list(request.tags),
    )


def feedback_query(bot_id: str, since_ms: int, until_ms: int, cursor: str = "") -> FeedbackQuery:
    if since_ms < 0 or until_ms < 0:
        raise InvalidArgumentError("since", "Unix milliseconds, not negative")
    if since_ms and until_ms and until_ms <= since_ms:
        raise InvalidArgumentError("until", "must be after since")
    return FeedbackQuery(
        bot_id=bot_id,
        since=from_ms(since_ms) if since_ms else None,
        until=from_ms(until_ms) if until_ms else None,
        before=decode_cursor(cursor) if cursor else None,
    )


# stateless and asynchronous completions, rate limits


def client_messages(messages: Sequence[types_pb2.ChatMessage]) -> list[tuple[Role | None, str]]:
    return [(Role.from_pb(m.role), m.content) for m in messages]


def prepared_pb(prepared: PreparedCompletion) -> session_pb2.PrepareCompletionResponse:
    return session_pb2.PrepareCompletionResponse(
        context=session_pb2.Context(
            messages=[
                types_pb2.ChatMessage(role=Role(role).to_pb(), content=content)
                for role, content in prepared.messages
            ],
            prompt_tokens=prepared.prompt_tokens,
            policy=session_pb2.HISTORY_POLICY_FULL,
        ),
        model=prepared.model,
        sampling=types_pb2.SamplingParams(max_tokens=prepared.max_tokens),
        cache_scope=types_pb2.CACHE_SCOPE_USER,
    )


def models_pb(models: list[ModelInfo]) -> session_pb2.ListModelsResponse:
    return session_pb2.ListModelsResponse(
        models=[
            session_pb2.ModelInfo(
                model_id=m.model_id, created_unix_ms=m.created_ms, context_window=m.context_window
            )
            for m in models
        ]
    )


def completion_pb(c: CompletionDoc) -> session_pb2.Completion:
    return session_pb2.Completion(
        completion_id=c.completion_id,
        chat_id=c.chat_id,
        message_id=c.message_id,
        state=session_pb2.COMPLETION_STATE_UNSPECIFIED if c.state is None else c.state.to_pb(),
        content=c.content,
        finish_reason=types_pb2.FINISH_REASON_UNSPECIFIED
        if c.finish_reason is None
        else c.finish_reason.to_pb(),
        usage=types_pb2.Usage(prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens),
        error=c.error,
        created_unix_ms=c.created_ms,
        updated_unix_ms=c.updated_ms,
        cached=c.cached,
        cache_score=c.cache_score,
        cache_reason=c.cache_reason,
        model=c.model,
        request_params=c.request_params,
    )


def quota_pb(decision: QuotaDecision) -> session_pb2.ConsumeQuotaResponse:
    return session_pb2.ConsumeQuotaResponse(
        allowed=decision.allowed,
        exceeded=decision.exceeded,
        retry_after_ms=math.ceil(decision.retry_after_s * 1000),
        requests_remaining=decision.requests_remaining,
        tokens_remaining=decision.tokens_remaining,
        resets_at_ms=math.ceil(decision.resets_at_s * 1000),
    )


def token_hold(request: session_pb2.ConsumeQuotaRequest) -> TokenHold | None:
    """The tokens a quota request reserves with it; None when it reserves none."""
    if not request.reserve_tokens:
        return None
    if request.hold_expires_unix_ms <= 0:
        raise InvalidArgumentError("hold_expires_unix_ms", "required to reserve tokens")
    return TokenHold(request.hold_id, request.reserve_tokens, request.hold_expires_unix_ms)


def budgets(pb: session_pb2.Budgets) -> Budgets:
    return Budgets(
        period_s=pb.period_s or 86_400,
        user_requests=pb.user_requests,
        user_tokens=pb.user_tokens,
        tenant_requests=pb.tenant_requests,
        tenant_tokens=pb.tenant_tokens,
    )


def user_pb(user: UserDoc) -> session_pb2.User:
    return session_pb2.User(
        user_id=user.user_id,
        name=user.name,
        tenant_id=user.tenant_id,
        email=user.email,
        role=user.role,
        disabled=user.disabled,
    )


# A day and a month when the caller sends no lifetimes.
_DEFAULT_IDLE_S = 24 * 3600
_DEFAULT_ABSOLUTE_S = 30 * 24 * 3600


def session_policy(policy: session_pb2.SessionPolicy) -> SessionPolicy:
    return SessionPolicy(
        idle=timedelta(seconds=policy.idle_timeout_s or _DEFAULT_IDLE_S),
        absolute=timedelta(seconds=policy.absolute_timeout_s or _DEFAULT_ABSOLUTE_S),
    )


def sign_in_policy(request: session_pb2.SignInRequest) -> SignInPolicy:
    return SignInPolicy(
        max_failures_per_account=request.max_failures_per_account,
        max_failures_per_address=request.max_failures_per_address,
        window_s=request.failure_window_s or 900,
        session=session_policy(request.session),
    )


_OUTCOME_PB = {
    SignInOutcome.SIGNED_IN: session_pb2.SignInResponse.OUTCOME_SIGNED_IN,
    SignInOutcome.INVALID_CREDENTIALS: session_pb2.SignInResponse.OUTCOME_INVALID_CREDENTIALS,
    SignInOutcome.ACCOUNT_LOCKED: session_pb2.SignInResponse.OUTCOME_ACCOUNT_LOCKED,
    SignInOutcome.ADDRESS_LOCKED: session_pb2.SignInResponse.OUTCOME_ADDRESS_LOCKED,
}


def sign_in_pb(result: SignInResult) -> session_pb2.SignInResponse:
    response = session_pb2.SignInResponse(
        outcome=_OUTCOME_PB[result.outcome],
        retry_after_ms=math.ceil(result.retry_after_s * 1000),
    )
    if result.user is not None:
        response.user.CopyFrom(user_pb(result.user))
    if result.session is not None:
        response.session_token = result.session.token
        response.expires_at_ms = ms(result.session.expires_at)
    return response


_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last time datetime holds


def audit_query(request: session_pb2.ListAuditEventsRequest, *, max_limit: int) -> AuditQuery:
    for name, value in (("since", request.since_unix_ms), ("until", request.until_unix_ms)):
        if not 0 <= value <= _LAST_MS:
            raise InvalidArgumentError(name, "Unix milliseconds, from 1970 to 9999")
    if request.limit > max_limit:
        raise InvalidArgumentError("limit", f"at most {max_limit}")
    return AuditQuery(
        user_id=request.user_id,
        tenant_id=request.tenant_id or None,
        type=request.type,
        since=from_ms(request.since_unix_ms) if request.since_unix_ms else None,
        until=from_ms(request.until_unix_ms) if request.until_unix_ms else None,
        before=decode_cursor(request.cursor) if request.cursor else None,
        limit=request.limit or 50,
    )


def audit_pb(events: list[AuditEvent], limit: int) -> session_pb2.ListAuditEventsResponse:
    response = session_pb2.ListAuditEventsResponse(
        events=[
            session_pb2.AuditEvent(
                event_id=e.event_id,
                at_unix_ms=ms(e.at),
                type=e.type,
                user_id=e.user_id,
                email=e.email,
                client_address=e.client_address,
                detail=e.detail,
                tenant_id=e.tenant_id,
            )
            for e in events
        ]
    )
    if len(events) == limit:
        last = events[-1]
        response.next_cursor = encode_cursor(ms(last.at), last.event_id)
    return response


def api_keys_pb(keys: list[ApiKeyInfo]) -> session_pb2.ListApiKeysResponse:
    return session_pb2.ListApiKeysResponse(
        keys=[
            session_pb2.ApiKeyInfo(
                key_id=k.key_id,
                name=k.name,
                created_unix_ms=ms(k.created_at),
                revoked_unix_ms=ms(k.revoked_at) if k.revoked_at else 0,
            )
            for k in keys
        ]
    )
