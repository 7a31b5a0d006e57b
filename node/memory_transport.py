"""An in-memory, partitionable network of drivers (hashicorp/raft's InmemTransport).

Every node of a test cluster gets a MemoryTransport from one MemoryNetwork, and the network
delivers each message to the receiving driver's `step` (snapshots to `receive_snapshot`) after
a delay drawn from a seeded Random, in one event loop. Links can be cut in either direction,
and messages dropped or duplicated at random: all that a real network does to Raft, and
nothing a node can tell apart from it. With node.seams' inline executors and a virtual-time
event loop, a run replays from its seed. A snapshot is copied, a chunk at a time, from the
sender's SnapshotSource into a file in the receiver's spool directory, inline (a thread would
reorder completions and a seed would not replay), as the gRPC transport does.

Imports asyncio, pathlib, node.raft.types and node.seams only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any, Protocol

from node.raft.types import Message, MessageType, NodeId
from node.seams import (
    SNAPSHOT_CHUNK_BYTES,
    SnapshotInvalidError,
    SnapshotSource,
    SpoolFile,
    TransportEvents,
)

logger = logging.getLogger(__name__)


class Receiver(Protocol):
    """The receiving side of a node: RaftDriver has both."""

    def step(self, m: Message) -> None: ...

    def receive_snapshot(self, m: Message, path: Path) -> Awaitable[None]:
        """Take the complete snapshot in file `path` (rename or copy what is kept: the file
        is removed afterwards), or raise SnapshotInvalidError to refuse it."""
        ...

    @property
    def snapshot_spool(self) -> Path:
        """The directory incoming snapshots are written in (on the receiver's disk)."""
        ...


@dataclass
class NetworkFaults:
    delay_s: tuple[float, float] = (0.001, 0.005)
    drop: float = 0.0
    duplicate: float = 0.0


class MemoryNetwork:
    def __init__(self, rng: Random, faults: NetworkFaults | None = None) -> None:
        self.rng = rng
        self.faults = faults or NetworkFaults()
        self._receivers: dict[NodeId, Receiver] = {}
        self._transports: dict[NodeId, MemoryTransport] = {}
        self._cut: set[tuple[NodeId, NodeId]] = set()  # directed (from, to)
        self.delivered = 0

    def transport(self, node_id: NodeId) -> MemoryTransport:
        t = MemoryTransport(self, node_id)
        self._transports[node_id] = t
        return t

    def attach(self, node_id: NodeId, receiver: Receiver) -> None:
        """`receiver` now answers for `node_id` (a restarted node attaches its new driver)."""
        self._receivers[node_id] = receiver

    def detach(self, node_id: NodeId) -> None:
        """The node is down: messages to it vanish."""
        self._receivers.pop(node_id, None)

    # -- faults -----------------------------------------------------------------------------

    def partition(self, *groups: list[NodeId]) -> None:
        """Nodes in different groups cannot reach each other (nodes in no group: everyone)."""
        self._cut.clear()
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                for x in a:
                    for y in b:
                        self._cut.add((x, y))
                        self._cut.add((y, x))
        for x, y in sorted(self._cut):
            t = self._transports.get(x)
            if t is not None and t.events is not None:
                t.events.on_unreachable(y)

    def cut(self, a: NodeId, b: NodeId) -> None:
        """Cut the directed link a -> b only."""
        self._cut.add((a, b))

    def heal(self) -> None:
        self._cut.clear()
        for node_id, t in sorted(self._transports.items()):
            if t.events is not None:
                for peer in sorted(self._transports):
                    if peer != node_id:
                        t.events.on_connected(peer)

    def reachable(self, a: NodeId, b: NodeId) -> bool:
        return (a, b) not in self._cut

    # -- delivery ---------------------------------------------------------------------------

    def _delay(self) -> float:
        lo, hi = self.faults.delay_s
        return self.rng.uniform(lo, hi)

    def post(self, m: Message) -> None:
        if not self.reachable(m.sender, m.to) or self.rng.random() < self.faults.drop:
            return
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            loop.call_later(self._delay(), self._deliver, m)

    def _deliver(self, m: Message) -> None:
        receiver = self._receivers.get(m.to)
        if receiver is None or not self.reachable(m.sender, m.to):
            return
        self.delivered += 1
        receiver.step(m)

    async def send_snapshot(self, m: Message, source: SnapshotSource) -> bool:
        """Deliver a snapshot, as a stream would: True once the receiver took it.

        The chunks go into a new file in the receiver's spool directory, synchronously (the
        run stays deterministic); the file is removed afterwards, whatever the receiver did.
        """
        await asyncio.sleep(self._delay() * 4)
        receiver = self._receivers.get(m.to)
        if receiver is None or not self.reachable(m.sender, m.to):
            return False
        spooled = SpoolFile(receiver.snapshot_spool)
        try:
            while piece := source.read(SNAPSHOT_CHUNK_BYTES):
                spooled.write(piece)
            if spooled.size != source.size:
                raise ValueError(
                    f"the snapshot source said {source.size} bytes but gave {spooled.size}"
                )
            spooled.finish()
            try:
                await receiver.receive_snapshot(m, spooled.path)
            except SnapshotInvalidError:
                return False
        finally:
            spooled.discard()
        return True


class MemoryTransport:
    """One node's Transport on a MemoryNetwork."""

    def __init__(self, network: MemoryNetwork, node_id: NodeId) -> None:
        self.network = network
        self.node_id = node_id
        self.events: TransportEvents | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self, events: TransportEvents) -> None:
        self.events = events
        loop = asyncio.get_running_loop()
        for peer in sorted(self.network._transports):
            if peer != self.node_id:
                loop.call_soon(self._connected, peer)

    def _connected(self, peer: NodeId) -> None:
        if self.events is not None and not self._closed:
            self.events.on_connected(peer)

    def send(self, m: Message) -> None:
        if self._closed:
            return
        if m.type is MessageType.SNAPSHOT:
            self._spawn(self._send_snapshot(m))
            return
        self.network.post(m)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_snapshot(self, m: Message) -> None:
        events = self.events
        if events is None or m.snapshot is None:
            return
        ok = False
        try:
            source = await events.open_snapshot(m.snapshot)
            try:
                ok = await self.network.send_snapshot(m, source)
            finally:
                source.close()
        except Exception as exc:  # as PeerLink: any failure and the core probes again
            logger.info("%s: snapshot to %s failed: %s", self.node_id, m.to, exc)
        if not self._closed:
            events.on_snapshot_sent(m.to, ok)

    async def close(self) -> None:
        self._closed = True
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def abandon(self) -> None:
        """A crash: stop at once, without awaiting anything."""
        self._closed = True
        for t in list(self._tasks):
            t.cancel()
