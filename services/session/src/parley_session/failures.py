"""The failures a call may end with that are expected and reported as such (each to its status
code by the servicer): the domain's refusals and the store's unavailability."""

from __future__ import annotations

from typing import Final

from pymongo.errors import PyMongoError

from parley_session.domain import (
    AlreadyExistsError,
    AttachmentNotFoundError,
    BotNotFoundError,
    ChatNotFoundError,
    CompletionNotFoundError,
    InvalidArgumentError,
    MessageNotFoundError,
    ModelNotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UserNotFoundError,
)
from parley_session.retry import DeadlineExceededError, StoreUnavailableError

__all__ = ["EXPECTED_FAILURES"]

EXPECTED_FAILURES: Final = (
    AttachmentNotFoundError,
    ChatNotFoundError,
    BotNotFoundError,
    MessageNotFoundError,
    CompletionNotFoundError,
    ModelNotFoundError,
    UserNotFoundError,
    PermissionDeniedError,
    AlreadyExistsError,
    UnauthenticatedError,
    InvalidArgumentError,
    DeadlineExceededError,
    StoreUnavailableError,
    PyMongoError,
)
