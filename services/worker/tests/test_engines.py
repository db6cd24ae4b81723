from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from parley_devstack.tiny_model import build_tiny_model
from parley_worker.engines import (
    ChatMessage,
    Engine,
    EngineNotReadyError,
    EngineSettings,
    GenerationDone,
    GenerationEvent,
    GenerationRequest,
    PromptTooLongError,
    SamplingParams,
    TextDelta,
    create_engine,
    transformers_engine,
)
from parley_worker.engines.base import StopStringFilter
from parley_worker.engines.detokenizer import IncrementalDetokenizer

MESSAGES = (
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "What will the weather be like tomorrow?"),
)


def request(
    *, messages: Sequence[ChatMessage] = MESSAGES, request_id: str = "r1", **sampling: object
) -> GenerationRequest:
    return GenerationRequest(request_id, tuple(messages), SamplingParams(**sampling))  # type: ignore[arg-type]


async def collect_rest(
    events: AsyncIterator[GenerationEvent],
) -> tuple[list[str], GenerationDone]:
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


async def collect(events: AsyncIterator[GenerationEvent]) -> tuple[list[str], GenerationDone]:
    deltas, done = await collect_rest(events)
    assert done.text == "".join(deltas)
    return deltas, done


async def started(settings: EngineSettings) -> Engine:
    engine = create_engine(settings)
    await engine.start()
    return engine


@pytest.fixture(scope="module")
async def engine(tiny_model: Path) -> AsyncIterator[Engine]:
    engine = await started(EngineSettings("transformers", str(tiny_model), max_concurrency=2))
    yield engine
    await engine.stop()


@pytest.fixture(scope="module")
async def single_slot_engine(tiny_model: Path) -> AsyncIterator[Engine]:
    engine = await started(EngineSettings("transformers", str(tiny_model), max_concurrency=1))
    yield engine
    await engine.stop()


# tiny model


def test_tiny_model_is_built_once_and_loads_as_a_chatml_model(tiny_model: Path) -> None:
    begun = time.monotonic()
    assert build_tiny_model(tiny_model) == tiny_model
    assert time.monotonic() - begun < 0.1

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )

    assert prompt == "<|begin_of_text|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"
    assert 1000 <= len(tokenizer) <= 2000
    with pytest.raises(FileExistsError, match="seed=1"):
        build_tiny_model(tiny_model, seed=1)


# transformers engine


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
    assert done.text.strip()
    assert 0 < done.completion_tokens <= 24


async def test_max_tokens_ends_with_length(engine: Engine) -> None:
    _, done = await collect(engine.generate(request(max_tokens=5, temperature=0)))

    assert (done.finish_reason, done.completion_tokens) == ("length", 5)


async def test_stop_string_trims_the_text_and_ends_with_stop(engine: Engine) -> None:
    _, free = await collect(engine.generate(request(max_tokens=32, temperature=0)))
    stop = free.text[8:11]
    expected = free.text[: free.text.index(stop)]

    deltas, done = await collect(
        engine.generate(request(max_tokens=32, temperature=0, stop=("never there", stop)))
    )

    assert (done.finish_reason, done.text) == ("stop", expected)
    assert stop not in "".join(deltas)
    assert done.completion_tokens < free.completion_tokens


async def test_same_seed_gives_the_same_text(engine: Engine) -> None:
    async def text(seed: int) -> str:
        _, done = await collect(engine.generate(request(max_tokens=16, temperature=1.0, seed=seed)))
        return done.text

    first, again, other = [await text(seed) for seed in (7, 7, 8)]

    assert first == again
    assert first != other


async def test_concurrent_generations_run_side_by_side_and_keep_their_seeds(
    engine: Engine,
) -> None:
    def req(i: int) -> GenerationRequest:
        return request(request_id=f"c{i}", max_tokens=12, temperature=1.0, seed=i)

    alone = [(await collect(engine.generate(req(i))))[1].text for i in range(3)]

    results = await asyncio.gather(*(collect(engine.generate(req(i))) for i in range(3)))

    assert [done.text for _, done in results] == alone


async def test_closing_the_stream_stops_generation_and_frees_the_slot(
    single_slot_engine: Engine,
) -> None:
    engine = single_slot_engine
    # About 2000 tokens: several seconds of work unless closing really stops it.
    stream = engine.generate(request(max_tokens=100_000, temperature=0))
    assert isinstance(await anext(stream), TextDelta)

    closed_at = time.monotonic()
    await stream.aclose()
    _, done = await collect(engine.generate(request(max_tokens=1, temperature=0)))

    assert done.finish_reason == "length"
    assert time.monotonic() - closed_at < 1.0


async def test_cancelling_the_consumer_frees_the_slot(single_slot_engine: Engine) -> None:
    engine = single_slot_engine
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(request(max_tokens=100_000, temperature=0)):
            first_delta.set()

    task = asyncio.create_task(consume())
    await first_delta.wait()
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await collect(engine.generate(request(max_tokens=1)))

    assert time.monotonic() - cancelled_at < 1.0


async def test_stopping_the_engine_cancels_running_generations(tiny_model: Path) -> None:
    engine = await started(EngineSettings("transformers", str(tiny_model), max_concurrency=1))
    stream = engine.generate(request(max_tokens=100_000, temperature=0))
    first = await anext(stream)
    assert isinstance(first, TextDelta)

    await engine.stop()
    deltas, done = await collect_rest(stream)

    assert done.finish_reason == "cancelled"
    assert done.text == first.text + "".join(deltas)
    assert done.completion_tokens < 1000
    assert not engine.ready
    with pytest.raises(EngineNotReadyError):
        engine.count_tokens(MESSAGES)


async def test_sampled_multi_byte_text_streams_as_it_decodes(
    engine: Engine, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hot sampling of the tiny model's byte tokens: characters broken and completed across
    tokens. The deltas add up to the stored text, which is the one-shot decode of the tokens."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    generated: dict[int, list[int]] = {}

    class Recording(IncrementalDetokenizer):
        def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
            super().__init__(tokenizer)
            generated[id(self)] = self.ids = []

        def add(self, token_id: int) -> str:
            self.ids.append(token_id)
            return super().add(token_id)

    monkeypatch.setattr(transformers_engine, "IncrementalDetokenizer", Recording)
    prompts = ["日本語で答えて 🎉🙂", "中文: 你好吗? ëèê 🚀", "Ünïcödé, ça va? 👩‍👩‍👧"]

    async def run(seed: int) -> tuple[list[str], GenerationDone]:
        messages = (ChatMessage("user", prompts[seed % len(prompts)]),)
        return await collect(
            engine.generate(request(messages=messages, max_tokens=120, temperature=1.5, seed=seed))
        )

    results = await asyncio.gather(*(run(seed) for seed in range(4)))

    assert len(generated) == len(results)
    texts = {done.text for _, done in results}
    decoded = {tokenizer.decode(ids, skip_special_tokens=True) for ids in generated.values()}
    assert texts == decoded
    for deltas, done in results:
        assert "".join(deltas) == done.text
        # Text is held while it ends in an incomplete character, so no delta ends in one.
        assert not any(delta.endswith("\ufffd") for delta in deltas[:-1])
    assert any(any(ord(c) > 127 for c in text.replace("\ufffd", "")) for text in texts), (
        "expected some non-ASCII characters in 480 hot samples of byte tokens"
    )


async def test_a_prompt_longer_than_the_context_window_is_refused(engine: Engine) -> None:
    long = ChatMessage("user", "weather " * 3000)

    with pytest.raises(PromptTooLongError, match="context window holds 2048"):
        await anext(engine.generate(request(messages=[long])))


async def test_an_engine_that_is_not_started_refuses_work(tiny_model: Path) -> None:
    engine = create_engine(EngineSettings("transformers", str(tiny_model), max_concurrency=1))

    assert not engine.ready
    with pytest.raises(EngineNotReadyError, match="not started"):
        await anext(engine.generate(request()))


# fake engine


async def test_fake_engine_paces_first_token_and_tokens_per_second() -> None:
    engine = await started(
        EngineSettings("fake", "fake", max_concurrency=1, fake_ttft_s=0.2, fake_tokens_per_s=50)
    )
    begun = time.monotonic()
    arrivals: list[float] = []
    async for _event in engine.generate(request(max_tokens=11)):
        arrivals.append(time.monotonic() - begun)
    ttft, total = arrivals[0], arrivals[-1]

    assert 0.19 <= ttft < 0.5
    assert 0.39 <= total < 0.9  # 0.2 s, then 10 more tokens at 50/s


async def test_fake_engine_unpaced_adds_almost_no_overhead() -> None:
    engine = await started(EngineSettings("fake", "fake", max_concurrency=1))
    begun = time.monotonic()

    _, done = await collect(engine.generate(request(max_tokens=10_000)))

    assert time.monotonic() - begun < 0.5
    assert (done.finish_reason, done.completion_tokens) == ("length", 10_000)
    assert done.text == " tok" * 10_000
    assert done.prompt_tokens == engine.count_tokens(MESSAGES) > 0


async def test_fake_engine_fails_on_its_cue() -> None:
    engine = await started(EngineSettings("fake", "fake", max_concurrency=1, fake_fail_on="[fail]"))
    failing = (ChatMessage("user", "please [fail] now"),)

    with pytest.raises(RuntimeError, match=r"fails on messages with '\[fail\]'"):
        await collect(engine.generate(request(messages=failing)))
    _, done = await collect(engine.generate(request(max_tokens=3)))

    assert done.text == " tok" * 3


async def test_fake_engine_honours_stop_strings() -> None:
    engine = await started(EngineSettings("fake", "fake", max_concurrency=1, fake_token="ab"))

    _, done = await collect(engine.generate(request(max_tokens=10, stop=("bab",))))

    assert (done.finish_reason, done.text, done.completion_tokens) == ("stop", "a", 2)


# factory


def test_create_engine_selects_by_name(tiny_model: Path) -> None:
    for name in ("fake", "transformers", "vllm"):
        engine = create_engine(EngineSettings(name, str(tiny_model), max_concurrency=3))

        assert (engine.name, engine.model_name, engine.max_concurrency) == (
            name,
            str(tiny_model),
            3,
        )
        assert not engine.ready


def test_create_engine_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown engine 'tgi'; choose one of: fake, transformers"):
        create_engine(EngineSettings("tgi", "m", max_concurrency=1))


# stop strings


@pytest.mark.parametrize(
    ("pieces", "stops", "emitted", "stopped"),
    [
        (["Hello wor", "ld"], ["world"], "Hello ", True),
        (["a\nUs", "er: hi"], ["\nUser:"], "a", True),
        (["a\nUs", "ual"], ["\nUser:"], "a\nUsual", False),
        (["abc"], ["c", "bc"], "a", True),
        (["no stops"], [], "no stops", False),
    ],
)
def test_stop_string_filter(
    pieces: list[str], stops: list[str], emitted: str, stopped: bool
) -> None:
    stop_filter = StopStringFilter(stops)
    out = ""
    for piece in pieces:
        text, _ = stop_filter.feed(piece)
        out += text
    if not stop_filter.stopped:
        out += stop_filter.flush()

    assert (out, stop_filter.stopped) == (emitted, stopped)
