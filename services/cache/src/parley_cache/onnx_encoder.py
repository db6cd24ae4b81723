"""The embedding model's transformer on ONNX Runtime: same vectors, less CPU per call.

::

    encoder = OnnxEncoder.for_model(sentence_transformer, quantized=False, threads=1)
    vectors = encoder(["How do I enable dark mode?"])    # unit norm, as encode() gives

PyTorch's eager forward pass spends much of a short question's time dispatching operators; ONNX
Runtime runs the same graph, fused and planned once, in a fraction of it (``python -m
bench.embeddings``). The graph is exported from the loaded model once and kept in
``cache_dir`` (``$XDG_CACHE_HOME/parley/onnx``, else ``~/.cache/parley/onnx``), named by the
model folder's contents and the torch version, so a changed model or exporter writes a new one
(about 10 s, once). ``quantized=True`` stores the
weights as int8 (dynamic quantization): faster again, but its vectors move (cosine ~0.98 to the
float32 ones, ~0.97 on one-word texts), so the cache's decision is no longer calibrated for them — opt-in, measured by
``python -m bench.cache_eval score --embedding-precision int8``.

Only models whose sentence embedding is the mean of the transformer's token states, then
normalized — all-MiniLM-L6-v2 and most sentence-transformers models — are supported; the start-up
check in :class:`parley_cache.embedder.Embedder` compares the vectors with ``encode()``'s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["DEFAULT_CACHE_DIR", "OnnxEncoder", "UnsupportedModelError"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR: Final = Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "parley", "onnx"
)
_INPUTS: Final = ("input_ids", "attention_mask", "token_type_ids")
_OPSET: Final = 17


class UnsupportedModelError(ValueError):
    """The model is not a mean-pooled transformer this module can export."""


def _pooling_is_mean(model: Any) -> bool:
    from sentence_transformers.models import Normalize, Pooling, Transformer

    modules = list(model)
    if len(modules) < 2 or not isinstance(modules[0], Transformer):
        return False
    pooling = modules[1]
    if not isinstance(pooling, Pooling) or getattr(pooling, "pooling_mode", None) != "mean":
        return False
    return all(isinstance(module, Normalize) for module in modules[2:])


def _graph_name(model_dir: Path, quantized: bool) -> str:
    """A name that changes with the model's files (their contents, ~0.2 s for all-MiniLM-L6-v2),
    the torch version and the precision."""
    import torch

    digest = hashlib.blake2b(digest_size=8)
    digest.update(torch.__version__.encode())
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            digest.update(str(path.relative_to(model_dir)).encode())
            with path.open("rb") as file:
                digest.update(hashlib.file_digest(file, "blake2b").digest())
    return f"{model_dir.name}-{digest.hexdigest()}{'-int8' if quantized else ''}.onnx"


def _export(transformer: Any, target: Path) -> None:
    """Writes the transformer's graph (token ids in, token states out) to ``target``."""
    import torch

    class _TokenStates(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    example = {name: torch.ones((2, 8), dtype=torch.int64) for name in _INPUTS}
    example["token_type_ids"] = torch.zeros((2, 8), dtype=torch.int64)
    dynamic = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "token_states")}
    # The TorchScript-based exporter (torch.export's needs onnxscript and explicit dynamic
    # shapes). It warns that it is the old one, and that Python conditions on shapes in the
    # model's mask code are traced as constants: they do not change for an encoder's masks, and
    # the embedder's start-up check compares the graph's vectors, padded batch included, with
    # PyTorch's.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TokenStates(transformer.eval()),
            tuple(example[name] for name in _INPUTS),
            str(target),
            input_names=list(_INPUTS),
            output_names=["token_states"],
            dynamic_axes=dynamic,
            opset_version=_OPSET,
            dynamo=False,
        )


def _ensure_graph(model: Any, model_dir: Path, cache_dir: Path, quantized: bool) -> Path:
    target = cache_dir / _graph_name(model_dir, quantized)
    if target.is_file():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as exc:
        raise OSError(
            f"cannot write the embedding model's ONNX graph to {cache_dir} ({exc.strerror}): "
            "set EMBEDDING_ONNX_DIR to a writable folder, or EMBEDDING_RUNTIME=torch"
        ) from exc
    started = time.monotonic()
    # Written beside the target and renamed into place: concurrent starts each write their own
    # file, and whichever is renamed last wins (they are the same graph).
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".export-") as scratch:
        plain = Path(scratch, "model.onnx")
        _export(model[0].auto_model, plain)
        if quantized:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per output channel, matrix products only: with one scale per tensor (the default)
            # a short text's vector ends at cosine ~0.86 to float32's, here ~0.97.
            quantize_dynamic(
                plain,
                Path(scratch, "int8.onnx"),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
            )
            plain = Path(scratch, "int8.onnx")
        os.replace(plain, target)
    log.info(
        "exported the embedding model to ONNX",
        extra={"path": str(target), "seconds": round(time.monotonic() - started, 1)},
    )
    return target


class OnnxEncoder:
    """Tokenizes with the model's own tokenizer, runs the exported graph, mean-pools and
    normalizes: ``encode(texts, normalize_embeddings=True)`` without PyTorch."""

    def __init__(self, model: Any, graph: Path, *, threads: int) -> None:
        import numpy as np
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._np: Any = np
        self._session: Any = onnxruntime.InferenceSession(
            str(graph), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer: Any = model.tokenizer
        self._max_tokens: int = model.max_seq_length
        self.graph = graph

    @classmethod
    def for_model(
        cls,
        model: Any,
        model_dir: str | Path,
        *,
        quantized: bool = False,
        threads: int = 1,
        cache_dir: Path | None = None,
    ) -> OnnxEncoder:
        """Exports ``model`` (a loaded SentenceTransformer from ``model_dir``) on first use."""
        if not _pooling_is_mean(model):
            raise UnsupportedModelError(
                "the ONNX runtime supports mean-pooled sentence-transformers models only; "
                "set EMBEDDING_RUNTIME=torch for this one"
            )
        folder = cache_dir or DEFAULT_CACHE_DIR
        graph = _ensure_graph(model, Path(model_dir), folder, quantized)
        try:
            return cls(model, graph, threads=threads)
        except Exception as exc:  # onnxruntime's own errors (a truncated or corrupt file)
            log.warning(
                "the embedding model's ONNX graph does not load; exporting it again",
                extra={"path": str(graph), "error": str(exc)[:200]},
            )
            graph.unlink(missing_ok=True)
            return cls(
                model, _ensure_graph(model, Path(model_dir), folder, quantized), threads=threads
            )

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        np = self._np
        tokens = self._tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self._max_tokens,
            return_tensors="np",
        )
        feeds = {name: tokens[name].astype(np.int64) for name in _INPUTS if name in tokens}
        if "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        (states,) = self._session.run(None, feeds)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (states * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        vectors: list[list[float]] = pooled.astype(np.float32).tolist()
        return vectors
