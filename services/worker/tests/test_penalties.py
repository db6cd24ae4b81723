"""OpenAI's presence and frequency penalties and logit bias in the transformers engine (no I/O)."""

from __future__ import annotations

import pytest
import torch

from parley_worker.engines.base import GenerationOptions
from parley_worker.engines.transformers_engine import _Penalties


def test_penalties_count_the_answers_tokens_only() -> None:
    options = GenerationOptions(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={3: 10})
    penalties = _Penalties(options, prompt_tokens=2)
    # The prompt is tokens 1 and 1; the answer so far 2, 2, 0.
    scores = penalties(torch.tensor([[1, 1, 2, 2, 0]]), torch.zeros(1, 5))
    assert scores.tolist() == [[-0.75, 0.0, -1.0, 10.0, 0.0]]


def test_a_bias_beyond_the_vocabulary_is_the_requests_fault() -> None:
    penalties = _Penalties(GenerationOptions(logit_bias={9: 1}), prompt_tokens=0)
    with pytest.raises(ValueError, match="beyond the vocabulary"):
        penalties(torch.tensor([[0]]), torch.zeros(1, 5))
