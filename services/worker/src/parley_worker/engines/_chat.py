"""Chat prompts as token ids, shared by the engines that tokenize with transformers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from parley_worker.engines.base import ChatMessage, GenerationOptions, ToolCall
from parley_worker.engines.tools import TOOL_CALL_START, parse_tool_calls, template_messages

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["answer_prefix", "encode_chat", "native_tools", "split_tool_calls"]

_NO_OPTIONS = GenerationOptions()


def native_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the model's chat template renders `tools` itself."""
    template = tokenizer.chat_template
    return isinstance(template, str) and "tools" in template


def answer_prefix(options: GenerationOptions) -> str:
    """What the answer must begin with: the start of a tool call when one is forced (the prompt
    ends with it, so the model only writes the rest)."""
    forced = options.forced_tools
    if not forced:
        return ""
    if len(forced) == 1:
        return f'{TOOL_CALL_START}\n{{"name": {json.dumps(forced[0].name)}, "arguments": '
    return f'{TOOL_CALL_START}\n{{"name": "'


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[ChatMessage],
    options: GenerationOptions = _NO_OPTIONS,
) -> list[int]:
    """Token ids of ``messages`` after the chat template, ending with the assistant's cue (and
    the forced start of its answer). Text only: a message with images is refused (ValueError),
    the session service sends them only to models declared to take image input."""
    if any(m.images for m in messages):
        raise ValueError(
            "this worker's engine serves a text-only model: it does not take image input "
            "(VISION_MODELS of the session service must not list it)"
        )
    native = native_tools(tokenizer)
    tools: list[dict[Any, Any] | Callable[..., Any]] | None = (
        [t.as_openai() for t in options.tools] if native and options.tools_enabled else None
    )
    ids = tokenizer.apply_chat_template(
        template_messages(messages, options, native_tools=native),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        tools=tools,
    )
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise TypeError(f"apply_chat_template returned {type(ids).__name__}, expected list[int]")
    prefix = answer_prefix(options)
    if prefix:
        ids = [*ids, *tokenizer.encode(prefix, add_special_tokens=False)]
    return cast(list[int], ids)


def split_tool_calls(
    text: str, request_id: str, options: GenerationOptions
) -> tuple[str, tuple[ToolCall, ...]]:
    """An answer's text before its tool calls, and the calls (the forced start included)."""
    if not options.tools_enabled:
        return text, ()
    prefix = answer_prefix(options)
    content, calls = parse_tool_calls(prefix + text, request_id, options.tools)
    if not calls:
        return text, ()
    if not options.parallel_tool_calls:
        calls = calls[:1]
    return content, calls
