from __future__ import annotations

from pydantic import Field

from parley_common.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    grpc_port: int = 50051
    mongodb_uri: str = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    mongodb_database: str = "parley"
    mongodb_timeout_ms: int = Field(
        default=2000, gt=0, description="how long one attempt of a MongoDB operation may take"
    )
    store_retry_attempts: int = Field(
        default=4, ge=1, description="attempts of a MongoDB operation that fails transiently"
    )
    store_retry_s: float = Field(
        default=2.0,
        gt=0,
        description="how long one MongoDB operation may take, its retries included: a caller "
        "hears 'unavailable' within it (a replica set's failover outlasts it: its turns are "
        "refused, not held)",
    )
    model_name: str = Field(default="parley-tiny", description="the model chats use by default")
    tokenizer_path: str = Field(
        default="", description="folder of the served model's tokenizer; empty: estimate tokens"
    )
    context_window: int = Field(default=2048, gt=0)
    default_max_tokens: int = Field(default=256, gt=0)
    default_system_prompt: str = "You are a helpful AI assistant named Parley."
    default_temperature: float | None = Field(
        default=None, ge=0, le=2, description="the default bot's; unset: the engine's (0.7)"
    )
    default_top_p: float | None = Field(
        default=None, gt=0, le=1, description="the default bot's; unset: the engine's (1.0)"
    )
    default_history_policy: str = Field(
        default="truncate", pattern="^(full|truncate|summarize)$", description="of the default bot"
    )
    results_group: str = "parley-session"
    completion_retention_s: float = Field(
        default=86_400.0, gt=0, description="how long an asynchronous completion can be read"
    )
    previous_answer_wait_s: float = Field(
        default=3.0, ge=0, description="how long a turn waits for the previous answer to be stored"
    )
    summarize_at: float = Field(
        default=0.75,
        gt=0,
        le=1,
        description="summarize policy: summarize once the history passes this share of the window",
    )
    keep_recent: float = Field(
        default=0.25, gt=0, lt=1, description="summarize policy: share of the window kept verbatim"
    )
    summary_max_tokens: int = Field(default=256, gt=0)
    summary_timeout_s: float = Field(
        default=120.0, gt=0, description="a summary request's deadline; unanswered, it is redone"
    )
    summary_retry_s: float = Field(
        default=10.0, gt=0, description="first pause after a failed summary (doubles, to 10 min)"
    )
    max_bots_per_user: int = Field(default=100, gt=0)
    vision_models: str = Field(
        default="",
        description="comma-separated ids of the models that take image input: a question's "
        "images go to them as image parts (other models refuse such a question)",
    )
    attachment_max_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="one attached file's size at most"
    )
    attachment_max_per_chat: int = Field(default=20, gt=0, description="files a chat may hold")
    attachment_max_chat_bytes: int = Field(
        default=50 * 1024 * 1024, gt=0, description="the total size of a chat's files at most"
    )

    @property
    def image_models(self) -> frozenset[str]:
        return frozenset(m.strip() for m in self.vision_models.split(",") if m.strip())

    shutdown_grace_s: float = Field(default=10.0, ge=0, description="SIGTERM: finish calls")
