"""What the chat state machine hands out: messages, per-command replies, apply results.

Imports node.chat.errors, node.chat.commands and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.chat.commands import RequestId
from node.chat.errors import ChatError


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: int  # from one global counter, increasing in apply order; never reused
    sender: str  # as registered
    recipient: str  # as registered
    text: str
    timestamp_ms: int  # the accepting node's wall clock: shown, never used for expiry


@dataclass(frozen=True, slots=True)
class RegisterReply:
    username: str


@dataclass(frozen=True, slots=True)
class LoginReply:
    """Carries no token: the client chose it and the cluster only knows its hash."""

    username: str  # as registered (usernames are unique ignoring case)


@dataclass(frozen=True, slots=True)
class LogoutReply:
    username: str


@dataclass(frozen=True, slots=True)
class SendReply:
    """The message id and timestamp: what the proposer returns. The whole message is in
    ApplyResult.message; the dedup table keeps only this, so retries stay cheap to remember."""

    message_id: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class AckReply:
    removed: int  # messages that left the queue


@dataclass(frozen=True, slots=True)
class DeleteAccountReply:
    username: str


@dataclass(frozen=True, slots=True)
class RegisterClientReply:
    client_id: int  # the entry's log index


@dataclass(frozen=True, slots=True)
class TickReply:
    pass


Reply = (
    RegisterReply
    | LoginReply
    | LogoutReply
    | SendReply
    | AckReply
    | DeleteAccountReply
    | RegisterClientReply
    | TickReply
)
Outcome = Reply | ChatError


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one applied entry, for the node that proposed it and for live delivery."""

    index: int
    outcome: Outcome  # the reply, or the ChatError that refused the command (as a value)
    request: RequestId | None = None
    duplicate: bool = False  # outcome is the stored one of an earlier entry with this request id
    message: ChatMessage | None = None  # newly queued by this entry: push it to subscribers
    ended_sessions: tuple[str, ...] = ()  # session hashes this entry ended: close their streams

    @property
    def ok(self) -> bool:
        return not isinstance(self.outcome, ChatError)

    def unwrap(self) -> Reply:
        """The reply; raises the ChatError (a fresh copy) if the command was refused."""
        if isinstance(self.outcome, ChatError):
            raise self.outcome.copy()
        return self.outcome
