"""Fixtures for the chat state machine: a driver that applies commands the way a node does."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import pytest

from node.chat.commands import (
    Ack,
    Command,
    DeleteAccount,
    Login,
    Logout,
    Register,
    RequestId,
    Send,
    encode,
)
from node.chat.errors import ChatError, ErrorCode
from node.chat.passwords import PasswordHash, hash_password, verify_password
from node.chat.replies import ApplyResult, ChatMessage, LoginReply, Reply
from node.chat.state import ChatState
from node.config import ChatLimits, ScryptCost

FAST_COST = ScryptCost(n=2**4, r=1, p=1)  # tests only: production uses 2**14 or more

SMALL_LIMITS = ChatLimits(
    queue_limit=5,
    history_per_pair=4,
    session_idle_s=100,
    client_idle_s=50,
    page_size=3,
    max_page_size=10,
)


def fast_hash(password: str, salt: bytes = b"salt-salt") -> PasswordHash:
    return hash_password(password, FAST_COST, salt)


class Node:
    """Plays the accepting node and the driver: draws timestamps from a fake clock, salts and
    tokens from counters, encodes each command and applies it at the next log index."""

    def __init__(self, limits: ChatLimits = SMALL_LIMITS) -> None:
        self.state = ChatState(limits)
        self.index = 0
        self.now_ms = 1_000_000
        self._salts = count(1)
        self._tokens = count(1)
        self._seqs: dict[str, int] = {}

    # time and request ids

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)

    def request(self, client_id: str = "client") -> RequestId:
        """The next request id of `client_id`, which has an answer for everything before it."""
        seq = self._seqs.get(client_id, 0) + 1
        self._seqs[client_id] = seq
        return RequestId(client_id, seq, seq)

    # applying

    def apply(self, cmd: Command) -> ApplyResult:
        self.index += 1
        return self.state.apply(self.index, encode(cmd))

    def ok(self, cmd: Command) -> Reply:
        result = self.apply(cmd)
        assert result.ok, result.outcome
        return result.unwrap()

    def refused(self, cmd: Command, code: ErrorCode) -> ChatError:
        result = self.apply(cmd)
        assert isinstance(result.outcome, ChatError), result.outcome
        assert result.outcome.code is code, result.outcome
        return result.outcome

    # commands as a client would cause them

    def register_cmd(
        self, username: str, password: str = "secret", request: RequestId | None = None
    ) -> Register:
        salt = f"salt-{next(self._salts)}".encode()
        return Register(
            timestamp_ms=self.now_ms,
            request=request or self.request(),
            username=username,
            password_hash=fast_hash(password, salt),
        )

    def register(self, username: str, password: str = "secret") -> ApplyResult:
        return self.apply(self.register_cmd(username, password))

    def login_cmd(
        self, username: str, password: str = "secret", request: RequestId | None = None
    ) -> Login:
        """What the accepting node proposes once the password checked out against the state."""
        stored = self.state.account_hash(username)
        if stored is None or not verify_password(password, stored):
            raise ChatError(ErrorCode.UNAUTHENTICATED, "wrong username or password")
        return Login(
            timestamp_ms=self.now_ms,
            request=request or self.request(),
            username=username,
            token=f"token-{next(self._tokens)}",
            verified_digest=stored.digest,
        )

    def login(self, username: str, password: str = "secret") -> str:
        reply = self.ok(self.login_cmd(username, password))
        assert isinstance(reply, LoginReply)
        return reply.token

    def user(self, username: str, password: str = "secret") -> str:
        """Register and log in; returns the token."""
        assert self.register(username, password).ok
        return self.login(username, password)

    def send_cmd(
        self, token: str, recipient: str, text: str = "hi", request: RequestId | None = None
    ) -> Send:
        return Send(
            timestamp_ms=self.now_ms,
            request=request or self.request(),
            token=token,
            recipient=recipient,
            text=text,
        )

    def send(self, token: str, recipient: str, text: str = "hi") -> ApplyResult:
        return self.apply(self.send_cmd(token, recipient, text))

    def sent(self, token: str, recipient: str, text: str = "hi") -> ChatMessage:
        result = self.send(token, recipient, text)
        assert result.ok and result.message is not None, result.outcome
        return result.message

    def ack_cmd(self, token: str, up_to_id: int) -> Ack:
        return Ack(timestamp_ms=self.now_ms, request=self.request(), token=token, up_to_id=up_to_id)

    def ack(self, token: str, up_to_id: int) -> ApplyResult:
        return self.apply(self.ack_cmd(token, up_to_id))

    def logout_cmd(self, token: str) -> Logout:
        return Logout(timestamp_ms=self.now_ms, request=self.request(), token=token)

    def logout(self, token: str) -> ApplyResult:
        return self.apply(self.logout_cmd(token))

    def delete_cmd(self, token: str) -> DeleteAccount:
        return DeleteAccount(timestamp_ms=self.now_ms, request=self.request(), token=token)

    def delete(self, token: str) -> ApplyResult:
        return self.apply(self.delete_cmd(token))


@pytest.fixture
def node() -> Iterator[Node]:
    yield Node()
