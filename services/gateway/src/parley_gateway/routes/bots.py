"""Bot profiles (personas): each user's own, and shared ones managed with the admin key.

A chat is started with a profile (`POST /chat` with `bot_id`) and keeps it; `PATCH /chat/{id}`
moves it to another one.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Path, Response
from google.protobuf import field_mask_pb2
from pydantic import BaseModel, ConfigDict, Field

from parley.v1 import cache_pb2, session_pb2, types_pb2
from parley_gateway.auth import Principal
from parley_gateway.deps import Caller, PartsDep
from parley_gateway.schemas import ErrorBody

log = logging.getLogger(__name__)

__all__ = ["BotIn", "BotOut", "BotPatch", "router"]

router = APIRouter(prefix="/bots", tags=["bots"])

Policy = Literal["full", "truncate", "summarize"]
Scope = Literal["user", "tenant", "global", "disabled"]

_POLICY_TO_PB = {
    "full": session_pb2.HISTORY_POLICY_FULL,
    "truncate": session_pb2.HISTORY_POLICY_TRUNCATE,
    "summarize": session_pb2.HISTORY_POLICY_SUMMARIZE,
}
_POLICY_NAMES: dict[int, Policy] = {
    session_pb2.HISTORY_POLICY_FULL: "full",
    session_pb2.HISTORY_POLICY_TRUNCATE: "truncate",
    session_pb2.HISTORY_POLICY_SUMMARIZE: "summarize",
}
_SCOPE_TO_PB = {
    "user": types_pb2.CACHE_SCOPE_USER,
    "tenant": types_pb2.CACHE_SCOPE_TENANT,
    "global": types_pb2.CACHE_SCOPE_GLOBAL,
    "disabled": types_pb2.CACHE_SCOPE_DISABLED,
}
_SCOPE_NAMES: dict[int, Scope] = {
    types_pb2.CACHE_SCOPE_USER: "user",
    types_pb2.CACHE_SCOPE_TENANT: "tenant",
    types_pb2.CACHE_SCOPE_GLOBAL: "global",
    types_pb2.CACHE_SCOPE_DISABLED: "disabled",
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, malformed or revoked API key"},
    403: {"model": ErrorBody, "description": "a shared or built-in profile, with a user's key"},
    404: {"model": ErrorBody, "description": "no such profile (or another user's)"},
    422: {"model": ErrorBody, "description": "a field is missing or invalid (named)"},
    503: {"model": ErrorBody, "description": "a backing service is down; retry after Retry-After"},
}

# A 32 KiB image as a base64 data URL; the session service checks what it is, by its bytes.
_AVATAR_MAX_CHARS = 44_000
_AVATAR = (
    "an emoji (up to 16 characters), an http(s) URL, or a data:image/(png|jpeg|gif|webp);base64 "
    "URL of at most 32 KiB, checked by its bytes"
)

BotId = Annotated[str, Path(max_length=64, description="a profile id, or `default`")]


_ERROR_RATE = (
    "the share of wrong answers from the semantic cache accepted in this profile's chats "
    "(0.02: 2 %): the cache picks its threshold so that the error measured on held-out pairs stays "
    "under it; null: the deployment's CACHE_MAX_ERROR_RATE"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Body):
    max_tokens: int | None = Field(
        default=None, ge=1, lt=2**32, description="the reply budget in tokens"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)


class HistoryParams(_Body):
    summarize_at: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="summarize: summarize once the history passes this share of the window",
    )
    keep_recent: float | None = Field(
        default=None, gt=0, lt=1, description="summarize: share of the window kept verbatim"
    )
    summary_max_tokens: int | None = Field(default=None, ge=16, lt=2**32)


class BotIn(_Body):
    name: str = Field(min_length=1, max_length=80)
    avatar: str = Field(default="", max_length=_AVATAR_MAX_CHARS, description=_AVATAR)
    description: str = Field(default="", max_length=1000)
    system_prompt: str = Field(default="", max_length=20_000)
    model: str = Field(default="", max_length=200, description="empty: the served model")
    sampling: Sampling = Field(default_factory=Sampling)
    history_policy: Policy = "truncate"
    history: HistoryParams = Field(default_factory=HistoryParams)
    cache_scope: Scope = Field(
        default="user", description="tenant and global: shared profiles only (admin key)"
    )
    cache_max_error_rate: float | None = Field(default=None, gt=0, lt=1, description=_ERROR_RATE)


class BotPatch(_Body):
    """The fields to change; a field left out stays as it is, `null` resets it to the default."""

    name: str | None = Field(default=None, min_length=1, max_length=80)
    avatar: str | None = Field(default=None, max_length=_AVATAR_MAX_CHARS, description=_AVATAR)
    description: str | None = Field(default=None, max_length=1000)
    system_prompt: str | None = Field(default=None, max_length=20_000)
    model: str | None = Field(default=None, max_length=200)
    sampling: Sampling | None = None
    history_policy: Policy | None = None
    history: HistoryParams | None = None
    cache_scope: Scope | None = None
    cache_max_error_rate: float | None = Field(default=None, gt=0, lt=1, description=_ERROR_RATE)


class SamplingOut(BaseModel):
    max_tokens: int
    temperature: float | None
    top_p: float | None


class HistoryParamsOut(BaseModel):
    summarize_at: float
    keep_recent: float
    summary_max_tokens: int


class BotOut(BaseModel):
    bot_id: str
    name: str
    avatar: str
    description: str
    system_prompt: str
    model: str
    sampling: SamplingOut
    history_policy: Policy
    history: HistoryParamsOut
    cache_scope: Scope
    cache_max_error_rate: float | None = Field(description=_ERROR_RATE)
    shared: bool = Field(description="managed with the admin key; every user may chat with it")
    builtin: bool = Field(description="the default profile, from the deployment's settings")
    created_at: int = Field(description="Unix milliseconds")
    updated_at: int = Field(description="Unix milliseconds")


class BotList(BaseModel):
    bots: list[BotOut] = Field(description="the default first, then shared ones, then yours")


# `Caller` (deps): a user (their own profiles) or the admin (the shared ones).


def _float(value: float) -> float:
    return round(value, 6)  # float32 on the wire


def bot_out(pb: session_pb2.BotProfile) -> BotOut:
    return BotOut(
        bot_id=pb.bot_id,
        name=pb.name,
        avatar=pb.avatar,
        description=pb.description,
        system_prompt=pb.system_prompt,
        model=pb.model,
        sampling=SamplingOut(
            max_tokens=pb.sampling.max_tokens,
            temperature=_float(pb.sampling.temperature)
            if pb.sampling.HasField("temperature")
            else None,
            top_p=_float(pb.sampling.top_p) if pb.sampling.HasField("top_p") else None,
        ),
        history_policy=_POLICY_NAMES.get(pb.history_policy, "truncate"),
        history=HistoryParamsOut(
            summarize_at=_float(pb.history.summarize_at),
            keep_recent=_float(pb.history.keep_recent),
            summary_max_tokens=pb.history.summary_max_tokens,
        ),
        cache_scope=_SCOPE_NAMES.get(pb.cache_scope, "user"),
        cache_max_error_rate=_float(pb.cache_max_error_rate) or None,
        shared=pb.shared,
        builtin=pb.builtin,
        created_at=pb.created_unix_ms,
        updated_at=pb.updated_unix_ms,
    )


def _sampling_pb(sampling: Sampling) -> types_pb2.SamplingParams:
    pb = types_pb2.SamplingParams(max_tokens=sampling.max_tokens or 0)
    if sampling.temperature is not None:
        pb.temperature = sampling.temperature
    if sampling.top_p is not None:
        pb.top_p = sampling.top_p
    return pb


def _history_pb(history: HistoryParams) -> session_pb2.HistoryParams:
    return session_pb2.HistoryParams(
        summarize_at=history.summarize_at or 0,
        keep_recent=history.keep_recent or 0,
        summary_max_tokens=history.summary_max_tokens or 0,
    )


def _profile_pb(body: BotIn | BotPatch) -> session_pb2.BotProfile:
    pb = session_pb2.BotProfile()
    for name in ("name", "avatar", "description", "system_prompt", "model"):
        value = getattr(body, name)
        if value is not None:
            setattr(pb, name, value)
    if body.sampling is not None:
        pb.sampling.CopyFrom(_sampling_pb(body.sampling))
    if body.history_policy is not None:
        pb.history_policy = _POLICY_TO_PB[body.history_policy]
    if body.history is not None:
        pb.history.CopyFrom(_history_pb(body.history))
    if body.cache_scope is not None:
        pb.cache_scope = _SCOPE_TO_PB[body.cache_scope]
    if body.cache_max_error_rate is not None:
        pb.cache_max_error_rate = body.cache_max_error_rate
    return pb


def _mask(body: BotPatch) -> list[str]:
    """The field mask of a PATCH body: nested objects name the fields they hold."""
    paths: list[str] = []
    for name in sorted(body.model_fields_set):
        value = getattr(body, name)
        if isinstance(value, Sampling | HistoryParams) and value.model_fields_set:
            paths.extend(f"{name}.{inner}" for inner in sorted(value.model_fields_set))
        else:
            paths.append(name)
    return paths


@router.get("", response_model=BotList, responses=_ERRORS, summary="List bot profiles")
async def list_bots(caller: Caller, parts: PartsDep) -> BotList:
    """The profiles you may chat with: the default, the shared ones and your own (with the admin
    key: the default and the shared ones)."""
    listed = await parts.session.list_bots(
        session_pb2.ListBotsRequest(user_id=_user_id(caller), admin=caller.is_admin)
    )
    return BotList(bots=[bot_out(b) for b in listed.bots])


@router.get("/{bot_id}", response_model=BotOut, responses=_ERRORS, summary="Read a bot profile")
async def get_bot(bot_id: BotId, caller: Caller, parts: PartsDep) -> BotOut:
    got = await parts.session.get_bot(
        session_pb2.GetBotRequest(user_id=_user_id(caller), admin=caller.is_admin, bot_id=bot_id)
    )
    return bot_out(got)


@router.post(
    "",
    response_model=BotOut,
    status_code=201,
    responses=_ERRORS,
    summary="Create a bot profile",
)
async def create_bot(body: BotIn, caller: Caller, parts: PartsDep) -> BotOut:
    """With a user's key: a profile of your own. With the admin key: a shared profile."""
    created = await parts.session.create_bot(
        session_pb2.CreateBotRequest(
            user_id=_user_id(caller), admin=caller.is_admin, bot=_profile_pb(body)
        )
    )
    return bot_out(created)


@router.patch("/{bot_id}", response_model=BotOut, responses=_ERRORS, summary="Change a bot profile")
async def update_bot(bot_id: BotId, body: BotPatch, caller: Caller, parts: PartsDep) -> BotOut:
    """Change the fields given. Chats started with the profile use it as it now is."""
    paths = _mask(body)
    profile = _profile_pb(body)
    profile.bot_id = bot_id
    updated = await parts.session.update_bot(
        session_pb2.UpdateBotRequest(
            user_id=_user_id(caller),
            admin=caller.is_admin,
            bot=profile,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
    )
    if any(path.split(".")[0] in _ANSWER_FIELDS for path in paths):
        await _invalidate_cache(parts, bot_id)
    return bot_out(updated)


# Fields whose change makes the profile's cached answers stale. Those entries would never match
# again (the cache key covers the system prompt and model); deleting them frees the space now.
_ANSWER_FIELDS = frozenset({"system_prompt", "model", "sampling"})


async def _invalidate_cache(parts: PartsDep, bot_id: str) -> None:
    if parts.cache is None:
        return
    try:
        await parts.cache.Invalidate(
            cache_pb2.InvalidateRequest(bot_id=bot_id), timeout=parts.settings.cache_timeout_s * 4
        )
    except grpc.aio.AioRpcError as exc:
        # The profile is changed all the same; stale entries age out with their TTL.
        log.warning("cache invalidation failed", extra={"bot_id": bot_id, "code": exc.code().name})


@router.delete("/{bot_id}", status_code=204, responses=_ERRORS, summary="Delete a bot profile")
async def delete_bot(bot_id: BotId, caller: Caller, parts: PartsDep) -> Response:
    """Nobody can start a chat with it any more; chats started with it go on with it."""
    await parts.session.delete_bot(
        session_pb2.DeleteBotRequest(user_id=_user_id(caller), admin=caller.is_admin, bot_id=bot_id)
    )
    return Response(status_code=204)


def _user_id(caller: Principal) -> str:
    return "" if caller.is_admin else caller.user_id
