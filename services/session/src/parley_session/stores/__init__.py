"""The session service's MongoDB adapter: one store per collection family, on PyMongo's native
async API.

Every public method runs under the service's one `RetryPolicy` (the `retried` decorator) and is
safe to run again after a transient failure: ids are chosen before the first attempt and unique
indexes turn a repeated write into a no-op.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, from_ms, retried
from parley_session.stores.attachments import AttachmentDoc, AttachmentStore
from parley_session.stores.audit import AuditEvent, AuditQuery, AuditStore
from parley_session.stores.bots import BotStore
from parley_session.stores.branches import BranchStore, Regeneration
from parley_session.stores.browser_sessions import BrowserSession, BrowserSessionStore
from parley_session.stores.chats import (
    ChatDoc,
    ChatStore,
    LoadedHistory,
    MessageDoc,
    OpenedChat,
    SummaryDoc,
    TurnSlot,
)
from parley_session.stores.feedback import FeedbackDoc, FeedbackQuery, FeedbackStore
from parley_session.stores.messages import MessageStore
from parley_session.stores.search import SearchStore, TextHit
from parley_session.stores.sign_in import Attempts, Invite, SignInStore
from parley_session.stores.summaries import SummaryJob, SummaryJobState, SummaryStore
from parley_session.stores.usage import UsageRow, UsageStore
from parley_session.stores.users import (
    ApiKey,
    ApiKeyInfo,
    EmailTakenError,
    UserDoc,
    UserStore,
    hash_api_key,
    hash_token,
)

__all__ = [
    "ApiKey",
    "ApiKeyInfo",
    "AttachmentDoc",
    "AttachmentStore",
    "Attempts",
    "AuditEvent",
    "AuditQuery",
    "AuditStore",
    "BotStore",
    "BranchStore",
    "BrowserSession",
    "BrowserSessionStore",
    "ChatDoc",
    "ChatStore",
    "EmailTakenError",
    "FeedbackDoc",
    "FeedbackQuery",
    "FeedbackStore",
    "Invite",
    "LoadedHistory",
    "MessageDoc",
    "MessageStore",
    "OpenedChat",
    "Regeneration",
    "SearchStore",
    "SignInStore",
    "Stores",
    "SummaryDoc",
    "SummaryJob",
    "SummaryJobState",
    "SummaryStore",
    "TextHit",
    "TurnSlot",
    "UsageRow",
    "UsageStore",
    "UserDoc",
    "UserStore",
    "from_ms",
    "hash_api_key",
    "hash_token",
]


class Stores:
    """The service's stores on one database, under one retry policy."""

    def __init__(
        self, client: AsyncMongoClient[Doc], database: str, *, retry: RetryPolicy | None = None
    ) -> None:
        self.db: AsyncDatabase[Doc] = client[database]
        self.retry = retry or RetryPolicy()
        self.users = UserStore(self.db, retry=self.retry)
        self.attachments = AttachmentStore(self.db, retry=self.retry)
        self.chats = ChatStore(self.db, self.attachments, retry=self.retry)
        self.messages = MessageStore(self.db, retry=self.retry)
        self.branches = BranchStore(self.db, self.attachments, retry=self.retry)
        self.search = SearchStore(self.db, retry=self.retry)
        self.usage = UsageStore(self.db, retry=self.retry)
        self.bots = BotStore(self.db, retry=self.retry)
        self.feedback = FeedbackStore(self.db, retry=self.retry)
        self.summaries = SummaryStore(self.db, retry=self.retry)
        self.browser_sessions = BrowserSessionStore(self.db, retry=self.retry)
        self.sign_in = SignInStore(self.db, retry=self.retry)
        self.audit = AuditStore(self.db, retry=self.retry)

    async def ensure_indexes(self) -> None:
        """Every store's indexes and migrations, each step under an attempt budget of its own:
        on a slow MongoDB all of them together may take longer than one attempt may."""
        steps: list[Callable[[], Awaitable[object]]] = [
            self.users.ensure_indexes,
            self.chats.ensure_indexes,
            self.attachments.ensure_indexes,
            self.branches.ensure_indexes,
            self.branches.migrate_linear_chats,
            self.branches.migrate_owners,
            self.bots.ensure_indexes,
            self.feedback.ensure_indexes,
            self.browser_sessions.ensure_indexes,
            self.sign_in.ensure_indexes,
            self.audit.ensure_indexes,
        ]
        for step in steps:
            await self.retry.run(step, step.__qualname__)

    @retried
    async def ping(self) -> None:
        await self.db.command("ping")
