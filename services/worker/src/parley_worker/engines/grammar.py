"""Constrained decoding for the transformers engine, with xgrammar: a response format's JSON (any
object, or an instance of a JSON Schema) and a forced tool call's arguments can only be written
validly, token by token.

    grammars = Grammars(tokenizer, vocab_size=model.config.vocab_size, stop_ids=[2])
    processor = grammars.processor(options)   # None: nothing to constrain
    model.generate(..., logits_processor=[processor, ...])
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import xgrammar as xgr
from xgrammar.contrib.hf import LogitsProcessor

from parley_worker.engines.base import GenerationOptions, InvalidParameterError, Tool

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Grammars", "forced_call_grammar"]

_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


class Grammars:
    """Compiles the grammars of one model's tokenizer (xgrammar caches what it compiled)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, vocab_size: int, stop_ids: Sequence[int]
    ) -> None:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids)
        )
        self._compiler = xgr.GrammarCompiler(info)

    def processor(self, options: GenerationOptions) -> LogitsProcessor | None:
        """A new processor (one a generation) for what `options` constrain, or None.

        A forced tool call's prompt ends inside the call (see `_chat.answer_prefix`): the rest is
        its arguments and the call's end. InvalidParameterError, naming the schema, for one
        xgrammar cannot compile."""
        try:
            compiled = self._compile(options)
        except RuntimeError as exc:  # xgrammar's error for a schema it does not support
            # Less its time and source location: "[19:16:01] /project/cpp/x.cc:83: ...".
            reason = _SOURCE_PREFIX.sub("", " ".join(str(exc).split()))
            raise InvalidParameterError(
                _schema_param(options), f"this JSON schema cannot be enforced: {reason}"
            ) from exc
        return LogitsProcessor(compiled) if compiled is not None else None

    def _compile(self, options: GenerationOptions) -> xgr.CompiledGrammar | None:
        if (call := forced_call_grammar(options)) is not None:
            return self._compiler.compile_grammar(call)
        if options.tools_enabled:
            return None  # the model chooses between text and calls: parsed afterwards
        if options.response_format == "json_object":
            return self._compiler.compile_json_schema(json.dumps(_ANY_OBJECT), any_whitespace=False)
        if options.response_format == "json_schema":
            schema = json.dumps(options.json_schema or _ANY_OBJECT)
            return self._compiler.compile_json_schema(schema, any_whitespace=False)
        return None


def _schema_param(options: GenerationOptions) -> str:
    """The parameter whose schema the grammar compiles, as the OpenAI API names it."""
    forced = options.forced_tools
    if not forced:
        return "response_format.json_schema.schema"
    if len(forced) == 1 and forced[0] in options.tools:
        return f"tools[{options.tools.index(forced[0])}].function.parameters"
    return "tools"


def forced_call_grammar(options: GenerationOptions) -> xgr.Grammar | None:
    """The rest of a forced tool call after its prompt's start (`_chat.answer_prefix`): the
    arguments valid for the function's schema (after its name, when one of several), and the
    call's end. None when no call is forced."""
    forced = options.forced_tools
    if not forced:
        return None
    if len(forced) == 1:
        call = _arguments(forced[0])
    else:
        call = xgr.Grammar.union(
            *(
                xgr.Grammar.concat(_literal(f'{t.name}", "arguments": '), _arguments(t))
                for t in forced
            )
        )
    return xgr.Grammar.concat(call, _literal("}\n</tool_call>"))


def _arguments(tool: Tool) -> xgr.Grammar:
    return xgr.Grammar.from_json_schema(
        json.dumps(tool.parameters or _ANY_OBJECT), any_whitespace=False
    )


def _literal(text: str) -> xgr.Grammar:
    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text)}")
