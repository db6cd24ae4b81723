from __future__ import annotations

from pydantic import Field

from parley_common.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    grpc_port: int = 50051
    mongodb_uri: str = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    mongodb_database: str = "parley"
    model_name: str = Field(default="parley-tiny", description="the model chats use by default")
    tokenizer_path: str = Field(
        default="", description="folder of the served model's tokenizer; empty: estimate tokens"
    )
    context_window: int = Field(default=2048, gt=0)
    default_max_tokens: int = Field(default=256, gt=0)
    default_system_prompt: str = "You are Parley, a helpful assistant."
    results_group: str = "parley-session"
    previous_answer_wait_s: float = Field(
        default=3.0, ge=0, description="how long a turn waits for the previous answer to be stored"
    )
