"""Settings that are derived rather than read as they are."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from parley_cache.config import Settings


def test_qdrant_grpc_is_on_the_http_host_at_qdrants_default_port_unless_named() -> None:
    assert Settings(qdrant_addr="qdrant.internal:6333").qdrant_grpc_target == "qdrant.internal:6334"
    assert Settings(qdrant_addr=":6333").qdrant_grpc_target == "127.0.0.1:6334"
    named = Settings(qdrant_addr="qdrant.internal:6333", qdrant_grpc_addr="grpc.internal:7000")
    assert named.qdrant_grpc_target == "grpc.internal:7000"


def test_topics_follow_the_prefix() -> None:
    assert Settings().topics().results == "parley.completions.results"
    topics = Settings(topic_prefix="bench-1.").topics()
    assert (topics.results, topics.dead_letters) == (
        "bench-1.completions.results",
        "bench-1.completions.dlq",
    )


def test_embedding_defaults_and_limits() -> None:
    settings = Settings()
    assert (settings.embedding_threads, settings.embedding_precision) == (1, "float32")
    assert settings.embedding_memo_size == 4096
    with pytest.raises(ValidationError, match="embedding_precision"):
        Settings(embedding_precision="float16")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="embedding_threads"):
        Settings(embedding_threads=0)


def test_a_shared_entry_is_deleted_after_three_distinct_rejections_unless_told() -> None:
    assert Settings().cache_shared_evict_after == 3
    assert Settings(cache_shared_evict_after=1).cache_shared_evict_after == 1
    with pytest.raises(ValidationError, match="cache_shared_evict_after"):
        Settings(cache_shared_evict_after=0)
