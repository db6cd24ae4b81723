"""Request and response bodies of the chat REST API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from parley_common.vocabulary import AccountRole
from parley_gateway.openai_schemas import ToolChoice, ToolDefinition

__all__ = [
    "ApiKeyCreated",
    "AttachmentList",
    "AttachmentOut",
    "AttachmentRef",
    "AuditEventOut",
    "AuditPage",
    "ChangePasswordBody",
    "ChatDetail",
    "ChatList",
    "ChatSummary",
    "CompletionBody",
    "CompletionError",
    "CompletionOut",
    "CreateInviteBody",
    "CreateKeyBody",
    "CreateUserBody",
    "ErrorBody",
    "InviteCreated",
    "KeyList",
    "KeyOut",
    "MessageOut",
    "SetPasswordBody",
    "SetRoleBody",
    "SignInBody",
    "SignInMethods",
    "SignOutBody",
    "SignUpBody",
    "SignedIn",
    "StartChatBody",
    "ToolFields",
    "ToolResultIn",
    "ToolResultOut",
    "TurnAnswer",
    "TurnResponse",
    "Usage",
    "UserOut",
]

Role = Literal["system", "user", "assistant", "tool"]
CompletionState = Literal["queued", "running", "done", "failed", "cancelled"]
FinishReason = Literal["stop", "length", "cancelled", "error", "expired", "tool_calls"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolResultIn(_Body):
    tool_call_id: str = Field(
        min_length=1, max_length=128, description="the id of the call (of the chat's last answer)"
    )
    content: str = Field(description="what the call returned, as text (JSON, say)")


class ToolFields(_Body):
    """A chat turn's tools (the chat API's body and WebSocket frame): the functions the model may
    call, and the results of the calls of the chat's last answer."""

    message: str = Field(
        default="", description="the user's message; empty only with `tool_results`"
    )
    tools: list[ToolDefinition] | None = Field(
        default=None,
        max_length=128,
        description="functions the model may call, as in OpenAI's chat completions",
    )
    tool_choice: ToolChoice | None = Field(
        default=None, description="none, auto (the default with tools), required, or a function"
    )
    parallel_tool_calls: bool | None = Field(
        default=None, description="whether one answer may call several tools (default true)"
    )
    tool_results: list[ToolResultIn] | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="in place of `message`: what the tool calls of the chat's last answer "
        "returned, one result per call",
    )


class CompletionBody(ToolFields):
    stream: bool = Field(default=False, description="answer as a Server-Sent Events stream")
    max_tokens: int | None = Field(default=None, ge=1, description="the reply budget in tokens")
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="idempotency key: retrying with the same id never stores the turn twice",
    )
    no_cache: bool = Field(default=False, description="do not answer from the semantic cache")
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="0: greedy; default: the bot profile's"
    )
    top_p: float | None = Field(default=None, gt=0, le=1, description="nucleus sampling")
    stop: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=4, description="the answer ends before any of these"
    )
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="the same seed, the same sample"
    )
    attachment_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=20,
        description="files of this chat (POST /chat/{id}/attachments) sent with the message",
    )


class StartChatBody(CompletionBody):
    bot_id: str | None = Field(default=None, max_length=64, description="bot profile (persona)")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TurnToolCall(BaseModel):
    id: str
    name: str
    arguments: str = Field(description="a JSON object's text")


class TurnLogprob(BaseModel):
    token: str
    logprob: float
    top: list[tuple[str, float]] = Field(default_factory=list)


class TurnAnswer(BaseModel):
    content: str
    finish_reason: FinishReason
    usage: Usage
    # With tools: the calls the answer makes (finish_reason "tool_calls"); none is left out.
    tool_calls: list[TurnToolCall] = Field(default_factory=list, exclude_if=lambda calls: not calls)
    # Only the OpenAI API asks for these: not part of the chat API's answer.
    logprobs: list[TurnLogprob] | None = Field(default=None, exclude=True)
    cached: bool = False
    cache_score: float | None = None
    cache_reason: str | None = Field(
        default=None, description="why the cache answered: the verifier's score and threshold"
    )


class TurnResponse(BaseModel):
    chat_id: str
    request_id: str
    message_id: str = Field(description="id of the stored user message")
    answer: TurnAnswer
    context_notice: str | None = Field(
        default=None, description="set when an attached document was cut to fit the window"
    )


AttachmentKind = Literal["text", "pdf", "image"]


class AttachmentRef(BaseModel):
    id: str
    name: str = Field(description="the file's name, sanitized for display")
    media_type: str = Field(description="detected from the content")
    kind: AttachmentKind
    size: int = Field(description="bytes")
    tokens: int | None = Field(description="documents: their text's tokens (served tokenizer)")


class AttachmentOut(AttachmentRef):
    chat_id: str
    created_at: int = Field(description="Unix milliseconds")


class AttachmentList(BaseModel):
    attachments: list[AttachmentOut] = Field(description="oldest first")


class ChatSummary(BaseModel):
    chat_id: str
    title: str
    bot_id: str
    created_at: int = Field(description="Unix milliseconds")
    updated_at: int = Field(description="Unix milliseconds")
    message_count: int


class ToolResultOut(BaseModel):
    tool_call_id: str
    content: str


class MessageOut(BaseModel):
    message_id: str
    ordinal: int
    role: Role
    content: str
    token_count: int
    request_id: str
    created_at: int
    finish_reason: FinishReason | None = None
    tool_calls: list[TurnToolCall] | None = Field(
        default=None, description="assistant: the tool calls the answer makes"
    )
    tool_results: list[ToolResultOut] | None = Field(
        default=None, description="tool: what the calls of the answer before returned"
    )
    parent_id: str | None = Field(default=None, description="the message this one follows")
    sibling_count: int = Field(default=1, description="edits or regenerations at this place")
    sibling_index: int = Field(default=0, description="this one among them, oldest first")
    cached: bool = Field(default=False, description="an answer served from the semantic cache")
    cache_score: float | None = Field(
        default=None, description="with cached: the verifier's probability of the same answer"
    )
    cache_reason: str | None = Field(
        default=None, description="with cached: the decision, its score against the threshold"
    )
    attachments: list[AttachmentRef] = Field(
        default_factory=list, description="user messages: the files sent with it"
    )
    context_notice: str | None = Field(
        default=None, description="set when an attached document was cut to fit the window"
    )


class ChatDetail(ChatSummary):
    messages: list[MessageOut] = Field(description="the active branch, in order")


class RegenerateBody(_Body):
    stream: bool = Field(default=False, description="answer as a Server-Sent Events stream")
    max_tokens: int | None = Field(default=None, ge=1, description="the reply budget in tokens")
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="idempotency key: retrying with the same id never regenerates twice",
    )


class SiblingsOut(BaseModel):
    siblings: list[MessageOut] = Field(description="oldest first, the message itself included")
    active_message_id: str | None = Field(description="the one on the chat's active branch")


class SelectBranchBody(_Body):
    message_id: str = Field(
        min_length=1, max_length=64, description="the active branch goes through this message"
    )


class ChatList(BaseModel):
    chats: list[ChatSummary]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page")


class CreateUserBody(_Body):
    name: str = Field(min_length=1, max_length=200)
    tenant_id: str = Field(default="", max_length=64)
    email: str = Field(
        default="", max_length=254, description="with password: an account that can sign in"
    )
    password: SecretStr = Field(default=SecretStr(""), max_length=1024)
    role: AccountRole = AccountRole.MEMBER


class UserOut(BaseModel):
    user_id: str
    name: str
    tenant_id: str
    email: str = ""
    role: str = "member"
    disabled: bool = False


class UserPage(BaseModel):
    users: list[UserOut]
    total: int = Field(description="users matching the filters, for paging")
    offset: int
    limit: int


class DeleteAccountBody(_Body):
    password: SecretStr = Field(
        default=SecretStr(""), max_length=1024, description="required for a password account"
    )
    confirm: bool = Field(
        default=False, description="true: required for an account without a password (SSO)"
    )


class AccountDeleted(BaseModel):
    chats_deleted: int
    keys_deleted: int
    sessions_ended: int


class SetRoleBody(_Body):
    role: AccountRole


class KeyOut(BaseModel):
    key_id: str
    name: str
    created_at: int = Field(description="Unix ms")
    revoked_at: int | None = Field(description="Unix ms; null while active")


class KeyList(BaseModel):
    keys: list[KeyOut]


class AuditEventOut(BaseModel):
    event_id: str
    at: int = Field(description="Unix ms")
    type: str
    user_id: str
    email: str
    client_address: str
    detail: str
    tenant_id: str = ""


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page")


class SignUpBody(_Body):
    email: str = Field(min_length=3, max_length=254)
    password: SecretStr = Field(min_length=8, max_length=1024)
    name: str = Field(default="", max_length=200)
    invite_code: str = Field(default="", max_length=128)


class SignInBody(_Body):
    email: str = Field(min_length=3, max_length=254)
    password: SecretStr = Field(min_length=1, max_length=1024)
    next: str = Field(
        default="/", max_length=2048, description="where the page goes next: a path on this site"
    )


class SignedIn(BaseModel):
    user: UserOut
    next: str = Field(description="the checked `next` path")
    expires_at: int = Field(description="the session's absolute end, Unix ms")


class SignInMethods(BaseModel):
    password: bool
    oidc: bool = Field(description="single sign-on at /auth/oidc/login")
    sign_up: str = Field(description="open, invite or closed")


class SignOutBody(_Body):
    everywhere: bool = Field(default=False, description="end every session of this account")


class ChangePasswordBody(_Body):
    current_password: SecretStr = Field(min_length=1, max_length=1024)
    new_password: SecretStr = Field(min_length=8, max_length=1024)


class SetPasswordBody(_Body):
    new_password: SecretStr = Field(min_length=8, max_length=1024)


class CreateInviteBody(_Body):
    tenant_id: str = Field(default="", max_length=64)
    valid_for_s: int = Field(default=7 * 24 * 3600, ge=60, le=90 * 24 * 3600)


class InviteCreated(BaseModel):
    invite_code: str = Field(description="shown once; only its hash is stored")
    expires_at: int = Field(description="Unix ms")


class CreateKeyBody(_Body):
    name: str = Field(default="", max_length=200)


class ApiKeyCreated(BaseModel):
    key_id: str
    api_key: str = Field(description="shown once; only its hash is stored")


class _ErrorDetail(BaseModel):
    type: str
    message: str
    details: list[dict[str, str]] | None = None


class ErrorBody(BaseModel):
    error: _ErrorDetail


class CompletionError(BaseModel):
    type: str = Field(description="`expired` (no worker took it in time) or `generation_failed`")
    message: str


class CompletionOut(BaseModel):
    """An asynchronous completion: its state, and its answer once there is one."""

    completion_id: str = Field(description="the turn's request id")
    chat_id: str
    message_id: str = Field(description="id of the stored user message")
    state: CompletionState
    model: str
    created_at: int = Field(description="Unix milliseconds")
    updated_at: int = Field(description="Unix milliseconds")
    answer: TurnAnswer | None = Field(
        default=None, description="when done, or cancelled (the text generated until then)"
    )
    error: CompletionError | None = Field(default=None, description="when failed")


class ExportedChatOut(ChatSummary):
    active_leaf_id: str | None = Field(description="the last message of the active branch")
    messages: list[MessageOut] = Field(description="every message of every branch, by ordinal")


class ChatsExport(BaseModel):
    exported_at: int = Field(description="ms since the epoch")
    user_id: str
    chats: list[ExportedChatOut]


class DataDeleted(BaseModel):
    chats_deleted: int


class UsageRowOut(BaseModel):
    bot_id: str
    day: str = Field(description="YYYY-MM-DD, UTC")
    turns: int = Field(description="answers stored")
    prompt_tokens: int = Field(description="tokens of the questions")
    completion_tokens: int
    cache_hits: int
    cache_hit_ratio: float
    thumbs_up: int
    thumbs_down: int


class UsageOut(BaseModel):
    rows: list[UsageRowOut] = Field(description="by day, then bot")


class SearchHitOut(BaseModel):
    chat_id: str
    chat_title: str
    bot_id: str
    message_id: str | None = Field(description="the matching message; null: the title matched")
    role: Role | None = None
    snippet: str = Field(description="the matching text, around its first match (plain text)")
    highlights: list[tuple[int, int]] = Field(
        description="[start, end) character ranges of `snippet` that match the query's words"
    )
    score: float = Field(description="MongoDB's text score: higher is better")
    created_at: int = Field(description="the message's time (a title: its chat's last change), ms")


class SearchPage(BaseModel):
    hits: list[SearchHitOut] = Field(description="best first")
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page")
