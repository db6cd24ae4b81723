"""Which bot profile a call may use or change: a chat's own, one a user may pick, one a caller
owns (the admin's are the shared ones). Plain values in and out, no protobuf."""

from __future__ import annotations

import logging

from parley_common.ids import is_id
from parley_session.domain import (
    BotNotFoundError,
    BotProfile,
    InvalidArgumentError,
    PermissionDeniedError,
)
from parley_session.profiles import DEFAULT_BOT_ID
from parley_session.stores import BotStore, ChatDoc

__all__ = ["BotAccess"]

log = logging.getLogger(__name__)


class BotAccess:
    def __init__(self, bots: BotStore, default: BotProfile) -> None:
        self._bots = bots
        self.default = default

    async def of_chat(self, chat: ChatDoc) -> BotProfile:
        """The profile a chat was started with (or moved to), even if it was deleted since."""
        if chat.bot_id in ("", DEFAULT_BOT_ID):
            return self.default
        try:
            return await self._bots.get_bot(chat.bot_id, visible_to=None, include_deleted=True)
        except BotNotFoundError:
            log.warning("chat's bot profile is gone", extra={"bot_id": chat.bot_id})
            return self.default

    async def pickable(self, user_id: str, bot_id: str) -> BotProfile:
        """A profile a user may start (or move) a chat with."""
        if bot_id in ("", DEFAULT_BOT_ID):
            return self.default
        try:
            if not is_id(bot_id):
                raise BotNotFoundError(bot_id)
            return await self._bots.get_bot(bot_id, visible_to=user_id, include_deleted=False)
        except BotNotFoundError:
            raise InvalidArgumentError("bot_id", f"no bot profile {bot_id!r}") from None

    @staticmethod
    def owner(user_id: str, admin: bool) -> str:
        """Whose profiles a call manages: the admin's are the shared ones (no owner)."""
        if admin:
            return ""
        if not is_id(user_id):
            raise InvalidArgumentError("user_id", "required (or the admin flag)")
        return user_id

    async def visible(self, user_id: str, admin: bool, bot_id: str) -> BotProfile:
        """A profile the caller may read: shared, or their own (the admin: shared ones only)."""
        owner = self.owner(user_id, admin)
        if bot_id == DEFAULT_BOT_ID:
            return self.default
        if not is_id(bot_id):
            raise BotNotFoundError(bot_id)
        bot = await self._bots.get_bot(bot_id, visible_to=owner or None, include_deleted=False)
        if admin and not bot.shared:
            raise BotNotFoundError(bot_id)  # users' own profiles are theirs alone
        return bot

    async def own(self, user_id: str, admin: bool, bot_id: str) -> BotProfile:
        """A profile the caller may change; a visible one that is not theirs is refused."""
        owner = self.owner(user_id, admin)
        if bot_id == DEFAULT_BOT_ID:
            raise PermissionDeniedError("the default profile is set by the service's configuration")
        if not is_id(bot_id):
            raise BotNotFoundError(bot_id)
        bot = await self._bots.get_bot(
            bot_id, visible_to=None if admin else owner, include_deleted=False
        )
        if bot.owner_user_id != owner:
            if bot.shared:
                raise PermissionDeniedError("shared profiles are managed with the admin key")
            raise BotNotFoundError(bot_id)  # another user's: not told apart from none
        return bot
