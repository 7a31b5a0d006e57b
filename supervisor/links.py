"""The network between nodes: one TCP proxy per directed link, which the supervisor can cut.

Node X reaches peer Y through its own proxy (a 127.0.0.1 listening port that forwards to Y's
real address), as etcd's functional tests and toxiproxy do. Through the proxies the supervisor
makes real network faults, and the nodes contain no fault-injection code:

- a partition makes every link that crosses it stop forwarding in both directions: the proxy
  stops reading both sockets and writes nothing, open connections and new ones alike (a new
  connection is accepted and then held in silence), so the nodes see what a real failure looks
  like: silence, full windows and deadlines;
- heal resets (RST) the connections that were open across the cut, and forwarding resumes;
  nodes reconnect with their own backoff;
- slow adds latency: every byte crossing one of a node's links, either way, arrives that many
  milliseconds later (a request and its answer through one link gain twice that).

`Link` is the asyncio proxy of one directed link; `LinkNetwork` owns every link of a cluster on
an event loop in a thread of its own, and is what the Cluster uses (its methods are blocking
and thread-safe). What a proxy adds to a round trip is measured by benchmarks/links.py.

Imports only the standard library (and supervisor.errors): nothing from node, client or
protos.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from supervisor.errors import SupervisorError

logger = logging.getLogger(__name__)

T = TypeVar("T")

LISTEN_HOST: Final = "127.0.0.1"
READ_CHUNK: Final = 256 * 1024
# Bytes a direction may hold in its latency queue before the proxy stops reading its source:
# with latency the queue is the "wire", and it must not grow without bound.
MAX_QUEUED_BYTES: Final = 4 * 2**20
DIAL_TIMEOUT_S: Final = 5.0


class LinkError(SupervisorError):
    """A link operation was given something it cannot do (an unknown node, bad groups)."""


# A partition: groups of node ids; nodes in different groups cannot reach each other.
Groups = tuple[tuple[str, ...], ...]


def normalize_groups(groups: Iterable[Iterable[str]], nodes: Sequence[str]) -> Groups:
    """The partition that `groups` describes over `nodes`, validated: every id known, none in two
    groups, no empty group; the nodes no group names form one more group. Groups keep the
    order given; ids inside a group keep the order of `nodes`. LinkError if it cuts nothing."""
    known = set(nodes)
    seen: dict[str, int] = {}
    result: list[tuple[str, ...]] = []
    for index, group in enumerate(groups):
        members = list(group)
        if not members:
            raise LinkError(f"group {index + 1} is empty")
        for node in members:
            if node not in known:
                raise LinkError(f"no node {node!r} (nodes are {', '.join(nodes)})")
            if node in seen:
                raise LinkError(f"node {node!r} is in two groups")
            seen[node] = index
        result.append(tuple(n for n in nodes if n in members))
    rest = tuple(n for n in nodes if n not in seen)
    if rest:
        result.append(rest)
    if len(result) < 2:
        raise LinkError("a partition needs at least two groups (every node is in one group)")
    return tuple(result)


def crosses(groups: Groups | None, source: str, target: str) -> bool:
    """Whether the directed link source -> target crosses the partition `groups`."""
    if groups is None:
        return False
    for group in groups:
        if source in group:
            return target not in group
    return False


# -- one connection through a proxy ----------------------------------------------------------


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: the accepted one (from the dialling node) or the
    one the proxy dialled (to the target). Hands every event to its _Connection."""

    def __init__(self, connection: _Connection, name: str) -> None:
        self.connection = connection
        self.name = name  # "downstream" (accepted) or "upstream" (dialled)
        self.transport: asyncio.Transport | None = None
        self.write_paused = False  # the transport's write buffer is over its high-water mark
        self.read_paused = False
        self.eof = False  # the peer shut down its writing side
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError(f"expected a stream transport, got {transport!r}")
        self.transport = transport
        with contextlib.suppress(OSError):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.connection.received(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.connection.received(self, b"")
        return True  # keep the transport half-open: the other direction may still flow

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.connection.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.connection.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.connection.update_reading()

    def set_reading(self, on: bool) -> None:
        if self.transport is None or self.lost or self.transport.is_closing():
            return
        if on and self.read_paused:
            self.transport.resume_reading()
            self.read_paused = False
        elif not on and not self.read_paused:
            self.transport.pause_reading()
            self.read_paused = True

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a middlebox that drops state does."""
        if self.transport is None or self.lost:
            return
        with contextlib.suppress(OSError):
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class _Direction:
    """Bytes on their way from one side to the other, with the link's latency. Order is kept:
    an item is never due before the one queued ahead of it."""

    def __init__(self, connection: _Connection, source: _Side, target: _Side) -> None:
        self.connection = connection
        self.source = source
        self.target = target
        # (due time on the loop clock, bytes; b"" stands for end of stream), oldest first
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued_bytes = 0
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.eof_sent = False

    def push(self, data: bytes) -> None:
        loop = self.connection.loop
        delay_s = self.connection.link.delay_s
        if delay_s <= 0 and not self.queue and self.connection.forwarding:
            self._write(data)
            return
        due = max(loop.time() + delay_s, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self.queued_bytes += len(data)
        self.schedule()

    def schedule(self) -> None:
        if self.timer is not None or not self.queue or not self.connection.forwarding:
            return
        self.timer = self.connection.loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        self.timer = None
        if not self.connection.forwarding:
            return  # held; a heal resets this connection, a later schedule() resumes
        now = self.connection.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            self.queued_bytes -= len(data)
            self._write(data)
        self.schedule()
        self.connection.update_reading()

    def _write(self, data: bytes) -> None:
        transport = self.target.transport
        if transport is None or self.target.lost or transport.is_closing():
            return
        if data:
            transport.write(data)
        elif not self.eof_sent:
            self.eof_sent = True
            if transport.can_write_eof():
                try:
                    transport.write_eof()
                except OSError:  # the other end is gone already
                    self.connection.reset()
                    return
            self.connection.maybe_close()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued_bytes = 0


class _Connection:
    """One TCP connection through a link: the accepted socket, the dialled one, and the bytes
    between them. `cut` marks a connection that was open while its link was blocked: heal
    resets it."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.loop = link.loop
        self.downstream = _Side(self, "downstream")
        self.upstream = _Side(self, "upstream")
        self.up = _Direction(self, self.downstream, self.upstream)  # dialler -> target
        self.down = _Direction(self, self.upstream, self.downstream)  # target -> dialler
        self.cut = False
        self.closed = False
        self.dial_task: asyncio.Task[None] | None = None

    @property
    def forwarding(self) -> bool:
        return not self.link.blocked and not self.closed

    @property
    def connected(self) -> bool:
        return self.upstream.transport is not None and not self.upstream.lost

    def side_made(self, side: _Side) -> None:
        if self.closed:
            side.reset()  # dialled after a reset or a close: nobody wants it any more
            return
        if side is self.downstream:
            self.link.connections.add(self)
            self.update_reading()
            if self.link.blocked:
                self.cut = True  # accepted and held in silence: nothing is dialled
            else:
                self.dial()
        else:
            if self.link.blocked:
                self.cut = True
            self.update_reading()

    def dial(self) -> None:
        if self.dial_task is None and not self.closed:
            self.dial_task = self.loop.create_task(self._dial(), name=f"dial {self.link.name}")

    async def _dial(self) -> None:
        host, port = self.link.target_address
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self.upstream, host, port),
                timeout=DIAL_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as error:
            # The target is down: the dialler sees its connection reset, as it would see a
            # refused one without a proxy in between.
            logger.debug("link %s: cannot reach %s:%d: %s", self.link.name, host, port, error)
            self.reset()

    def received(self, side: _Side, data: bytes) -> None:
        direction = self.up if side is self.downstream else self.down
        direction.push(data)
        self.update_reading()

    def update_reading(self) -> None:
        """Read a side only while its bytes can go somewhere: the link forwards, the other side
        is connected and takes writes, and the latency queue is not full."""
        for source, direction in ((self.downstream, self.up), (self.upstream, self.down)):
            target = direction.target
            on = (
                self.forwarding
                and self.connected
                and not target.write_paused
                and direction.queued_bytes < MAX_QUEUED_BYTES
            )
            source.set_reading(on)

    def block(self) -> None:
        """The link was cut: stop reading both sides and writing anything."""
        self.cut = True
        self.update_reading()

    def unblock(self) -> None:
        self.update_reading()
        self.up.schedule()
        self.down.schedule()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if self.closed:
            return
        if not self.forwarding:
            # Across a cut, not even a close gets through; heal resets what is left. A held
            # connection that never reached its target leaves nothing to reset.
            if side is self.downstream and self.upstream.transport is None:
                self.close()
            return
        other = self.upstream if side is self.downstream else self.downstream
        if exc is not None:
            self.reset()
        elif other.transport is not None and not other.lost:
            # A clean close: send what is queued, then end the other side's stream too.
            direction = self.up if side is self.downstream else self.down
            direction.push(b"")
        else:
            self.close()

    def maybe_close(self) -> None:
        """Close both sockets once nothing more can flow: both directions ended, or one ended
        and a socket is gone."""
        ended = self.up.eof_sent and self.down.eof_sent
        one_gone = self.downstream.lost or self.upstream.lost
        if ended or (one_gone and (self.up.eof_sent or self.down.eof_sent)):
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        for side in (self.downstream, self.upstream):
            if side.transport is not None and not side.lost:
                side.transport.close()
        self._forget()

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        self.downstream.reset()
        self.upstream.reset()
        self._forget()

    def _forget(self) -> None:
        if self.dial_task is not None and not self.dial_task.done():
            self.dial_task.cancel()
        self.link.connections.discard(self)


# -- one directed link ------------------------------------------------------------------------


class Link:
    """The proxy of one directed link: `source` dials `target` through it. Runs on one event
    loop; every method must be called on that loop."""

    def __init__(
        self,
        source: str,
        target: str,
        target_address: tuple[str, int],
        *,
        listen_port: int = 0,
    ) -> None:
        self.source = source
        self.target = target
        self.target_address = target_address
        self.listen_port = listen_port  # 0 until start() when the kernel picks it
        self.blocked = False
        self.delay_s = 0.0  # one-way latency added to each direction
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"link {self.name} is not started")
        return self._loop

    @property
    def address(self) -> str:
        """Where the source dials: `127.0.0.1:port`."""
        return f"{LISTEN_HOST}:{self.listen_port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

        def accept() -> _Side:
            return _Connection(self).downstream

        self._server = await self._loop.create_server(
            accept, LISTEN_HOST, self.listen_port, reuse_address=True, backlog=128
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]

    def set_blocked(self, blocked: bool) -> None:
        """Cut the link (stop forwarding both ways) or mend it (reset what was open across the
        cut, then forward again)."""
        if blocked == self.blocked:
            return
        self.blocked = blocked
        if blocked:
            for connection in list(self.connections):
                connection.block()
            return
        for connection in list(self.connections):
            if connection.cut:
                connection.reset()
            else:
                connection.unblock()

    def set_delay_ms(self, delay_ms: float) -> None:
        """Add delay_ms of one-way latency to both directions (0 removes it)."""
        if delay_ms < 0:
            raise LinkError(f"latency must not be negative, got {delay_ms} ms")
        self.delay_s = delay_ms / 1000.0

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    @property
    def queued_bytes(self) -> int:
        """Bytes read from one side and not yet written to the other (latency, or a cut)."""
        return sum(c.up.queued_bytes + c.down.queued_bytes for c in self.connections)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.reset()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


# -- every link of a cluster ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkState:
    """What one directed link is doing, for status displays."""

    source: str
    target: str
    address: str  # where source dials
    blocked: bool
    delay_ms: float
    open_connections: int


class LinkNetwork:
    """The proxies of every directed link between `targets` (node id -> real host, port), on an
    event loop running in a thread of its own. Every public method is blocking and thread-safe.

    Latency: slow(node, ms) gives the node `ms` of latency; a link's one-way latency is the sum
    of its two ends' (two slowed nodes talk slowly twice over). heal() ends partitions and
    latency alike: afterwards the network is whole again."""

    def __init__(self, targets: Mapping[str, tuple[str, int]]) -> None:
        if len(targets) < 1:
            raise LinkError("a network needs at least one node")
        self.nodes: tuple[str, ...] = tuple(targets)
        self._targets = dict(targets)  # node -> the (host, port) its proxies forward to
        self._links: dict[tuple[str, str], Link] = {
            (source, target): Link(source, target, targets[target])
            for source in self.nodes
            for target in self.nodes
            if source != target
        }
        self._groups: Groups | None = None
        self._slow_ms: dict[str, float] = dict.fromkeys(self.nodes, 0.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # serializes partition/heal/slow against each other
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, *, avoid_ports: Collection[int] = ()) -> None:
        """Start the loop thread and bind every proxy (on ports the kernel picks, which we keep:
        no pick-then-bind race, and never one of `avoid_ports`, the nodes' own ports)."""
        if self._thread is not None:
            raise RuntimeError("the link network is already started")
        ready: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            ready.set_result(loop)
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="links", daemon=True)
        self._thread.start()
        self._loop = ready.result(timeout=10)
        try:
            self._call(self._start_links(set(avoid_ports)), timeout_s=30)
        except BaseException:
            self.close()
            raise

    async def _start_links(self, avoid_ports: set[int]) -> None:
        for key in list(self._links):
            link = self._links[key]
            held: list[Link] = []
            while True:
                await link.start()
                if link.listen_port not in avoid_ports:
                    break
                held.append(link)  # keep it bound so that the next try gets another port
                link = Link(link.source, link.target, link.target_address)
                self._links[key] = link
            for old in held:
                await old.close()

    def close(self) -> None:
        """Reset every connection, unbind every proxy and stop the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._close_links(), timeout_s=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    async def _close_links(self) -> None:
        for link in self._links.values():
            await link.close()

    def __enter__(self) -> LinkNetwork:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- faults --------------------------------------------------------------------------------

    def address(self, source: str, target: str) -> str:
        """Where `source` dials to reach `target` (`127.0.0.1:port`)."""
        return self._link(source, target).address

    def peer_arguments(self, source: str, targets: Iterable[str] | None = None) -> list[str]:
        """The node's `--peer ID=HOST:PORT` arguments: every peer (of `targets`, default
        all) through its proxy."""
        arguments: list[str] = []
        for target in self.nodes if targets is None else targets:
            if target != source:
                arguments += ["--peer", f"{target}={self.address(source, target)}"]
        return arguments

    def add_node(self, node: str, target: tuple[str, int]) -> None:
        """Give a new node (a member added to the cluster) its links to and from every other
        node, each through a proxy of its own. During a partition it is a group of its own,
        cut off from every other, until heal() or a partition that names it."""
        with self._lock:
            if node in self._slow_ms:
                raise LinkError(f"node {node!r} already has its links")
            self._call(self._add_links(node, target), timeout_s=30)
            self.nodes = (*self.nodes, node)
            self._slow_ms[node] = 0.0
            if self._groups is not None:
                self._groups = (*self._groups, (node,))
            self._apply()
        logger.info("links for %s added", node)

    async def _add_links(self, node: str, target: tuple[str, int]) -> None:
        new = [Link(node, other, self._targets[other]) for other in self.nodes]
        new += [Link(other, node, target) for other in self.nodes]
        for link in new:
            await link.start()
            self._links[(link.source, link.target)] = link
        self._targets[node] = target

    def partition(self, groups: Iterable[Iterable[str]]) -> Groups:
        """Cut every link between different groups (the nodes no group names form one more);
        links that a previous partition cut and this one does not are mended (reset, then
        forwarding). Returns the partition as applied."""
        normalized = normalize_groups(groups, self.nodes)
        with self._lock:
            self._groups = normalized
            self._apply()
        logger.info("partition %s", format_groups(normalized))
        return normalized

    def isolate(self, node: str) -> Groups:
        """Cut `node` off from every other node."""
        return self.partition([[node]])

    def heal(self) -> None:
        """End the partition and every added latency: reset what was open across the cut."""
        with self._lock:
            self._groups = None
            self._slow_ms = dict.fromkeys(self.nodes, 0.0)
            self._apply()
        logger.info("healed")

    def slow(self, node: str, delay_ms: float) -> None:
        """Give every link of `node` delay_ms of latency each way (0 removes it)."""
        self._link_node(node)
        if delay_ms < 0:
            raise LinkError(f"latency must not be negative, got {delay_ms:g} ms")
        with self._lock:
            self._slow_ms[node] = float(delay_ms)
            self._apply()
        logger.info("slow %s %g ms", node, delay_ms)

    @property
    def groups(self) -> Groups | None:
        """The partition in force, or None."""
        return self._groups

    def group_of(self, node: str) -> int | None:
        """1-based index of node's partition group, or None when there is no partition."""
        if self._groups is None:
            return None
        for index, group in enumerate(self._groups):
            if node in group:
                return index + 1
        return None

    def slow_ms(self, node: str) -> float:
        return self._slow_ms[self._link_node(node)]

    def states(self) -> list[LinkState]:
        def collect() -> list[LinkState]:
            return [
                LinkState(
                    link.source,
                    link.target,
                    link.address,
                    link.blocked,
                    link.delay_s * 1000.0,
                    link.open_connections,
                )
                for link in self._links.values()
            ]

        return self._call_soon(collect)

    # -- internals -----------------------------------------------------------------------------

    def _link_node(self, node: str) -> str:
        if node not in self._slow_ms:
            raise LinkError(f"no node {node!r} (nodes are {', '.join(self.nodes)})")
        return node

    def _link(self, source: str, target: str) -> Link:
        self._link_node(source)
        self._link_node(target)
        try:
            return self._links[(source, target)]
        except KeyError:
            raise LinkError(f"no link from {source!r} to itself") from None

    def _apply(self) -> None:
        """Bring every link in line with the partition and latencies (caller holds _lock)."""
        groups, slow = self._groups, dict(self._slow_ms)

        def apply() -> None:
            for (source, target), link in self._links.items():
                link.set_delay_ms(slow[source] + slow[target])
                link.set_blocked(crosses(groups, source, target))

        self._call_soon(apply)

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout_s: float) -> T:
        if self._loop is None or not self._loop.is_running():
            coroutine.close()
            raise RuntimeError("the link network is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def _call_soon(self, function: Callable[[], T], timeout_s: float = 10.0) -> T:
        async def call() -> T:
            return function()

        return self._call(call(), timeout_s=timeout_s)


def format_groups(groups: Groups) -> str:
    """A partition as the REPL writes it: `a,b | c`."""
    return " | ".join(",".join(group) for group in groups)
