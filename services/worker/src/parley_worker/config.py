from __future__ import annotations

import os
import socket

from pydantic import Field

from parley_common.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    engine: str = Field(default="transformers", description="transformers | vllm | fake")
    model_name: str = Field(default="", description="a model name on a hub or a local folder")
    max_concurrency: int = Field(default=4, gt=0, description="generations run at once")
    worker_group: str = "parley-workers"
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    metrics_port: int = 9103
    chunk_interval_ms: int = Field(default=20, ge=0, description="flush streamed text this often")
    chunk_max_chars: int = Field(default=256, gt=0, description="or when this much text is pending")
    shutdown_grace_s: float = 20.0
    fake_ttft_s: float = 0.0
    fake_tokens_per_s: float = 0.0
    vllm_gpu_memory_utilization: float = 0.9
    vllm_max_model_len: int | None = None
