"""The platform's words, each written once: roles, finish reasons and completion states as
`StrEnum`s (their values are what MongoDB, JSON, logs and metrics carry), converted to and from
their protobuf enums here and nowhere else.

    Role("user").to_pb()                             # types_pb2.ROLE_USER
    FinishReason.from_pb(types_pb2.FINISH_REASON_LENGTH)  # FinishReason.LENGTH
    FinishReason.from_pb(0)                          # None: unspecified or unknown
    Role.parse("robot")                              # None
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self, TypeAlias

from parley.v1 import session_pb2, types_pb2

__all__ = [
    "AccountRole",
    "CompletionState",
    "CompletionStatePb",
    "FinishReason",
    "FinishReasonPb",
    "Role",
    "RolePb",
]

RolePb: TypeAlias = types_pb2.Role.ValueType
FinishReasonPb: TypeAlias = types_pb2.FinishReason.ValueType
CompletionStatePb: TypeAlias = session_pb2.CompletionState.ValueType


class _Words(StrEnum):
    @classmethod
    def parse(cls, value: str) -> Self | None:
        """The member of this value; None for anything else (an empty or unknown word)."""
        member = cls._value2member_map_.get(value)
        return member if isinstance(member, cls) else None


class AccountRole(_Words):
    """What a user may do in their tenant: everything there (users, roles, keys), use the
    platform, or only read."""

    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class Role(_Words):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"  # a tool's result (OpenAI's `tool` message)

    def to_pb(self) -> RolePb:
        return _ROLE_TO_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> Role | None:
        return _ROLE_FROM_PB.get(value)


class FinishReason(_Words):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"
    EXPIRED = "expired"  # the deadline passed before a worker started it: nothing generated
    TOOL_CALLS = "tool_calls"  # the answer is tool calls for the client to run

    def to_pb(self) -> FinishReasonPb:
        return _FINISH_TO_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> FinishReason | None:
        return _FINISH_FROM_PB.get(value)

    @classmethod
    def name_of(cls, value: int) -> str:
        """How metrics, logs and traces name a wire value (an unknown one is an error)."""
        return str(_FINISH_FROM_PB.get(value, FinishReason.ERROR))


class CompletionState(_Words):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # expired before a worker took it, or the worker failed
    CANCELLED = "cancelled"

    def to_pb(self) -> CompletionStatePb:
        return _STATE_TO_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> CompletionState | None:
        return _STATE_FROM_PB.get(value)

    @classmethod
    def after(cls, finish: FinishReason) -> CompletionState:
        """The final state of a completion that ended so."""
        return _FINAL_STATE[finish]


_ROLE_TO_PB: dict[Role, RolePb] = {
    Role.SYSTEM: types_pb2.ROLE_SYSTEM,
    Role.USER: types_pb2.ROLE_USER,
    Role.ASSISTANT: types_pb2.ROLE_ASSISTANT,
    Role.TOOL: types_pb2.ROLE_TOOL,
}
_ROLE_FROM_PB: dict[int, Role] = {v: k for k, v in _ROLE_TO_PB.items()}
_FINISH_TO_PB: dict[FinishReason, FinishReasonPb] = {
    FinishReason.STOP: types_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: types_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: types_pb2.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: types_pb2.FINISH_REASON_ERROR,
    FinishReason.EXPIRED: types_pb2.FINISH_REASON_EXPIRED,
    FinishReason.TOOL_CALLS: types_pb2.FINISH_REASON_TOOL_CALLS,
}
_FINISH_FROM_PB: dict[int, FinishReason] = {v: k for k, v in _FINISH_TO_PB.items()}
_STATE_TO_PB: dict[CompletionState, CompletionStatePb] = {
    CompletionState.QUEUED: session_pb2.COMPLETION_STATE_QUEUED,
    CompletionState.RUNNING: session_pb2.COMPLETION_STATE_RUNNING,
    CompletionState.DONE: session_pb2.COMPLETION_STATE_DONE,
    CompletionState.FAILED: session_pb2.COMPLETION_STATE_FAILED,
    CompletionState.CANCELLED: session_pb2.COMPLETION_STATE_CANCELLED,
}
_STATE_FROM_PB: dict[int, CompletionState] = {v: k for k, v in _STATE_TO_PB.items()}
_FINAL_STATE: dict[FinishReason, CompletionState] = {
    FinishReason.STOP: CompletionState.DONE,
    FinishReason.LENGTH: CompletionState.DONE,
    FinishReason.TOOL_CALLS: CompletionState.DONE,
    FinishReason.CANCELLED: CompletionState.CANCELLED,
    FinishReason.ERROR: CompletionState.FAILED,
    FinishReason.EXPIRED: CompletionState.FAILED,
}
