from __future__ import annotations

import os
import socket
from enum import StrEnum

from pydantic import Field, SecretStr, field_validator, model_validator

from parley_common.settings import ServiceSettings
from parley_gateway.cors import parse_origins
from parley_gateway.oidc import group_roles

__all__ = ["Settings", "SignUpMode"]


class SignUpMode(StrEnum):
    OPEN = "open"  # anyone may create an account
    INVITE = "invite"  # with an invite code from an administrator
    CLOSED = "closed"  # administrators create accounts


_PLACEHOLDERS = {"", "changeme", "change-me", "admin", "secret"}


class Settings(ServiceSettings):
    host: str = "0.0.0.0"
    port: int = 8080
    session_addr: str = "127.0.0.1:50051"
    cache_addr: str = "127.0.0.1:50052"
    admin_api_key: SecretStr = SecretStr("")
    gateway_instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="names this gateway's Kafka reply topic; unique per replica",
    )
    completion_timeout_s: float = Field(default=120.0, gt=0, description="a turn's deadline")
    cache_timeout_s: float = Field(default=0.5, gt=0, description="a slow cache is a miss")
    grpc_timeout_s: float = Field(default=10.0, gt=0)
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    attachment_max_bytes: int = Field(
        default=10 * 1024 * 1024,
        gt=0,
        description="an attached file's size at most (its upload's body may be this and 64 KiB)",
    )
    max_message_chars: int = Field(default=32_000, gt=0)
    max_tokens_limit: int = Field(default=4096, gt=0)
    max_choices: int = Field(
        default=4, ge=1, description="the most choices (`n`) one /v1 chat completion may ask"
    )
    rate_limit_requests_per_minute: int = Field(
        default=0,
        ge=0,
        description="turns a user may start per minute, all replicas together; 0: no limit",
    )
    rate_limit_tokens_per_minute: int = Field(
        default=0,
        ge=0,
        description="prompt + completion tokens a user may spend per minute; 0: no limit",
    )
    budget_period_s: int = Field(
        default=86_400,
        gt=0,
        description="the budgets' period: fixed windows from the Unix epoch (86400: UTC days)",
    )
    budget_user_requests: int = Field(
        default=0, ge=0, description="turns a user may start per period; 0: no budget"
    )
    budget_user_tokens: int = Field(
        default=0, ge=0, description="prompt + completion tokens a user may use per period; 0: none"
    )
    budget_tenant_requests: int = Field(
        default=0, ge=0, description="turns a tenant's users may start per period; 0: no budget"
    )
    budget_tenant_tokens: int = Field(
        default=0, ge=0, description="tokens a tenant's users may use per period; 0: no budget"
    )
    max_queue_depth: int = Field(
        default=1000,
        ge=0,
        description="requests queued or running on the workers beyond which new turns get 503; 0: no limit",
    )
    worker_group: str = Field(
        default="parley-workers", description="the workers' consumer group, whose lag is the queue"
    )
    queue_depth_refresh_s: float = Field(default=1.0, gt=0, description="how often the lag is read")
    cors_allowed_origins: str = Field(
        default="",
        description="comma-separated origins whose browser apps may call the API, or *; "
        "empty: none",
    )
    sign_up_mode: SignUpMode = Field(
        default=SignUpMode.INVITE,
        description="who may create an account: open, invite (an admin's invite code) or closed",
    )
    session_cookie_secure: bool = Field(
        default=False,
        description="mark the session cookie Secure even when a request is not seen as HTTPS "
        "(it is always Secure on HTTPS); set it behind a TLS-terminating proxy",
    )
    session_idle_timeout_s: int = Field(
        default=24 * 3600, gt=0, description="a browser session unused this long ends"
    )
    session_absolute_timeout_s: int = Field(
        default=14 * 24 * 3600, gt=0, description="a browser session ends this long after sign-in"
    )
    sign_in_max_failures_per_account: int = Field(
        default=5, ge=0, description="failed sign-ins of one account per window; 0: no limit"
    )
    sign_in_max_failures_per_address: int = Field(
        default=50,
        ge=0,
        description="failed sign-ins from one client address per window; 0: no limit",
    )
    sign_in_failure_window_s: int = Field(
        default=900, gt=0, description="the window the sign-in failures are counted over"
    )
    oidc_issuer: str = Field(
        default="", description="the OpenID Provider's issuer URL; empty: no single sign-on"
    )
    oidc_client_id: str = ""
    oidc_client_secret: SecretStr = SecretStr("")
    oidc_redirect_uri: str = Field(
        default="", description="this gateway's public /auth/oidc/callback URL, as registered"
    )
    oidc_scopes: str = "openid email profile groups"
    oidc_groups_claim: str = "groups"
    oidc_group_roles: str = Field(
        default="",
        description="comma-separated group=role (admin, member, viewer); the highest matched "
        "role is set at each sign-in, none matched leaves the user's",
    )
    oidc_tenant_id: str = Field(default="", description="the tenant of users created by sign-on")

    @field_validator("oidc_group_roles")
    @classmethod
    def _group_roles(cls, value: str) -> str:
        group_roles(value)
        return value

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.oidc_issuer and not (
            self.oidc_client_id
            and self.oidc_client_secret.get_secret_value()
            and self.oidc_redirect_uri
        ):
            raise ValueError(
                "OIDC_ISSUER needs OIDC_CLIENT_ID, OIDC_CLIENT_SECRET and OIDC_REDIRECT_URI"
            )
        return self

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        parse_origins(value)
        return value

    @model_validator(mode="after")
    def _no_placeholder_secret_in_production(self) -> Settings:
        if self.environment == "production" and (
            self.admin_api_key.get_secret_value() in _PLACEHOLDERS
            or len(self.admin_api_key.get_secret_value()) < 16
        ):
            raise ValueError("ADMIN_API_KEY must be set to a real secret (16+ chars) in production")
        return self
