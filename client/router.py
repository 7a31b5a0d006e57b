"""The router: which node a call goes to, and what the nodes' answers say.

Each call goes to the known leader first, then to every other node once (a round); a leader
named in an answer's trailing metadata is tried next, and remembered. After a round without an
answer the caller backs off (50 ms doubling to 1 s, with jitter) and starts another. A pinned
router only ever asks its one node.

What an answer means is decided by pure functions of the answer's status code, its
`protos.vocabulary.Reason` and the leader its metadata names, never of a message's wording
(table-tested without gRPC in tests/client/test_router.py):

- `judge(code, details, reason, leader)`: the node's `Verdict` (a `NodeCondition`, the text to
  show, the leader to try next), or the `client.errors.ServerError` of a definite refusal;
- `offers_no_leader(node)`: whether a node's last answer gives no way to a leader;
- `summarize(nodes, pinned=...)`: what each node answered, for a caller who waited long enough
  ("no leader: a, b answer 'no majority reachable'; c unreachable").

`Router` holds the state those decisions update: the nodes and their channels, the leader, the
node asked last, the connection state a UI shows, and since when no node has offered a way to
a leader. The write pipeline (client/writes.py), the subscriptions (client/subscription.py)
and the facade (client/api.py) use it through its public methods only.

Imports grpc, protos, client.errors, client.stub and client.values; never the modules that use
it (writes, subscription, api).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc
import grpc.aio

from client.errors import (
    DEFINITE_CODES,
    ClientClosedError,
    NoMajorityError,
    ServerError,
    UnavailableError,
    server_error,
)
from client.stub import ChatStub, open_channel
from client.values import parse_address
from protos import chat_pb2
from protos.vocabulary import (
    LEADER_ADDRESS_KEY,
    LEADER_ID_KEY,
    Reason,
    describe_rpc_error,
    metadata_value,
    reason_of,
)

logger = logging.getLogger(__name__)

R = TypeVar("R")

FIRST_BACKOFF_S: Final = 0.05
MAX_BACKOFF_S: Final = 1.0
MEMBERS_REFRESH_S: Final = 5.0  # a client that is being served asks who the members are this often

Invoke = Callable[[ChatStub, float], Awaitable[R]]  # invoke(stub, timeout_s): one attempt


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
class NodeView:
    """One node as the client knows it, for a UI."""

    name: str  # the node id when known, else its address
    address: str
    condition: NodeCondition | None  # None: not asked yet
    detail: str  # the last answer's text
    is_leader: bool
    is_current: bool


@dataclass(frozen=True, slots=True)
class LeaderHint:
    """The leader an answer names (its trailing metadata, or a Status reply)."""

    address: str | None  # host:port of its client port
    node_id: str | None

    @classmethod
    def from_metadata(cls, metadata: Iterable[tuple[str, Any]] | None) -> LeaderHint | None:
        """The leader named in trailing metadata; None if it names none."""
        hint = cls(
            metadata_value(metadata, LEADER_ADDRESS_KEY), metadata_value(metadata, LEADER_ID_KEY)
        )
        return hint if hint.address or hint.node_id else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one answer that did not serve a call says about the node that gave it."""

    condition: NodeCondition
    detail: str  # the node's own message; the code's name for a broken connection
    leader: LeaderHint | None  # the leader the answer named: try it next


def judge(
    code: grpc.StatusCode, details: str, reason: Reason | None, leader: LeaderHint | None
) -> Verdict:
    """The verdict on a node from a call's status code, the Reason in its trailing metadata and
    the leader that metadata names. A definite refusal (client.errors.DEFINITE_CODES) raises
    the ServerError for it: the node looked at the request and will give the same answer again.

    UNAVAILABLE is "no majority" or "not the leader" only when the node says so by its reason
    (or names a leader): without one it is an unreachable node's, whatever the message says.
    """
    if code in DEFINITE_CODES:
        raise server_error(code, details, reason)
    if code == grpc.StatusCode.UNAVAILABLE:
        if reason is Reason.NO_MAJORITY:
            condition = NodeCondition.NO_MAJORITY
        elif reason is Reason.NOT_LEADER or leader is not None:
            condition = NodeCondition.NOT_LEADER
        else:
            condition = NodeCondition.UNREACHABLE
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        condition = NodeCondition.TIMED_OUT
    else:
        condition = NodeCondition.BROKEN
    detail = code.name if condition is NodeCondition.BROKEN else details
    return Verdict(condition, detail, leader)


class Node:
    """One node: where it is, what it answered last, and its channel (opened on first use)."""

    __slots__ = ("address", "channel", "condition", "detail", "hint", "name", "stub")

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.channel: grpc.aio.Channel | None = None
        self.stub: ChatStub | None = None
        self.condition: NodeCondition | None = None  # None: not asked yet
        self.detail = ""
        self.hint: Node | None = None  # the leader it named in its last answer

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.address!r})"

    def label(self) -> str:
        return self.name if self.name == self.address else f"{self.name} at {self.address}"


def offers_no_leader(node: Node) -> bool:
    """Whether a node's last answer gives no way to a leader (it was asked)."""
    return node.condition in _LEADERLESS or (
        node.condition is NodeCondition.NOT_LEADER and node.hint is None
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """What the nodes answered last, for a caller who waited long enough."""

    text: str
    leaderless: bool  # no node that answered offered a way to a leader

    @property
    def error_type(self) -> type[UnavailableError]:
        """NoMajorityError when leaderless, else UnavailableError."""
        return NoMajorityError if self.leaderless else UnavailableError


def summarize(nodes: Sequence[Node], *, pinned: bool) -> Summary:
    """The nodes' last answers, alike ones grouped: "no leader: a, b answer 'no majority
    reachable'; c unreachable". A pinned client's nodes are its one node."""
    leaderless = all(offers_no_leader(node) for node in nodes if node.condition is not None)
    groups: dict[tuple[object, ...], list[Node]] = {}
    for node in nodes:
        said = node.detail if node.condition in _ANSWERS else ""
        key = (node.condition, said, None if node.hint is None else node.hint.name)
        groups.setdefault(key, []).append(node)
    parts = [_phrase(group) for group in groups.values()]
    text = ("no leader: " if leaderless else "cannot reach the leader: ") + "; ".join(parts)
    if pinned:
        text += f" (pinned to {nodes[0].name}: no failover)"
    return Summary(text, leaderless)


def _phrase(nodes: Sequence[Node]) -> str:
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


class Backoff:
    """50 ms doubling to a second, with jitter so that clients do not retry in step."""

    def __init__(self) -> None:
        self._next_s = FIRST_BACKOFF_S

    def next_s(self) -> float:
        delay = self._next_s * random.uniform(0.75, 1.25)
        self._next_s = min(MAX_BACKOFF_S, self._next_s * 2)
        return min(delay, MAX_BACKOFF_S)

    def reset(self) -> None:
        self._next_s = FIRST_BACKOFF_S


class Round:
    """The nodes one attempt goes through before backing off: the known leader first, then
    every other node once. A leader named in an answer is tried next, unless already tried."""

    def __init__(self, order: Sequence[Node]) -> None:
        self._queue = deque(order)
        self.tried: list[Node] = []  # in the order they were tried

    def next_node(self) -> Node | None:
        while self._queue:
            node = self._queue.popleft()
            if node not in self.tried:
                self.tried.append(node)
                return node
        return None

    def mark_tried(self, node: Node) -> None:
        """Count node as tried in this round (it failed before the round began)."""
        if node not in self.tried:
            self.tried.append(node)

    def redirect(self, node: Node | None) -> None:
        if node is not None and node not in self.tried:
            self._queue.appendleft(node)


class Router:
    """The nodes of one cluster as one client sees them, and the calls that go to them.

    nodes: the candidates, in configured order (leaders learnt later are appended).
    pinned: ask nodes[0] only, never fail over (leaders learnt are shown, not used).
    ca: the PEM of the CA the nodes' certificates are checked against; None: plaintext.
    call_timeout_s: the deadline of each call to one node.
    overall_timeout_s: how long a caller waits for an answer, across nodes and retries.
    no_majority_grace_s: a caller stops waiting once every node has said this long that it
        knows no leader (or, pinned, that its node cannot serve).
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        *,
        pinned: bool,
        ca: bytes | None,
        call_timeout_s: float,
        overall_timeout_s: float,
        no_majority_grace_s: float,
    ) -> None:
        self._nodes = list(nodes)  # candidates, in configured order; learnt leaders appended
        self._pinned = pinned
        self._ca = ca  # None: plaintext
        self._call_timeout_s = call_timeout_s
        self._overall_timeout_s = overall_timeout_s
        self._no_majority_grace_s = no_majority_grace_s
        self._leader: Node | None = None  # pinned: only shown, never used for routing
        self._current: Node | None = None  # the node asked last
        self._state = ConnectionState.CONNECTING
        self._listeners: list[Callable[[ConnectionState], None]] = []
        # Since when every round ended without a way to a leader; None while one is known.
        self._hopeless_since: float | None = None
        self._last_round_end = float("-inf")
        self._round_waiters: list[asyncio.Future[None]] = []
        self._leader_probe: asyncio.Task[None] | None = None
        self._status_asked = float("-inf")  # when a Status (leader, members) was last asked
        self._departed: list[Node] = []  # left the membership: channels closed with the router
        self._closed = False

    # --- what it knows -------------------------------------------------------------------

    @property
    def pinned(self) -> bool:
        return self._pinned

    @property
    def call_timeout_s(self) -> float:
        return self._call_timeout_s

    @property
    def overall_timeout_s(self) -> float:
        return self._overall_timeout_s

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def leader(self) -> Node | None:
        """The leader as far as the router knows."""
        return self._leader

    @property
    def current(self) -> Node | None:
        """The node asked last."""
        return self._current

    @property
    def nodes(self) -> list[Node]:
        """The candidates, in configured order, then leaders learnt of."""
        return list(self._nodes)

    def known_nodes(self) -> list[Node]:
        """The candidates and the leader, if it is none of them (pinned)."""
        if self._leader is not None and self._leader not in self._nodes:
            return [*self._nodes, self._leader]
        return list(self._nodes)

    def view(self, node: Node) -> NodeView:
        return NodeView(
            node.name,
            node.address,
            node.condition,
            node.detail,
            node is self._leader,
            node is self._current,
        )

    def add_state_listener(self, listener: Callable[[ConnectionState], None]) -> None:
        """Call listener(state) whenever the connection state changes."""
        self._listeners.append(listener)

    def check_open(self) -> None:
        """ClientClosedError once the client began to close."""
        if self._closed:
            raise ClientClosedError("the chat client is closed")

    # --- calls ---------------------------------------------------------------------------

    def stub(self, node: Node) -> ChatStub:
        """The node's stub, its channel opened on first use."""
        if node.stub is None:
            node.channel = open_channel(node.address, self._ca)
            node.stub = ChatStub(node.channel)
        return node.stub

    def new_round(self) -> Round:
        """A round of nodes to try: the leader first, then the others from the one asked last."""
        return Round(self._round_order())

    async def call(self, what: str, invoke: Invoke[R], deadline: float | None) -> R:
        """invoke(stub, timeout) on one node after another until one serves it.

        Raises ServerError for a definite refusal. With a deadline (the event loop's time),
        UnavailableError once it passes or once every node has known no leader for the grace
        time; without one, it tries until it is answered (or the client closes)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        backoff = Backoff()
        while True:
            self.check_open()
            attempt = self.new_round()
            while (node := attempt.next_node()) is not None:
                timeout = self._call_timeout_s
                if deadline is not None:
                    timeout = min(timeout, deadline - loop.time())
                    if timeout <= 0:
                        raise self.unavailable()
                self._current = node
                try:
                    result = await invoke(self.stub(node), timeout)
                except grpc.aio.AioRpcError as error:
                    attempt.redirect(self.observe_failure(node, error, what))
                    continue
                self.observe_success(node)
                return result
            self.end_round(attempt.tried)
            delay = backoff.next_s()
            if deadline is not None:
                now = loop.time()
                if now >= deadline or self._hopeless_for(started) >= self._no_majority_grace_s:
                    raise self.unavailable()
                delay = min(delay, deadline - now)
            await asyncio.sleep(delay)

    async def status(self, address: str | None) -> chat_pb2.StatusReply:
        """One node's Status (a node name or host:port; None: the node asked last). No
        failover: UnavailableError if that node does not answer."""
        node, temporary = self._node_for(address)
        try:
            reply = await self.stub(node).Status(
                chat_pb2.StatusRequest(), timeout=self._call_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise UnavailableError(f"{node.label()}: {describe_rpc_error(error)}") from None
        finally:
            if temporary and node.channel is not None:
                await node.channel.close()
        if not temporary:
            self.observe_status(node, reply)
        return reply

    async def wait_answered(
        self, answer: asyncio.Future[Any], timeout_s: float | None
    ) -> Summary | None:
        """Wait for answer to be done (then None), at most timeout_s (None: the overall
        timeout) and less once every node has known no leader for the grace time: then the
        summary of what they answered. The answer is left as it is."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + (self._overall_timeout_s if timeout_s is None else timeout_s)
        while True:
            if answer.done():
                return None
            now = loop.time()
            if now >= deadline or self._hopeless_for(started) >= self._no_majority_grace_s:
                return self.summary()
            waiter = self._round_waiter()
            either: set[asyncio.Future[Any]] = {answer, waiter}
            try:
                await asyncio.wait(
                    either, timeout=deadline - now, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()

    def summary(self) -> Summary:
        """What each node answered last."""
        return summarize([self._nodes[0]] if self._pinned else self._nodes, pinned=self._pinned)

    def unavailable(self) -> UnavailableError:
        """The error for a reader who waited long enough (nothing left pending)."""
        summary = self.summary()
        return summary.error_type(summary.text)

    # --- what the answers teach ----------------------------------------------------------

    def now_asking(self, node: Node) -> None:
        """node is the one asked now (a stream opened on it)."""
        self._current = node

    def observe_success(self, node: Node) -> None:
        """node served a call (or refused it definitely: it looked at it)."""
        node.condition = NodeCondition.SERVING
        node.detail = ""
        node.hint = None
        self._current = node
        self._hopeless_since = None
        self._set_state(ConnectionState.OK)
        due = asyncio.get_running_loop().time() - self._status_asked >= MEMBERS_REFRESH_S
        if self._leader is not node or due:
            self._ask_status(node)

    def observe_leader(self, node: Node) -> None:
        """node served what only the leader serves (a Subscribe stream)."""
        if not self._pinned:
            self._leader = node
        self.observe_success(node)

    def observe_failure(self, node: Node, error: grpc.aio.AioRpcError, what: str) -> Node | None:
        """Record what node answered; raise ServerError if it is definite. Returns the leader
        to try next when the answer named one (never when pinned)."""
        code = error.code()
        details = error.details() or ""
        metadata = error.trailing_metadata()
        try:
            verdict = judge(
                code,
                details,
                reason_of(metadata),
                self._placeable(LeaderHint.from_metadata(metadata)),
            )
        except ServerError:
            self.observe_success(node)
            raise
        hint = self._learn_leader(verdict.leader)
        if hint is node:
            hint = None  # it names itself but did not serve: no better idea
        node.condition = verdict.condition
        node.detail = verdict.detail
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

    def observe_broken(self, node: Node, detail: str) -> None:
        """node ended a call without an error ("stream ended"): it is going away."""
        node.condition = NodeCondition.BROKEN
        node.detail = detail

    def observe_status(self, node: Node, reply: chat_pb2.StatusReply) -> None:
        """node's Status: its id, the leader it knows, and the committed membership, which
        the candidates follow (never when pinned)."""
        if reply.node_id and node.name == node.address:
            node.name = reply.node_id
        if reply.members and not self._pinned:
            self._follow_members(reply.members)
        if reply.leader_address or reply.leader_id:
            self._learn_leader(LeaderHint(reply.leader_address or None, reply.leader_id or None))

    def _follow_members(self, members: Iterable[chat_pb2.ClusterMember]) -> None:
        """Members added since the client started become candidates (appended, so the
        configured order stays first); a candidate known by its id that is no longer a member
        stops being asked (its channel is closed with the router: a stream on it ends as the
        node goes). A member is matched by id, or by address for a node not yet named."""
        members = list(members)
        ids = {m.node_id for m in members}
        for member in members:
            if not member.address:
                continue
            known = next(
                (n for n in self._nodes if member.node_id == n.name or member.address == n.address),
                None,
            )
            if known is None:
                self._nodes.append(Node(member.node_id, member.address))
                logger.info("learned of member %s at %s", member.node_id, member.address)
            elif known.name == known.address:
                known.name = member.node_id
        gone = [n for n in self._nodes if n.name != n.address and n.name not in ids]
        if not gone or len(gone) == len(self._nodes):
            return  # nothing left would be no better: keep asking what there is
        for node in gone:
            self._nodes.remove(node)
            self._departed.append(node)
            logger.info("%s is no longer a member: not asked any more", node.label())
        if self._leader in gone:
            self._leader = None

    def end_round(self, tried: Sequence[Node]) -> None:
        """A whole round failed: judge whether any node offered a way to a leader."""
        now = asyncio.get_running_loop().time()
        self._last_round_end = now
        leaderless = all(offers_no_leader(node) for node in tried)
        # A pinned client whose node cannot serve has nowhere else to go.
        if leaderless or self._pinned:
            if self._hopeless_since is None:
                self._hopeless_since = now
        else:
            self._hopeless_since = None
        self._set_state(ConnectionState.NO_MAJORITY if leaderless else ConnectionState.FAILING_OVER)
        self._wake_round_waiters()

    # --- closing -------------------------------------------------------------------------

    def mark_closed(self) -> None:
        """From now on every call raises ClientClosedError (the client is closing)."""
        self._closed = True

    async def close(self) -> None:
        """Stop the leader probe, close every channel, and say CLOSED. Idempotent."""
        self.mark_closed()
        probe = self._leader_probe
        if probe is not None and not probe.done():
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        for node in {*self._nodes, *self._departed, *([self._leader] if self._leader else [])}:
            if node.channel is not None:
                await node.channel.close()
                node.channel = node.stub = None
        self._wake_round_waiters()
        self._set_state(ConnectionState.CLOSED)

    # --- internals -----------------------------------------------------------------------

    def _round_order(self) -> list[Node]:
        if self._pinned:
            return [self._nodes[0]]
        order: list[Node] = []
        if self._leader is not None:
            order.append(self._leader)
        start = self._nodes.index(self._current) if self._current in self._nodes else 0
        order.extend(self._nodes[start:] + self._nodes[:start])
        return order

    def _known(self) -> list[Node]:
        return [*self._nodes, *([self._leader] if self._leader is not None else [])]

    def _node_for(self, address: str | None) -> tuple[Node, bool]:
        """A known node by name or address, or a temporary one for another address."""
        self.check_open()
        if address is None:
            return (self._current or self._nodes[0]), False
        for node in self._known():
            if address in (node.name, node.address):
                return node, False
        address = parse_address(address)
        return Node(address, address), True

    def _placeable(self, hint: LeaderHint | None) -> LeaderHint | None:
        """The hint if it leads somewhere: an address, or the id of a node known here. An id
        alone that names no known node is no hint: there is nothing to try."""
        if hint is None or hint.address:
            return hint
        if any(node.name == hint.node_id for node in self._known()):
            return hint
        return None

    def _learn_leader(self, hint: LeaderHint | None) -> Node | None:
        """The node a leader hint names (added to the candidates if new); it becomes the
        known leader."""
        if hint is None or (not hint.address and not hint.node_id):
            return None
        address, node_id = hint.address, hint.node_id
        known = self._known()
        node = next((n for n in known if node_id and n.name == node_id), None)
        if node is None:
            node = next((n for n in known if address and n.address == address), None)
        if node is None:
            if not address:
                return None  # an id we cannot place
            node = Node(node_id or address, address)
            if not self._pinned:
                self._nodes.append(node)
                logger.info("learned of node %s", node.label())
        elif node_id and node.name == node.address:
            node.name = node_id
        self._leader = node
        return node

    def _ask_status(self, node: Node) -> None:
        """In the background, ask a node that served (a follower may forward) who leads, so
        that the next calls go straight there and a UI can show it, and who the members are
        (again every MEMBERS_REFRESH_S while calls are served)."""
        if self._leader_probe is not None and not self._leader_probe.done():
            return
        self._status_asked = asyncio.get_running_loop().time()

        async def probe() -> None:
            try:
                reply = await self.stub(node).Status(
                    chat_pb2.StatusRequest(), timeout=self._call_timeout_s
                )
            except grpc.aio.AioRpcError as error:
                logger.debug("asking %s for the leader: %s", node.name, error.code().name)
                return
            self.observe_status(node, reply)

        self._leader_probe = asyncio.get_running_loop().create_task(probe())

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
