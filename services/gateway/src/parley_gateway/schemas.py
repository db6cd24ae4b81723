"""Request and response bodies of the chat REST API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ApiKeyCreated",
    "ChatDetail",
    "ChatList",
    "ChatSummary",
    "CompletionBody",
    "CompletionError",
    "CompletionOut",
    "CreateKeyBody",
    "CreateUserBody",
    "ErrorBody",
    "MessageOut",
    "StartChatBody",
    "TurnAnswer",
    "TurnResponse",
    "Usage",
    "UserOut",
]

Role = Literal["system", "user", "assistant"]
CompletionState = Literal["queued", "running", "done", "failed", "cancelled"]
FinishReason = Literal["stop", "length", "cancelled", "error", "expired"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompletionBody(_Body):
    message: str = Field(min_length=1, description="the user's message")
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


class StartChatBody(CompletionBody):
    bot_id: str | None = Field(default=None, max_length=64, description="bot profile (persona)")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TurnAnswer(BaseModel):
    content: str
    finish_reason: FinishReason
    usage: Usage
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


class ChatSummary(BaseModel):
    chat_id: str
    title: str
    bot_id: str
    created_at: int = Field(description="Unix milliseconds")
    updated_at: int = Field(description="Unix milliseconds")
    message_count: int


class MessageOut(BaseModel):
    message_id: str
    ordinal: int
    role: Role
    content: str
    token_count: int
    request_id: str
    created_at: int
    finish_reason: FinishReason | None = None
    parent_id: str | None = Field(default=None, description="the message this one follows")
    sibling_count: int = Field(default=1, description="edits or regenerations at this place")
    sibling_index: int = Field(default=0, description="this one among them, oldest first")


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


class UserOut(BaseModel):
    user_id: str
    name: str
    tenant_id: str


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
