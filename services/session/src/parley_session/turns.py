"""A chat turn, top-down: the question checked, stored once per request id (a new chat, or the
next question of one), the context built; a retried request is answered as it was accepted.

Plain values in (`TurnRequest`) and out (`Turn`); `server.py` translates them from and to the
wire, `wire.py` holds the conversion.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final

from parley_common.ids import is_id
from parley_session.attachments import AttachmentKind, Document, document_text, fit_documents
from parley_session.bot_access import BotAccess
from parley_session.config import Settings
from parley_session.context import BuiltContext, ContextBuilder
from parley_session.domain import (
    AttachmentNotFoundError,
    BotProfile,
    ChatNotFoundError,
    HistoryPolicy,
    InvalidArgumentError,
    MessageNotFoundError,
    StoredMessage,
    ToolCall,
    ToolResult,
    check_message_fits,
    prompt_text,
)
from parley_session.failures import EXPECTED_FAILURES
from parley_session.retry import deadline
from parley_session.stores import ChatDoc, LoadedHistory, MessageDoc, Stores, TurnSlot
from parley_session.stores._mongo import Doc
from parley_session.tokens import TokenCounter

__all__ = ["MAX_CONTENT_CHARS", "Turn", "TurnRequest", "Turns", "check_chat_id", "check_content"]

log = logging.getLogger(__name__)

MAX_CONTENT_CHARS: Final = 100_000
_RELEASE_S: Final = 1.0
_NO_LATER_THAN: Final = 2**31  # an ordinal past any chat's last message
_ANSWER_POLL_S: Final = 0.02
# Images travel to the workers inside the turn's Kafka request, under Kafka's 1 MB message limit.
MAX_IMAGE_BYTES_A_QUESTION: Final = 768 * 1024


@dataclass(frozen=True, slots=True)
class TurnRequest:
    user_id: str
    request_id: str
    content: str
    chat_id: str = ""  # empty: start a chat
    bot_id: str = ""  # of a new chat
    max_tokens: int = 0  # 0: the profile's
    history_policy: HistoryPolicy | None = None  # None: the profile's
    edit_message_id: str = ""  # ask this user message of the chat again, as a new branch
    regenerate_message_id: str = ""  # a new answer (a sibling) to this assistant message's question
    # In place of `content`: the results of the tool calls of the chat's last answer.
    tool_results: tuple[ToolResult, ...] = ()
    attachment_ids: tuple[str, ...] = ()  # files of the chat sent with the question


@dataclass(frozen=True, slots=True)
class Turn:
    """A stored question and what to send to the model for it; `existing_answer` when the
    request was answered before (a retry)."""

    chat: ChatDoc
    bot: BotProfile
    question: MessageDoc
    context: BuiltContext
    max_tokens: int
    existing_answer: MessageDoc | None = None
    answer_slot: int | None = None  # None: the question's ordinal (a regeneration has its own)
    # A first regeneration of an answer the cache served: that entry, which the user rejected.
    regenerated_cache_entry_id: str = ""
    images: tuple[Image, ...] = ()  # sent with the question to a model that takes images


@dataclass(frozen=True, slots=True)
class Image:
    media_type: str
    data: bytes


def check_chat_id(chat_id: str) -> None:
    if not is_id(chat_id):
        raise ChatNotFoundError(chat_id)


def check_content(content: str) -> None:
    if not content.strip():
        raise InvalidArgumentError("content", "must not be empty")
    if len(content) > MAX_CONTENT_CHARS:
        raise InvalidArgumentError("content", f"longer than {MAX_CONTENT_CHARS} characters")


def check_tool_results(request: TurnRequest) -> None:
    """A tool turn: results (each naming its call) in place of a message, in a chat."""
    if request.content:
        raise InvalidArgumentError("content", "a turn of tool results has no message")
    if request.edit_message_id or request.regenerate_message_id:
        raise InvalidArgumentError("tool_results", "an edit or a regeneration has no tool results")
    if not request.chat_id:
        raise InvalidArgumentError("tool_results", "they answer the tool calls of a chat's answer")
    for index, result in enumerate(request.tool_results):
        if not result.tool_call_id:
            raise InvalidArgumentError(
                f"tool_results[{index}].tool_call_id", "must name the tool call it answers"
            )
        if len(result.content) > MAX_CONTENT_CHARS:
            raise InvalidArgumentError(
                f"tool_results[{index}].content", f"longer than {MAX_CONTENT_CHARS} characters"
            )


def _check_answers_calls(results: tuple[ToolResult, ...], calls: tuple[ToolCall, ...]) -> None:
    """Each result answers a distinct call the chat's last answer made."""
    if not calls:
        raise InvalidArgumentError(
            "tool_results", "the chat's last answer made no tool calls to answer"
        )
    issued = {call.id for call in calls}
    answered: set[str] = set()
    for index, result in enumerate(results):
        where = f"tool_results[{index}].tool_call_id"
        if result.tool_call_id not in issued:
            listed = ", ".join(repr(c.id) for c in calls)
            raise InvalidArgumentError(
                where,
                f"{result.tool_call_id[:128]!r} is not a tool call of the chat's last answer "
                f"(its calls: {listed})",
            )
        if result.tool_call_id in answered:
            raise InvalidArgumentError(where, f"{result.tool_call_id!r} is answered twice")
        answered.add(result.tool_call_id)


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


class Turns:
    def __init__(
        self,
        stores: Stores,
        bots: BotAccess,
        contexts: ContextBuilder,
        tokens: TokenCounter,
        settings: Settings,
    ) -> None:
        self._stores = stores
        self._bots = bots
        self._contexts = contexts
        self._tokens = tokens
        self._settings = settings

    async def start(self, request: TurnRequest) -> Turn:
        if not request.request_id or len(request.request_id) > 128:
            raise InvalidArgumentError("request_id", "must be 1 to 128 characters")
        if request.attachment_ids and (
            not request.chat_id or request.edit_message_id or request.regenerate_message_id
        ):
            raise InvalidArgumentError(
                "attachment_ids", "files are sent with the next question of an existing chat"
            )
        if request.tool_results:
            check_tool_results(request)
            check_chat_id(request.chat_id)
            return await self._next_turn(request, request.chat_id)
        if request.regenerate_message_id:
            check_chat_id(request.chat_id)
            return await self._regenerate(request)
        check_content(request.content)
        if request.edit_message_id:
            check_chat_id(request.chat_id)
            return await self._edit(request)
        if request.chat_id:
            check_chat_id(request.chat_id)
            return await self._next_turn(request, request.chat_id)
        return await self._first_turn(request)

    async def build_context(self, request: TurnRequest) -> BuiltContext:
        """The context a question would be sent with now, nothing stored."""
        check_chat_id(request.chat_id)
        check_content(request.content)
        chat = await self._stores.chats.get_chat(request.user_id, request.chat_id)
        bot = await self._bots.of_chat(chat)
        return await self._contexts.build(
            chat=chat,
            bot=bot,
            policy=self._policy(request, bot),
            reply_budget=self._reply_budget(bot, request.max_tokens),
            through_ordinal=_NO_LATER_THAN - 1,
            leaf_id=chat.active_leaf or None,
            draft=StoredMessage(
                _NO_LATER_THAN, "user", request.content, self._tokens.count(request.content)
            ),
            summarize=False,
        )

    async def _first_turn(self, request: TurnRequest) -> Turn:
        """A new chat: its question is stored in the same two writes that create it, and the
        context is built from what is known (no history to read)."""
        content = request.content
        token_count = self._tokens.count(content)
        try:
            bot = await self._bots.pickable(request.user_id, request.bot_id)
            max_tokens = self._reply_budget(bot, request.max_tokens)
            # Refused before anything is stored: a turn that cannot be sent is never kept.
            self._check_fits(bot, content, token_count, max_tokens)
        except InvalidArgumentError:
            # Unless the request was accepted before (a retry): it goes on in its chat.
            chats = self._stores.chats
            chat = await chats.find_chat_by_request(request.user_id, request.request_id)
            if chat is None:
                raise
            return await self._next_turn(request, chat.chat_id)
        opened = await self._stores.chats.open_chat(
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
        built = await self._contexts.build(
            chat=opened.chat,
            bot=bot,
            policy=self._policy(request, bot),
            reply_budget=max_tokens,
            through_ordinal=opened.question.ordinal,
            leaf_id=opened.question.message_id,
            known=LoadedHistory(
                [opened.question.stored()],
                created_ms={opened.question.ordinal: opened.question.created_ms},
            ),
        )
        return Turn(opened.chat, bot, opened.question, built, max_tokens)

    async def _edit(self, request: TurnRequest) -> Turn:
        """A user message asked again with new content: a new branch from the message it
        followed, which becomes the chat's active path."""
        await self._stores.chats.get_chat(request.user_id, request.chat_id)  # the owner first
        messages = self._stores.messages
        stored = await messages.find_message(request.chat_id, request.request_id, "user")
        if stored is not None:
            return await self._replay(request, request.chat_id, stored)
        edited = await self._user_message(request.chat_id, request.edit_message_id)
        parent = None
        awaits = None
        if edited.parent_id:
            parent = await self._stores.branches.message(request.chat_id, edited.parent_id)
            if parent.role == "user":  # its answer is not stored yet: the edit awaits it too
                awaits = parent.ordinal
        slot = await self._stores.chats.reserve_branch(
            request.user_id, request.chat_id, parent=parent, awaits_slot=awaits
        )
        return await self._place_reserved(request, request.chat_id, slot)

    async def _regenerate(self, request: TurnRequest) -> Turn:
        """A new answer to the question of an assistant message, stored beside it (a sibling)
        and the chat's active path; the question itself is not stored again."""
        chat = await self._stores.chats.get_chat(request.user_id, request.chat_id)
        branches = self._stores.branches
        try:
            answer = await branches.message(request.chat_id, request.regenerate_message_id)
        except MessageNotFoundError:
            raise InvalidArgumentError(
                "message_id", f"no message {request.regenerate_message_id} in this chat"
            ) from None
        if answer.role != "assistant" or not answer.parent_id:
            raise InvalidArgumentError(
                "message_id", "only an assistant message can be regenerated; edit a question"
            )
        question = await branches.message(request.chat_id, answer.parent_id)
        bot = await self._bots.of_chat(chat)
        max_tokens = self._reply_budget(bot, request.max_tokens)
        regeneration, chat = await branches.reserve_regeneration(
            request.user_id, request.chat_id, question=question, request_id=request.request_id
        )
        existing = None
        if not regeneration.created:
            messages = self._stores.messages
            existing = await messages.find_message(request.chat_id, request.request_id, "assistant")
        built = await self._contexts.build(
            chat=chat,
            bot=bot,
            policy=self._policy(request, bot),
            reply_budget=max_tokens,
            through_ordinal=question.ordinal,
            leaf_id=question.message_id,
        )
        return Turn(
            chat,
            bot,
            question,
            built,
            max_tokens,
            existing,
            regeneration.slot,
            regenerated_cache_entry_id=answer.cache_entry_id if regeneration.created else "",
        )

    async def _user_message(self, chat_id: str, message_id: str) -> MessageDoc:
        try:
            message = await self._stores.branches.message(chat_id, message_id)
        except MessageNotFoundError:
            raise InvalidArgumentError(
                "message_id", f"no message {message_id} in this chat"
            ) from None
        if message.role != "user":
            raise InvalidArgumentError(
                "message_id", "only a user message can be edited; regenerate an answer"
            )
        return message

    async def _next_turn(self, request: TurnRequest, chat_id: str) -> Turn:
        """A question in an existing chat: reserve its ordinal (reading the chat, its owner
        checked), store it, read the history once."""
        slot = await self._stores.chats.reserve_turn(request.user_id, chat_id)
        return await self._place_reserved(request, chat_id, slot)

    async def _place_reserved(self, request: TurnRequest, chat_id: str, slot: TurnSlot) -> Turn:
        content = request.content
        draft = StoredMessage(slot.ordinal, "user", content, 0, tool_results=request.tool_results)
        token_count = self._tokens.count(prompt_text(draft))
        draft = StoredMessage(
            slot.ordinal, "user", content, token_count, tool_results=request.tool_results
        )
        chats = self._stores.chats
        attached: Doc | None = None
        images: tuple[Image, ...] = ()
        try:
            bot = await self._bots.of_chat(slot.chat)
            policy = self._policy(request, bot)
            max_tokens = self._reply_budget(bot, request.max_tokens)
            if request.attachment_ids:
                attached, images = await self._attach(request, bot, max_tokens)
                content, token_count = attached["model_content"], attached.pop("token_count")
                draft = StoredMessage(
                    slot.ordinal, "user", content, token_count, tool_results=request.tool_results
                )
            self._check_fits(bot, prompt_text(draft), token_count, max_tokens)
            if request.tool_results:
                _check_answers_calls(request.tool_results, await self._calls_answered(slot))
            if policy is HistoryPolicy.FULL:
                await self._contexts.build(
                    chat=slot.chat,
                    bot=bot,
                    policy=policy,
                    reply_budget=max_tokens,
                    through_ordinal=slot.ordinal - 1,
                    leaf_id=slot.parent_id,
                    draft=draft,
                    summarize=False,
                )
        except InvalidArgumentError:
            await chats.release_turn(slot)
            # A question stored before (a retry) is answered as it was accepted then.
            messages = self._stores.messages
            stored = await messages.find_message(chat_id, request.request_id, "user")
            if stored is None:
                raise
            return await self._replay(request, chat_id, stored)
        except Exception:
            await self._release_quietly(slot)
            raise
        question, placed = await chats.place_question(
            slot,
            content=request.content,
            token_count=token_count,
            request_id=request.request_id,
            tool_results=request.tool_results,
            attached=attached,
        )
        if not placed:
            await chats.release_turn(slot)
            return await self._replay(request, chat_id, question)
        built = await self._contexts.build(
            chat=slot.chat,
            bot=bot,
            policy=policy,
            reply_budget=max_tokens,
            through_ordinal=question.ordinal,
            leaf_id=question.message_id,
            answer_wait_s=self._settings.previous_answer_wait_s,
        )
        return Turn(slot.chat, bot, question, built, max_tokens, images=images)

    async def _attach(
        self, request: TurnRequest, bot: BotProfile, reply_budget: int
    ) -> tuple[Doc, tuple[Image, ...]]:
        """The question's files: each of this chat's; images only for a model that takes them
        (VISION_MODELS); documents' text with the question, cut (and said so) when it does not
        fit the window. Returns what the question stores of them, and its images."""
        ids = tuple(dict.fromkeys(request.attachment_ids))
        limit = self._settings.attachment_max_per_chat
        if len(ids) > limit:
            raise InvalidArgumentError("attachment_ids", f"at most {limit} files a question")
        store = self._stores.attachments
        found = []
        for attachment_id in ids:
            try:
                if not is_id(attachment_id):
                    raise AttachmentNotFoundError(attachment_id)
                found.append(await store.get(request.user_id, request.chat_id, attachment_id))
            except AttachmentNotFoundError:
                raise InvalidArgumentError(
                    "attachment_ids", f"no attachment {attachment_id} in this chat"
                ) from None
        model = bot.model or self._settings.model_name
        pictures = [a for a in found if a.kind == AttachmentKind.IMAGE]
        if pictures and model not in self._settings.image_models:
            raise InvalidArgumentError(
                "attachment_ids",
                f"model {model} does not accept image input; send documents only, or chat "
                "with a bot whose model takes images",
                reason="image_input_unsupported",
            )
        if sum(a.size for a in pictures) > MAX_IMAGE_BYTES_A_QUESTION:
            raise InvalidArgumentError(
                "attachment_ids",
                f"the images come to {sum(a.size for a in pictures)} bytes; at most "
                f"{MAX_IMAGE_BYTES_A_QUESTION} go to the model with one question",
                reason="attachment_too_large",
            )
        images = tuple([Image(a.media_type, await store.read(a.attachment_id)) for a in pictures])
        documents = [
            Document(
                a.name,
                document_text(AttachmentKind(a.kind), await store.read(a.attachment_id)),
                a.tokens or 0,
            )
            for a in found
            if AttachmentKind(a.kind).is_document
        ]
        fitted = fit_documents(
            request.content,
            documents,
            system_prompt=bot.system_prompt,
            budget=self._settings.context_window - reply_budget,
            fmt=self._tokens,
        )
        attached = {
            "attachments": [a.ref() for a in found],
            "model_content": fitted.content,
            "token_count": fitted.tokens,
            "context_notice": fitted.notice,
        }
        return attached, images

    async def _calls_answered(self, slot: TurnSlot) -> tuple[ToolCall, ...]:
        """The tool calls of the answer a tool turn follows: the chat's last message, or the
        answer it awaits (stored from the results topic a moment after the client read it, so
        it is waited for as a next question waits for it)."""
        messages = self._stores.messages
        chat_id = slot.chat.chat_id
        if slot.awaits_slot is None:
            if not slot.parent_id:
                return ()
            previous = await messages.get_message(chat_id, slot.parent_id)
        else:
            until = time.monotonic() + self._settings.previous_answer_wait_s
            previous = await messages.message_at(chat_id, slot.awaits_slot + 1)
            while previous is None and time.monotonic() < until:
                await asyncio.sleep(_ANSWER_POLL_S)
                previous = await messages.message_at(chat_id, slot.awaits_slot + 1)
            if previous is not None and previous.parent_id != slot.parent_id:
                previous = None
        if previous is None or previous.role != "assistant":
            return ()
        return previous.tool_calls

    async def _replay(self, request: TurnRequest, chat_id: str, question: MessageDoc) -> Turn:
        """A request seen before: its question as stored then, its answer if there is one."""
        chat = await self._stores.chats.get_chat(request.user_id, chat_id)
        bot = await self._bots.of_chat(chat)
        max_tokens = self._reply_budget(bot, request.max_tokens)
        messages = self._stores.messages
        existing_answer = await messages.find_message(chat_id, request.request_id, "assistant")
        built = await self._contexts.build(
            chat=chat,
            bot=bot,
            policy=self._policy(request, bot),
            reply_budget=max_tokens,
            through_ordinal=question.ordinal,
            leaf_id=question.message_id,
            answer_wait_s=self._settings.previous_answer_wait_s,
        )
        return Turn(chat, bot, question, built, max_tokens, existing_answer)

    async def _release_quietly(self, slot: TurnSlot) -> None:
        """Give back the slot of a turn that failed before its question was stored, if MongoDB
        still answers (otherwise the chat's count keeps it: a display figure, nothing else)."""
        try:
            with deadline(_RELEASE_S):
                await self._stores.chats.release_turn(slot)
        except EXPECTED_FAILURES as exc:
            log.warning("could not give back a turn's slot", extra={"error": repr(exc)})

    @staticmethod
    def _policy(request: TurnRequest, bot: BotProfile) -> HistoryPolicy:
        return bot.history_policy if request.history_policy is None else request.history_policy

    def _reply_budget(self, bot: BotProfile, requested: int) -> int:
        budget = requested or bot.max_tokens
        if budget >= self._settings.context_window:
            raise InvalidArgumentError(
                "max_tokens", f"less than the model's window of {self._settings.context_window}"
            )
        return budget

    def _check_fits(self, bot: BotProfile, content: str, tokens: int, reply_budget: int) -> None:
        check_message_fits(
            system_prompt=bot.system_prompt,
            content=content,
            content_tokens=tokens,
            window=self._settings.context_window,
            reply_budget=reply_budget,
            fmt=self._tokens,
        )
