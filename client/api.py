"""ChatClient: the chat service as one client process sees it, riding out failover.

What it promises (DESIGN.md, "Chat semantics"):

- Every call has a deadline. A call that a node cannot serve (UNAVAILABLE, a dead connection,
  a deadline) is tried on the next node; the leader named in an answer's trailing metadata is
  tried first, and remembered. After a full round of nodes the client backs off (50 ms doubling
  to 1 s) and starts again. A pinned client (`pinned=True`, `--server`) only ever asks its node.
- Every write carries a request id: a client id the cluster's log assigned (RegisterClient,
  asked for before the first write; thesis §6.3), a sequence number (+1 per write) and the
  lowest sequence number still without an answer. Writes leave one at a time, in the order
  they were made (so a user's messages keep their order, and a logout never overtakes the send
  before it). A write whose outcome is unknown (deadline, lost connection, UNKNOWN, INTERNAL,
  UNAVAILABLE) is resent with the same id until some node answers it; the cluster applies it
  once (Raft thesis ch. 6). Only a definite refusal (INVALID_ARGUMENT, ALREADY_EXISTS,
  UNAUTHENTICATED, NOT_FOUND, RESOURCE_EXHAUSTED, PERMISSION_DENIED, ...) fails it. If the
  cluster forgot the client session (idle too long: "client-expired"), a write sent before
  fails with OutcomeUnknownError, never resent, and the client registers a new session.
- A caller waits for an answer at most `overall_timeout_s`, and less when every node has said
  for `no_majority_grace_s` that it cannot reach a majority: then it gets one `NoMajorityError`
  that says what each node answered ("no leader: a, b answer 'no majority reachable'; c
  unreachable"). For a write that error carries the still pending write: it was not reported
  failed, and it is still being resent.
- `subscribe()` is an async iterator of messages that survives failover: when the stream ends
  (the node lost leadership, died, or froze: a watchdog asks it for its Status while the stream
  is quiet) it resubscribes on the leader from the last acked id, and drops messages it has
  already handed out. Asking for the next message acknowledges the one before (cumulatively, in
  the background): a message is acked only once the consumer is done with it, so a crash
  between delivery and display loses nothing (it is delivered again).

Imports grpc, protos, node.config and client.*; nothing else from node (no node internals),
and no prompt_toolkit.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, NamedTuple, TypeVar

import grpc
import grpc.aio

from client.errors import (
    DEFINITE_CODES,
    AddressError,
    ChatClientError,
    ClientClosedError,
    ClientExpiredError,
    NoMajorityError,
    NotLoggedInError,
    OutcomeUnknownError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
    server_error,
)
from client.stub import ChatStub, open_channel
from node.config import ClusterConfig, ConfigError
from protos import chat_pb2
from protos.vocabulary import (
    LEADER_ADDRESS_KEY,
    LEADER_ID_KEY,
    Reason,
    metadata_value,
    new_session_token,
    reason_of,
    role_name,
)

logger = logging.getLogger(__name__)

R = TypeVar("R")

DEFAULT_CALL_TIMEOUT_S: Final = 2.0
DEFAULT_OVERALL_TIMEOUT_S: Final = 10.0
# Longer than an election (election_timeout_ms is [200, 400] by default), so that a cluster
# choosing a new leader is not mistaken for one that has no majority.
DEFAULT_NO_MAJORITY_GRACE_S: Final = 2.0
DEFAULT_WATCH_INTERVAL_S: Final = 2.0
FIRST_BACKOFF_S: Final = 0.05
MAX_BACKOFF_S: Final = 1.0


class ConnectionState(enum.Enum):
    """The connection as a UI shows it."""

    CONNECTING = "connecting"  # nothing asked yet
    OK = "ok"  # the last call was served
    FAILING_OVER = "failing over"  # looking for a node that serves
    NO_MAJORITY = "no majority"  # a whole round of nodes knew no leader
    CLOSED = "closed"


class NodeCondition(enum.Enum):
    """What a node answered last."""

    SERVING = "serving"
    NOT_LEADER = "not the leader"
    NO_MAJORITY = "no majority reachable"
    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed out"
    BROKEN = "connection broken"


# Conditions of a node that gives no way to a leader.
_LEADERLESS = frozenset(
    {
        NodeCondition.NO_MAJORITY,
        NodeCondition.UNREACHABLE,
        NodeCondition.TIMED_OUT,
        NodeCondition.BROKEN,
    }
)


# Conditions that are a node's own words (its status details), quoted in summaries.
_ANSWERS = frozenset({NodeCondition.NOT_LEADER, NodeCondition.NO_MAJORITY})


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message. Ids increase in the order the cluster applied the sends."""

    id: int
    sender: str
    recipient: str
    text: str
    timestamp_ms: int  # the accepting node's clock, carried in the log

    @classmethod
    def from_proto(cls, message: chat_pb2.ChatMessage) -> Message:
        return cls(
            message.id, message.sender, message.recipient, message.text, message.timestamp_ms
        )


class SendResult(NamedTuple):
    message_id: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node's own Status answer."""

    node_id: str
    role: str
    term: int
    leader_id: str
    leader_address: str
    commit_index: int
    applied_index: int
    state_digest: str
    snapshot_index: int
    last_index: int

    @classmethod
    def from_proto(cls, reply: chat_pb2.StatusReply) -> NodeStatus:
        return cls(
            reply.node_id,
            role_name(reply.role),
            reply.term,
            reply.leader_id,
            reply.leader_address,
            reply.commit_index,
            reply.applied_index,
            reply.state_digest,
            reply.snapshot_index,
            reply.last_index,
        )


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the client knows it, for a UI."""

    name: str  # the node id when known, else its address
    address: str
    condition: NodeCondition | None  # None: not asked yet
    detail: str  # the last answer's text
    is_leader: bool
    is_current: bool


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A node and its Status, or why there is none."""

    node: NodeView
    status: NodeStatus | None
    error: str | None


def parse_address(text: str) -> str:
    """`host:port` (or `[v6]:port`), checked; AddressError says what is wrong."""
    address = text.strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port:
        raise AddressError(f"{text!r} is not host:port")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise AddressError(f"{text!r}: write an IPv6 host in brackets, as [::1]:8001")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise AddressError(f"{text!r}: the port must be a number from 1 to 65535")
    return address


def cluster_ca(config: ClusterConfig) -> bytes | None:
    """The PEM of the CA a cluster's clients trust (its `tls` directory's ca.pem, by default
    data_dir/tls/ca.pem); None with `tls: plaintext`. ConfigError if it cannot be read."""
    files = config.tls
    if files is None:
        return None
    try:
        return files.ca.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{config.path}: tls: cannot read the cluster's CA {files.ca}: "
            f"{error.strerror or error} (`python -m supervisor up` makes it)"
        ) from None


def parse_servers(text: str) -> list[str]:
    """A comma-separated list of `host:port`, as `--servers` takes it."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise AddressError("no server addresses given (expected host:port,host:port,...)")
    return [parse_address(part) for part in parts]


class _Node:
    """One node: its channel, and what it answered last."""

    __slots__ = ("address", "channel", "condition", "detail", "hint", "name", "stub")

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.channel: grpc.aio.Channel | None = None
        self.stub: ChatStub | None = None
        self.condition: NodeCondition | None = None
        self.detail = ""
        self.hint: _Node | None = None  # the leader it named in its last answer

    def __repr__(self) -> str:
        return f"_Node({self.name!r}, {self.address!r})"

    def label(self) -> str:
        return self.name if self.name == self.address else f"{self.name} at {self.address}"


class _Backoff:
    """50 ms doubling to a second, with jitter so that clients do not retry in step."""

    def __init__(self) -> None:
        self._next_s = FIRST_BACKOFF_S

    def next_s(self) -> float:
        delay = self._next_s * random.uniform(0.75, 1.25)
        self._next_s = min(MAX_BACKOFF_S, self._next_s * 2)
        return min(delay, MAX_BACKOFF_S)

    def reset(self) -> None:
        self._next_s = FIRST_BACKOFF_S


class _Round:
    """The nodes one attempt goes through before backing off: the known leader first, then
    every other node once. A leader named in an answer is tried next, unless already tried."""

    def __init__(self, order: Sequence[_Node]) -> None:
        self._queue = deque(order)
        self.tried: list[_Node] = []

    def next_node(self) -> _Node | None:
        while self._queue:
            node = self._queue.popleft()
            if node not in self.tried:
                self.tried.append(node)
                return node
        return None

    def redirect(self, node: _Node | None) -> None:
        if node is not None and node not in self.tried:
            self._queue.appendleft(node)


class PendingWrite(Generic[R]):
    """A write on its way: resent with the same request id until some node answers it.

    Await it (no time limit) or `wait(timeout_s)` for its result. It fails only with a
    definite `ServerError`, or `ClientClosedError` if the client closes first (outcome unknown).
    """

    def __init__(self, client: ChatClient, seq: int, what: str, session: str | None) -> None:
        self._client = client
        self.seq = seq
        self.session = session  # the token whose writes it is; None for Register, Login
        self.what = what  # "send to bob", for messages
        self.attempts = 0  # sent under the current client id
        self._future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # An error nobody waits for must not be reported as "never retrieved".
        self._future.add_done_callback(_retrieve)

    @property
    def request_id(self) -> tuple[int | None, int]:
        """(client id, sequence number): the same on every attempt (client id None until the
        cluster assigned one)."""
        return (self._client._client_ids.get(self.session or ""), self.seq)

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> R:
        """The answer; the ServerError if refused; InvalidStateError if still pending."""
        return self._future.result()

    def add_done_callback(self, callback: Callable[[PendingWrite[R]], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))

    async def wait(self, timeout_s: float | None = None) -> R:
        """The answer, waiting at most timeout_s (default: the client's overall timeout).

        UnavailableError / NoMajorityError (with `pending` = self) if there is none by then;
        the write is still pending and keeps being resent."""
        return await self._client._wait_answer(self, timeout_s)

    async def wait_done(self, timeout_s: float) -> bool:
        """Whether the write was answered within timeout_s (never raises for its outcome)."""
        await asyncio.wait({self._future}, timeout=timeout_s)
        return self._future.done()

    def __await__(self) -> Generator[Any, None, R]:
        return asyncio.shield(self._future).__await__()

    def _settle(self, result: R) -> None:
        if not self._future.done():
            self._future.set_result(result)

    def _fail(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


Invoke = Callable[[ChatStub, float], Awaitable[R]]
WriteInvoke = Callable[[ChatStub, chat_pb2.RequestId, float], Awaitable[R]]


class ChatClient:
    """A chat client for one cluster. Use it from one asyncio event loop; `close()` it (or use
    `async with`).

    servers: a ClusterConfig or a mapping of node id to "host:port" (ids name the nodes), or a
        list of "host:port" (addresses name them until a node tells its id).
    pinned: talk to servers[0] only, never fail over (what a client on a minority sees).
    call_timeout_s: the deadline of each call to one node.
    overall_timeout_s: how long a caller waits for an answer, across nodes and retries.
    no_majority_grace_s: a caller stops waiting once every node has said this long that it
        knows no leader (or, pinned, that its node cannot serve).
    watch_interval_s: how often a quiet subscription asks its node whether it is alive.
    ca: the PEM of the CA the nodes' certificates are checked against; given a ClusterConfig
        and no ca, the CA its `tls` names (data_dir/tls/ca.pem by default, none with `tls:
        plaintext`). Addresses without a ca: plaintext (fakes and `tls: plaintext` clusters).
    """

    def __init__(
        self,
        servers: ClusterConfig | Mapping[str, str] | Sequence[str],
        *,
        pinned: bool = False,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        overall_timeout_s: float = DEFAULT_OVERALL_TIMEOUT_S,
        no_majority_grace_s: float = DEFAULT_NO_MAJORITY_GRACE_S,
        watch_interval_s: float = DEFAULT_WATCH_INTERVAL_S,
        ca: bytes | None = None,
    ) -> None:
        if isinstance(servers, ClusterConfig):
            nodes = [_Node(node.id, node.address) for node in servers.nodes]
            if ca is None:
                ca = cluster_ca(servers)
        elif isinstance(servers, Mapping):
            nodes = [_Node(name, parse_address(address)) for name, address in servers.items()]
        else:
            if isinstance(servers, str):
                raise AddressError("give a list of addresses, or parse_servers(text)")
            nodes = [_Node(address, address) for address in map(parse_address, servers)]
        if not nodes:
            raise AddressError("no servers given")
        if pinned and len(nodes) != 1:
            raise AddressError(f"a pinned client talks to one server, got {len(nodes)}")
        for name, value in (
            ("call_timeout_s", call_timeout_s),
            ("overall_timeout_s", overall_timeout_s),
            ("watch_interval_s", watch_interval_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._ca = ca  # None: plaintext
        self._nodes = nodes  # candidates, in configured order; leaders we learn are appended
        self._pinned = pinned
        self._call_timeout_s = call_timeout_s
        self._overall_timeout_s = overall_timeout_s
        self._no_majority_grace_s = no_majority_grace_s
        self._watch_interval_s = watch_interval_s
        self._leader: _Node | None = None  # pinned: only shown, never used for routing
        self._current: _Node | None = None  # the node asked last
        self._state = ConnectionState.CONNECTING
        self._listeners: list[Callable[[ConnectionState], None]] = []
        # Since when every round ended without a way to a leader; None while one is known.
        self._hopeless_since: float | None = None
        self._last_round_end = float("-inf")
        self._round_waiters: list[asyncio.Future[None]] = []

        # Client sessions the log assigned (thesis §6.3): "" -> the one for Register and Login,
        # token -> the one bound to that chat session (another user's writes cannot use it).
        self._client_ids: dict[str, int] = {}
        self._next_seq = 1
        self._unanswered: set[int] = set()  # seqs of writes without an answer
        self._pending: dict[int, PendingWrite[Any]] = {}
        self._write_lock = asyncio.Lock()  # one write in flight, in order
        self._tasks: set[asyncio.Task[None]] = set()
        self._leader_probe: asyncio.Task[None] | None = None

        self._token: str | None = None
        self._username: str | None = None
        self._handled_through: dict[str, int] = {}  # username -> last message id handled
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    # --- state for a UI ------------------------------------------------------------------

    @property
    def username(self) -> str | None:
        """The logged-in user (as registered), or None."""
        return self._username

    @property
    def logged_in(self) -> bool:
        return self._token is not None

    @property
    def pinned(self) -> bool:
        return self._pinned

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def current_node(self) -> str | None:
        """The node asked last."""
        return None if self._current is None else self._current.name

    @property
    def leader(self) -> str | None:
        """The leader as far as the client knows."""
        return None if self._leader is None else self._leader.name

    @property
    def nodes(self) -> list[NodeView]:
        return [self._view(node) for node in self._nodes]

    @property
    def pending_writes(self) -> list[PendingWrite[Any]]:
        """Writes without an answer yet, oldest first."""
        return [self._pending[seq] for seq in sorted(self._pending)]

    def add_state_listener(self, listener: Callable[[ConnectionState], None]) -> None:
        """Call listener(state) whenever the connection state changes."""
        self._listeners.append(listener)

    def _view(self, node: _Node) -> NodeView:
        return NodeView(
            node.name,
            node.address,
            node.condition,
            node.detail,
            node is self._leader,
            node is self._current,
        )

    # --- the chat calls ------------------------------------------------------------------

    async def register(self, username: str, password: str) -> None:
        """Create an account (it does not log in)."""

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> None:
            request = chat_pb2.RegisterRequest(request=rid, username=username, password=password)
            await stub.Register(request, timeout=timeout)

        await self._submit(f"register {username}", invoke).wait()

    async def login(self, username: str, password: str) -> str:
        """Log in with a session token drawn here (the cluster keeps only its hash); returns
        the username as registered. Every retry sends the same token with the same request
        id, so a Login retried through a new leader opens the one session."""
        token = new_session_token()

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> str:
            request = chat_pb2.LoginRequest(
                request=rid, username=username, password=password, token=token
            )
            reply = await stub.Login(request, timeout=timeout)
            return self._start_session(token, reply.username or username)

        return await self._submit(f"login as {username}", invoke).wait()

    async def logout(self) -> None:
        """End the session (here and on the cluster)."""
        token = self._require_token()

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> None:
            await stub.Logout(chat_pb2.LogoutRequest(request=rid, token=token), timeout=timeout)
            self._end_session(token)

        await self._submit("logout", invoke, token=token).wait()

    async def delete_account(self, password: str) -> None:
        """Delete the logged-in account (password again); the session ends with it."""
        token = self._require_token()

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> None:
            request = chat_pb2.DeleteAccountRequest(request=rid, token=token, password=password)
            await stub.DeleteAccount(request, timeout=timeout)
            self._end_session(token)

        # Not token=token: UNAUTHENTICATED here may just mean a wrong password.
        await self._submit("delete account", invoke, session=token).wait()

    def start_send(self, recipient: str, text: str) -> PendingWrite[SendResult]:
        """Start sending; the PendingWrite resolves to (message id, timestamp) once committed."""
        token = self._require_token()

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> SendResult:
            request = chat_pb2.SendRequest(request=rid, token=token, recipient=recipient, text=text)
            reply = await stub.Send(request, timeout=timeout)
            return SendResult(reply.message_id, reply.timestamp_ms)

        return self._submit(f"send to {recipient}", invoke, token=token)

    async def send(self, recipient: str, text: str) -> SendResult:
        """Send and wait until the message is committed: (message id, timestamp_ms)."""
        return await self.start_send(recipient, text).wait()

    async def ack(self, up_to_id: int) -> None:
        """Acknowledge every queued message with an id up to up_to_id (cumulative)."""
        await self._submit_ack(self._require_token(), up_to_id).wait()

    def _submit_ack(self, token: str, up_to_id: int) -> PendingWrite[None]:
        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> None:
            request = chat_pb2.AckRequest(request=rid, token=token, up_to_id=up_to_id)
            await stub.Ack(request, timeout=timeout)

        return self._submit(f"ack up to {up_to_id}", invoke, token=token)

    async def list_accounts(self, pattern: str = "", *, limit: int | None = None) -> list[str]:
        """Usernames matching a shell-style wildcard (`al*`, `?ob`; empty means all), every
        page followed (at most `limit` names)."""
        token = self._require_token()
        names: list[str] = []
        page_token = ""
        while True:

            async def invoke(
                stub: ChatStub, timeout: float, page: str = page_token
            ) -> chat_pb2.ListAccountsReply:
                request = chat_pb2.ListAccountsRequest(
                    token=token, pattern=pattern, page_token=page
                )
                return await stub.ListAccounts(request, timeout=timeout)

            reply = await self._read("list accounts", invoke, token)
            names.extend(reply.usernames)
            if limit is not None and len(names) >= limit:
                return names[:limit]
            if not reply.next_page_token:
                return names
            page_token = reply.next_page_token

    async def history(self, other: str, limit: int = 0) -> list[Message]:
        """The most recent messages between you and `other`, oldest first (0: server default)."""
        token = self._require_token()

        async def invoke(stub: ChatStub, timeout: float) -> chat_pb2.HistoryReply:
            request = chat_pb2.HistoryRequest(token=token, other=other, limit=limit)
            return await stub.History(request, timeout=timeout)

        reply = await self._read(f"history with {other}", invoke, token)
        return [Message.from_proto(message) for message in reply.messages]

    def subscribe(self, after_id: int | None = None) -> Subscription:
        """Messages to the logged-in user: queued ones first, then live, across failovers.

        Starts after `after_id` (default: the last message this client handled for the user).
        """
        token = self._require_token()
        self._check_open()
        user = self._username or ""
        start = self._handled_through.get(user, 0) if after_id is None else after_id
        subscription = Subscription(self, token, user, start)
        self._subscriptions.add(subscription)
        return subscription

    async def status(self, address: str | None = None) -> NodeStatus:
        """One node's Status (a node name or host:port; default: the current node). No
        failover: UnavailableError if that node does not answer."""
        node, temporary = self._node_for(address)
        try:
            reply = await self._stub(node).Status(
                chat_pb2.StatusRequest(), timeout=self._call_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise UnavailableError(f"{node.label()}: {_describe_rpc_error(error)}") from None
        finally:
            if temporary and node.channel is not None:
                await node.channel.close()
        if not temporary:
            self._observe_status(node, reply)
        return NodeStatus.from_proto(reply)

    async def servers(self) -> list[ServerInfo]:
        """Every known node with its Status (asked all at once), or why it has none."""
        nodes = list(self._nodes)
        if self._leader is not None and self._leader not in nodes:
            nodes.append(self._leader)

        async def one(node: _Node) -> ServerInfo:
            try:
                status = await self.status(node.name)
            except UnavailableError as error:
                return ServerInfo(self._view(node), None, str(error))
            return ServerInfo(self._view(node), status, None)

        infos = await asyncio.gather(*(one(node) for node in nodes))
        # Views taken after every answer, so that they show what the answers taught.
        return [
            ServerInfo(self._view(node), i.status, i.error)
            for node, i in zip(nodes, infos, strict=True)
        ]

    async def flush(self, timeout_s: float | None = None) -> list[PendingWrite[Any]]:
        """Wait for the pending writes to be answered (as long as a call would); returns the
        ones still pending."""
        for pending in self.pending_writes:
            try:
                await pending.wait(timeout_s)
            except UnavailableError:
                break
            except ChatClientError:
                continue
        return self.pending_writes

    async def close(self) -> None:
        """Stop everything: subscriptions, pending writes (their outcome stays unknown: they
        are logged), channels. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.aclose(ack=False)
        still = self.pending_writes
        if still:
            # Whoever awaits them gets ClientClosedError; this is for everyone else.
            logger.info(
                "closing with %d write(s) still pending, outcome unknown: %s",
                len(still),
                ", ".join(f"{p.what} (request {p.seq})" for p in still),
            )
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for node in {*self._nodes, *([self._leader] if self._leader else [])}:
            if node.channel is not None:
                await node.channel.close()
                node.channel = node.stub = None
        self._wake_round_waiters()
        self._set_state(ConnectionState.CLOSED)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- sessions ------------------------------------------------------------------------

    def _require_token(self) -> str:
        self._check_open()
        if self._token is None:
            raise NotLoggedInError()
        return self._token

    def _start_session(self, token: str, username: str) -> str:
        self._token = token
        self._username = username
        return username

    def _end_session(self, token: str) -> None:
        """Forget the session if it is still the one `token` names."""
        if self._token == token:
            self._token = None
            self._username = None
        self._client_ids.pop(token, None)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the chat client is closed")

    # --- writes --------------------------------------------------------------------------

    def _submit(
        self,
        what: str,
        invoke: WriteInvoke[R],
        *,
        token: str | None = None,
        session: str | None = None,
    ) -> PendingWrite[R]:
        """token: end the session if the write is refused UNAUTHENTICATED; session: the
        token the write is made with (default: token), which chooses its client id."""
        self._check_open()
        seq = self._next_seq
        self._next_seq += 1
        self._unanswered.add(seq)
        pending: PendingWrite[R] = PendingWrite(self, seq, what, session or token)
        self._pending[seq] = pending
        task = asyncio.get_running_loop().create_task(self._run_write(pending, invoke, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pending

    def _request_id(self, client_id: int, seq: int) -> chat_pb2.RequestId:
        # Computed per attempt: first_outstanding may have moved on since the first one.
        return chat_pb2.RequestId(
            client_id=client_id, seq=seq, first_outstanding=min(self._unanswered)
        )

    @property
    def client_id(self) -> int | None:
        """The client id of the writes made without a session (Register, Login), once the
        log assigned one."""
        return self._client_ids.get("")

    async def _register_client(self, session: str) -> int:
        """A new client session from the log, bound to the chat session `session` (a token)
        if given. Not deduplicated: a retry after a lost answer registers another, and the
        unused one expires."""

        async def invoke(stub: ChatStub, timeout: float) -> int:
            request = chat_pb2.RegisterClientRequest(token=session)
            reply = await stub.RegisterClient(request, timeout=timeout)
            return reply.client_id

        client_id = await self._call("register the client", invoke, deadline=None)
        logger.info("registered as client %d%s", client_id, " (session)" if session else "")
        return client_id

    async def _write(self, pending: PendingWrite[R], invoke: WriteInvoke[R]) -> R:
        """Send one write until it is answered, registering a client session when there is
        none (at the first write, or after the old one expired)."""
        key = pending.session or ""
        while True:
            if key not in self._client_ids:
                self._client_ids[key] = await self._register_client(key)
                pending.attempts = 0
            client_id = self._client_ids[key]

            def attempt(stub: ChatStub, timeout: float, client_id: int = client_id) -> Awaitable[R]:
                pending.attempts += 1
                return invoke(stub, self._request_id(client_id, pending.seq), timeout)

            try:
                return await self._call(pending.what, attempt, deadline=None)
            except ClientExpiredError as error:
                if self._client_ids.get(key) == client_id:
                    del self._client_ids[key]
                if pending.attempts > 1:
                    # An earlier attempt may have been applied; the cluster cannot say now.
                    raise OutcomeUnknownError(
                        f"{pending.what}: {error.message}; it was sent before, so it may or "
                        "may not have been applied, and it is not sent again"
                    ) from None
                # Never sent under the old session: nothing can have happened. Send it anew.

    async def _run_write(
        self, pending: PendingWrite[R], invoke: WriteInvoke[R], token: str | None
    ) -> None:
        try:
            async with self._write_lock:
                result = await self._write(pending, invoke)
        except OutcomeUnknownError as error:
            self._answered(pending.seq)
            pending._fail(error)
        except ServerError as error:
            self._answered(pending.seq)
            if token is not None and isinstance(error, UnauthenticatedError):
                self._end_session(token)
            pending._fail(error)
        except asyncio.CancelledError:
            pending._fail(
                ClientClosedError(
                    f"{pending.what}: the client closed with the write still pending "
                    f"(request {pending.seq}); its outcome is unknown"
                )
            )
            raise
        except ChatClientError as error:
            pending._fail(error)
        except Exception as error:
            # A bug or a request that cannot even be encoded: nothing will resend it.
            logger.exception("%s failed", pending.what)
            self._answered(pending.seq)
            pending._fail(ChatClientError(f"{pending.what}: {error!r}"))
        else:
            self._answered(pending.seq)
            pending._settle(result)

    def _answered(self, seq: int) -> None:
        self._unanswered.discard(seq)
        self._pending.pop(seq, None)

    async def _wait_answer(self, pending: PendingWrite[R], timeout_s: float | None) -> R:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + (self._overall_timeout_s if timeout_s is None else timeout_s)
        future = pending._future
        while True:
            if future.done():
                return future.result()
            now = loop.time()
            if now >= deadline or self._hopeless_for(started) >= self._no_majority_grace_s:
                raise self._unavailable(pending)
            waiter = self._round_waiter()
            either: set[asyncio.Future[Any]] = {future, waiter}
            try:
                await asyncio.wait(
                    either, timeout=deadline - now, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()

    # --- reads ---------------------------------------------------------------------------

    async def _read(self, what: str, invoke: Invoke[R], token: str | None) -> R:
        loop = asyncio.get_running_loop()
        try:
            return await self._call(what, invoke, loop.time() + self._overall_timeout_s)
        except UnauthenticatedError:
            if token is not None:
                self._end_session(token)
            raise

    # --- failover ------------------------------------------------------------------------

    async def _call(self, what: str, invoke: Invoke[R], deadline: float | None) -> R:
        """invoke(stub, timeout) on one node after another until one serves it.

        Raises ServerError for a definite refusal. With a deadline, UnavailableError once it
        passes or once every node has known no leader for the grace time; without one, it
        tries until it is answered (or the client closes)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        backoff = _Backoff()
        while True:
            self._check_open()
            attempt = _Round(self._round_order())
            while (node := attempt.next_node()) is not None:
                timeout = self._call_timeout_s
                if deadline is not None:
                    timeout = min(timeout, deadline - loop.time())
                    if timeout <= 0:
                        raise self._unavailable(what)
                self._current = node
                try:
                    result = await invoke(self._stub(node), timeout)
                except grpc.aio.AioRpcError as error:
                    attempt.redirect(self._observe_failure(node, error, what))
                    continue
                self._observe_success(node)
                return result
            self._end_round(attempt.tried)
            delay = backoff.next_s()
            if deadline is not None:
                now = loop.time()
                if now >= deadline or self._hopeless_for(started) >= self._no_majority_grace_s:
                    raise self._unavailable(what)
                delay = min(delay, deadline - now)
            await asyncio.sleep(delay)

    def _round_order(self) -> list[_Node]:
        if self._pinned:
            return [self._nodes[0]]
        order: list[_Node] = []
        if self._leader is not None:
            order.append(self._leader)
        start = self._nodes.index(self._current) if self._current in self._nodes else 0
        order.extend(self._nodes[start:] + self._nodes[:start])
        return order

    def _stub(self, node: _Node) -> ChatStub:
        if node.stub is None:
            node.channel = open_channel(node.address, self._ca)
            node.stub = ChatStub(node.channel)
        return node.stub

    def _observe_success(self, node: _Node) -> None:
        node.condition = NodeCondition.SERVING
        node.detail = ""
        node.hint = None
        self._current = node
        self._hopeless_since = None
        self._set_state(ConnectionState.OK)
        if self._leader is not node:
            self._ask_leader(node)

    def _ask_leader(self, node: _Node) -> None:
        """In the background, ask a node that served (a follower may forward) who leads, so
        that the next calls go straight there and a UI can show it."""
        if self._leader_probe is not None and not self._leader_probe.done():
            return

        async def probe() -> None:
            try:
                reply = await self._stub(node).Status(
                    chat_pb2.StatusRequest(), timeout=self._call_timeout_s
                )
            except grpc.aio.AioRpcError as error:
                logger.debug("asking %s for the leader: %s", node.name, error.code().name)
                return
            self._observe_status(node, reply)

        self._leader_probe = asyncio.get_running_loop().create_task(probe())
        self._tasks.add(self._leader_probe)
        self._leader_probe.add_done_callback(self._tasks.discard)

    def _observe_failure(self, node: _Node, error: grpc.aio.AioRpcError, what: str) -> _Node | None:
        """Record what node answered; raise ServerError if it is definite. Returns the leader
        to try next when the answer named one (never when pinned)."""
        code = error.code()
        details = error.details() or ""
        if code in DEFINITE_CODES:
            self._observe_success(node)
            raise server_error(code, details, _reason(error))
        hint = self._learn_leader(*_leader_metadata(error))
        reason = _reason(error)
        if code == grpc.StatusCode.UNAVAILABLE:
            if reason is Reason.NO_MAJORITY:
                condition = NodeCondition.NO_MAJORITY
            elif reason is Reason.NOT_LEADER or hint is not None:
                condition = NodeCondition.NOT_LEADER
            else:
                condition = NodeCondition.UNREACHABLE
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            condition = NodeCondition.TIMED_OUT
        else:
            condition = NodeCondition.BROKEN
        if hint is node:
            hint = None  # it names itself but did not serve: no better idea
        node.condition = condition
        node.detail = details if condition is not NodeCondition.BROKEN else f"{code.name}"
        node.hint = hint
        if self._leader is node:
            self._leader = hint
        logger.info(
            "%s: %s answered %s: %s%s",
            what,
            node.name,
            code.name,
            details,
            f" (leader: {hint.name})" if hint is not None else "",
        )
        if self._state is not ConnectionState.NO_MAJORITY:
            self._set_state(ConnectionState.FAILING_OVER)
        return None if self._pinned else hint

    def _observe_status(self, node: _Node, reply: chat_pb2.StatusReply) -> None:
        if reply.node_id and node.name == node.address:
            node.name = reply.node_id
        if reply.leader_address or reply.leader_id:
            self._learn_leader(reply.leader_address or None, reply.leader_id or None)

    def _learn_leader(self, address: str | None, node_id: str | None) -> _Node | None:
        """The node named by a leader hint (added to the candidates if new); it becomes the
        known leader."""
        if not address and not node_id:
            return None
        known = [*self._nodes, *([self._leader] if self._leader is not None else [])]
        node = next((n for n in known if node_id and n.name == node_id), None)
        if node is None:
            node = next((n for n in known if address and n.address == address), None)
        if node is None:
            if not address:
                return None  # an id we cannot place
            node = _Node(node_id or address, address)
            if not self._pinned:
                self._nodes.append(node)
                logger.info("learned of node %s", node.label())
        elif node_id and node.name == node.address:
            node.name = node_id
        self._leader = node
        return node

    def _end_round(self, tried: Sequence[_Node]) -> None:
        """A whole round failed: judge whether any node offered a way to a leader."""
        now = asyncio.get_running_loop().time()
        self._last_round_end = now
        leaderless = all(
            node.condition in _LEADERLESS
            or (node.condition is NodeCondition.NOT_LEADER and node.hint is None)
            for node in tried
        )
        # A pinned client whose node cannot serve has nowhere else to go.
        if leaderless or self._pinned:
            if self._hopeless_since is None:
                self._hopeless_since = now
        else:
            self._hopeless_since = None
        self._set_state(ConnectionState.NO_MAJORITY if leaderless else ConnectionState.FAILING_OVER)
        self._wake_round_waiters()

    def _hopeless_for(self, started: float) -> float:
        """How long no way to a leader has been seen, if a round ended since `started`."""
        if self._hopeless_since is None or self._last_round_end < started:
            return 0.0
        return asyncio.get_running_loop().time() - self._hopeless_since

    def _round_waiter(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._round_waiters.append(waiter)
        waiter.add_done_callback(self._forget_waiter)
        return waiter

    def _forget_waiter(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._round_waiters:
            self._round_waiters.remove(waiter)

    def _wake_round_waiters(self) -> None:
        for waiter in list(self._round_waiters):
            if not waiter.done():
                waiter.set_result(None)

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state or self._state is ConnectionState.CLOSED:
            return
        self._state = state
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                logger.exception("connection state listener failed")

    def _node_for(self, address: str | None) -> tuple[_Node, bool]:
        """A known node by name or address, or a temporary one for another address."""
        self._check_open()
        if address is None:
            return (self._current or self._nodes[0]), False
        known = [*self._nodes, *([self._leader] if self._leader is not None else [])]
        for node in known:
            if address in (node.name, node.address):
                return node, False
        address = parse_address(address)
        return _Node(address, address), True

    def _unavailable(self, what: str | PendingWrite[Any]) -> UnavailableError:
        """The error for a caller who waited long enough: what each node answered last."""
        pending = what if isinstance(what, PendingWrite) else None
        nodes = [self._nodes[0]] if self._pinned else list(self._nodes)
        leaderless = all(
            node.condition in _LEADERLESS
            or (node.condition is NodeCondition.NOT_LEADER and node.hint is None)
            for node in nodes
            if node.condition is not None
        )
        groups: dict[tuple[object, ...], list[_Node]] = {}
        for node in nodes:
            said = node.detail if node.condition in _ANSWERS else ""
            key = (node.condition, said, None if node.hint is None else node.hint.name)
            groups.setdefault(key, []).append(node)
        parts = [_phrase(group) for group in groups.values()]
        summary = ("no leader: " if leaderless else "cannot reach the leader: ") + "; ".join(parts)
        if self._pinned:
            summary += f" (pinned to {nodes[0].name}: no failover)"
        if leaderless:
            return NoMajorityError(summary, pending)
        return UnavailableError(summary, pending)


def _phrase(nodes: Sequence[_Node]) -> str:
    """How nodes that answered alike read in a summary: "a, b answer 'no majority reachable'"."""
    names = ", ".join(node.name for node in nodes)
    node = nodes[0]
    condition = node.condition
    if condition is None:
        return f"{names} not asked yet"
    if condition is NodeCondition.UNREACHABLE:
        return f"{names} unreachable"
    if condition is NodeCondition.TIMED_OUT:
        return f"{names} did not answer in time"
    if condition is NodeCondition.BROKEN:
        return f"{names} broke the connection" + (f" ({node.detail})" if node.detail else "")
    if condition is NodeCondition.SERVING:
        return f"{names} served the last call"
    said = node.detail or condition.value
    if len(said) > 80:
        said = said[:79] + "…"
    verb = "answers" if len(nodes) == 1 else "answer"
    hint = "" if node.hint is None else f" (leader: {node.hint.label()})"
    return f"{names} {verb} '{said}'{hint}"


def _reason(error: grpc.aio.AioRpcError) -> Reason | None:
    """The machine-readable reason in a refusal's trailing metadata, if any."""
    return reason_of(error.trailing_metadata())


def _leader_metadata(error: grpc.aio.AioRpcError) -> tuple[str | None, str | None]:
    """(leader address, leader id) from an answer's trailing metadata."""
    metadata = error.trailing_metadata()
    return metadata_value(metadata, LEADER_ADDRESS_KEY), metadata_value(metadata, LEADER_ID_KEY)


def _describe_rpc_error(error: grpc.aio.AioRpcError) -> str:
    code = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "did not answer in time"
    if code == grpc.StatusCode.UNAVAILABLE and _reason(error) not in (
        Reason.NO_MAJORITY,
        Reason.NOT_LEADER,
    ):
        return "unreachable"
    return f"{details or code.name}"


_StreamCall = grpc.aio.UnaryStreamCall[chat_pb2.SubscribeRequest, chat_pb2.ChatMessage]


class _StreamStalled(Exception):
    """The node of a quiet stream did not answer a Status call: treat the stream as dead."""


class Subscription:
    """Messages to one user, queued then live, across failovers. Use `async for`.

    Asking for the next message acknowledges the one handed out before it: the consumer is done
    with it. `aclose(ack=True)` acknowledges everything handed out. Messages already handed out
    are never handed out again (by id), however often the stream is reopened.
    """

    def __init__(self, client: ChatClient, token: str, user: str, after_id: int) -> None:
        self._client = client
        self._token = token
        self._user = user
        self._acked = after_id  # the cluster confirmed an ack up to here (or we began here)
        self._ack_target = after_id  # handled up to here; acked in the background
        self._handed: set[int] = set()  # handed out, above _acked: duplicates to drop
        self._last_handed = after_id
        self._call: _StreamCall | None = None
        self._node: _Node | None = None
        self._round: _Round | None = None
        self._backoff = _Backoff()
        self._ack_task: asyncio.Task[None] | None = None
        self._closed = False
        self.duplicates_dropped = 0
        self.resubscribed = 0  # streams opened after the first

    @property
    def acked_id(self) -> int:
        """The highest id whose (cumulative) ack the cluster confirmed."""
        return self._acked

    @property
    def last_id(self) -> int:
        """The highest id handed out."""
        return self._last_handed

    @property
    def node(self) -> str | None:
        """The node the stream is open on (or last was)."""
        return None if self._node is None else self._node.name

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if self._closed:
            raise StopAsyncIteration
        self._handled(self._last_handed)
        while True:
            try:
                item = await self._next_from_stream()
            except ServerError as error:
                if isinstance(error, UnauthenticatedError):
                    self._client._end_session(self._token)
                await self.aclose(ack=False)
                raise
            if item.id <= self._acked or item.id in self._handed:
                self.duplicates_dropped += 1
                logger.debug("dropped duplicate message %d", item.id)
                continue
            self._handed.add(item.id)
            self._last_handed = max(self._last_handed, item.id)
            return Message.from_proto(item)

    async def aclose(self, ack: bool = True, timeout_s: float | None = None) -> None:
        """Stop the stream. With ack, first acknowledge every message handed out and wait for
        that (at most timeout_s, default the client's overall timeout; an ack still pending
        then stays with the client)."""
        if self._closed:
            return
        if ack:
            self._handled(self._last_handed)
        self._closed = True
        self._drop_call()
        task = self._ack_task
        if task is not None and not task.done():
            if ack and not self._client._closed:
                wait_s = self._client._overall_timeout_s if timeout_s is None else timeout_s
                await asyncio.wait({task}, timeout=wait_s)
            if not task.done():
                task.cancel()
        self._client._subscriptions.discard(self)

    # --- acks ----------------------------------------------------------------------------

    def _handled(self, up_to_id: int) -> None:
        if up_to_id <= self._ack_target or self._closed:
            return
        self._ack_target = up_to_id
        self._client._handled_through[self._user] = up_to_id
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.get_running_loop().create_task(self._ack_loop())

    async def _ack_loop(self) -> None:
        while self._ack_target > self._acked:
            target = self._ack_target
            try:
                await self._client._submit_ack(self._token, target)
            except ServerError as error:
                logger.warning("ack up to message %d refused: %s", target, error)
                return
            except ChatClientError:
                return
            self._acked = max(self._acked, target)
            self._handed = {i for i in self._handed if i > self._acked}

    # --- the stream ----------------------------------------------------------------------

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _next_from_stream(self) -> chat_pb2.ChatMessage:
        client = self._client
        while True:
            client._check_open()
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                if self._round is None:
                    self._round = _Round(client._round_order())
                node = self._round.next_node()
                if node is None:
                    client._end_round(self._round.tried)
                    self._round = None
                    await asyncio.sleep(self._backoff.next_s())
                    continue
                self._open(node)
            call, node = self._call, self._node
            if call is None or node is None:
                raise RuntimeError("subscription: a stream without its node")
            read = asyncio.ensure_future(call.read())
            try:
                while not read.done():
                    done, _ = await asyncio.wait({read}, timeout=client._watch_interval_s)
                    if not done and not await self._alive(node):
                        raise _StreamStalled
                item = read.result()
            except grpc.aio.AioRpcError as error:
                self._drop_call()
                if self._closed:
                    raise StopAsyncIteration from None
                if _reason(error) is Reason.SLOW_CONSUMER:
                    # We fell behind and the node ended the stream (its buffer is bounded):
                    # resume from the last acked id; what comes twice is dropped by id.
                    logger.info("subscription: %s", error.details())
                    continue
                self._failed_on(node, client._observe_failure(node, error, "subscribe"))
                continue
            except _StreamStalled:
                self._drop_call()
                self._failed_on(node, None)
                continue
            except asyncio.CancelledError:
                if not read.cancelled():
                    raise  # this task was cancelled
                self._drop_call()
                if self._closed:
                    raise StopAsyncIteration from None
                continue
            finally:
                if not read.done():
                    read.cancel()
                    read.add_done_callback(_retrieve)
            if item is grpc.aio.EOF:
                # Ended without an error: the node is going away; look elsewhere first.
                self._drop_call()
                node.condition = NodeCondition.BROKEN
                node.detail = "stream ended"
                self._failed_on(node, None)
                continue
            if not isinstance(item, chat_pb2.ChatMessage):
                raise TypeError(f"Subscribe stream gave {type(item).__name__}")
            self._established(node)
            return item

    def _failed_on(self, node: _Node, hint: _Node | None) -> None:
        """The stream on node failed: try the leader it named, else the other nodes, before
        node again (after the round's backoff)."""
        if self._round is None:
            self._round = _Round(self._client._round_order())
            self._round.tried.append(node)
        self._round.redirect(hint)

    def _open(self, node: _Node) -> None:
        if self._node is not None:
            self.resubscribed += 1
        self._node = node
        self._client._current = node
        request = chat_pb2.SubscribeRequest(token=self._token, after_id=self._acked)
        # A stream lives as long as the subscription: no deadline; the watchdog and keepalive
        # notice a dead node instead.
        self._call = self._client._stub(node).Subscribe(request)

    def _established(self, node: _Node) -> None:
        """The stream on node delivers: only the leader serves Subscribe."""
        self._round = None
        self._backoff.reset()
        if not self._client._pinned:
            self._client._leader = node
        self._client._observe_success(node)

    async def _alive(self, node: _Node) -> bool:
        """Ask a quiet stream's node for its Status: False if it does not answer."""
        client = self._client
        try:
            reply = await client._stub(node).Status(
                chat_pb2.StatusRequest(), timeout=client._call_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                logger.info("subscription: %s %s", node.name, _describe_rpc_error(error))
                client._observe_failure(node, error, "subscribe")  # never definite: these codes
                return False
            return True  # it answers, if not this: keep the stream
        client._observe_status(node, reply)
        if reply.role == chat_pb2.LEADER or (reply.node_id and reply.leader_id == reply.node_id):
            self._established(node)  # a quiet stream on the leader is a good stream
        return True
