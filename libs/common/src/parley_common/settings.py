"""The settings base every service's own `Settings` class derives from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_common.kafka import Topics

__all__ = ["ServiceSettings"]


class ServiceSettings(BaseSettings):
    """Environment variables shared by all services (names are the upper-cased field names)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"
    kafka_addr: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap host:port list")
    metrics_port: int = Field(default=0, description="Prometheus metrics port; 0 disables it")
    otel_service_name: str = ""
    topic_prefix: str = Field(
        default="parley.",
        description="the Kafka topics are <prefix>completions.requests, ...results, ...control, "
        "...dlq and <prefix>replies.<gateway> (tests use their own prefix to share one Kafka)",
    )

    def topics(self) -> Topics:
        return Topics.with_prefix(self.topic_prefix)
