from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from parley_cache.keying import DEFAULT_SIMILARITY_THRESHOLD, ContextMode
from parley_common.settings import ServiceSettings

__all__ = ["QDRANT_GRPC_PORT", "Settings"]

# Qdrant's own default: its gRPC API listens here unless configured otherwise.
QDRANT_GRPC_PORT = 6334


class Settings(ServiceSettings):
    grpc_port: int = 50052
    qdrant_addr: str = "127.0.0.1:6333"
    qdrant_grpc_addr: str = Field(
        default="",
        description="Qdrant's gRPC address, host:port (lookups and stores use it); empty: the "
        f"host of qdrant_addr, port {QDRANT_GRPC_PORT}",
    )
    qdrant_api_key: SecretStr = SecretStr("")
    embedding_model: str = Field(
        default="",
        description="sentence-transformers model name or folder; empty: the bundled all-MiniLM-L6-v2",
    )
    embedding_device: str = "cpu"
    embedding_threads: int = Field(
        default=1,
        gt=0,
        description="threads of the embedding model (torch or ONNX Runtime) on the CPU: concurrent lookups are "
        "batched instead, and more threads mostly spin against the event loop",
    )
    embedding_runtime: Literal["torch", "onnx"] = Field(
        default="onnx",
        description="onnx runs the model's transformer on ONNX Runtime: the same vectors (within "
        "2e-7) for about half PyTorch's CPU on a short question (python -m bench.embeddings); "
        "the graph is exported once into EMBEDDING_ONNX_DIR",
    )
    embedding_precision: Literal["float32", "bfloat16", "int8"] = Field(
        default="float32",
        description="torch: bfloat16 about halves the model's CPU time on CPUs with AMX or "
        "AVX512-BF16 (cosines move by up to ~0.003); onnx: int8 weights cost a quarter of "
        "float32's CPU, but vectors move (cosine down to ~0.98) and the decision's calibration "
        "was made on float32 vectors",
    )
    embedding_onnx_dir: str = Field(
        default="",
        description="where the exported ONNX graphs are kept; empty: $XDG_CACHE_HOME/parley/onnx",
    )
    embedding_memo_size: int = Field(
        default=4096,
        ge=0,
        description="vectors of the most recently embedded texts kept (1.5 KiB each with "
        "all-MiniLM-L6-v2): a question asked again skips the model; 0 turns it off",
    )
    cache_similarity_threshold: float = Field(
        default=DEFAULT_SIMILARITY_THRESHOLD,
        gt=0,
        le=1,
        description="cosine below which a stored question is not even a candidate; the "
        "decision is the verifier's (CACHE_MAX_ERROR_RATE)",
    )
    cache_max_error_rate: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="share of wrong hits accepted, as measured on held-out Quora pairs: the "
        "verifier's threshold is read from its calibration table (a bot profile may ask for "
        "less); below 0.11 no threshold is safe on those pairs and only identical questions hit",
    )
    cache_max_temperature: float = Field(
        default=0.7,
        ge=0,
        description="requests sampled above this temperature ask for variety: never answered "
        "from the cache (their answers are still stored)",
    )
    cache_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    cache_fresh_ttl_seconds: int = Field(
        default=600,
        gt=0,
        description="TTL of the answer to a time-sensitive question (today, latest, a date…)",
    )
    cache_candidates: int = Field(
        default=5, gt=0, description="nearest entries the verifier judges"
    )
    cache_shared_evict_after: int = Field(
        default=3,
        gt=0,
        description="distinct users whose thumbs-down deletes a shared (tenant or global) entry "
        "for everyone; until then it is hidden from those users only",
    )
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
    cache_feedback_flush_s: float = Field(
        default=2.0,
        gt=0,
        description="how often a replica writes its per-scope hit and rejection counts to Qdrant "
        "(where every replica reads them, at most every CACHE_FEEDBACK_REFRESH_S per scope)",
    )
    cache_feedback_refresh_s: float = Field(
        default=5.0, gt=0, description="how long a scope's counts read from Qdrant are reused"
    )
    cache_feedback_window_days: int = Field(
        default=7, ge=1, description="days of hits and rejections a scope's threshold reads"
    )
    cache_sample_min_similarity: float = Field(
        default=0.75,
        gt=0,
        le=1,
        description="a sampled hit's answer generated again agrees with the served one when the "
        "cosine of their embeddings is at least this; below, the hit counts as rejected",
    )
    results_group: str = "parley-cache"

    @property
    def qdrant_grpc_target(self) -> str:
        if self.qdrant_grpc_addr:
            return self.qdrant_grpc_addr
        host = self.qdrant_addr.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{QDRANT_GRPC_PORT}"

    @model_validator(mode="after")
    def _precision_fits_runtime(self) -> Settings:
        allowed = {"torch": ("float32", "bfloat16"), "onnx": ("float32", "int8")}
        if self.embedding_precision not in allowed[self.embedding_runtime]:
            raise ValueError(
                f"EMBEDDING_PRECISION={self.embedding_precision} does not run on "
                f"EMBEDDING_RUNTIME={self.embedding_runtime}: choose "
                + " or ".join(allowed[self.embedding_runtime])
            )
        return self
