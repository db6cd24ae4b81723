"""The embedding model on ONNX Runtime against PyTorch's vectors (the real all-MiniLM-L6-v2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from parley_cache.config import Settings
from parley_cache.embedder import Embedder

TEXTS = [
    "How do I reverse a list in Python?",
    "What's the way to reverse a Python list?",
    "ok",
    "Combien de jours y a-t-il dans une année bissextile ?",
    "Explain the difference between TCP and UDP, with an example of when to use each one. " * 8,
]


def _graphs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def reference() -> Embedder:
    return Embedder(runtime="torch", memo_size=0)


async def test_onnx_gives_pytorchs_vectors(reference: Embedder, tmp_path: Path) -> None:
    onnx = Embedder(runtime="onnx", memo_size=0, onnx_cache_dir=tmp_path)
    assert onnx.runtime == "onnx"
    assert onnx.dimension == reference.dimension
    assert onnx.model_id == reference.model_id  # the same vectors: the same collection
    expected = await reference.embed_many(TEXTS)
    alone = [await onnx.embed(text) for text in TEXTS]
    batched = await onnx.embed_many(TEXTS)
    for want, one, many in zip(expected, alone, batched, strict=True):
        assert max(abs(x - y) for x, y in zip(want, one, strict=True)) < 1e-5
        assert max(abs(x - y) for x, y in zip(want, many, strict=True)) < 1e-5
    # Exported once: a second embedder reuses the graph.
    graphs = _graphs(tmp_path)
    assert len(graphs) == 1
    again = Embedder(runtime="onnx", memo_size=0, onnx_cache_dir=tmp_path)
    assert _graphs(tmp_path) == graphs
    assert again._onnx is not None
    assert again._onnx.graph == graphs[0]


async def test_int8_vectors_stay_close(reference: Embedder, tmp_path: Path) -> None:
    quantized = Embedder(runtime="onnx", precision="int8", memo_size=0, onnx_cache_dir=tmp_path)
    expected = await reference.embed_many(TEXTS)
    got = await quantized.embed_many(TEXTS)
    cosines = [_dot(a, b) for a, b in zip(expected, got, strict=True)]
    assert min(cosines) > 0.95, cosines
    assert [p.name.endswith("-int8.onnx") for p in _graphs(tmp_path)] == [True]


async def test_a_corrupt_graph_is_exported_again(reference: Embedder, tmp_path: Path) -> None:
    Embedder(runtime="onnx", memo_size=0, onnx_cache_dir=tmp_path)
    (graph,) = _graphs(tmp_path)
    size = graph.stat().st_size
    graph.write_bytes(b"not a graph")  # a truncated copy, a full disk
    again = Embedder(runtime="onnx", memo_size=0, onnx_cache_dir=tmp_path)
    assert graph.stat().st_size == size
    (got,) = await again.embed_many(["ok"])
    (want,) = await reference.embed_many(["ok"])
    assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_graph_folder_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OSError, match="EMBEDDING_ONNX_DIR"):
        Embedder(runtime="onnx", memo_size=0, onnx_cache_dir=locked / "graphs")


def test_precision_must_fit_the_runtime() -> None:
    with pytest.raises(ValueError, match="precision must be float32 or int8 with the onnx"):
        Embedder(runtime="onnx", precision="bfloat16")
    with pytest.raises(ValueError, match="precision must be float32 or bfloat16 with the torch"):
        Embedder(runtime="torch", precision="int8")
    with pytest.raises(ValidationError, match="EMBEDDING_PRECISION=int8 does not run on"):
        Settings(embedding_runtime="torch", embedding_precision="int8")
    assert Settings().embedding_runtime == "onnx"
