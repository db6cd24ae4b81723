"""Bot profiles on the wire: the built-in default, and checking what callers send."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Sequence
from typing import Literal

from parley.v1 import session_pb2, types_pb2
from parley_session.config import Settings
from parley_session.domain import BotProfile, HistoryParams, HistoryPolicy, InvalidArgumentError
from parley_session.tokens import TokenCounter

__all__ = [
    "DEFAULT_BOT_ID",
    "POLICY_FROM_PB",
    "POLICY_TO_PB",
    "SCOPE_FROM_PB",
    "SCOPE_TO_PB",
    "ProfileRules",
    "bot_pb",
]

DEFAULT_BOT_ID = "default"

POLICY_FROM_PB = {
    session_pb2.HISTORY_POLICY_FULL: HistoryPolicy.FULL,
    session_pb2.HISTORY_POLICY_TRUNCATE: HistoryPolicy.TRUNCATE,
    session_pb2.HISTORY_POLICY_SUMMARIZE: HistoryPolicy.SUMMARIZE,
}
POLICY_TO_PB = {v: k for k, v in POLICY_FROM_PB.items()}
SCOPE_TO_PB = {
    "user": types_pb2.CACHE_SCOPE_USER,
    "tenant": types_pb2.CACHE_SCOPE_TENANT,
    "global": types_pb2.CACHE_SCOPE_GLOBAL,
    "disabled": types_pb2.CACHE_SCOPE_DISABLED,
}
SCOPE_FROM_PB = {v: k for k, v in SCOPE_TO_PB.items()}

# An avatar: an emoji (a few characters), an http(s) URL, or a small image inline as a data URL
# (what the web page uploads), checked by its bytes: a PNG, JPEG, GIF or WebP that is what its
# media type says. SVG is refused (it can carry script).
AVATAR_MAX_BYTES = 32 * 1024
_DATA_URL = re.compile(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/]*={0,2})")
_IMAGE_SIGNATURES = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}


def _image_type(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for media_type, signatures in _IMAGE_SIGNATURES.items():
        if data.startswith(signatures):
            return media_type
    return None


def check_avatar(avatar: str) -> None:
    if avatar.startswith("data:"):
        match = _DATA_URL.fullmatch(avatar)
        if match is None:
            raise InvalidArgumentError("avatar", "a data URL must be data:image/...;base64,...")
        declared = match[1]
        try:
            data = base64.b64decode(match[2], validate=True)
        except binascii.Error:
            raise InvalidArgumentError("avatar", "the data URL's base64 is malformed") from None
        if len(data) > AVATAR_MAX_BYTES:
            raise InvalidArgumentError(
                "avatar", f"the image is {len(data)} bytes; at most {AVATAR_MAX_BYTES}"
            )
        found = _image_type(data)
        if found is None:
            raise InvalidArgumentError("avatar", "the image is not a PNG, JPEG, GIF or WebP")
        if found != declared:
            raise InvalidArgumentError("avatar", f"the data URL says {declared}, the bytes {found}")
    elif len(avatar) > 2048 or (
        avatar and len(avatar) > 16 and not avatar.startswith(("https://", "http://"))
    ):
        raise InvalidArgumentError(
            "avatar",
            "an http(s) URL, up to 16 characters (an emoji), or a data:image/ URL of a PNG, "
            f"JPEG, GIF or WebP of at most {AVATAR_MAX_BYTES} bytes",
        )


# Paths of BotProfile that an update may name (AIP-134 field masks).
_UPDATABLE = frozenset(
    {
        "name",
        "avatar",
        "description",
        "system_prompt",
        "model",
        "sampling",
        "sampling.max_tokens",
        "sampling.temperature",
        "sampling.top_p",
        "history_policy",
        "history",
        "history.summarize_at",
        "history.keep_recent",
        "history.summary_max_tokens",
        "cache_scope",
        "cache_max_error_rate",
    }
)
_USER_SCOPES = frozenset({"user", "disabled"})


def bot_pb(bot: BotProfile) -> session_pb2.BotProfile:
    sampling = types_pb2.SamplingParams(max_tokens=bot.max_tokens)
    if bot.temperature is not None:
        sampling.temperature = bot.temperature
    if bot.top_p is not None:
        sampling.top_p = bot.top_p
    return session_pb2.BotProfile(
        bot_id=bot.bot_id,
        name=bot.name,
        avatar=bot.avatar,
        description=bot.description,
        system_prompt=bot.system_prompt,
        model=bot.model,
        sampling=sampling,
        history_policy=POLICY_TO_PB[bot.history_policy],
        history=session_pb2.HistoryParams(
            summarize_at=bot.history.summarize_at,
            keep_recent=bot.history.keep_recent,
            summary_max_tokens=bot.history.summary_max_tokens,
        ),
        cache_scope=SCOPE_TO_PB[bot.cache_scope],
        cache_max_error_rate=bot.cache_max_error_rate,
        shared=bot.shared,
        builtin=bot.builtin,
        created_unix_ms=bot.created_ms,
        updated_unix_ms=bot.updated_ms,
    )


class ProfileRules:
    """What a profile may hold in this deployment: the served model, its window, sane limits."""

    def __init__(self, settings: Settings, tokens: TokenCounter) -> None:
        self._settings = settings
        self._tokens = tokens
        self.default = BotProfile(
            bot_id=DEFAULT_BOT_ID,
            name="Assistant",
            system_prompt=settings.default_system_prompt,
            model=settings.model_name,
            history_policy=HistoryPolicy(settings.default_history_policy),
            max_tokens=settings.default_max_tokens,
            temperature=settings.default_temperature,
            top_p=settings.default_top_p,
            description="The default assistant.",
            history=self.default_history,
            builtin=True,
        )

    @property
    def default_history(self) -> HistoryParams:
        s = self._settings
        return HistoryParams(s.summarize_at, s.keep_recent, s.summary_max_tokens)

    def new(self, pb: session_pb2.BotProfile, *, owner_user_id: str, admin: bool) -> BotProfile:
        """A profile from a create request; unset fields take the deployment's defaults."""
        base = dataclasses.replace(
            self.default,
            bot_id="",
            name="",
            description="",
            builtin=False,
            owner_user_id=owner_user_id,
            history_policy=HistoryPolicy.TRUNCATE,
            max_tokens=self._settings.default_max_tokens,
        )
        paths = [f.name for f, _ in pb.ListFields() if f.name in _UPDATABLE]
        return self.update(base, pb, paths, admin=admin)

    def update(
        self, base: BotProfile, pb: session_pb2.BotProfile, paths: Sequence[str], *, admin: bool
    ) -> BotProfile:
        unknown = sorted(set(paths) - _UPDATABLE)
        if unknown:
            raise InvalidArgumentError(
                "update_mask", f"cannot change {', '.join(unknown)}; changeable: {_listing()}"
            )
        changes: dict[str, object] = {}
        history = base.history
        for path in paths:
            match path:
                case "name" | "avatar" | "description" | "system_prompt" | "model":
                    changes[path] = getattr(pb, path).strip()
                case "sampling":
                    changes["max_tokens"] = pb.sampling.max_tokens
                    changes["temperature"] = _optional(pb.sampling, "temperature")
                    changes["top_p"] = _optional(pb.sampling, "top_p")
                case "sampling.max_tokens":
                    changes["max_tokens"] = pb.sampling.max_tokens
                case "sampling.temperature":
                    changes["temperature"] = _optional(pb.sampling, "temperature")
                case "sampling.top_p":
                    changes["top_p"] = _optional(pb.sampling, "top_p")
                case "history_policy":
                    changes["history_policy"] = POLICY_FROM_PB.get(
                        pb.history_policy, HistoryPolicy.TRUNCATE
                    )
                case "history":
                    history = HistoryParams(
                        round(pb.history.summarize_at, 6),
                        round(pb.history.keep_recent, 6),
                        pb.history.summary_max_tokens,
                    )
                case "history.summarize_at" | "history.keep_recent":
                    name = path.split(".")[1]
                    history = dataclasses.replace(
                        history, **{name: round(getattr(pb.history, name), 6)}
                    )
                case "history.summary_max_tokens":
                    history = dataclasses.replace(
                        history, summary_max_tokens=pb.history.summary_max_tokens
                    )
                case "cache_scope":
                    changes["cache_scope"] = SCOPE_FROM_PB.get(pb.cache_scope, "user")
                case "cache_max_error_rate":
                    # float32 on the wire, as sampling's: 0.02 arrives as 0.0199999996.
                    changes["cache_max_error_rate"] = round(float(pb.cache_max_error_rate), 6)
        bot = dataclasses.replace(base, **changes, history=history)  # type: ignore[arg-type]
        return self.check(self._with_defaults(bot), admin=admin)

    def _with_defaults(self, bot: BotProfile) -> BotProfile:
        """Zero means "the deployment's default" on the wire (proto3 has no unset numbers)."""
        d = self.default_history
        return dataclasses.replace(
            bot,
            model=bot.model or self._settings.model_name,
            max_tokens=bot.max_tokens or self._settings.default_max_tokens,
            history=HistoryParams(
                bot.history.summarize_at or d.summarize_at,
                bot.history.keep_recent or d.keep_recent,
                bot.history.summary_max_tokens or d.summary_max_tokens,
            ),
        )

    def check(self, bot: BotProfile, *, admin: bool) -> BotProfile:
        window = self._settings.context_window
        if not bot.name or len(bot.name) > 80:
            raise InvalidArgumentError("name", "must be 1 to 80 characters")
        check_avatar(bot.avatar)
        if len(bot.description) > 1000:
            raise InvalidArgumentError("description", "at most 1000 characters")
        if len(bot.system_prompt) > 20_000:
            raise InvalidArgumentError("system_prompt", "at most 20000 characters")
        if bot.model != self._settings.model_name:
            raise InvalidArgumentError(
                "model", f"this deployment serves {self._settings.model_name!r}"
            )
        if not 1 <= bot.max_tokens < window:
            raise InvalidArgumentError(
                "sampling.max_tokens", f"1 to {window - 1} (the model's window is {window})"
            )
        if bot.temperature is not None and not 0 <= bot.temperature <= 2:
            raise InvalidArgumentError("sampling.temperature", "0 to 2")
        if bot.top_p is not None and not 0 < bot.top_p <= 1:
            raise InvalidArgumentError("sampling.top_p", "more than 0, at most 1")
        if bot.system_prompt:
            cost = self._tokens.prompt_tokens([("system", bot.system_prompt)])
            if cost + bot.max_tokens >= window:
                raise InvalidArgumentError(
                    "system_prompt",
                    f"{cost} tokens with the template; with a reply budget of {bot.max_tokens} "
                    f"that leaves no room for the chat in the {window}-token window",
                )
        h = bot.history
        if not 0 < h.summarize_at <= 1:
            raise InvalidArgumentError("history.summarize_at", "a share of the window, 0 to 1")
        if not 0 < h.keep_recent < h.summarize_at:
            raise InvalidArgumentError(
                "history.keep_recent", "a share of the window, less than history.summarize_at"
            )
        if not 16 <= h.summary_max_tokens <= window // 2:
            raise InvalidArgumentError(
                "history.summary_max_tokens", f"16 to {window // 2} (half the model's window)"
            )
        if not admin and bot.cache_scope not in _USER_SCOPES:
            # A shared cache scope would hand this profile's answers to other users.
            raise InvalidArgumentError(
                "cache_scope", "user or disabled (tenant and global are for shared profiles)"
            )
        if not 0 <= bot.cache_max_error_rate < 1:
            raise InvalidArgumentError(
                "cache_max_error_rate",
                "a share of wrong cache hits, more than 0 and less than 1 (0: the deployment's)",
            )
        return bot


def _optional(pb: types_pb2.SamplingParams, name: Literal["temperature", "top_p"]) -> float | None:
    # float32 on the wire: 0.7 arrives as 0.699999988, which nobody typed.
    return round(float(getattr(pb, name)), 6) if pb.HasField(name) else None


def _listing() -> str:
    return ", ".join(sorted(_UPDATABLE))
