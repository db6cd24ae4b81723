"""Context building and token counts against the tiny model's real tokenizer and chat template,
checked against `transformers`' own `apply_chat_template` (what the worker feeds the model)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from parley_session.domain import (
    ContextTooLargeError,
    HistoryPolicy,
    StoredMessage,
    build_context,
    recent_boundary,
    summary_prompt,
)
from parley_session.tokens import TokenCounter

SYSTEM = "You are a helpful AI assistant named Parley."
TOPICS = [
    "Tell me about the sea.",
    "And the mountains, with their snow and rocks?",
    "What is the capital of France?",
    "How do I bake bread at home?\n\nStep by step, please.",
    "Why is the sky blue?",
    "Give me three facts about photosynthesis, with numbers.",
    "  Leading and trailing spaces  ",
    "Ünïcödé wörds and an emoji 😀, then a date: 2024-03-01.",
]


@pytest.fixture(scope="module")
def hf(tiny_model: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(tiny_model))


def template_tokens(hf: PreTrainedTokenizerBase, messages: Sequence[tuple[str, str]]) -> int:
    ids = hf.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return len(ids)


def chat(tokens: TokenCounter, turns: int) -> list[StoredMessage]:
    """`turns` answered turns and a last question: ordinals 2k and 2k + 1."""
    out: list[StoredMessage] = []
    for k in range(turns):
        question = TOPICS[k % len(TOPICS)]
        answer = f"Answer {k}: " + "the sea is wide and deep. " * (1 + k % 3)
        out.append(StoredMessage(2 * k, "user", question, tokens.count(question)))
        out.append(StoredMessage(2 * k + 1, "assistant", answer, tokens.count(answer)))
    last = "One more question about trains?"
    out.append(StoredMessage(2 * turns, "user", last, tokens.count(last)))
    return out


def as_pairs(history: Sequence[StoredMessage], system: str = SYSTEM) -> list[tuple[str, str]]:
    return [("system", system), *((m.role, m.content) for m in history)]


def test_prompt_counts_equal_apply_chat_template(
    tokens: TokenCounter, hf: PreTrainedTokenizerBase
) -> None:
    assert tokens.exact
    history = chat(tokens, 6)
    for n in range(1, len(history) + 1):
        messages = as_pairs(history[:n])
        assert tokens.prompt_tokens(messages) == template_tokens(hf, messages)
    odd = [("system", ""), ("user", "\n\n\nX"), ("assistant", "   "), ("user", "a\tb\r\nc")]
    assert tokens.prompt_tokens(odd) == template_tokens(hf, odd)
    # For this ChatML template the per-message estimate is exact too, so truncation needs one
    # exact count to confirm its choice.
    estimate = tokens.fixed_tokens + sum(
        tokens.message_tokens(role, tokens.count(text)) for role, text in as_pairs(history)
    )
    assert estimate == template_tokens(hf, as_pairs(history))


def test_truncate_keeps_exactly_the_newest_turns_that_fit(
    tokens: TokenCounter, hf: PreTrainedTokenizerBase
) -> None:
    history = chat(tokens, 8)
    reply = 50
    for kept_turns in range(0, 8):
        start = len(history) - 1 - 2 * kept_turns
        needed = template_tokens(hf, as_pairs(history[start:]))
        for window, expect_start in ((needed + reply, start), (needed + reply - 1, start + 2)):
            if expect_start >= len(history):
                continue  # the latest turn alone does not fit: covered below
            plan = build_context(
                system_prompt=SYSTEM,
                history=history,
                policy=HistoryPolicy.TRUNCATE,
                window=window,
                reply_budget=reply,
                fmt=tokens,
            )
            assert plan.messages == as_pairs(history[expect_start:])
            assert plan.dropped_messages == expect_start
            assert plan.prompt_tokens == template_tokens(hf, plan.messages)
            assert plan.prompt_tokens <= window - reply


def test_truncate_never_starts_with_an_answer_whose_question_is_gone(
    tokens: TokenCounter, hf: PreTrainedTokenizerBase
) -> None:
    history = chat(tokens, 4)
    # Room for the last turn and the previous answer, but not for the previous question.
    needed = template_tokens(hf, as_pairs(history[-2:]))
    plan = build_context(
        system_prompt=SYSTEM,
        history=history,
        policy=HistoryPolicy.TRUNCATE,
        window=needed + 10,
        reply_budget=10,
        fmt=tokens,
    )
    assert [role for role, _ in plan.messages] == ["system", "user"]
    assert plan.dropped_messages == len(history) - 1


def test_a_latest_turn_too_large_alone_is_refused_with_its_size(
    tokens: TokenCounter, hf: PreTrainedTokenizerBase
) -> None:
    big = "The train leaves the station at seven and arrives at ten. " * 40
    history = [StoredMessage(0, "user", big, tokens.count(big))]
    reply = 100
    empty = template_tokens(hf, [("system", SYSTEM), ("user", "")])
    window = empty + tokens.count(big) + reply  # exactly enough
    plan = build_context(
        system_prompt=SYSTEM,
        history=history,
        policy=HistoryPolicy.TRUNCATE,
        window=window,
        reply_budget=reply,
        fmt=tokens,
    )
    assert plan.prompt_tokens == window - reply
    with pytest.raises(ContextTooLargeError) as refused:
        build_context(
            system_prompt=SYSTEM,
            history=history,
            policy=HistoryPolicy.TRUNCATE,
            window=window - 1,
            reply_budget=reply,
            fmt=tokens,
        )
    allowed = window - 1 - reply - empty
    assert refused.value.field == "content"
    assert f"message is {tokens.count(big)} tokens; this model's window allows {allowed}" in str(
        refused.value
    )


def test_full_keeps_every_turn_or_says_it_does_not_fit(
    tokens: TokenCounter, hf: PreTrainedTokenizerBase
) -> None:
    history = chat(tokens, 5)
    total = template_tokens(hf, as_pairs(history))
    plan = build_context(
        system_prompt=SYSTEM,
        history=history,
        policy=HistoryPolicy.FULL,
        window=total + 20,
        reply_budget=20,
        fmt=tokens,
    )
    assert plan.messages == as_pairs(history)
    assert plan.prompt_tokens == total
    with pytest.raises(ContextTooLargeError) as refused:
        build_context(
            system_prompt=SYSTEM,
            history=history,
            policy=HistoryPolicy.FULL,
            window=total + 19,
            reply_budget=20,
            fmt=tokens,
        )
    assert refused.value.field == "history_policy"
    assert f"the whole chat is {total} tokens" in str(refused.value)


def test_recent_boundary_keeps_whole_turns_within_the_share(tokens: TokenCounter) -> None:
    # (ordinal, role, cost) newest first: turns of 10 + 30 tokens, the latest question 10.
    newest_first = [(8, "user", 10), (7, "assistant", 30), (6, "user", 10), (5, "assistant", 30)]
    newest_first += [(4, "user", 10), (3, "assistant", 30), (2, "user", 10)]
    assert recent_boundary(newest_first, keep_tokens=10) == 8
    assert recent_boundary(newest_first, keep_tokens=49) == 8  # 50 needed for the next turn
    assert recent_boundary(newest_first, keep_tokens=50) == 6
    assert recent_boundary(newest_first, keep_tokens=1000) == 2
    assert recent_boundary([(3, "assistant", 5)], keep_tokens=100) is None


def test_summary_request_covers_whole_turns_up_to_an_answer_within_the_window(
    tokens: TokenCounter, hf: PreTrainedTokenizerBase
) -> None:
    history = chat(tokens, 8)[:-1]  # answered turns only
    roomy = summary_prompt(
        previous_summary="The user likes the sea.",
        turns=history,
        window=4096,
        max_tokens=128,
        fmt=tokens,
    )
    assert roomy is not None
    assert roomy.through_ordinal == history[-1].ordinal
    assert "The user likes the sea." in roomy.messages[1][1]
    assert history[0].content.strip() in roomy.messages[1][1]
    tight_window = 330
    tight = summary_prompt(
        previous_summary="", turns=history, window=tight_window, max_tokens=128, fmt=tokens
    )
    assert tight is not None
    assert tight.through_ordinal % 2 == 1  # an answer: the summary ends with a whole turn
    assert tight.through_ordinal < history[-1].ordinal
    assert template_tokens(hf, tight.messages) <= tight_window - 128
    covered = [m for m in history if m.ordinal <= tight.through_ordinal]
    assert covered[-1].content.strip() in tight.messages[1][1]
    assert history[tight.through_ordinal + 1].content.strip() not in tight.messages[1][1]
    unanswered = [StoredMessage(0, "user", "hello?", tokens.count("hello?"))]
    assert (
        summary_prompt(previous_summary="", turns=unanswered, window=512, max_tokens=64, fmt=tokens)
        is None
    )


def test_counts_piece_by_piece_equal_the_whole_for_awkward_text(
    tokens: TokenCounter, hf: PreTrainedTokenizerBase
) -> None:
    rng = random.Random(7)
    alphabet = "ab  \n\n\t é😀<|>im_start1234.,;!?" + "<|im_end|>"
    for _ in range(40):
        conversation = [("system", SYSTEM)]
        for turn in range(rng.randint(1, 6)):
            role = "user" if turn % 2 == 0 else "assistant"
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
            conversation.append((role, text))
        expected = template_tokens(hf, conversation)
        assert tokens.prompt_tokens(conversation) == expected
        assert tokens.prompt_tokens(conversation) == expected  # from the remembered pieces
