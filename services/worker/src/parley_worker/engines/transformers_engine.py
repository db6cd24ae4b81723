"""Development engine: Hugging Face transformers on the CPU (or one GPU), one thread a generation.

Each generation runs ``model.generate`` in a thread of its own. A streamer on that thread turns
tokens into text and hands it to the event loop with ``call_soon_threadsafe``; a stopping
criterion polls a cancel flag, so closing the stream ends the generation within one token
step. Sampling uses a ``torch.Generator`` per request, so seeds hold under concurrency. A response
format or a forced tool call is enforced by an xgrammar grammar (``engines.grammar``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from parley_worker.engines._chat import encode_chat, split_tool_calls
from parley_worker.engines.base import (
    ChatMessage,
    EngineNotReadyError,
    EngineSettings,
    GenerationDone,
    GenerationEvent,
    GenerationOptions,
    GenerationRequest,
    PromptTooLongError,
    SamplingParams,
    StopStringFilter,
    TextDelta,
    TokenLogprob,
)
from parley_worker.engines.detokenizer import IncrementalDetokenizer
from parley_worker.engines.grammar import Grammars

__all__ = ["TransformersEngine"]


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: Any  # transformers' annotations for generate() and to() do not type-check
    tokenizer: PreTrainedTokenizerBase
    executor: ThreadPoolExecutor
    eos_ids: frozenset[int]
    pad_id: int | None
    max_model_len: int
    grammars: Grammars


@dataclass(frozen=True, slots=True)
class _Finished:
    finish_reason: str
    completion_tokens: int


class TransformersEngine:
    name = "transformers"

    def __init__(self, settings: EngineSettings) -> None:
        self.model_name = settings.model
        self.max_concurrency = settings.max_concurrency
        self._device = settings.device
        self._cpu_threads = settings.cpu_threads
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._lifecycle = asyncio.Lock()
        self._loaded: _Loaded | None = None
        self._running: set[_Generation] = set()

    async def start(self) -> None:
        async with self._lifecycle:
            if self._loaded is None:
                self._loaded = await asyncio.to_thread(self._load)

    async def stop(self) -> None:
        async with self._lifecycle:
            loaded, self._loaded = self._loaded, None
            if loaded is None:
                return
            for generation in self._running:
                generation.cancel()
            await asyncio.to_thread(loaded.executor.shutdown, wait=True)

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(encode_chat(self._require_loaded().tokenizer, messages))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        loaded = self._require_loaded()
        prompt_ids = encode_chat(loaded.tokenizer, request.messages, request.options)
        if len(prompt_ids) >= loaded.max_model_len:
            raise PromptTooLongError(len(prompt_ids), loaded.max_model_len)
        max_new_tokens = min(request.sampling.max_tokens, loaded.max_model_len - len(prompt_ids))
        loop = asyncio.get_running_loop()
        generation = _Generation(loaded, request.sampling.stop, loop, request.options)

        await self._slots.acquire()
        try:
            future = loaded.executor.submit(
                _run, loaded, generation, prompt_ids, max_new_tokens, request, self._device
            )
        except RuntimeError as exc:  # the executor was shut down by stop()
            self._slots.release()
            raise EngineNotReadyError(f"the {self.name} engine was stopped") from exc
        # The slot is freed when the thread ends, not when the consumer leaves.
        future.add_done_callback(lambda _: _call_soon(loop, self._slots.release))

        self._running.add(generation)
        try:
            while True:
                item = await generation.events.get()
                if isinstance(item, str):
                    yield TextDelta(item)
                elif isinstance(item, _Finished):
                    text, calls = split_tool_calls(
                        generation.text, request.request_id, request.options
                    )
                    cancelled = item.finish_reason == "cancelled"
                    yield GenerationDone(
                        finish_reason="tool_calls"
                        if calls and not cancelled
                        else item.finish_reason,
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=item.completion_tokens,
                        text=text,
                        tool_calls=calls,
                        logprobs=tuple(generation.logprobs),
                    )
                    return
                else:
                    raise item
        finally:
            generation.cancel()
            self._running.discard(generation)

    def _require_loaded(self) -> _Loaded:
        if self._loaded is None:
            raise EngineNotReadyError(f"the {self.name} engine is not started")
        return self._loaded

    def _load(self) -> _Loaded:
        if self._device == "cpu":
            # One generation thread a slot; more intra-op threads than cores only thrash.
            cores = len(os.sched_getaffinity(0))
            torch.set_num_threads(self._cpu_threads or max(1, cores // self.max_concurrency))
        tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_name, dtype="auto")
        model.to(self._device)
        model.eval()

        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = model.generation_config.pad_token_id
        if pad_id is None:
            pad_id = min(eos_ids, default=None)
        text_config = model.config.get_text_config()
        max_model_len = getattr(text_config, "max_position_embeddings", None)
        if not isinstance(max_model_len, int):
            max_model_len = int(tokenizer.model_max_length)

        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            executor=ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="generate"),
            eos_ids=frozenset(eos_ids),
            pad_id=pad_id,
            max_model_len=max_model_len,
            grammars=Grammars(
                tokenizer, vocab_size=int(text_config.vocab_size), stop_ids=sorted(eos_ids)
            ),
        )


_Event = str | _Finished | BaseException


class _Generation(BaseStreamer):
    """One generation's state, shared by its thread (producer) and its stream (consumer).

    ``generate`` calls ``put`` on the generation thread, first with the prompt, then with each
    new token. Text is decoded incrementally (a token's text can depend on the next one, and a
    multi-byte character can span tokens), cut at stop strings, and posted to the event loop.
    The generation's text is what was posted: the deltas add up to it exactly.
    """

    def __init__(
        self,
        loaded: _Loaded,
        stops: Sequence[str],
        loop: asyncio.AbstractEventLoop,
        options: GenerationOptions,
    ) -> None:
        self.events: asyncio.Queue[_Event] = asyncio.Queue()
        self.recorder = _LogprobRecorder(options.top_logprobs) if options.logprobs else None
        self.logprobs: list[TokenLogprob] = []
        self._tokenizer = loaded.tokenizer
        self.completion_tokens = 0
        self.ended_turn = False
        self._loop = loop
        self._eos_ids = loaded.eos_ids
        self._cancelled = threading.Event()
        self._stops = StopStringFilter(stops)
        self._prompt_seen = False
        self._detokenizer = IncrementalDetokenizer(loaded.tokenizer)
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def should_stop(self) -> bool:
        return self._cancelled.is_set() or self._stops.stopped

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self.completion_tokens += 1
            if token_id in self._eos_ids:
                self.ended_turn = True
            elif self.recorder is not None:
                self.logprobs.append(self.recorder.logprob(token_id, self._tokenizer))
            self._emit(self._detokenizer.add(token_id))

    def end(self) -> None:
        """Nothing to do: ``finish`` is called once ``generate`` has returned."""

    def finish(self) -> None:
        if self.cancelled:
            self._post(_Finished("cancelled", self.completion_tokens))
            return
        self._emit(self._detokenizer.flush())
        if not self._stops.stopped:
            self._emit_safe(self._stops.flush())
        reason = "stop" if self._stops.stopped or self.ended_turn else "length"
        self._post(_Finished(reason, self.completion_tokens))

    def fail(self, error: BaseException) -> None:
        self._post(error)

    def _emit(self, text: str) -> None:
        if text and not self._stops.stopped:
            safe, _ = self._stops.feed(text)
            self._emit_safe(safe)

    def _emit_safe(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._post(text)

    def _post(self, event: _Event) -> None:
        if not _call_soon(self._loop, self.events.put_nowait, event):
            self.cancel()


class _StopWhenAsked(StoppingCriteria):
    def __init__(self, generation: _Generation) -> None:
        self._generation = generation

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],),
            self._generation.should_stop,
            dtype=torch.bool,
            device=input_ids.device,
        )


class _SeededSampler(LogitsProcessor):
    """Samples the next token with the request's own generator, then forces it.

    ``generate`` samples from torch's global generator, which concurrent requests share; instead
    greedy decoding runs and this processor leaves only the token it sampled.
    """

    def __init__(self, sampling: SamplingParams) -> None:
        self._temperature = sampling.temperature
        self._top_p = sampling.top_p
        self._generator = torch.Generator()
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        self._generator.manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores[0].float().cpu() / self._temperature, dim=-1)
        if self._top_p < 1:
            probs, order = probs.sort(descending=True)
            probs[probs.cumsum(0) - probs >= self._top_p] = 0
            token = int(order[torch.multinomial(probs, 1, generator=self._generator)].item())
        else:
            token = int(torch.multinomial(probs, 1, generator=self._generator).item())
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0
        return forced


class _LogprobRecorder(LogitsProcessor):
    """Keeps the model's log probabilities of the step (before any penalty, grammar or
    temperature, as vLLM reports them) for the token that step chooses."""

    def __init__(self, top: int) -> None:
        self._top = top
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._last = torch.log_softmax(scores[0].float().cpu(), dim=-1)
        return scores

    def logprob(self, token_id: int, tokenizer: PreTrainedTokenizerBase) -> TokenLogprob:
        assert self._last is not None, "a token was chosen before its step's scores"
        top: tuple[tuple[str, float], ...] = ()
        if self._top:
            values, ids = torch.topk(self._last, self._top)
            top = tuple(
                (_token_text(tokenizer, i), float(v))
                for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            )
        return TokenLogprob(_token_text(tokenizer, token_id), float(self._last[token_id]), top)


def _token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    return str(tokenizer.decode([token_id]))


class _Penalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the answer's tokens, and its logit bias."""

    def __init__(self, options: GenerationOptions, *, prompt_tokens: int) -> None:
        self._presence = options.presence_penalty
        self._frequency = options.frequency_penalty
        self._bias = dict(options.logit_bias)
        self._prompt_tokens = prompt_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        vocab = scores.shape[-1]
        if self._bias:
            if (token := max(self._bias)) >= vocab:
                raise ValueError(f"logit_bias: token {token} is beyond the vocabulary ({vocab})")
            ids = torch.tensor(list(self._bias), device=scores.device)
            scores[:, ids] += torch.tensor(list(self._bias.values()), device=scores.device)
        answer = input_ids[:, self._prompt_tokens :]
        if answer.shape[-1] and (self._presence or self._frequency):
            counts = torch.zeros_like(scores).scatter_add_(
                1, answer, torch.ones_like(answer, dtype=scores.dtype)
            )
            scores -= self._frequency * counts + self._presence * (counts > 0).to(scores.dtype)
        return scores


def _run(
    loaded: _Loaded,
    generation: _Generation,
    prompt_ids: list[int],
    max_new_tokens: int,
    request: GenerationRequest,
    device: str,
) -> None:
    sampling = request.sampling
    try:
        processors = LogitsProcessorList()
        if generation.recorder is not None:
            processors.append(generation.recorder)
        options = request.options
        if options.presence_penalty or options.frequency_penalty or options.logit_bias:
            processors.append(_Penalties(options, prompt_tokens=len(prompt_ids)))
        # The grammar masks what may not come next before a token is chosen.
        if (grammar := loaded.grammars.processor(request.options)) is not None:
            processors.append(grammar)
        if sampling.temperature > 0:
            processors.append(_SeededSampler(sampling))
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(loaded.eos_ids),
            pad_token_id=loaded.pad_id,
        )
        input_ids = torch.tensor([prompt_ids], device=device)
        with torch.inference_mode():
            loaded.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([_StopWhenAsked(generation)]),
                streamer=generation,
            )
    except Exception as exc:
        generation.fail(exc)
    else:
        generation.finish()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> bool:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is listening any more
        return False
    return True
