"""Conditions the chat state machine reports.

`ChatError` is a refused request, for the person who made it: its `code` maps one to one onto a
gRPC status code and its `message` is written to be read by a person. The other errors are for
the node: bytes that are no command or no snapshot, and broken invariants (bugs).

Imports the standard library only; nothing from chatbooth.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Why a request was refused; the names are those of the gRPC status codes they map to."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"  # not refused by the state machine; for the server
    FAILED_PRECONDITION = "FAILED_PRECONDITION"  # a client session that expired (see Reason)


class Reason(enum.Enum):
    """A machine-readable reason beside the code, where the client must act on it."""

    CLIENT_EXPIRED = "client-expired"  # register again; earlier requests' outcomes are unknown


class ChatMachineError(Exception):
    """Root of every error raised by node.chat."""


class ChatError(ChatMachineError):
    """A request refused by a chat rule. A value too: equal when code and message are equal,
    because `apply` returns it (and a retried request gets the same one back)."""

    def __init__(self, code: ErrorCode, message: str, reason: Reason | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __repr__(self) -> str:
        return f"ChatError({self.code}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChatError):
            return NotImplemented
        return (
            self.code is other.code
            and self.message == other.message
            and self.reason is other.reason
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def copy(self) -> ChatError:
        """A fresh instance (no traceback attached), to hand out a stored error again."""
        return ChatError(self.code, self.message, self.reason)


class CommandDecodeError(ChatMachineError):
    """Bytes that are not a command this node understands: a bug or a newer format, never a
    user error. `ChatState.apply` lets it propagate, leaving the state untouched, so a node stops
    rather than diverge from replicas that could decode the entry."""


class SnapshotDecodeError(ChatMachineError):
    """Bytes that are not a chat snapshot this node understands; the state is left untouched."""


class InvariantError(ChatMachineError):
    """A broken internal invariant or a misuse by the caller (an entry applied twice): a bug."""
