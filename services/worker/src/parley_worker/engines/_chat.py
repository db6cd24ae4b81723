"""Chat prompts as token ids, shared by the engines that tokenize with transformers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from parley_worker.engines.base import ChatMessage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["encode_chat"]


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage]) -> list[int]:
    """Token ids of ``messages`` after the chat template, ending with the assistant's cue."""
    ids = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise TypeError(f"apply_chat_template returned {type(ids).__name__}, expected list[int]")
    return cast(list[int], ids)
