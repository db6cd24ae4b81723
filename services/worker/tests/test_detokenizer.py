"""Streamed text adds up to the decoded whole, with the tiny model's byte-level BPE tokenizer:
its vocabulary has the 256 bytes and merges of an English text, so CJK and emoji characters
come out one byte a token."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from parley_worker.engines.detokenizer import IncrementalDetokenizer

MULTI_BYTE = [
    "中文的回答",
    "emoji 🎉🙂 and 👩‍👩‍👧 too",
    "Ünïcödé, ça va? Ωμέγα",
    "日本語で答えて: はい。",
    "mixed 中 a 🎉 b ä",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> PreTrainedTokenizerBase:
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tiny_model)
    return loaded


def stream(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> tuple[list[str], str]:
    """The pieces `add` returns, one a token, and then what `flush` returns."""
    detokenizer = IncrementalDetokenizer(tokenizer)
    return [detokenizer.add(token_id) for token_id in ids], detokenizer.flush()


@pytest.mark.parametrize("text", MULTI_BYTE)
def test_a_character_split_across_tokens_comes_out_whole(
    tokenizer: PreTrainedTokenizerBase, text: str
) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.encode()) // 2, "expected about a token a byte"

    pieces, tail = stream(tokenizer, ids)

    assert "".join(pieces) + tail == text
    assert tail == ""
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces  # held back while a character was incomplete


def test_an_incomplete_character_at_the_end_is_flushed_as_decoded(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    ids = tokenizer.encode("ok 🎉", add_special_tokens=False)[:-2]

    pieces, tail = stream(tokenizer, ids)

    assert "".join(pieces) == "ok "
    assert tail == "\ufffd" == tokenizer.decode(ids)[-1]


def test_random_tokens_add_up_to_the_decoded_whole(tokenizer: PreTrainedTokenizerBase) -> None:
    """Any token sequence: bytes that never make a character, special tokens, merges."""
    rng = random.Random(1234)
    vocab = len(tokenizer)
    byte_tokens = tokenizer.encode("中🎉é", add_special_tokens=False)
    for _ in range(300):
        # Biased towards the bytes of multi-byte characters, so that they meet and break.
        ids = [
            rng.choice(byte_tokens) if rng.random() < 0.4 else rng.randrange(vocab)
            for _ in range(rng.randrange(1, 40))
        ]

        pieces, tail = stream(tokenizer, ids)

        whole = tokenizer.decode(ids, skip_special_tokens=True)
        assert "".join(pieces) + tail == whole, ids
        # Only the end can be an incomplete character: nothing is sent that a later token changes.
        assert not any(piece.endswith("\ufffd") for piece in pieces), ids
