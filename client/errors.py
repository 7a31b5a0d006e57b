"""What can go wrong for a chat client, as exceptions rooted in `ChatClientError`.

Every message is written for a person. The split that matters for correctness:

- `ServerError` and its subclasses are *definite* answers: the cluster refused the request
  (bad name, taken name, wrong password, unknown recipient, full queue, ...) and did not apply
  it. Only these end a write as failed.
- `UnavailableError` (and `NoMajorityError`) says no node served the request in time. For a
  write it is *not* a failure: its outcome may be unknown, and `pending` is the write, which the
  client keeps resending with the same request id until it gets an answer.

Imports grpc, protos.vocabulary and the standard library only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from protos.vocabulary import Reason

if TYPE_CHECKING:
    from client.writes import PendingWrite


class ChatClientError(Exception):
    """Root of every error the chat client raises."""


class AddressError(ChatClientError, ValueError):
    """A server address or list of them that is not `host:port[,host:port...]`."""


class ClientClosedError(ChatClientError):
    """The client was closed; nothing more can be asked of it."""


class NotLoggedInError(ChatClientError):
    """A call that needs a session was made before `login` (or after `logout`)."""

    def __init__(self, message: str = "not logged in: log in first") -> None:
        super().__init__(message)


class ServerError(ChatClientError):
    """The cluster answered with a definite refusal; the request was not applied.

    `code` is the gRPC status code, `message` the server's text, meant for a person, and
    `reason` the machine-readable reason the server gave beside it, if any.
    """

    def __init__(self, code: grpc.StatusCode, message: str, reason: Reason | None = None) -> None:
        self.code = code
        self.message = message or code.name.lower().replace("_", " ")
        self.reason = reason
        super().__init__(self.message)


class InvalidArgumentError(ServerError):
    """INVALID_ARGUMENT: a bad name, an empty or oversized message, a malformed request."""


class AlreadyExistsError(ServerError):
    """ALREADY_EXISTS: the username is taken (usernames are unique ignoring case)."""


class UnauthenticatedError(ServerError):
    """UNAUTHENTICATED: wrong username or password, or the session ended: log in again."""


class NotFoundError(ServerError):
    """NOT_FOUND: no such account."""


class ResourceExhaustedError(ServerError):
    """RESOURCE_EXHAUSTED: the recipient's queue of undelivered messages is full."""


class PermissionDeniedError(ServerError):
    """PERMISSION_DENIED: the request is not allowed for this session."""


class ClientExpiredError(ServerError):
    """FAILED_PRECONDITION, reason "client-expired": the cluster no longer remembers this
    client's session (idle past its limit), so it cannot tell whether an earlier attempt of a
    request was applied. The client registers a new session; see OutcomeUnknownError."""


class OutcomeUnknownError(ChatClientError):
    """A write that was sent before its client session expired: it may or may not have been
    applied, and the cluster can no longer say. It is not resent (that could apply it twice)."""


_BY_CODE: dict[grpc.StatusCode, type[ServerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}

# Answers that settle a request: the node looked at it and refused it, so resending it with
# the same id would get the same answer. Everything else (UNAVAILABLE, DEADLINE_EXCEEDED,
# UNKNOWN, INTERNAL, CANCELLED, ABORTED, ...) may mean "applied, but the answer was lost".
DEFINITE_CODES = frozenset(
    {
        *_BY_CODE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def server_error(code: grpc.StatusCode, message: str, reason: Reason | None = None) -> ServerError:
    """The ServerError subclass for a definite status code (ServerError itself for others)."""
    if code is grpc.StatusCode.FAILED_PRECONDITION and reason is Reason.CLIENT_EXPIRED:
        return ClientExpiredError(code, message, reason)
    return _BY_CODE.get(code, ServerError)(code, message, reason)


class UnavailableError(ChatClientError):
    """No node served the request before the deadline (or the client is pinned to a node that
    cannot serve it). `summary` says what each node answered last.

    For a write, `pending` is the write itself: its outcome is unknown, it has not failed, and
    the client keeps resending it with the same request id until it is answered (await
    `pending` to learn the outcome). For a read, `pending` is None.
    """

    def __init__(self, summary: str, pending: PendingWrite[Any] | None = None) -> None:
        self.summary = summary
        self.pending = pending
        message = summary
        if pending is not None:
            message += (
                f"; {pending.what} (request {pending.seq}) is still pending: it is resent with "
                "the same request id until it is answered"
            )
        super().__init__(message)


class NoMajorityError(UnavailableError):
    """No node can reach a majority, so there is no leader to serve anything: every node that
    answered says "no majority reachable" (or knows no leader) and the others are unreachable."""
