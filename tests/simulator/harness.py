"""A virtual cluster of Raft cores: virtual clock, virtual network, virtual disks.

Each SimNode plays the driver's part exactly as node/driver.py must: it sends a Ready's
`messages` at once, "writes" its entries and hard state to a SimDisk that lands after a
delay, sends `persisted_messages` only once that write has landed, then calls advance(). A
crash loses every write that has not landed (a prefix of the first one may survive, as a torn
write would), and all volatile state. Nothing here reads a real clock or a global random:
one seeded Random drives everything, so a seed replays identically.
"""

from __future__ import annotations

import hashlib
import heapq
import pickle
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from random import Random
from typing import Any

from node.raft.core import RaftConfig, RaftCore
from node.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Message,
    MessageType,
    NodeId,
    Ready,
    Role,
    SnapshotMeta,
    Term,
)
from tests.simulator.checker import SafetyChecker

TICK = 10  # virtual time units per tick


@dataclass
class SimDisk:
    """What survives a crash: only what a landed write put here."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes = b""
    entries: list[Entry] = field(default_factory=list)  # contiguous, after the snapshot

    def append(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            first = (self.snapshot.index if self.snapshot else 0) + 1
            del self.entries[max(e.index - first, 0) :]
            if e.index >= first:
                self.entries.append(e)

    def save_snapshot(self, meta: SnapshotMeta, data: bytes, *, discard_log: bool) -> None:
        old_first = (self.snapshot.index if self.snapshot else 0) + 1
        self.snapshot, self.snapshot_data = meta, data
        if discard_log:
            self.entries = []
        else:
            self.entries = self.entries[max(meta.index + 1 - old_first, 0) :]


@dataclass
class StateMachine:
    """Applied entries, in order: log[i] is (index, term, data) of index snapshot_index+1+i."""

    base: list[tuple[int, int, bytes]] = field(default_factory=list)

    @property
    def applied(self) -> int:
        return self.base[-1][0] if self.base else 0

    def snapshot(self) -> bytes:
        return pickle.dumps(self.base)

    @staticmethod
    def restore(data: bytes) -> StateMachine:
        return StateMachine(list(pickle.loads(data)) if data else [])


# A scheduled event: (time, seq, kind, node, payload); seq keeps the heap order total.
_Event = tuple[int, int, str, NodeId, Any]


class SimNode:
    def __init__(self, cluster: SimCluster, node_id: NodeId, config: RaftConfig) -> None:
        self.cluster = cluster
        self.id = node_id
        self.config = config
        self.disk = SimDisk()
        self.core: RaftCore | None = None
        self.sm = StateMachine()
        self.paused = False
        self.incarnation = 0  # bumped by crashes so stale events are ignored
        self.write_free_at = 0  # writes land in order: the next one not before this time
        self.write_queue: deque[Ready] = deque()  # handed out, not landed yet; in order
        self.inbox_snapshots: dict[tuple[int, int], bytes] = {}

    @property
    def alive(self) -> bool:
        return self.core is not None

    def boot(self) -> None:
        d = self.disk
        hs = d.hard_state
        if self.cluster.forget_vote_on_restart:  # the deliberately broken variant
            hs = HardState(hs.term, None, hs.commit)
        self.core = RaftCore(
            self.config,
            self.cluster.rng,
            conf=self.cluster.conf,
            hard_state=hs,
            snapshot=d.snapshot,
            entries=list(d.entries),
        )
        if self.cluster.core_patch is not None:
            self.cluster.core_patch(self.core)
        self.sm = StateMachine.restore(d.snapshot_data)
        self.write_free_at = self.cluster.now
        self.write_queue.clear()
        self.inbox_snapshots.clear()

    def crash(self, torn_rng: Random | None) -> None:
        self.core = None
        self.incarnation += 1
        self.paused = False
        if torn_rng is not None and self.write_queue:
            rd = self.write_queue[0]  # a torn write keeps a prefix of the first one in flight
            if rd.entries and not rd.snapshot and torn_rng.random() < 0.5:
                self.disk.append(rd.entries[: torn_rng.randrange(len(rd.entries))])
        self.write_queue.clear()

    # ----- the driver loop -----

    def drain(self) -> None:
        core = self.core
        while core is not None and not self.paused and core.has_ready():
            rd = core.ready()
            self._handle_ready(core, rd)
            core = self.core

    def _handle_ready(self, core: RaftCore, rd: Ready) -> None:
        c = self.cluster
        if rd.soft_state is not None:
            c.checker.on_soft_state(self.id, rd.soft_state, core)
            c.trace(f"{self.id} {rd.soft_state.role.value} t{rd.soft_state.term}")
        if rd.hard_state is not None and core.role is Role.LEADER:
            c.checker.on_leader_commit(core.term, rd.hard_state.commit, core)
        for m in rd.messages:
            c.send(m)
        if rd.entries:
            c.checker.on_entries(self.id, rd.entries, core)
        if rd.snapshot is not None:
            data = self.inbox_snapshots.pop((rd.snapshot.index, rd.snapshot.term))
            self.sm = StateMachine.restore(data)
            c.checker.on_restore(self.id, rd.snapshot, self.sm)
        for e in rd.committed_entries:
            self._apply(e)
        for r in rd.read_states:
            c.checker.on_read_state(self.id, r.request, r.index)
            c.reads_done[r.request] = r.index
        needs_write = bool(rd.entries or rd.hard_state or rd.snapshot)
        if not needs_write and not self.write_queue:
            self._land(core, rd)
            return
        delay = c.rng.randrange(c.persist_delay + 1) if needs_write else 0
        when = max(c.now + delay, self.write_free_at)
        self.write_free_at = when
        self.write_queue.append(rd)
        c.schedule(when - c.now, "write", self.id, self.incarnation)

    def land_write(self, incarnation: int) -> None:
        """The oldest write in flight lands (writes land in the order they were handed out)."""
        if incarnation != self.incarnation or self.core is None or not self.write_queue:
            return
        self._land(self.core, self.write_queue.popleft())
        self.drain()

    def _land(self, core: RaftCore, rd: Ready) -> None:
        d = self.disk
        if rd.snapshot is not None:
            d.save_snapshot(rd.snapshot, self.sm_snapshot_at_restore(rd.snapshot), discard_log=True)
        if rd.entries:
            d.append(rd.entries)
        if rd.hard_state is not None:
            d.hard_state = rd.hard_state
        for m in rd.persisted_messages:
            self.cluster.send(m)
        core.advance(rd)

    def sm_snapshot_at_restore(self, meta: SnapshotMeta) -> bytes:
        base = [x for x in self.sm.base if x[0] <= meta.index]
        return pickle.dumps(base)

    def _apply(self, e: Entry) -> None:
        c = self.cluster
        if e.index != self.sm.applied + 1:
            c.checker.fail(f"{self.id} applied index {e.index} after {self.sm.applied}")
        self.sm.base.append((e.index, e.term, e.data))
        c.checker.on_apply(self.id, e)
        if e.kind is EntryKind.NORMAL:
            c.on_applied_proposal(self.id, e)

    def maybe_compact(self, keep: int) -> None:
        core = self.core
        if core is None or self.paused:
            return
        index = self.sm.applied - keep
        if index <= core.log.snapshot_index():
            return
        data = pickle.dumps([x for x in self.sm.base if x[0] <= index])
        term = core.log.term(index)
        if term is None:
            return
        meta = SnapshotMeta(LogIndex(index), term, core.conf)
        self.disk.save_snapshot(meta, data, discard_log=False)
        core.compact(LogIndex(index))
        self.cluster.trace(f"{self.id} compact {index}")


class SimCluster:
    """N cores on a virtual network. Used by the randomized simulator and scenario tests."""

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        heartbeat_ticks: int = 2,
        election_ticks: tuple[int, int] = (10, 20),
        max_append_bytes: int = 4096,
        max_inflight: int = 8,
        pre_vote: bool = True,
        check_quorum: bool = True,
        preferred_leader: NodeId | None = None,
        auto_tick: bool = True,
        trace: bool = False,
        core_patch: Callable[[RaftCore], None] | None = None,
        forget_vote_on_restart: bool = False,
        trace_lines: list[str] | None = None,
    ) -> None:
        self.rng = Random(seed)
        self.ids = [NodeId(chr(ord("a") + i)) for i in range(n)]
        self.conf = ConfState(tuple(self.ids))
        self.now = 0
        self._seq = 0
        self._events: list[_Event] = []
        self.auto_tick = auto_tick
        self.core_patch = core_patch
        self.forget_vote_on_restart = forget_vote_on_restart
        self.checker = SafetyChecker(self)
        self._trace = hashlib.sha256() if trace else None
        self.trace_lines = trace_lines

        # the network
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.delay = (1, 5)
        self.persist_delay = 3
        self.groups: dict[NodeId, int] = {}  # partition group per node; absent = group 0
        self.blocked_links: set[tuple[NodeId, NodeId]] = set()
        self.messages_sent = 0

        # the sim client's proposals
        self.proposals: dict[bytes, tuple[int, int] | None] = {}  # data -> (index, term) acked
        self.reads_done: dict[int, int] = {}

        self.nodes: dict[NodeId, SimNode] = {}
        for nid in self.ids:
            cfg = RaftConfig(
                node_id=nid,
                heartbeat_ticks=heartbeat_ticks,
                election_ticks_min=election_ticks[0],
                election_ticks_max=election_ticks[1],
                max_append_bytes=max_append_bytes,
                max_inflight=max_inflight,
                pre_vote=pre_vote,
                check_quorum=check_quorum,
                preferred_leader=nid == preferred_leader,
            )
            node = SimNode(self, nid, cfg)
            self.nodes[nid] = node
            node.boot()
        if auto_tick:
            self.schedule(1 + self.rng.randrange(TICK), "tick", self.ids[0])

    # ----- events -----

    def schedule(self, delay: int, kind: str, node: NodeId, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + delay, self._seq, kind, node, payload))

    def trace(self, line: str) -> None:
        if self._trace is not None:
            text = f"{self.now} {line}"
            self._trace.update(text.encode())
            if self.trace_lines is not None:
                self.trace_lines.append(text)

    def trace_digest(self) -> str:
        return self._trace.hexdigest() if self._trace is not None else ""

    def run_until(self, time: int) -> None:
        events = self._events
        while events and events[0][0] <= time:
            ev = heapq.heappop(events)
            self.now = ev[0]
            self._dispatch(ev[2], ev[3], ev[4])
        self.now = max(self.now, time)

    def run_until_true(
        self, predicate: Callable[[], bool], max_events: int = 100_000, *, strict: bool = True
    ) -> bool:
        """Process events one at a time until `predicate()` holds (scenario tests)."""
        self.drain_all()
        for _ in range(max_events):
            if predicate():
                return True
            if not self._events:
                break
            ev = heapq.heappop(self._events)
            self.now = ev[0]
            self._dispatch(ev[2], ev[3], ev[4])
        if predicate():
            return True
        if strict:
            raise AssertionError("the awaited condition never held")
        return False

    def run_for(self, ticks: int) -> None:
        self.run_until(self.now + ticks * TICK)

    def _dispatch(self, kind: str, nid: NodeId, payload: Any) -> None:
        node = self.nodes[nid]
        if kind == "tick":  # one event ticks every node, in a fixed order
            if self.auto_tick:
                self.schedule(TICK, "tick", nid)
            for n in self.nodes.values():
                if n.core is not None and not n.paused:
                    n.core.tick()
                    n.drain()
        elif kind == "msg":
            self._deliver(node, payload)
        elif kind == "write":
            if node.paused and payload == node.incarnation:
                self.schedule(TICK, "write", nid, payload)  # lands once it runs again
                return
            node.land_write(payload)
        elif node.core is not None and not node.paused:  # "snapshot-sent" / "-failed"
            node.core.report_snapshot(payload, ok=kind == "snapshot-sent")
            node.drain()

    # ----- the network -----

    def link_up(self, a: NodeId, b: NodeId) -> bool:
        return self.groups.get(a, 0) == self.groups.get(b, 0) and (a, b) not in self.blocked_links

    def send(self, m: Message) -> None:
        self.messages_sent += 1
        payload: Any = m
        if m.type is MessageType.SNAPSHOT:
            sender = self.nodes[m.sender]
            payload = (m, sender.disk.snapshot_data)
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self._lost(m)
            return
        lo, hi = self.delay
        self.schedule(self.rng.randint(lo, hi), "msg", m.to, payload)
        if self.dup_rate and self.rng.random() < self.dup_rate:
            self.schedule(self.rng.randint(lo, hi), "msg", m.to, payload)

    def _lost(self, m: Message) -> None:
        if m.type is MessageType.SNAPSHOT:
            # the transport sees its InstallSnapshot stream fail and says so
            self.schedule(TICK, "snapshot-failed", m.sender, m.to)

    def _deliver(self, node: SimNode, payload: Any) -> None:
        if isinstance(payload, tuple):
            m, data = payload
        else:
            m, data = payload, None
        if not self.link_up(m.sender, m.to) or node.core is None:
            self._lost(m)
            return
        if node.paused:
            self.schedule(TICK, "msg", node.id, payload)  # queued in the socket until resumed
            return
        if data is not None and m.snapshot is not None:
            node.inbox_snapshots[(m.snapshot.index, m.snapshot.term)] = data
            # the sender's InstallSnapshot stream completed
            self.schedule(self.rng.randint(*self.delay), "snapshot-sent", m.sender, m.to)
        node.core.step(m)
        node.drain()

    # ----- faults -----

    def partition(self, *groups: Iterable[NodeId]) -> None:
        self.groups = {}
        for gi, g in enumerate(groups, start=1):
            for nid in g:
                self.groups[nid] = gi
        self.trace(f"partition {groups}")

    def heal(self) -> None:
        self.groups = {}
        self.blocked_links.clear()
        self.trace("heal")

    def crash(self, nid: NodeId, *, torn: bool = True) -> None:
        node = self.nodes[nid]
        if node.core is None:
            return
        node.crash(self.rng if torn else None)
        self.trace(f"crash {nid}")

    def restart(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        if node.core is not None:
            return
        node.boot()
        self.trace(f"restart {nid}")
        node.drain()

    def pause(self, nid: NodeId) -> None:
        self.nodes[nid].paused = True
        self.trace(f"pause {nid}")

    def resume(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        node.paused = False
        self.trace(f"resume {nid}")
        node.drain()

    # ----- the client -----

    def leaders(self) -> list[NodeId]:
        return [
            n.id
            for n in self.nodes.values()
            if n.core is not None and not n.paused and n.core.role is Role.LEADER
        ]

    def propose(self, nid: NodeId, data: bytes) -> tuple[LogIndex, Term] | None:
        node = self.nodes[nid]
        if node.core is None or node.paused or node.core.role is not Role.LEADER:
            return None
        try:
            where = node.core.propose(data)
        except Exception:
            return None
        self.proposals.setdefault(data, None)
        self.trace(f"propose {nid} {data!r} -> {where}")
        node.drain()
        return where

    def on_applied_proposal(self, nid: NodeId, e: Entry) -> None:
        if e.data in self.proposals and self.proposals[e.data] is None:
            self.proposals[e.data] = (e.index, e.term)

    def read(self, nid: NodeId, request: int) -> bool:
        node = self.nodes[nid]
        if node.core is None or node.paused or node.core.role is not Role.LEADER:
            return False
        self.checker.on_read_request(request)
        node.core.read_index(request)
        node.drain()
        return True

    def tick(self, nid: NodeId, n: int = 1) -> None:
        """Manual ticks (scenario tests run with auto_tick=False)."""
        node = self.nodes[nid]
        for _ in range(n):
            if node.core is not None and not node.paused:
                node.core.tick()
                node.drain()

    def settle(self, max_time: int = 100_000) -> None:
        """Deliver everything in flight (manual-tick mode: no ticks are pending)."""
        self.drain_all()
        deadline = self.now + max_time
        while self._events and self._events[0][0] <= deadline:
            self.run_until(self._events[0][0])

    def drain_all(self) -> None:
        """Collect the Readies of calls made on cores directly (scenario tests)."""
        for node in self.nodes.values():
            node.drain()

    def core(self, nid: str) -> RaftCore:
        core = self.nodes[NodeId(nid)].core
        if core is None:
            raise AssertionError(f"{nid} is down")
        return core
