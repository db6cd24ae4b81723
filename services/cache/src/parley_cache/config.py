from __future__ import annotations

from pydantic import Field, SecretStr

from parley_cache.keying import DEFAULT_SIMILARITY_THRESHOLD, ContextMode
from parley_common.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    grpc_port: int = 50052
    qdrant_addr: str = "127.0.0.1:6333"
    qdrant_api_key: SecretStr = SecretStr("")
    embedding_model: str = Field(
        default="",
        description="sentence-transformers model name or folder; empty: the bundled all-MiniLM-L6-v2",
    )
    embedding_device: str = "cpu"
    cache_similarity_threshold: float = Field(default=DEFAULT_SIMILARITY_THRESHOLD, gt=0, le=1)
    cache_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    cache_candidates: int = Field(default=5, gt=0, description="nearest entries the guard checks")
    cache_context_mode: ContextMode = Field(
        default=ContextMode.EXACT,
        description="how prior turns must match when a lookup does not say (its bot profile does)",
    )
    cache_max_entries: int = Field(
        default=1_000_000, gt=0, description="above this, the oldest entries are deleted"
    )
    cache_maintenance_interval_s: float = Field(
        default=60.0, gt=0, description="how often expired entries are purged and size is bounded"
    )
    results_group: str = "parley-cache"
