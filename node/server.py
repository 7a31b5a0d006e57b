"""The Chat gRPC service: validates a request before anything reaches the log, turns it into
a command (with the timestamp, salt and hash made here), proposes it through the
driver, and maps every outcome to a gRPC status a person can read.

A follower forwards a unary write to the leader's peer port (mutual TLS, through the
supervisor's link proxies); a node that knows no leader answers UNAVAILABLE ("no majority
reachable"). The leader's client address travels in trailing metadata. The service is served
on both ports; the metadata of a forwarded call (FORWARDED_KEY, CLIENT_PEER_KEY) is honoured
only from a caller whose certificate names a current member, which only the peer port asks for.
The state digest of Status is for member and tool certificates too (the peer port).

Imports the driver, the chat layer, config and protos; nothing of the supervisor or client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc

from node.chat import commands as cmds
from node.chat import validation
from node.chat.errors import ChatError
from node.chat.passwords import SALT_BYTES, PasswordHash, hash_password, verify_password
from node.chat.replies import ApplyResult, ChatMessage
from node.chat.state import QUEUE_PAGE, ChatState
from node.config import TOOL_NAME, ClusterConfig, NodeAddress, certificate_name
from node.driver import NoQuorumError, OutcomeUnknownError, RaftDriver
from node.logclock import LogClock
from node.login_limiter import LoginLimiter, ceil_s, peer_host
from node.loop_lag import LoopLag
from node.peers import PeerDirectory
from node.raft.errors import NotLeaderError
from node.raft.types import NodeId, Role
from node.seams import ThreadExecutor
from node.transport import (
    certificate_names,
    certified_member,
    peer_channel,
    presents_cluster_key,
)
from protos import chat_pb2, chat_pb2_grpc
from protos.vocabulary import (
    CLIENT_PEER_KEY,
    CLUSTER_KEY_KEY,
    FORWARDED_KEY,
    LEADER_ADDRESS_KEY,
    LEADER_ID_KEY,
    REASON_KEY,
    RETRY_AFTER_KEY,
    Reason,
    metadata_value,
    reason_of,
)

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

logger = logging.getLogger(__name__)

TICK_IDLE_S = 1.0  # the leader proposes a Tick once log time has stood still this long
SUBSCRIBER_BUFFER = 1024  # messages a Subscribe stream may hold unsent
MAX_STREAMS_PER_SESSION = 4
DEFAULT_TIMEOUT_S = 10.0
DEADLINE_MARGIN_S = 0.05  # answer a little before the client gives up

_NO_SALT = b"\0" * SALT_BYTES  # for the hash an unknown user's login costs
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


ROLE_TO_PB: dict[Role, chat_pb2.Role.ValueType] = {
    Role.FOLLOWER: chat_pb2.FOLLOWER,
    Role.PRE_CANDIDATE: chat_pb2.PRE_CANDIDATE,
    Role.CANDIDATE: chat_pb2.CANDIDATE,
    Role.LEADER: chat_pb2.LEADER,
}


def _session_key(token: str) -> str:
    """The hash that stands for a session token everywhere past the request: the token itself
    is never proposed, stored or kept (issue 11)."""
    return cmds.session_of(validation.validate_token(token))


def _message_pb(m: ChatMessage) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(
        id=m.id, sender=m.sender, recipient=m.recipient, text=m.text, timestamp_ms=m.timestamp_ms
    )


class _Abort(Exception):
    """Raised inside a handler to end the call with `code` and `details`."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        leader: NodeId | None = None,
        reason: Reason | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.leader = leader
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Subscriber:
    """One Subscribe stream. Its buffer is bounded: a consumer that falls SUBSCRIBER_BUFFER
    messages behind is ended with RESOURCE_EXHAUSTED (reason slow-consumer) and resumes from
    its last acked id, as etcd ends slow watchers."""

    username: str
    session: str  # the hash of the token it was opened with
    queue: asyncio.Queue[ChatMessage | _Abort] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_BUFFER + 1)
    )
    last: int = 0  # the last message id this stream delivered
    ended: bool = False

    def push(self, item: ChatMessage | _Abort) -> None:
        if self.ended:
            return
        if isinstance(item, _Abort):
            self.end(item)
            return
        if self.queue.qsize() >= SUBSCRIBER_BUFFER:
            self.end(
                _Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this stream fell {SUBSCRIBER_BUFFER} messages behind; resubscribe after "
                    f"message {self.last} (the last one it delivered), or your last acked one",
                    reason=Reason.SLOW_CONSUMER,
                )
            )
            return
        self.queue.put_nowait(item)

    def end(self, reason: _Abort) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(reason)
        self.ended = True


class ChatService(chat_pb2_grpc.ChatServicer):
    def __init__(
        self,
        *,
        address: NodeAddress,
        driver: RaftDriver[ApplyResult],
        state: ChatState,
        config: ClusterConfig,
        peers: PeerDirectory,
        peer_credentials: grpc.ChannelCredentials | None,
        cluster_key: bytes,
        loop_lag: LoopLag | None = None,
    ) -> None:
        self._address = address  # where this node serves
        self._loop_lag = loop_lag or LoopLag()  # not started: reports zeros
        self._driver = driver
        self._peer_credentials = peer_credentials  # None: `tls: plaintext`
        self._cluster_key = cluster_key  # what a member forwarding under plaintext presents
        self._state = state  # read only here: every change goes through the log
        self._config = config
        self._peers = peers  # where the leader is (for forwarding, and to tell clients)
        self._channels: dict[NodeId, tuple[grpc.aio.Channel, str]] = {}  # and its address
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._log_clock = LogClock(driver.clock)
        self._logins = LoginLimiter()  # the leader's memory of failed logins
        self._hash_pool = ThreadExecutor(1, f"{driver.id}-scrypt")
        self._log_clock.observe(state.log_time_ms)
        self._tasks: list[asyncio.Task[None]] = []
        driver.add_apply_listener(self._on_apply)
        driver.add_leadership_listener(self._on_leadership_lost)

    @property
    def _limits(self) -> Any:
        return self._config.chat

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="log-time-ticks"))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._hash_pool.shutdown()
        self._end_all(_Abort(grpc.StatusCode.UNAVAILABLE, "the node is shutting down"))
        for ch, _ in self._channels.values():
            await ch.close(grace=None)

    # ------------------------------------------------------------------ plumbing

    def _client_address(self, node: NodeId | None) -> str:
        if node is None:
            return ""
        if node == self._driver.id:
            return self._address.address
        return self._peers.client_address(node) or ""

    async def _abort(self, context: Context, exc: _Abort) -> NoReturn:
        leader = exc.leader if exc.leader is not None else self._driver.leader
        metadata: list[tuple[str, str]] = []
        if leader is not None and leader != self._driver.id:
            metadata += [
                (LEADER_ADDRESS_KEY, self._client_address(leader)),
                (LEADER_ID_KEY, leader),
            ]
        if exc.reason is not None:
            metadata.append((REASON_KEY, exc.reason.value))
        if exc.retry_after_s is not None:
            metadata.append((RETRY_AFTER_KEY, str(exc.retry_after_s)))
        if metadata:
            context.set_trailing_metadata(tuple(metadata))
        await context.abort(exc.code, exc.details)
        raise AssertionError("unreachable")

    @staticmethod
    def _timeout(context: Context) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return DEFAULT_TIMEOUT_S
        return max(min(remaining - DEADLINE_MARGIN_S, 60.0), 0.001)

    @staticmethod
    def _chat_error(err: ChatError) -> _Abort:
        reason = Reason(err.reason.value) if err.reason is not None else None
        return _Abort(grpc.StatusCode[err.code.name], err.message, reason=reason)

    def _unavailable(self, exc: Exception) -> _Abort:
        if isinstance(exc, NoQuorumError):
            return _Abort(
                grpc.StatusCode.UNAVAILABLE,
                f"no majority reachable (node {self._driver.id})",
                reason=Reason.NO_MAJORITY,
            )
        if isinstance(exc, OutcomeUnknownError):
            return _Abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._driver.id}: {exc}; retry with the same request id",
                reason=Reason.OUTCOME_UNKNOWN,
            )
        if isinstance(exc, NotLeaderError):
            leader = NodeId(exc.leader_hint) if exc.leader_hint else None
            return _Abort(
                grpc.StatusCode.UNAVAILABLE,
                f"not the leader: {self._driver.id} (leader: {leader or 'unknown'})",
                leader,
                Reason.NOT_LEADER,
            )
        raise exc

    async def _call(
        self,
        context: Context,
        method: str,
        request: Any,
        local: Callable[[], Awaitable[Resp]],
    ) -> Resp:
        """Run `local` on the leader; on a follower forward the call to the leader. A node
        that knows no leader waits up to an election timeout for one before it answers
        "no majority reachable" (it may have just started, or just lost its leader)."""
        try:
            try:
                try:
                    return await local()
                except NoQuorumError:
                    wait_s = min(self._driver.election_timeout_s, self._timeout(context))
                    if not await self._driver.wait_for_leader(wait_s):
                        raise
                    return await local()
            except NotLeaderError as exc:
                forwarded = self._from_member(context) and (
                    metadata_value(context.invocation_metadata(), FORWARDED_KEY) is not None
                )
                if exc.leader_hint is None or forwarded:
                    raise
                result: Resp = await self._forward(
                    NodeId(exc.leader_hint), method, request, context
                )
                return result
            except ChatError as err:
                raise self._chat_error(err) from None
            except (NoQuorumError, OutcomeUnknownError) as exc:
                raise self._unavailable(exc) from None
        except NotLeaderError as exc:
            await self._abort(context, self._unavailable(exc))
        except _Abort as exc:
            await self._abort(context, exc)

    async def _forward(self, leader: NodeId, method: str, request: Any, context: Context) -> Any:
        address = self._peers.peer_address(leader)
        if address is None:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, f"no address for leader {leader}", leader)
        channel, dialled = self._channels.get(leader, (None, ""))
        if channel is None or dialled != address:
            if channel is not None:
                self._tasks.append(asyncio.create_task(channel.close(grace=None)))
            channel = peer_channel(address, leader, self._config.cluster, self._peer_credentials)
            self._channels[leader] = (channel, address)
        stub = chat_pb2_grpc.ChatStub(channel)
        try:
            return await getattr(stub, method)(
                request,
                timeout=self._timeout(context),
                metadata=(
                    (FORWARDED_KEY, "1"),
                    (CLIENT_PEER_KEY, self._client_host(context)),
                    (CLUSTER_KEY_KEY, self._cluster_key.decode()),
                ),
            )
        except grpc.aio.AioRpcError as err:
            details = err.details() or err.code().name
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = f"forwarded to leader {leader}: {details}"
            raise _Abort(err.code(), details, leader, reason_of(err.trailing_metadata())) from None

    def _request_id(self, pb: chat_pb2.RequestId) -> cmds.RequestId:
        return validation.validate_request_id(pb.client_id, pb.seq, pb.first_outstanding)

    async def _propose(self, cmd: cmds.Command, context: Context) -> Any:
        result = await self._driver.propose(cmds.encode(cmd), self._timeout(context))
        return result.unwrap()

    def _from_member(self, context: Context) -> bool:
        """Whether the caller may speak for a client it forwards: a current member, by its
        certificate (only the peer port asks for one); under `tls: plaintext`, a caller that
        presents the cluster key, as Raft's callers do (a client could otherwise name any
        host for itself and dodge the failed-login limit)."""
        if self._peer_credentials is None:
            return presents_cluster_key(context.invocation_metadata(), self._cluster_key)
        members = self._driver.core.conf.members()
        return certified_member(context, self._config.cluster, members) is not None

    def _client_host(self, context: Context) -> str:
        """The client's host; for a call a member forwarded, the host it named."""
        if self._from_member(context):
            named = metadata_value(context.invocation_metadata(), CLIENT_PEER_KEY)
            if named is not None:
                return named
        return peer_host(context.peer())

    def _may_read_digest(self, context: Context) -> bool:
        """The state digest is for members and tools, by certificate (the peer port)."""
        if self._peer_credentials is None:
            return True
        tool = certificate_name(TOOL_NAME, self._config.cluster)
        return tool in certificate_names(context) or self._from_member(context)

    async def _require_session(self, rid: cmds.RequestId, session: str, context: Context) -> None:
        """Refuse before the log (issue 11): a write that needs a session is proposed only if
        this leader's state, caught up with everything committed, knows the client and the
        session (an expired client hears so, not "no such session"). A retry that the dedup
        table already answered passes: the log gives its first reply."""
        wait_s = min(self._timeout(context), self._driver.election_timeout_s)
        await self._driver.wait_caught_up(wait_s)
        self._state.admit(rid, session)

    def _times(self) -> tuple[int, int]:
        """(this node's wall clock, the log time it stamps) for a command it proposes."""
        return _now_ms(), self._log_clock.stamp()

    async def _scrypt(self, context: Context, fn: Callable[..., Resp], *args: Any) -> Resp:
        """One hash at a time, in its own thread: at OWASP's cost each takes 128 MiB (TRAPS),
        and a burst of logins must neither multiply that nor stall the event loop. A call
        whose caller gave up while it waited for its turn is not hashed at all: its retry is
        already queued, and hashing both would let a burst feed on itself."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def guarded() -> Resp:
            if deadline is not None and time.monotonic() >= deadline:
                raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "gave up waiting for its turn")
            return fn(*args)

        return await self._hash_pool.run(guarded)

    async def _check_password(
        self, context: Context, password: str, stored: PasswordHash | None
    ) -> bool:
        """Whether `password` matches. An unknown account costs one hash at the configured
        cost too, as a real account's check does, so timing does not tell which exist."""
        if stored is None:
            await self._scrypt(context, hash_password, password, self._config.scrypt, _NO_SALT)
            return False
        return await self._scrypt(context, verify_password, password, stored)

    async def _leader_read(self, context: Context) -> None:
        await self._driver.read_barrier(self._timeout(context))

    # ------------------------------------------------------------------ writes

    async def RegisterClient(
        self, request: chat_pb2.RegisterClientRequest, context: Context
    ) -> chat_pb2.RegisterClientReply:
        async def local() -> chat_pb2.RegisterClientReply:
            session = ""
            if request.token:
                session = _session_key(request.token)
                wait_s = min(self._timeout(context), self._driver.election_timeout_s)
                await self._driver.wait_caught_up(wait_s)
                self._state.authenticate(session)  # refused before the log, not at apply
            ts, lt = self._times()
            cmd = cmds.RegisterClient(timestamp_ms=ts, log_time_ms=lt, session=session)
            reply = await self._propose(cmd, context)
            return chat_pb2.RegisterClientReply(client_id=reply.client_id)

        return await self._call(context, "RegisterClient", request, local)

    async def _tick_loop(self) -> None:
        """Thesis §6.3 expiry needs a clock that moves: on a quiet cluster the leader proposes
        a Tick once log time has stood still for TICK_IDLE_S, while anything could expire.
        (Checking reads against the leader's own clock would make replicas disagree on which
        sessions exist; a Tick keeps expiry a function of the log.)"""
        while True:
            await self._driver.clock.sleep(TICK_IDLE_S / 2)
            state = self._state
            if not self._driver.is_leader or self._log_clock.idle_s() < TICK_IDLE_S:
                continue
            if state.session_count == 0 and state.client_count == 0:
                continue
            ts, lt = self._times()
            with contextlib.suppress(NotLeaderError, NoQuorumError, OutcomeUnknownError):
                await self._driver.propose(
                    cmds.encode(cmds.Tick(timestamp_ms=ts, log_time_ms=lt)), TICK_IDLE_S * 4
                )

    async def Register(
        self, request: chat_pb2.RegisterRequest, context: Context
    ) -> chat_pb2.RegisterReply:
        async def local() -> chat_pb2.RegisterReply:
            rid = self._request_id(request.request)
            ts, lt = self._times()
            name = validation.validate_username(request.username, self._limits)
            password = validation.validate_password(request.password)
            self._driver.require_leader()
            salt = os.urandom(SALT_BYTES)
            pw_hash = await self._scrypt(
                context, hash_password, password, self._config.scrypt, salt
            )
            await self._propose(
                cmds.Register(
                    timestamp_ms=ts,
                    log_time_ms=lt,
                    request=rid,
                    username=name,
                    password_hash=pw_hash,
                ),
                context,
            )
            return chat_pb2.RegisterReply()

        return await self._call(context, "Register", request, local)

    async def Login(self, request: chat_pb2.LoginRequest, context: Context) -> chat_pb2.LoginReply:
        async def local() -> chat_pb2.LoginReply:
            rid = self._request_id(request.request)
            ts, lt = self._times()
            name = validation.validate_username(request.username, self._limits)
            validation.validate_password(request.password)
            token = validation.validate_new_token(request.token)
            await self._leader_read(context)
            self._state.check_client(rid)
            # A retry is answered from the dedup table, but only for the right password too:
            # a replayed request id alone must not hand out the session (issue 11).
            user, host = name.lower(), self._client_host(context)
            wait_s = self._logins.retry_after(user, host, self._driver.clock.monotonic())
            if wait_s > 0:
                raise _Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many failed logins as {name} from {host}: try again in "
                    f"{ceil_s(wait_s)} s",
                    reason=Reason.TOO_MANY_LOGINS,
                    retry_after_s=ceil_s(wait_s),
                )
            stored = self._state.account_hash(name)
            ok = await self._check_password(context, request.password, stored)
            if not ok or stored is None:
                self._logins.failed(user, host, self._driver.clock.monotonic())
                raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "wrong username or password")
            self._logins.succeeded(user, host)
            cmd = cmds.Login(
                timestamp_ms=ts,
                log_time_ms=lt,
                request=rid,
                username=name,
                session=cmds.session_of(token),
                verified_digest=stored.digest,
            )
            reply = await self._propose(cmd, context)
            return chat_pb2.LoginReply(username=reply.username)

        return await self._call(context, "Login", request, local)

    async def Logout(
        self, request: chat_pb2.LogoutRequest, context: Context
    ) -> chat_pb2.LogoutReply:
        async def local() -> chat_pb2.LogoutReply:
            rid = self._request_id(request.request)
            ts, lt = self._times()
            session = _session_key(request.token)
            await self._require_session(rid, session, context)
            await self._propose(
                cmds.Logout(timestamp_ms=ts, log_time_ms=lt, request=rid, session=session), context
            )
            return chat_pb2.LogoutReply()

        return await self._call(context, "Logout", request, local)

    async def Send(self, request: chat_pb2.SendRequest, context: Context) -> chat_pb2.SendReply:
        async def local() -> chat_pb2.SendReply:
            rid = self._request_id(request.request)
            ts, lt = self._times()
            session = _session_key(request.token)
            recipient = validation.validate_username(request.recipient, self._limits)
            text = validation.validate_text(request.text, self._limits)
            await self._require_session(rid, session, context)
            cmd = cmds.Send(
                timestamp_ms=ts,
                log_time_ms=lt,
                request=rid,
                session=session,
                recipient=recipient,
                text=text,
            )
            reply = await self._propose(cmd, context)
            return chat_pb2.SendReply(message_id=reply.message_id, timestamp_ms=reply.timestamp_ms)

        return await self._call(context, "Send", request, local)

    async def Ack(self, request: chat_pb2.AckRequest, context: Context) -> chat_pb2.AckReply:
        async def local() -> chat_pb2.AckReply:
            rid = self._request_id(request.request)
            ts, lt = self._times()
            session = _session_key(request.token)
            up_to = validation.validate_message_id(request.up_to_id)
            await self._require_session(rid, session, context)
            await self._propose(
                cmds.Ack(
                    timestamp_ms=ts, log_time_ms=lt, request=rid, session=session, up_to_id=up_to
                ),
                context,
            )
            return chat_pb2.AckReply()

        return await self._call(context, "Ack", request, local)

    async def DeleteAccount(
        self, request: chat_pb2.DeleteAccountRequest, context: Context
    ) -> chat_pb2.DeleteAccountReply:
        async def local() -> chat_pb2.DeleteAccountReply:
            rid = self._request_id(request.request)
            ts, lt = self._times()
            session = _session_key(request.token)
            validation.validate_password(request.password)
            await self._leader_read(context)
            self._state.check_client(rid)
            if not self._state.answered(rid):  # a retry skips the checks: first reply wins
                user = self._state.authenticate(session)
                stored = self._state.account_hash(user)
                ok = await self._check_password(context, request.password, stored)
                if not ok:
                    raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "wrong password")
            await self._propose(
                cmds.DeleteAccount(timestamp_ms=ts, log_time_ms=lt, request=rid, session=session),
                context,
            )
            return chat_pb2.DeleteAccountReply()

        return await self._call(context, "DeleteAccount", request, local)

    # ------------------------------------------------------------------ reads

    async def ListAccounts(
        self, request: chat_pb2.ListAccountsRequest, context: Context
    ) -> chat_pb2.ListAccountsReply:
        async def local() -> chat_pb2.ListAccountsReply:
            session = _session_key(request.token)
            pattern = validation.validate_pattern(request.pattern)
            size = validation.validate_page_size(request.page_size, self._limits)
            await self._leader_read(context)
            self._state.authenticate(session)
            names, next_token = self._state.list_accounts(pattern, request.page_token, size)
            return chat_pb2.ListAccountsReply(usernames=names, next_page_token=next_token)

        return await self._call(context, "ListAccounts", request, local)

    async def History(
        self, request: chat_pb2.HistoryRequest, context: Context
    ) -> chat_pb2.HistoryReply:
        async def local() -> chat_pb2.HistoryReply:
            session = _session_key(request.token)
            other = validation.validate_username(request.other, self._limits)
            limit = validation.validate_history_limit(request.limit, self._limits)
            await self._leader_read(context)
            user = self._state.authenticate(session)
            messages = self._state.history(user, other, limit)
            return chat_pb2.HistoryReply(messages=[_message_pb(m) for m in messages])

        return await self._call(context, "History", request, local)

    async def Status(
        self, request: chat_pb2.StatusRequest, context: Context
    ) -> chat_pb2.StatusReply:
        if not request.with_digest:
            s = self._driver.status()
        elif self._may_read_digest(context):
            s = await self._driver.status_with_digest()
        else:
            peer_port = self._address.peer_port
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the state digest is served on the peer port ({peer_port}) to a member or "
                "tool certificate of the cluster",
            )
            raise AssertionError("unreachable")
        lag_p99_ms, lag_max_ms = self._loop_lag.figures_ms()
        return chat_pb2.StatusReply(
            node_id=s.node_id,
            role=ROLE_TO_PB[s.role],
            term=s.term,
            leader_id=s.leader or "",
            leader_address=self._client_address(s.leader),
            commit_index=s.commit_index,
            applied_index=s.applied_index,
            state_digest=s.digest,
            snapshot_index=s.snapshot_index,
            last_index=s.last_index,
            members=self._members_pb(),
            last_contact_ms=s.last_contact_ms,
            leader_changes=s.leader_changes,
            loop_lag_p99_ms=lag_p99_ms,
            loop_lag_max_ms=lag_max_ms,
        )

    def _members_pb(self) -> list[chat_pb2.ClusterMember]:
        """The committed membership with client addresses, for clients to fail over along."""
        conf = self._driver.committed_conf()
        return [
            chat_pb2.ClusterMember(
                node_id=node, address=self._client_address(node), voter=node in conf.voters
            )
            for node in conf.members()
        ]

    # ------------------------------------------------------------------ delivery

    async def Subscribe(
        self, request: chat_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[chat_pb2.ChatMessage]:
        sub: _Subscriber | None = None
        try:
            try:
                session = _session_key(request.token)
                await self._driver.read_barrier(DEFAULT_TIMEOUT_S)
                user = self._state.authenticate(session)
            except ChatError as err:
                raise self._chat_error(err) from None
            except (NoQuorumError, NotLeaderError) as exc:
                raise self._unavailable(exc) from None
            # Read the queue and register for live delivery at one applied index: no await
            # in between, so nothing applied meanwhile can be missed.
            streams = self._subscribers.setdefault(user.lower(), set())
            if sum(s.session == session for s in streams) >= MAX_STREAMS_PER_SESSION:
                raise _Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a session may have at most {MAX_STREAMS_PER_SESSION} open streams",
                )
            # The first page of the queue and the applied index in one read transaction; the
            # rest page by page, each page read whole before it is yielded (no read
            # transaction spans an await). A message applied meanwhile is pushed to `sub` as
            # well: it goes out once, in id order (`sub.last`).
            backlog, _ = self._state.queue_at(user, request.after_id, QUEUE_PAGE)
            sub = _Subscriber(user.lower(), session, last=request.after_id)
            streams.add(sub)
            while backlog:
                for m in backlog:
                    sub.last = m.id
                    yield _message_pb(m)
                if len(backlog) < QUEUE_PAGE:
                    break
                try:
                    backlog = self._state.queue(user, sub.last, QUEUE_PAGE)
                except ChatError as err:  # the account was deleted meanwhile
                    raise self._chat_error(err) from None
            while True:
                item = await sub.queue.get()
                if isinstance(item, _Abort):
                    raise item
                if item.id > sub.last:
                    sub.last = item.id
                    yield _message_pb(item)
        except _Abort as exc:
            await self._abort(context, exc)
        finally:
            if sub is not None:
                open_streams = self._subscribers.get(sub.username)
                if open_streams is not None:
                    open_streams.discard(sub)
                    if not open_streams:  # one entry per user with a stream open, no more
                        del self._subscribers[sub.username]

    def _on_apply(self, result: ApplyResult) -> None:
        self._log_clock.observe(self._state.log_time_ms)
        if result.message is not None:
            for sub in self._subscribers.get(result.message.recipient.lower(), ()):
                sub.push(result.message)
        if result.ended_sessions:
            ended = set(result.ended_sessions)
            for subs in self._subscribers.values():
                for sub in subs:
                    if sub.session in ended:
                        sub.push(_Abort(grpc.StatusCode.UNAUTHENTICATED, "the session has ended"))

    def _on_leadership_lost(self) -> None:
        self._end_all(
            _Abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._driver.id} is no longer the leader: resubscribe from the last acked id",
            )
        )

    def _end_all(self, reason: _Abort) -> None:
        for subs in self._subscribers.values():
            for sub in subs:
                sub.push(reason)
