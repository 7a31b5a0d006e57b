"""A scriptable stand-in for a chatbooth cluster, for the client's tests.

N gRPC Chat servers on 127.0.0.1 share one chat state machine, the real one
(`node.chat.state.ChatState`), so request-id deduplication, registered client sessions
(RegisterClient, and the refusal of an expired one with reason "client-expired" in the
trailing metadata), queues, cumulative acks and errors behave as on real nodes; only Raft is
missing. Commands carry a log time stamped by the real node.logclock.LogClock over the fake's
clock, which `pass_time(seconds)` moves on (a client cut off that long). Which node leads is
decided here: the first node (or the one asked for) that is up and not isolated, provided a
majority is; otherwise every node answers UNAVAILABLE "no majority reachable".

On top of that a test can break things on purpose:
- `kill(name)` / `start(name)`: the server stops (in-flight calls and streams die) or comes
  back on the same port; `pause(name)` / `resume(name)`: it accepts calls and answers none.
- `isolate(*names)` / `heal()`: those nodes lose the majority.
- `script(name, method, *faults)`: the next calls of `method` on `name` meet the faults in turn
  (answer "not the leader", hang past the deadline, apply and then lose the answer, apply and
  then crash, apply and then let the client's session expire...).
- `end_streams()`: Subscribe streams end with UNAVAILABLE, as when a leader steps down.
- `forward=True`: followers serve unary calls themselves, as a node forwarding to the leader.

Every request a node receives is recorded in `received` with its request id.

`ChatCluster` is the part of this API that a real cluster can offer too (kill, start,
isolate, heal, leader): tests written against it can later run against real nodes.

Run as a program (`python -m tests.client.fakechat --nodes a,b,c`) it prints one line
`READY {"a": "127.0.0.1:PORT", ...}` and then obeys commands on stdin (`kill a`, `start a`,
`pause a`, `resume a`, `isolate a b`, `heal`, `leader a`, `end-streams`, `quit`), answering
`ok` or `error: ...` per line; it stops at `quit` or end of input.

Test code: may import node.chat and node.config (it plays the node), never client internals.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import random
import secrets
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import grpc
import grpc.aio

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
    encode,
    session_of,
)
from node.chat.errors import ChatError, ErrorCode
from node.chat.passwords import hash_password, verify_password
from node.chat.replies import ApplyResult, ChatMessage, LoginReply, RegisterClientReply, SendReply
from node.chat.state import ChatState
from node.chat.validation import validate_password, validate_request_id, validate_username
from node.config import ChatLimits, ScryptCost
from node.logclock import LogClock
from protos import chat_pb2, chat_pb2_grpc
from protos.vocabulary import LEADER_ADDRESS_KEY, LEADER_ID_KEY, REASON_KEY, Reason

FAST_COST = ScryptCost(n=2**4, r=1, p=1)  # tests only
# Ports for test servers: below the ephemeral range (32768 and up), which outgoing
# connections use (TRAPS.md).
PORT_RANGE = (20000, 32000)


class ChatCluster(Protocol):
    """What client tests need from a cluster, fake or real."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def address(self, name: str) -> str: ...

    @property
    def addresses(self) -> list[str]: ...

    async def kill(self, name: str) -> None: ...

    async def start(self, name: str) -> None: ...

    async def isolate(self, *names: str) -> None: ...

    async def heal(self) -> None: ...

    async def wait_leader(self, timeout_s: float = 5.0) -> str: ...


class Fault(enum.Enum):
    NOT_LEADER = "answer UNAVAILABLE 'not the leader' with the leader in metadata"
    NO_MAJORITY = "answer UNAVAILABLE 'no majority reachable'"
    HANG = "never answer, apply nothing"
    APPLY_THEN_HANG = "apply, then never answer (the client's deadline passes)"
    APPLY_THEN_UNKNOWN = "apply, then fail with UNKNOWN (a broken stream)"
    APPLY_THEN_INTERNAL = "apply, then fail with INTERNAL"
    APPLY_THEN_CRASH = "apply, then the node dies before answering"
    APPLY_THEN_SILENCE = (
        "apply, then fail with UNKNOWN, and the client stays cut off past client_idle_s "
        "(log time passes it: its session expires before the retry)"
    )
    HANG_THEN_SILENCE = (
        "apply nothing, never answer, and log time passes client_idle_s meanwhile (the "
        "client's session expires before the retry)"
    )


_AFTER_APPLY = {
    Fault.APPLY_THEN_HANG,
    Fault.APPLY_THEN_UNKNOWN,
    Fault.APPLY_THEN_INTERNAL,
    Fault.APPLY_THEN_CRASH,
    Fault.APPLY_THEN_SILENCE,
}


@dataclass(frozen=True)
class Received:
    node: str
    method: str
    request_id: tuple[int, int, int] | None  # (client_id, seq, first_outstanding)
    request: Any


@dataclass
class _End:
    code: grpc.StatusCode
    details: str
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(eq=False)
class _Stream:
    node: str
    user_key: str
    session: str  # the hash of its token
    queue: asyncio.Queue[ChatMessage | _End] = field(default_factory=asyncio.Queue)


def _proto_message(message: ChatMessage) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(
        id=message.id,
        sender=message.sender,
        recipient=message.recipient,
        text=message.text,
        timestamp_ms=message.timestamp_ms,
    )


def _request_id(request: chat_pb2.RequestId) -> RequestId:
    """Checked as a node checks it before proposing (INVALID_ARGUMENT, e.g. client id 0)."""
    return validate_request_id(request.client_id, request.seq, request.first_outstanding)


class _Clock:
    """The fake's clock (node.seams.Clock): the machine's, plus the time pass_time() added."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset_s

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000 + int(self.offset_s * 1000)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeCluster:
    """N fake nodes over one ChatState. Use `async with FakeCluster(...) as cluster`."""

    def __init__(
        self,
        names: Sequence[str] = ("a", "b", "c"),
        *,
        forward: bool = False,
        limits: ChatLimits | None = None,
    ) -> None:
        self._names = tuple(names)
        self.forward = forward
        self.state = ChatState(limits or ChatLimits(page_size=3, max_page_size=10))
        self.clock = _Clock()
        self.log_clock = LogClock(self.clock)  # the leader's: every node stamps with it
        self.index = 0
        self.term = 1
        self.leader: str | None = None
        self.preferred: str | None = None
        self.isolated: set[str] = set()
        self.duplicate_deliveries = False
        self.received: list[Received] = []
        self.nodes = {name: FakeNode(self, name) for name in self._names}
        self.streams: set[_Stream] = set()
        self._faults: dict[tuple[str, str], deque[Fault]] = defaultdict(deque)

    async def __aenter__(self) -> FakeCluster:
        for node in self.nodes.values():
            await node.start()
        self.elect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for node in self.nodes.values():
            await node.stop()

    # --- ChatCluster ---------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def address(self, name: str) -> str:
        return self.nodes[name].address

    @property
    def addresses(self) -> list[str]:
        return [self.address(name) for name in self._names]

    async def kill(self, name: str) -> None:
        await self.nodes[name].stop()
        self.elect()

    async def start(self, name: str) -> None:
        await self.nodes[name].start()
        self.elect()

    async def isolate(self, *names: str) -> None:
        self.isolated.update(names)
        self.elect()

    async def heal(self) -> None:
        self.isolated.clear()
        self.elect()

    async def wait_leader(self, timeout_s: float = 5.0) -> str:
        if self.leader is None:
            raise AssertionError("the fake cluster has no leader")
        return self.leader

    # --- fake-only controls ----------------------------------------------------------------

    def pause(self, name: str) -> None:
        self.nodes[name].paused.clear()
        self.elect()

    def resume(self, name: str) -> None:
        self.nodes[name].paused.set()
        self.elect()

    def set_leader(self, name: str | None) -> None:
        self.preferred = name
        self.elect()

    def script(self, node: str, method: str, *faults: Fault) -> None:
        self._faults[(node, method)].extend(faults)

    def end_streams(self, node: str | None = None) -> None:
        """End Subscribe streams (of one node, or all) with UNAVAILABLE 'not the leader'."""
        for stream in list(self.streams):
            if node is None or stream.node == node:
                stream.queue.put_nowait(
                    _End(
                        grpc.StatusCode.UNAVAILABLE,
                        "not the leader",
                        (*self.leader_metadata(), (REASON_KEY, Reason.NOT_LEADER.value)),
                    )
                )

    def pass_time(self, seconds: float) -> None:
        """`seconds` pass on the cluster's clocks (wall and monotonic): the next command's
        log time is that much later, and expires what idled that long."""
        self.clock.offset_s += seconds

    def client_expiry(self) -> None:
        """Time enough passes for every client session to expire (client_idle_s and 1 s)."""
        self.pass_time(self.state.limits.client_idle_s + 1)

    def calls(self, method: str, node: str | None = None) -> list[Received]:
        return [r for r in self.received if r.method == method and (node is None or r.node == node)]

    def queued(self, username: str) -> list[int]:
        return [m.id for m in self.state.queue(username)]

    def sent_texts(self, sender: str, recipient: str) -> list[str]:
        return [m.text for m in self.state.history(sender, recipient, 1000) if m.sender == sender]

    # --- the "log" -------------------------------------------------------------------------

    def elect(self) -> None:
        """Choose the leader as a healthy Raft cluster soon would; end the old one's streams."""
        healthy = [
            name
            for name, node in self.nodes.items()
            if node.running and node.paused.is_set() and name not in self.isolated
        ]
        leader: str | None = None
        if len(healthy) > len(self._names) // 2:
            if self.preferred in healthy:
                leader = self.preferred
            elif self.leader in healthy:
                leader = self.leader
            else:
                leader = healthy[0]
        if leader != self.leader:
            old = self.leader
            self.leader = leader
            self.term += 1
            if old is not None and self.nodes[old].running:
                self.end_streams(old)

    def leader_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.leader is None:
            return ()
        return ((LEADER_ADDRESS_KEY, self.address(self.leader)), (LEADER_ID_KEY, self.leader))

    def next_fault(self, node: str, method: str) -> Fault | None:
        faults = self._faults.get((node, method))
        return faults.popleft() if faults else None

    def stamps(self) -> tuple[int, int]:
        """(timestamp_ms, log_time_ms) for a command about to be proposed."""
        return self.clock.wall_ms(), self.log_clock.stamp()

    def apply(self, command: Command) -> ApplyResult:
        self.index += 1
        result = self.state.apply(self.index, encode(command))
        self.log_clock.observe(self.state.log_time_ms)
        if result.message is not None:
            key = result.message.recipient.lower()
            for stream in list(self.streams):
                if stream.user_key == key:
                    stream.queue.put_nowait(result.message)
        for session in result.ended_sessions:
            for stream in list(self.streams):
                if stream.session == session:
                    stream.queue.put_nowait(
                        _End(grpc.StatusCode.UNAUTHENTICATED, "session ended: log in again")
                    )
        return result


class FakeNode(chat_pb2_grpc.ChatServicer):
    """One fake node: a gRPC server answering for the cluster according to its role."""

    def __init__(self, cluster: FakeCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.port = 0  # chosen at the first start, kept for restarts
        self.server: grpc.aio.Server | None = None
        self.paused = asyncio.Event()
        self.paused.set()  # set = running normally

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.server is not None

    async def start(self) -> None:
        if self.server is not None:
            return
        for _ in range(100):
            port = self.port or random.randrange(*PORT_RANGE)
            server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", 0),
                    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                    ("grpc.keepalive_permit_without_calls", 1),
                ]
            )
            chat_pb2_grpc.add_ChatServicer_to_server(self, server)
            try:
                bound = server.add_insecure_port(f"127.0.0.1:{port}")
            except RuntimeError:
                bound = 0
            if bound == port:
                await server.start()
                self.server = server
                self.port = port
                return
            if self.port:
                await asyncio.sleep(0.05)  # our old port: wait for it to be free again
        raise RuntimeError(f"fake node {self.name}: no free port")

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            for stream in list(self.cluster.streams):
                if stream.node == self.name:
                    self.cluster.streams.discard(stream)
            await server.stop(None)

    # --- gating ----------------------------------------------------------------------------

    async def _enter(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Fault | None:
        """Record the call, play a scripted fault or the node's role; returns a fault to play
        after applying."""
        rid = None
        if _has_rid(request) and request.HasField("request"):
            r = request.request
            rid = (r.client_id, r.seq, r.first_outstanding)
        self.cluster.received.append(Received(self.name, method, rid, request))
        await self.paused.wait()
        fault = self.cluster.next_fault(self.name, method)
        if fault is Fault.HANG:
            await _forever()
        if fault is Fault.HANG_THEN_SILENCE:
            self.cluster.client_expiry()
            await _forever()
        if fault is Fault.NOT_LEADER:
            await self._abort_not_leader(context)
        if fault is Fault.NO_MAJORITY:
            await self._abort_no_majority(context)
        cluster = self.cluster
        if method == "Status":
            return None
        if self.name in cluster.isolated or cluster.leader is None:
            await self._abort_no_majority(context)
        if cluster.leader != self.name and not (cluster.forward and method != "Subscribe"):
            await self._abort_not_leader(context)
        return fault if fault in _AFTER_APPLY else None

    async def _abort_not_leader(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "not the leader",
            trailing_metadata=(
                *self.cluster.leader_metadata(),
                (REASON_KEY, Reason.NOT_LEADER.value),
            ),
        )
        raise AssertionError("abort returned")

    async def _abort_no_majority(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "no majority reachable",
            trailing_metadata=((REASON_KEY, Reason.NO_MAJORITY.value),),
        )
        raise AssertionError("abort returned")

    async def _after(
        self, fault: Fault | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if fault is Fault.APPLY_THEN_HANG:
            await _forever()
        if fault is Fault.APPLY_THEN_UNKNOWN:
            await context.abort(grpc.StatusCode.UNKNOWN, "Stream removed")
        if fault is Fault.APPLY_THEN_INTERNAL:
            await context.abort(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")
        if fault is Fault.APPLY_THEN_CRASH:
            asyncio.get_running_loop().create_task(self.cluster.kill(self.name))
            await _forever()
        if fault is Fault.APPLY_THEN_SILENCE:
            self.cluster.client_expiry()
            await context.abort(grpc.StatusCode.UNKNOWN, "Stream removed")

    async def _refuse(
        self, error: ChatError, context: grpc.aio.ServicerContext[Any, Any]
    ) -> NoReturn:
        metadata = () if error.reason is None else ((REASON_KEY, error.reason.value),)
        await context.abort(
            grpc.StatusCode[error.code.value], error.message, trailing_metadata=metadata
        )
        raise AssertionError("abort returned")

    async def _write(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any], make: Any
    ) -> Any:
        fault = await self._enter(method, request, context)
        try:
            command = make()
        except ChatError as error:
            await self._refuse(error, context)
        result = self.cluster.apply(command)
        await self._after(fault, context)
        try:
            return result.unwrap()
        except ChatError as error:
            await self._refuse(error, context)

    # --- the Chat service ------------------------------------------------------------------

    async def RegisterClient(
        self, request: chat_pb2.RegisterClientRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.RegisterClientReply:
        def make() -> Command:
            session = session_of(request.token) if request.token else ""
            if session:  # a node refuses a dead session before proposing
                self.cluster.state.authenticate(session)
            ts, lt = self.cluster.stamps()
            return RegisterClient(timestamp_ms=ts, log_time_ms=lt, session=session)

        reply = await self._write("RegisterClient", request, context, make)
        if not isinstance(reply, RegisterClientReply):
            raise TypeError(reply)
        return chat_pb2.RegisterClientReply(client_id=reply.client_id)

    async def Register(
        self, request: chat_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.RegisterReply:
        def make() -> Command:
            validate_username(request.username, self.cluster.state.limits)
            validate_password(request.password)
            hashed = hash_password(request.password, FAST_COST, secrets.token_bytes(16))
            ts, lt = self.cluster.stamps()
            return Register(
                timestamp_ms=ts,
                log_time_ms=lt,
                request=_request_id(request.request),
                username=request.username,
                password_hash=hashed,
            )

        await self._write("Register", request, context, make)
        return chat_pb2.RegisterReply()

    async def Login(
        self, request: chat_pb2.LoginRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.LoginReply:
        def make() -> Command:
            stored = self.cluster.state.account_hash(request.username)
            if stored is None or not verify_password(request.password, stored):
                raise ChatError(ErrorCode.UNAUTHENTICATED, "wrong username or password")
            ts, lt = self.cluster.stamps()
            return Login(
                timestamp_ms=ts,
                log_time_ms=lt,
                request=_request_id(request.request),
                username=request.username,
                session=session_of(request.token),
                verified_digest=stored.digest,
            )

        reply = await self._write("Login", request, context, make)
        if not isinstance(reply, LoginReply):
            raise TypeError(reply)
        return chat_pb2.LoginReply(username=reply.username)

    async def Logout(
        self, request: chat_pb2.LogoutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.LogoutReply:
        def make() -> Command:
            ts, lt = self.cluster.stamps()
            return Logout(
                timestamp_ms=ts,
                log_time_ms=lt,
                request=_request_id(request.request),
                session=session_of(request.token),
            )

        await self._write("Logout", request, context, make)
        return chat_pb2.LogoutReply()

    async def Send(
        self, request: chat_pb2.SendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.SendReply:
        def make() -> Command:
            ts, lt = self.cluster.stamps()
            return Send(
                timestamp_ms=ts,
                log_time_ms=lt,
                request=_request_id(request.request),
                session=session_of(request.token),
                recipient=request.recipient,
                text=request.text,
            )

        reply = await self._write("Send", request, context, make)
        if not isinstance(reply, SendReply):
            raise TypeError(reply)
        return chat_pb2.SendReply(message_id=reply.message_id, timestamp_ms=reply.timestamp_ms)

    async def Ack(
        self, request: chat_pb2.AckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.AckReply:
        def make() -> Command:
            ts, lt = self.cluster.stamps()
            return Ack(
                timestamp_ms=ts,
                log_time_ms=lt,
                request=_request_id(request.request),
                session=session_of(request.token),
                up_to_id=request.up_to_id,
            )

        await self._write("Ack", request, context, make)
        return chat_pb2.AckReply()

    async def DeleteAccount(
        self, request: chat_pb2.DeleteAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.DeleteAccountReply:
        def make() -> Command:
            state = self.cluster.state
            # The password is checked only while the session lives. A retry whose first
            # attempt already deleted the account finds no session: it must still reach the
            # log, where the client session table answers it with the first reply (a node
            # that refused it here would report a done delete as failed).
            try:
                username: str | None = state.authenticate(session_of(request.token))
            except ChatError:
                username = None
            stored = None if username is None else state.account_hash(username)
            if stored is not None and not verify_password(request.password, stored):
                raise ChatError(ErrorCode.UNAUTHENTICATED, "wrong password")
            ts, lt = self.cluster.stamps()
            return DeleteAccount(
                timestamp_ms=ts,
                log_time_ms=lt,
                request=_request_id(request.request),
                session=session_of(request.token),
            )

        await self._write("DeleteAccount", request, context, make)
        return chat_pb2.DeleteAccountReply()

    async def ListAccounts(
        self, request: chat_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.ListAccountsReply:
        await self._enter("ListAccounts", request, context)
        state = self.cluster.state
        try:
            state.authenticate(session_of(request.token))
            names, next_token = state.list_accounts(
                request.pattern, request.page_token, request.page_size
            )
        except ChatError as error:
            await self._refuse(error, context)
        return chat_pb2.ListAccountsReply(usernames=names, next_page_token=next_token)

    async def History(
        self, request: chat_pb2.HistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.HistoryReply:
        await self._enter("History", request, context)
        state = self.cluster.state
        try:
            username = state.authenticate(session_of(request.token))
            messages = state.history(username, request.other, request.limit)
        except ChatError as error:
            await self._refuse(error, context)
        return chat_pb2.HistoryReply(messages=[_proto_message(m) for m in messages])

    async def Subscribe(
        self, request: chat_pb2.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[chat_pb2.ChatMessage]:
        await self._enter("Subscribe", request, context)
        state = self.cluster.state
        try:
            username = state.authenticate(session_of(request.token))
        except ChatError as error:
            await self._refuse(error, context)
        # Registered and read in one step, as a node reads the queue at the applied index at
        # which it registers the stream: nothing falls between.
        stream = _Stream(self.name, username.lower(), session_of(request.token))
        backlog = state.queue(username, request.after_id)
        self.cluster.streams.add(stream)
        copies = 2 if self.cluster.duplicate_deliveries else 1
        try:
            await context.send_initial_metadata(())
            for message in backlog:
                for _ in range(copies):
                    yield _proto_message(message)
            while True:
                item = await stream.queue.get()
                if isinstance(item, _End):
                    await context.abort(item.code, item.details, trailing_metadata=item.metadata)
                for _ in range(copies):
                    yield _proto_message(item)
        finally:
            self.cluster.streams.discard(stream)

    async def Status(
        self, request: chat_pb2.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.StatusReply:
        await self._enter("Status", request, context)
        cluster = self.cluster
        leader = None if self.name in cluster.isolated else cluster.leader
        return chat_pb2.StatusReply(
            node_id=self.name,
            role=chat_pb2.LEADER if leader == self.name else chat_pb2.FOLLOWER,
            term=cluster.term,
            leader_id=leader or "",
            leader_address=cluster.address(leader) if leader else "",
            commit_index=cluster.index,
            applied_index=cluster.index,
            state_digest=cluster.state.digest(),
            last_index=cluster.index,
        )


def _has_rid(request: Any) -> bool:
    return "request" in type(request).DESCRIPTOR.fields_by_name


async def _forever() -> NoReturn:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


# --- the launcher ------------------------------------------------------------------------


async def _serve(names: Sequence[str], forward: bool) -> None:
    async with FakeCluster(names, forward=forward) as cluster:
        print("READY " + json.dumps(dict(zip(names, cluster.addresses, strict=True))), flush=True)
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=read, daemon=True).start()
        while (line := await lines.get()) is not None:
            words = line.split()
            if not words:
                continue
            command, args = words[0], words[1:]
            try:
                if command == "quit":
                    break
                if command == "kill":
                    await cluster.kill(args[0])
                elif command == "start":
                    await cluster.start(args[0])
                elif command == "pause":
                    cluster.pause(args[0])
                elif command == "resume":
                    cluster.resume(args[0])
                elif command == "isolate":
                    await cluster.isolate(*args)
                elif command == "heal":
                    await cluster.heal()
                elif command == "leader":
                    cluster.set_leader(args[0] if args else None)
                elif command == "end-streams":
                    cluster.end_streams()
                else:
                    raise ValueError(f"unknown command {command!r}")
            except (ValueError, IndexError, KeyError) as error:
                print(f"error: {error}", flush=True)
            else:
                print("ok", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="a,b,c", help="node names, comma-separated")
    parser.add_argument("--forward", action="store_true", help="followers serve unary calls")
    args = parser.parse_args()
    asyncio.run(_serve(args.nodes.split(","), args.forward))


if __name__ == "__main__":
    main()
