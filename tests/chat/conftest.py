"""Fixtures for the chat state machine: a driver that applies commands the way a node does."""

from __future__ import annotations

import copy
import re
import sqlite3
from collections.abc import Awaitable, Iterator
from itertools import count
from typing import Any

import pytest

from node.chat.commands import (
    Ack,
    Command,
    DeleteAccount,
    Login,
    Logout,
    Register,
    RegisterClient,
    RequestId,
    Send,
    Tick,
    encode,
    session_of,
)
from node.chat.errors import ChatError, ErrorCode, Reason
from node.chat.passwords import PasswordHash, hash_password, verify_password
from node.chat.replies import ApplyResult, ChatMessage, LoginReply, RegisterClientReply, Reply
from node.chat.state import ChatState
from node.config import ChatLimits, ScryptCost
from node.logclock import LogClock

FAST_COST = ScryptCost(n=2**4, r=1, p=1)  # tests only: production uses 2**14 or more

SMALL_LIMITS = ChatLimits(
    queue_limit=5,
    history_per_pair=4,
    session_idle_s=100,
    client_idle_s=50,
    page_size=3,
    max_page_size=10,
)


# Refusals of a request id itself (malformed, stale) leave its client session untouched, and
# so does a write refused for using another session's client (issue 11: "client 7 is bound to
# another session"); a request id reused for a different request found its seq in the table,
# and refreshes the client as any answer does.
_UNTOUCHED = re.compile(r"request id: |request \d+ of client \d+ is stale|client \d+ ")


def fast_hash(password: str, salt: bytes = b"salt-salt") -> PasswordHash:
    return hash_password(password, FAST_COST, salt)


class FakeClock:
    """A node.seams.Clock the test moves by hand: a monotonic clock and a wall clock that
    move together under advance(), and a wall clock that can also jump alone (jump_wall)."""

    def __init__(self, wall_ms: int = 1_000_000) -> None:
        self.wall = wall_ms
        self.mono_s = 0.0

    def monotonic(self) -> float:
        return self.mono_s

    def wall_ms(self) -> int:
        return self.wall

    def sleep(self, seconds: float) -> Awaitable[None]:
        raise NotImplementedError("nothing in these tests sleeps")

    def advance(self, seconds: float) -> None:
        self.mono_s += seconds
        self.wall += int(seconds * 1000)

    def jump_wall(self, seconds: float) -> None:
        """The machine's wall clock jumps (NTP, an operator); monotonic time does not."""
        self.wall += int(seconds * 1000)


class Node:
    """Plays the accepting node and the driver: draws timestamps from a fake clock, salts and
    session tokens from counters (a test holds a session by its hash, as the state does),
    encodes each command and applies it at the next log index.

    Client sessions are registered as a node registers them (thesis §6.3): the first request
    of a client name applies a RegisterClient entry, and the name maps to its id (that entry's
    index). As the client library does (issue 11), a name keeps one client for the writes
    without a session (Register, Login) and one per session it writes with, bound to
    that session (RegisterClient with the session) the first time it writes with it. A client
    whose session the helper knows to have idled past client_idle_s is registered again, as
    the client library does when a write it never sent meets an expired session; a retry (a
    command built before) keeps its old id.

    Log time: by default a command's log_time_ms is the fake wall clock `now_ms` (so a test can
    stamp a low one, as a lagging clock would without the leader's clamp); with
    `log_clock=True` it is stamped by node.logclock.LogClock over the fake clock, which
    observes every applied entry, as a leader's does.
    """

    def __init__(self, limits: ChatLimits = SMALL_LIMITS, *, log_clock: bool = False) -> None:
        self.state = ChatState(limits)
        self.index = 0
        self.clock = FakeClock()
        self.log_clock = LogClock(self.clock) if log_clock else None
        self._salts = count(1)
        self._token_numbers = count(1)
        self._seqs: dict[tuple[str, str], int] = {}  # (client name, session) -> last seq
        self._client_ids: dict[tuple[str, str], int] = {}  # (name, session "" or one) -> its id
        self._used_ms: dict[int, int] = {}  # client id -> log time it was last used at
        self.entries: list[tuple[int, bytes | None]] = []  # the log so far: (index, data)
        self.results: list[ApplyResult | None] = []  # what applying each entry gave

    # time and request ids

    @property
    def now_ms(self) -> int:
        """The accepting node's wall clock."""
        return self.clock.wall

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        self.clock.wall = value

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def new_leader(self, wall_ahead_s: float = 0.0) -> None:
        """Another node takes over as the accepting leader: its own clocks (its wall clock
        `wall_ahead_s` off this one's, its monotonic clock from another origin) and a LogClock
        that has observed every applied entry, as a follower's has. Needs log_clock=True."""
        if self.log_clock is None:
            raise ValueError("new_leader() needs Node(log_clock=True)")
        clock = FakeClock(self.clock.wall + int(wall_ahead_s * 1000))
        clock.mono_s = 5_000.0
        self.clock = clock
        self.log_clock = LogClock(clock)
        self.log_clock.observe(self.state.log_time_ms)

    def log_time_ms(self) -> int:
        """The log time the accepting node stamps on its next command."""
        if self.log_clock is None:
            return self.now_ms
        return self.log_clock.stamp()

    def register_client_cmd(self, session: str = "") -> RegisterClient:
        return RegisterClient(
            timestamp_ms=self.now_ms, log_time_ms=self.log_time_ms(), session=session
        )

    def register_client(self, session: str = "") -> int:
        """Applies a RegisterClient entry (bound to the session `session` if given); the new
        client id (its log index)."""
        reply = self.ok(self.register_client_cmd(session))
        assert isinstance(reply, RegisterClientReply)
        assert reply.client_id == self.index
        return reply.client_id

    def client_id(self, name: str = "client", session: str = "") -> int:
        """The id of client `name` for the writes made with `session` ("" for Register and
        Login), registered (again) if it has none that is still live. A RegisterClient that
        the state refuses (a session no longer live) raises its ChatError, as the client
        library's write fails with it: the write itself never reaches the log."""
        client_id = self._client_ids.get((name, session))
        if client_id is None or self._expired(client_id):
            result = self.apply(self.register_client_cmd(session))
            if isinstance(result.outcome, ChatError):
                raise result.outcome
            reply = result.unwrap()
            assert isinstance(reply, RegisterClientReply) and reply.client_id == self.index
            client_id = self._client_ids[(name, session)] = reply.client_id
        return client_id

    def _expired(self, client_id: int) -> bool:
        # the next stamp, without taking it
        stamp = self.now_ms if self.log_clock is None else copy.copy(self.log_clock).stamp()
        idle_ms = max(self.state.log_time_ms, stamp) - self._used_ms.get(client_id, 0)
        return idle_ms > self.state.limits.client_idle_s * 1000

    def rid(self, name: str, seq: int, first_outstanding: int, session: str = "") -> RequestId:
        """A request id of client `name`, for writes made with `session`, with these numbers."""
        return RequestId(self.client_id(name, session), seq, first_outstanding)

    def request(self, client: str = "client", session: str = "") -> RequestId:
        """The next request id of `client` for writes made with `session` ("" for Register and
        Login), which has an answer for everything before it."""
        seq = self._seqs.get((client, session), 0) + 1
        self._seqs[(client, session)] = seq
        return self.rid(client, seq, seq, session)

    # applying

    def apply(self, cmd: Command) -> ApplyResult:
        self.index += 1
        data = encode(cmd)
        self.entries.append((self.index, data))
        result = self.state.apply(self.index, data)
        self.results.append(result)
        if self.log_clock is not None:
            self.log_clock.observe(self.state.log_time_ms)
        if isinstance(cmd, RegisterClient):
            self._used_ms[self.index] = self.state.log_time_ms
        elif cmd.request is not None and cmd.request.client_id in self._used_ms:
            self._note_use(cmd.request.client_id, result)
        return result

    def _note_use(self, client_id: int, result: ApplyResult) -> None:
        """Follow which client sessions the state still holds (§6.3: an applied request of a
        client refreshes it; a refusal of the request id itself does not)."""
        outcome = result.outcome
        if isinstance(outcome, ChatError) and outcome.reason is Reason.CLIENT_EXPIRED:
            del self._used_ms[client_id]
        elif not (isinstance(outcome, ChatError) and _UNTOUCHED.match(outcome.message)):
            self._used_ms[client_id] = self.state.log_time_ms

    def tick(self) -> ApplyResult:
        """The leader's Tick: moves log time on and nothing else."""
        return self.apply(Tick(timestamp_ms=self.now_ms, log_time_ms=self.log_time_ms()))

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
            log_time_ms=self.log_time_ms(),
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
            log_time_ms=self.log_time_ms(),
            username=username,
            session=session_of(f"token-{next(self._token_numbers)}"),
            verified_digest=stored.digest,
        )

    def login(self, username: str, password: str = "secret") -> str:
        cmd = self.login_cmd(username, password)
        reply = self.ok(cmd)
        assert isinstance(reply, LoginReply)
        return cmd.session

    def user(self, username: str, password: str = "secret") -> str:
        """Register and log in; returns the session."""
        assert self.register(username, password).ok
        return self.login(username, password)

    def send_cmd(
        self, session: str, recipient: str, text: str = "hi", request: RequestId | None = None
    ) -> Send:
        return Send(
            timestamp_ms=self.now_ms,
            request=request or self.request(session=session),
            log_time_ms=self.log_time_ms(),
            session=session,
            recipient=recipient,
            text=text,
        )

    def send(self, session: str, recipient: str, text: str = "hi") -> ApplyResult:
        return self.apply(self.send_cmd(session, recipient, text))

    def sent(self, session: str, recipient: str, text: str = "hi") -> ChatMessage:
        result = self.send(session, recipient, text)
        assert result.ok and result.message is not None, result.outcome
        return result.message

    def ack_cmd(self, session: str, up_to_id: int) -> Ack:
        return Ack(
            timestamp_ms=self.now_ms,
            request=self.request(session=session),
            log_time_ms=self.log_time_ms(),
            session=session,
            up_to_id=up_to_id,
        )

    def ack(self, session: str, up_to_id: int) -> ApplyResult:
        return self.apply(self.ack_cmd(session, up_to_id))

    def logout_cmd(self, session: str) -> Logout:
        return Logout(
            timestamp_ms=self.now_ms,
            request=self.request(session=session),
            log_time_ms=self.log_time_ms(),
            session=session,
        )

    def logout(self, session: str) -> ApplyResult:
        return self.apply(self.logout_cmd(session))

    def delete_cmd(self, session: str) -> DeleteAccount:
        return DeleteAccount(
            timestamp_ms=self.now_ms,
            request=self.request(session=session),
            log_time_ms=self.log_time_ms(),
            session=session,
        )

    def delete(self, session: str) -> ApplyResult:
        return self.apply(self.delete_cmd(session))


@pytest.fixture
def node() -> Iterator[Node]:
    yield Node()


# --- the database: copies between replicas, and what is in it --------------------------------

TABLES = (
    "meta",
    "accounts",
    "sessions",
    "clients",
    "replies",
    "messages",
    "views",
    "view_sizes",
    "queue",
)


def read_rows(state: ChatState, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows read from the state's database file through a read-only connection of the test's
    own, as a person with the sqlite3 shell would read them."""
    conn = sqlite3.connect(f"file:{state.path}?mode=ro", uri=True, isolation_level=None)
    try:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def dump(state: ChatState) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a fixed order: two replicas alike have equal dumps."""
    conn = sqlite3.connect(f"file:{state.path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        found = {}
        for table in TABLES:
            width = len(conn.execute(f"SELECT * FROM {table} LIMIT 0").description)
            order = ", ".join(str(i) for i in range(1, width + 1))
            found[table] = [
                tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
            ]
        conn.execute("COMMIT")
        return found
    finally:
        conn.close()


def copy_of(state: ChatState, limits: ChatLimits | None = None) -> ChatState:
    """A new replica that installed a copy of `state`, as a follower installs the leader's
    snapshot: copy_to a file, validate_copy, install."""
    twin = ChatState(limits or state.limits)
    incoming = twin.path.parent / "incoming.db"
    applied = state.copy_to(incoming)
    assert applied == state.applied_index
    assert twin.validate_copy(incoming) == applied
    twin.install(incoming)
    assert twin.applied_index == applied
    return twin


def assert_alike(*states: ChatState) -> None:
    """The replicas hold the same rows and the same digest, and each one's digest (kept by
    apply) is the one a full scan of its rows computes."""
    digests = {state.digest() for state in states}
    assert len(digests) == 1, digests
    for state in states:
        assert state.scan_digest() == state.digest()
    first = dump(states[0])
    for state in states[1:]:
        assert dump(state) == first
