"""Lookup latency of the semantic cache with 10k and 100k entries in a real Qdrant.

Run from the repository root::

    python -m bench.cache_eval.latency                    # starts its own Qdrant
    python -m bench.cache_eval.latency --qdrant-addr 127.0.0.1:6333 --sizes 10000

For each size, a dedicated collection (the service's own layout and indexes) is filled with
random unit vectors as entries of one bot profile: all but 100 in the "global" scope, 100 in the
benchmark user's own scope. Real entries, the stored side of the test split's paraphrase and
hard-negative pairs, are added to both scopes. Their other sides are then looked up, one at a
time, through the gRPC service in this process (embed + search + precision guard: the full
Lookup path) and, with the vectors embedded beforehand, through the store's search alone.

Per-user lookups only ever read the user's own few hundred entries (an exact scan through the
payload index); global ones walk the HNSW graph over all of them. Hits and misses are reported
apart: a miss on a hard negative pays for the guard, one on an unrelated question does not.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from qdrant_client import AsyncQdrantClient, models

from bench.cache_eval.pairs import PAIRS_PATH, Pair, load_pairs
from parley.v1 import cache_pb2, cache_pb2_grpc, types_pb2
from parley_cache.config import Settings
from parley_cache.embedder import Embedder
from parley_cache.keying import CacheKey, Role, Turn
from parley_cache.privacy import user_scope
from parley_cache.server import CacheServicer
from parley_cache.store import CacheStore, NewEntry
from parley_common.grpc_server import GrpcServer
from parley_devstack.install import Installation
from parley_devstack.qdrant import QdrantServer

BOT = "bench"
MODEL = "llama-3.1-8b"
SYSTEM_PROMPT = "You are a helpful assistant."
USER = "bench"
OWN_RANDOM = 100
BATCH = 1_000


@dataclass(frozen=True, slots=True)
class Timing:
    what: str
    samples: list[float]  # seconds

    def cell(self) -> str:
        if not self.samples:
            return "n/a"
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return f"{statistics.median(ordered) * 1000:.1f} / {p99 * 1000:.1f}"


def _key(question: str) -> CacheKey:
    return CacheKey.build(
        bot_id=BOT,
        model=MODEL,
        system_prompt=SYSTEM_PROMPT,
        turns=[Turn(Role.USER, question)],
    )


def _random_unit_vectors(rng: np.random.Generator, count: int, dimension: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


async def _fill(
    store: CacheStore, size: int, dimension: int, real: Sequence[tuple[str, list[float]]]
) -> float:
    """Random entries plus the real ones in both scopes; returns the seconds the upload took."""
    rng = np.random.default_rng(size)
    started = time.perf_counter()
    filler = _key("filler question")
    written = 0
    while written < size:
        count = min(BATCH, size - written)
        vectors = _random_unit_vectors(rng, count, dimension)
        entries = [
            NewEntry(
                request_id=f"random-{size}-{written + i}",
                vector=vectors[i].tolist(),
                scope_key=user_scope(USER) if written + i < OWN_RANDOM else "global",
                key=filler,
                answer="a random entry",
                ttl_s=3600,
                complete=True,
                max_tokens=256,
            )
            for i in range(count)
        ]
        await store.put_many(entries, wait=False)
        written += count
    for scope in ("global", user_scope(USER)):
        await store.put_many(
            [
                NewEntry(
                    request_id=f"real-{scope}-{i}",
                    vector=vector,
                    scope_key=scope,
                    key=_key(question),
                    answer=f"answer to: {question}",
                    ttl_s=3600,
                    complete=True,
                    max_tokens=256,
                )
                for i, (question, vector) in enumerate(real)
            ]
        )
    return time.perf_counter() - started


async def _wait_optimized(client: AsyncQdrantClient, collection: str) -> tuple[float, int]:
    """Wait until Qdrant has no optimization left to run; returns the seconds waited and how many
    vectors the HNSW graph holds (segments under the indexing threshold are scanned instead)."""
    started = time.perf_counter()
    green = 0
    while green < 3:  # an optimizer may start just after an upload: green a few times in a row
        await asyncio.sleep(0.5)
        info = await client.get_collection(collection)
        green = green + 1 if info.status == models.CollectionStatus.GREEN else 0
    return time.perf_counter() - started, info.indexed_vectors_count or 0


async def measure_size(
    client: AsyncQdrantClient,
    embedder: Embedder,
    pairs: Sequence[Pair],
    size: int,
    *,
    rounds: int,
) -> list[str]:
    """Fill a collection of `size` random entries, time lookups, return Markdown table rows."""
    collection = f"bench_cache_latency_{size}_{uuid.uuid4().hex[:6]}"
    store = CacheStore(
        client,
        embedding_model=embedder.model_id,
        dimension=embedder.dimension,
        collection=collection,
    )
    await store.ensure_collection()
    stored = list(dict.fromkeys(p.entry.question for p in pairs))
    asked = list(dict.fromkeys(p.lookup.question for p in pairs))
    stored_vectors = await embedder.embed_many(stored)
    asked_vectors = dict(zip(asked, await embedder.embed_many(asked), strict=True))
    settings = Settings()
    server = GrpcServer(port=0, host="127.0.0.1")
    cache_pb2_grpc.add_CacheServiceServicer_to_server(
        CacheServicer(store, embedder, settings), server.server
    )
    await server.start(["parley.v1.CacheService"])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    try:
        upload_s = await _fill(
            store, size, embedder.dimension, list(zip(stored, stored_vectors, strict=True))
        )
        index_s, indexed = await _wait_optimized(client, collection)
        rows = [
            f"| {size:,} | (fill) | {await store.count():,} points: upload {upload_s:.1f} s, "
            f"then optimized in {index_s:.1f} s ({indexed:,} vectors in HNSW graphs) | | |"
        ]
        for scope_name, scope in (("user", types_pb2.CACHE_SCOPE_USER), ("global", None)):
            scopes = [user_scope(USER)] if scope_name == "user" else ["global", user_scope(USER)]
            full = {True: [], False: []}  # type: dict[bool, list[float]]
            search = {True: [], False: []}  # type: dict[bool, list[float]]
            for round_ in range(rounds + 1):  # the first round warms caches up
                for question in asked:
                    request = cache_pb2.LookupRequest(
                        user_id=USER,
                        bot_id=BOT,
                        model=MODEL,
                        scope=scope if scope is not None else types_pb2.CACHE_SCOPE_GLOBAL,
                        max_tokens=256,
                        messages=[
                            types_pb2.ChatMessage(
                                role=types_pb2.ROLE_SYSTEM, content=SYSTEM_PROMPT
                            ),
                            types_pb2.ChatMessage(role=types_pb2.ROLE_USER, content=question),
                        ],
                    )
                    started = time.perf_counter()
                    response = await stub.Lookup(request, timeout=30)
                    elapsed = time.perf_counter() - started
                    started = time.perf_counter()
                    await store.search(
                        asked_vectors[question],
                        scopes=scopes,
                        key=_key(question),
                        max_tokens=256,
                        limit=settings.cache_candidates,
                        score_threshold=settings.cache_similarity_threshold,
                        user_id=USER,
                    )
                    search_s = time.perf_counter() - started
                    if round_:
                        full[response.hit].append(elapsed)
                        search[response.hit].append(search_s)
            for hit in (True, False):
                rows.append(
                    f"| {size:,} | {scope_name} | {'hit' if hit else 'miss'} "
                    f"({len(full[hit]) // rounds}) | "
                    f"{Timing('full', full[hit]).cell()} | {Timing('search', search[hit]).cell()} |"
                )
        return rows
    finally:
        await channel.close()
        await server.stop(grace_s=1)
        await client.delete_collection(collection)


async def run(qdrant_addr: str, sizes: Sequence[int], pairs: Sequence[Pair], *, rounds: int) -> str:
    host, _, port = qdrant_addr.rpartition(":")
    client = AsyncQdrantClient(host=host, port=int(port), https=False, timeout=120)
    started = time.perf_counter()
    # Without the memo of recent vectors: every lookup here asks a text embedded before (the
    # fill), and the figures are meant to include embedding it.
    embedder = Embedder(memo_size=0)
    load_s = time.perf_counter() - started
    lines = [
        "## Lookup latency\n",
        f"Embedding model {embedder.model_id} on CPU (loaded in {load_s:.1f} s, memo of recent "
        "vectors off: every lookup embeds its question); "
        f"{len(pairs)} lookups per scope (the test split's paraphrases and hard negatives), "
        f"timed {rounds} times after a warm-up round. Milliseconds, p50 / p99.\n",
        "| entries | scope | outcome (lookups) | full Lookup over gRPC: embed + search + guard "
        "| store search alone |",
        "|---|---|---|---|---|",
    ]
    try:
        async with embedder:
            for size in sizes:
                lines.extend(await measure_size(client, embedder, pairs, size, rounds=rounds))
    finally:
        await client.close()
    return "\n".join(lines) + "\n"


def _headline_pairs(path: Path) -> list[Pair]:
    return [
        p
        for p in load_pairs(path)
        if p.split == "test"
        and p.kind in {"paraphrase", "hard_negative", "unrelated"}
        and not p.lookup.has_context
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_eval.latency", description=__doc__)
    parser.add_argument("--qdrant-addr", help="host:port of a running Qdrant (HTTP)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--pairs", type=Path, default=PAIRS_PATH)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of every lookup")
    args = parser.parse_args(argv)
    pairs = _headline_pairs(args.pairs)
    if args.qdrant_addr:
        print(asyncio.run(run(args.qdrant_addr, args.sizes, pairs, rounds=args.rounds)))
        return
    with tempfile.TemporaryDirectory(prefix="parley-bench-qdrant-") as data_dir:
        qdrant = QdrantServer(Installation.at(), Path(data_dir))
        qdrant.start()
        try:
            print(
                asyncio.run(
                    run(f"127.0.0.1:{qdrant.http_port}", args.sizes, pairs, rounds=args.rounds)
                )
            )
        finally:
            qdrant.stop()


if __name__ == "__main__":
    main()
