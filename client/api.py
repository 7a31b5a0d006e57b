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

This module is the facade: the chat calls, the logged-in session, and closing. The work is
done by its parts, as httpx's client is over its transports:

- client/router.py: the nodes, the leader, rounds of asking, the verdict on each answer (pure
  functions of status code, reason and leader metadata) and the summary of what nodes said;
- client/writes.py: the write pipeline (PendingWrite, request ids, client sessions);
- client/subscription.py: Subscription;
- client/values.py: the values handed out, and address parsing.

Everything a caller needs is importable from here (`__all__`). Imports grpc, protos,
node.config and client.*; nothing else from node (no node internals), and no prompt_toolkit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

from client.errors import (
    AddressError,
    ChatClientError,
    NotLoggedInError,
    UnauthenticatedError,
    UnavailableError,
)
from client.router import ConnectionState, Invoke, Node, NodeCondition, NodeView, Router
from client.stub import ChatStub
from client.subscription import Subscription, SubscriptionHooks
from client.values import (
    Message,
    NodeStatus,
    SendResult,
    cluster_ca,
    parse_address,
    parse_servers,
)
from client.writes import PendingWrite, WritePipeline
from node.config import ClusterConfig
from protos import chat_pb2
from protos.vocabulary import new_session_token

__all__ = [
    "DEFAULT_CALL_TIMEOUT_S",
    "DEFAULT_NO_MAJORITY_GRACE_S",
    "DEFAULT_OVERALL_TIMEOUT_S",
    "DEFAULT_WATCH_INTERVAL_S",
    "ChatClient",
    "ConnectionState",
    "Message",
    "NodeCondition",
    "NodeStatus",
    "NodeView",
    "PendingWrite",
    "SendResult",
    "ServerInfo",
    "Subscription",
    "cluster_ca",
    "parse_address",
    "parse_servers",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")

DEFAULT_CALL_TIMEOUT_S: Final = 2.0
DEFAULT_OVERALL_TIMEOUT_S: Final = 10.0
# Longer than an election (election_timeout_ms is [200, 400] by default), so that a cluster
# choosing a new leader is not mistaken for one that has no majority.
DEFAULT_NO_MAJORITY_GRACE_S: Final = 2.0
DEFAULT_WATCH_INTERVAL_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A node and its Status, or why there is none."""

    node: NodeView
    status: NodeStatus | None
    error: str | None


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
            nodes = [Node(node.id, node.address) for node in servers.nodes]
            if ca is None:
                ca = cluster_ca(servers)
        elif isinstance(servers, Mapping):
            nodes = [Node(name, parse_address(address)) for name, address in servers.items()]
        else:
            if isinstance(servers, str):
                raise AddressError("give a list of addresses, or parse_servers(text)")
            nodes = [Node(address, address) for address in map(parse_address, servers)]
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
        self._router = Router(
            nodes,
            pinned=pinned,
            ca=ca,
            call_timeout_s=call_timeout_s,
            overall_timeout_s=overall_timeout_s,
            no_majority_grace_s=no_majority_grace_s,
        )
        self._writes = WritePipeline(self._router, session_refused=self._end_session)
        self._watch_interval_s = watch_interval_s

        self._token: str | None = None
        self._username: str | None = None
        self._handled_through: dict[str, int] = {}  # username -> last message id handled
        self._subscriptions: set[Subscription] = set()
        self._hooks = SubscriptionHooks(
            ack=self._submit_ack,
            handled=self._handled,
            session_ended=self._end_session,
            closed=self._subscriptions.discard,
        )

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
        return self._router.pinned

    @property
    def state(self) -> ConnectionState:
        return self._router.state

    @property
    def current_node(self) -> str | None:
        """The node asked last."""
        current = self._router.current
        return None if current is None else current.name

    @property
    def leader(self) -> str | None:
        """The leader as far as the client knows."""
        leader = self._router.leader
        return None if leader is None else leader.name

    @property
    def nodes(self) -> list[NodeView]:
        return [self._router.view(node) for node in self._router.nodes]

    @property
    def pending_writes(self) -> list[PendingWrite[Any]]:
        """Writes without an answer yet, oldest first."""
        return self._writes.pending

    @property
    def client_id(self) -> int | None:
        """The client id of the writes made without a session (Register, Login), once the
        log assigned one."""
        return self._writes.client_id()

    def add_state_listener(self, listener: Callable[[ConnectionState], None]) -> None:
        """Call listener(state) whenever the connection state changes."""
        self._router.add_state_listener(listener)

    # --- the chat calls ------------------------------------------------------------------

    async def register(self, username: str, password: str) -> None:
        """Create an account (it does not log in)."""

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> None:
            request = chat_pb2.RegisterRequest(request=rid, username=username, password=password)
            await stub.Register(request, timeout=timeout)

        await self._writes.submit(f"register {username}", invoke).wait()

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

        return await self._writes.submit(f"login as {username}", invoke).wait()

    async def logout(self) -> None:
        """End the session (here and on the cluster)."""
        token = self._require_token()

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> None:
            await stub.Logout(chat_pb2.LogoutRequest(request=rid, token=token), timeout=timeout)
            self._end_session(token)

        await self._writes.submit("logout", invoke, token=token).wait()

    async def delete_account(self, password: str) -> None:
        """Delete the logged-in account (password again); the session ends with it."""
        token = self._require_token()

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> None:
            request = chat_pb2.DeleteAccountRequest(request=rid, token=token, password=password)
            await stub.DeleteAccount(request, timeout=timeout)
            self._end_session(token)

        # Not token=token: UNAUTHENTICATED here may just mean a wrong password.
        await self._writes.submit("delete account", invoke, session=token).wait()

    def start_send(self, recipient: str, text: str) -> PendingWrite[SendResult]:
        """Start sending; the PendingWrite resolves to (message id, timestamp) once committed."""
        token = self._require_token()

        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> SendResult:
            request = chat_pb2.SendRequest(request=rid, token=token, recipient=recipient, text=text)
            reply = await stub.Send(request, timeout=timeout)
            return SendResult(reply.message_id, reply.timestamp_ms)

        return self._writes.submit(f"send to {recipient}", invoke, token=token)

    async def send(self, recipient: str, text: str) -> SendResult:
        """Send and wait until the message is committed: (message id, timestamp_ms)."""
        return await self.start_send(recipient, text).wait()

    async def ack(self, up_to_id: int) -> None:
        """Acknowledge every queued message with an id up to up_to_id (cumulative)."""
        await self._submit_ack(self._require_token(), up_to_id).wait()

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
        user = self._username or ""
        start = self._handled_through.get(user, 0) if after_id is None else after_id
        subscription = Subscription(
            self._router,
            self._hooks,
            token,
            user,
            start,
            watch_interval_s=self._watch_interval_s,
        )
        self._subscriptions.add(subscription)
        return subscription

    async def status(self, address: str | None = None) -> NodeStatus:
        """One node's Status (a node name or host:port; default: the current node). No
        failover: UnavailableError if that node does not answer."""
        return NodeStatus.from_proto(await self._router.status(address))

    async def servers(self) -> list[ServerInfo]:
        """Every known node with its Status (asked all at once), or why it has none."""
        nodes = self._router.known_nodes()

        async def one(node: Node) -> ServerInfo:
            try:
                status = await self.status(node.name)
            except UnavailableError as error:
                return ServerInfo(self._router.view(node), None, str(error))
            return ServerInfo(self._router.view(node), status, None)

        infos = await asyncio.gather(*(one(node) for node in nodes))
        # Views taken after every answer, so that they show what the answers taught.
        return [
            ServerInfo(self._router.view(node), i.status, i.error)
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
        if self._router.closed:
            return
        self._router.mark_closed()
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
        await self._writes.close()
        await self._router.close()

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
        self._router.check_open()
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
        self._writes.forget_session(token)

    def _handled(self, user: str, up_to_id: int) -> None:
        self._handled_through[user] = up_to_id

    def _submit_ack(self, token: str, up_to_id: int) -> PendingWrite[None]:
        async def invoke(stub: ChatStub, rid: chat_pb2.RequestId, timeout: float) -> None:
            request = chat_pb2.AckRequest(request=rid, token=token, up_to_id=up_to_id)
            await stub.Ack(request, timeout=timeout)

        return self._writes.submit(f"ack up to {up_to_id}", invoke, token=token)

    async def _read(self, what: str, invoke: Invoke[R], token: str | None) -> R:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._router.overall_timeout_s
        try:
            return await self._router.call(what, invoke, deadline)
        except UnauthenticatedError:
            if token is not None:
                self._end_session(token)
            raise
