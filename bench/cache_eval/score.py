"""Score labelled pairs on the real service path: a real Qdrant, the real cache service over gRPC.

    python -m bench.cache_eval score PAIRS.jsonl --out DECISIONS.jsonl
    python -m bench.cache_eval score ../shared/data/qqp_dev_20k.jsonl --quora-part test

Input lines ``{"id", "a", "b", "same"?, "kind"?}`` (``a`` and ``b``: a question, or a list of
``{"role", "content"}`` messages ending with the user's question; see ``pairs.py``). For each pair,
in a scope of its own, ``a`` is looked up (a miss), its answer stored the way the results
consumer stores it, then ``b`` is looked up. Output lines
``{"id", "hit": bool, "score": float|null, "reason": str}``; printed: precision and recall (when
labels are given) beside plain MiniLM cosine at the same recall and at 0.85, hits by kind, and the
latency of the decision (the match policy alone) and of the whole lookup, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from qdrant_client import AsyncQdrantClient

from bench.cache_eval.fit import part_of
from bench.cache_eval.pairs import Pair, Side, load_pairs
from parley.v1 import cache_pb2, cache_pb2_grpc, envelopes_pb2, types_pb2
from parley_cache.config import Settings
from parley_cache.embedder import Embedder
from parley_cache.keying import ContextMode
from parley_cache.policy import MatchPolicy, select_hit
from parley_cache.qdrant_grpc import PointsClient, connect
from parley_cache.results import ResultIndexer
from parley_cache.server import CacheServicer
from parley_cache.store import CacheStore
from parley_cache.verifier import default_verifier
from parley_common.grpc_server import GrpcServer
from parley_devstack.install import Installation
from parley_devstack.qdrant import QdrantServer

_ROLES = {
    "system": types_pb2.ROLE_SYSTEM,
    "user": types_pb2.ROLE_USER,
    "assistant": types_pb2.ROLE_ASSISTANT,
}
BASELINE_COSINE = 0.85  # GPTCache's usual setting, printed beside every figure


@dataclass(frozen=True, slots=True)
class Decision:
    pair: Pair
    hit: bool
    score: float | None
    reason: str
    cosine: float
    decision_s: float
    lookup_s: float


def _request(user: str, side: Side, args: argparse.Namespace) -> cache_pb2.LookupRequest:
    return cache_pb2.LookupRequest(
        user_id=user,
        bot_id=side.bot_id,
        model=side.model,
        scope=types_pb2.CACHE_SCOPE_USER,
        messages=[types_pb2.ChatMessage(role=_ROLES[r], content=c) for r, c in side.messages],
        max_tokens=256,
        context_mode=(
            types_pb2.CACHE_CONTEXT_MODE_SEMANTIC
            if args.context_mode == "semantic"
            else types_pb2.CACHE_CONTEXT_MODE_EXACT
        ),
        max_error_rate=args.max_error_rate or 0.0,
    )


async def score_pairs(
    pairs: Sequence[Pair], qdrant_addr: str, qdrant_grpc_addr: str, args: argparse.Namespace
) -> list[Decision]:
    settings = Settings(qdrant_addr=qdrant_addr, qdrant_grpc_addr=qdrant_grpc_addr)
    host, _, port = qdrant_addr.rpartition(":")
    client = AsyncQdrantClient(host=host, port=int(port), https=False, timeout=60)
    channel = connect(settings.qdrant_grpc_target)
    decisions: list[Decision] = []
    embedding = Embedder(runtime=args.embedding_runtime, precision=args.embedding_precision)
    async with embedding as embedder:
        store = CacheStore(
            client,
            embedding_model=embedder.model_id,
            dimension=embedder.dimension,
            collection=f"bench_score_{uuid.uuid4().hex[:8]}",
            points=PointsClient(channel, timeout_s=30),
        )
        await store.ensure_collection()
        indexer = ResultIndexer(store, embedder, default_ttl_s=settings.cache_ttl_seconds)
        server = GrpcServer(port=0, host="127.0.0.1")
        cache_pb2_grpc.add_CacheServiceServicer_to_server(
            CacheServicer(store, embedder, settings), server.server
        )
        await server.start(["parley.v1.CacheService"])
        service = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = cache_pb2_grpc.CacheServiceStub(service)
        verifier = default_verifier()
        mode = ContextMode(args.context_mode)
        try:
            for pair in pairs:
                user = f"score-{uuid.uuid4().hex[:12]}"  # one scope per pair: pairs never mix
                stored = await stub.Lookup(_request(user, pair.a, args), timeout=60)
                await indexer(
                    envelopes_pb2.CompletionResult(
                        request_id=uuid.uuid4().hex,
                        user_id=user,
                        kind=envelopes_pb2.COMPLETION_KIND_CHAT,
                        text=f"answer to {pair.id}",
                        finish_reason=types_pb2.FINISH_REASON_STOP,
                        cache_key=stored.key,
                    )
                )
                started = time.perf_counter()
                asked = await stub.Lookup(_request(user, pair.b, args), timeout=60)
                lookup_s = time.perf_counter() - started
                a_vector, b_vector = await embedder.embed_many(
                    [pair.entry.question_text, pair.lookup.question_text]
                )
                cosine = sum(x * y for x, y in zip(a_vector, b_vector, strict=True))
                # The decision alone, as the service makes it, timed in this process.
                policy = MatchPolicy(threshold=0.5, context_mode=mode, verifier=verifier)
                started = time.perf_counter()
                select_hit(pair.lookup, [(pair.entry, cosine, None)], policy=policy)
                decision_s = time.perf_counter() - started
                decisions.append(
                    Decision(
                        pair=pair,
                        hit=asked.hit,
                        score=asked.score if (asked.hit or asked.score > 0) else None,
                        reason=asked.reason,
                        cosine=cosine,
                        decision_s=decision_s,
                        lookup_s=lookup_s,
                    )
                )
        finally:
            await service.close()
            await server.stop(grace_s=1)
            await client.delete_collection(store.collection)
            await client.close()
            await channel.close()
    return decisions


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cosine_at_recall(decisions: Sequence[Decision], recall: float) -> tuple[float, float]:
    """Plain cosine's precision and threshold at (at least) ``recall``."""
    labelled = sorted(
        ((d.cosine, bool(d.pair.same)) for d in decisions if d.pair.same is not None),
        reverse=True,
    )
    positives = sum(same for _, same in labelled)
    true = 0
    for count, (cosine, same) in enumerate(labelled, start=1):
        true += same
        if positives and true / positives >= recall:
            return true / count, cosine
    return 0.0, 0.0


def summary(decisions: Sequence[Decision]) -> str:
    lines = [f"pairs: {len(decisions)}"]
    labelled = [d for d in decisions if d.pair.same is not None]
    if labelled:
        hits = [d for d in labelled if d.hit]
        positives = sum(bool(d.pair.same) for d in labelled)
        true = sum(bool(d.pair.same) for d in hits)
        precision = true / len(hits) if hits else 1.0
        recall = true / positives if positives else 0.0
        base_p, base_t = _cosine_at_recall(labelled, recall) if recall else (1.0, 1.0)
        fixed = [d for d in labelled if d.cosine >= BASELINE_COSINE]
        fixed_true = sum(bool(d.pair.same) for d in fixed)
        lines += [
            f"verifier:     precision {precision:.3f}  recall {recall:.3f}  hits {len(hits)}",
            f"plain cosine: precision {base_p:.3f} at the same recall (cosine >= {base_t:.3f}); "
            f"at cosine >= {BASELINE_COSINE}: precision "
            f"{fixed_true / len(fixed) if fixed else 1.0:.3f} recall "
            f"{fixed_true / positives if positives else 0.0:.3f}",
        ]
    kinds = Counter(d.pair.kind or "-" for d in decisions)
    kind_hits = Counter(d.pair.kind or "-" for d in decisions if d.hit)
    lines.append(
        "hits by kind: " + ", ".join(f"{k} {kind_hits[k]}/{n}" for k, n in sorted(kinds.items()))
    )
    if labelled:
        by_kind = []
        for kind in sorted(kinds):
            mine = [d for d in labelled if (d.pair.kind or "-") == kind]
            wrong = sum(d.hit and not d.pair.same for d in mine)
            missed = sum(bool(d.pair.same) and not d.hit for d in mine)
            by_kind.append(
                f"{kind} {sum(not d.pair.same for d in mine)} different / "
                f"{sum(bool(d.pair.same) for d in mine)} same: {wrong} wrong hits, {missed} missed"
            )
        lines.append("by kind: " + "; ".join(by_kind))
    if decisions:
        decision_ms = [d.decision_s * 1000 for d in decisions]
        lookup_ms = [d.lookup_s * 1000 for d in decisions]
        lines += [
            f"decision latency: p50 {statistics.median(decision_ms):.3f} ms, "
            f"p99 {_quantile(decision_ms, 0.99):.3f} ms",
            f"lookup latency (gRPC, embed + search + decision): p50 "
            f"{statistics.median(lookup_ms):.1f} ms, p99 {_quantile(lookup_ms, 0.99):.1f} ms",
        ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--out", type=Path, help="where to write one decision a line")
    parser.add_argument("--qdrant-addr", help="host:port of a running Qdrant's HTTP API")
    parser.add_argument("--qdrant-grpc-addr", default="", help="its gRPC API (default: port 6334)")
    parser.add_argument("--max-error-rate", type=float, help="default: CACHE_MAX_ERROR_RATE")
    parser.add_argument("--context-mode", choices=[m.value for m in ContextMode], default="exact")
    parser.add_argument(
        "--quora-part",
        choices=["fit", "calibrate", "test"],
        help="score only this part of the Quora pairs (as bench.cache_eval.fit splits them)",
    )
    parser.add_argument("--limit", type=int, help="the first N pairs only")
    parser.add_argument("--embedding-runtime", choices=["torch", "onnx"], default="onnx")
    parser.add_argument(
        "--embedding-precision",
        choices=["float32", "bfloat16", "int8"],
        default="float32",
        help="bfloat16 with torch, int8 with onnx",
    )


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_eval score")
    add_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    pairs = load_pairs(args.pairs)
    if args.quora_part:
        pairs = [p for p in pairs if part_of(p.id) == args.quora_part]
    if args.limit:
        pairs = pairs[: args.limit]
    if args.qdrant_addr:
        decisions = asyncio.run(score_pairs(pairs, args.qdrant_addr, args.qdrant_grpc_addr, args))
    else:
        with tempfile.TemporaryDirectory(prefix="parley-score-qdrant-") as data_dir:
            qdrant = QdrantServer(Installation.at(), Path(data_dir))
            qdrant.start()
            try:
                decisions = asyncio.run(
                    score_pairs(
                        pairs,
                        f"127.0.0.1:{qdrant.http_port}",
                        f"127.0.0.1:{qdrant.grpc_port}",
                        args,
                    )
                )
            finally:
                qdrant.stop()
    if args.out:
        with args.out.open("w", encoding="utf-8") as out:
            for d in decisions:
                row = {"id": d.pair.id, "hit": d.hit, "score": d.score, "reason": d.reason}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(summary(decisions))
