"""A virtual cluster of Raft cores: virtual clocks, virtual network, virtual disks.

Each SimNode plays the driver's part exactly as node/driver.py must: it sends a Ready's
`messages` at once, writes its entries and hard state to its SimDisk (tests/simulator/disk.py)
as one batch, fsyncs it after a delay that can be much longer than a message's, sends
`persisted_messages` only once that fsync completes, then calls advance(). Batches are written
in order, each fsynced before the next is written. A process crash keeps the page cache (the
unsynced batch is replayed and fsynced at restart); a power cut loses it (the unsynced batch
survives whole or not at all, decided by recovering torn pages). Either loses all volatile
state. Nodes may tick at their own rates, with their own phase. Nothing here reads a real
clock or a global random: one seeded Random drives everything, so a seed replays identically.
"""

from __future__ import annotations

import hashlib
import heapq
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any

from node.raft.core import RaftConfig, RaftCore
from node.raft.errors import RaftError
from node.raft.types import (
    ConfChange,
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
from tests.simulator.disk import SimDisk

TICK = 10  # virtual time units per tick


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
        self.write_queue: deque[Ready] = deque()  # handed out, not completed yet; in order
        self.syncing = 0  # how many Readies at the head of write_queue the running fsync covers
        self.inbox_snapshots: dict[tuple[int, int], bytes] = {}
        # fsync latency in time units: None means the cluster's 0..persist_delay
        self.fsync_range: tuple[int, int] | None = None
        self.fsync_stall = 0.0  # chance that one fsync takes fsync_stall_time more
        self.fsync_stall_time = (0, 0)
        self.tick_period = TICK  # with per-node clocks: this node's time between ticks

    @property
    def alive(self) -> bool:
        return self.core is not None

    def boot(self) -> None:
        d = self.disk
        d.recover()  # replayed is not synced: fsync what the page cache kept before using it
        hs = d.hard_state
        if self.cluster.forget_vote_on_restart:  # the deliberately broken variant
            hs = HardState(hs.term, None, hs.commit)
        # An initial member boots with the cluster's first configuration; a spare (a machine
        # that may be added later) with none: it learns it from the leader's log.
        initial = self.cluster.conf if self.id in self.cluster.conf else ConfState(())
        self.core = RaftCore(
            self.config,
            self.cluster.rng,
            conf=initial,
            hard_state=hs,
            snapshot=d.snapshot,
            entries=list(d.entries),
        )
        if self.cluster.core_patch is not None:
            self.cluster.core_patch(self.core)
        self.sm = StateMachine.restore(d.snapshot_data)
        self.write_queue.clear()
        self.syncing = 0
        self.inbox_snapshots.clear()

    def crash(self, torn_rng: Random | None, *, power: bool = False) -> str:
        """Stop the process. A process crash keeps the page cache (with torn_rng, the write
        of the unsynced batch may have been cut short); a power cut loses it."""
        self.core = None
        self.incarnation += 1
        self.paused = False
        self.write_queue.clear()  # handed out but never written: gone
        self.syncing = 0
        if power:
            return self.disk.power_cut(self.cluster.rng)
        if torn_rng is not None and self.disk.unsynced and torn_rng.random() < 0.2:
            self.disk.torn_write()
            return "killed inside its write: the unsynced batch is a torn tail"
        return "page cache kept" if self.disk.unsynced else "nothing unsynced"

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
            if c.on_role is not None:
                c.on_role(self.id, rd.soft_state.role)
        if rd.hard_state is not None and core.role is Role.LEADER:
            c.checker.on_leader_commit(core.term, rd.hard_state.commit, core)
            if c.on_commit is not None:
                c.on_commit(self.id)
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
        if not (rd.entries or rd.hard_state or rd.snapshot) and not self.write_queue:
            self._complete(core, rd)
            return
        self.write_queue.append(rd)
        self._pump(core)

    def _pump(self, core: RaftCore) -> None:
        """Write every queued Ready as one batch (group commit: what queued up while the last
        fsync ran shares the next one) and fsync it; a batch that needs no fsync (a commit
        index only) stays in the page cache and completes at once, as node/driver.py does."""
        if self.syncing or not self.write_queue:
            return
        needs_sync = False
        for rd in self.write_queue:
            snap = None
            if rd.snapshot is not None:
                snap = (rd.snapshot, self.sm_snapshot_at_restore(rd.snapshot))
            self.disk.write(rd.entries, rd.hard_state, snap)
            needs_sync = needs_sync or rd.must_sync or bool(rd.entries) or snap is not None
        if needs_sync:
            self.syncing = len(self.write_queue)
            self.cluster.schedule(self._fsync_delay(), "fsync", self.id, self.incarnation)
            return
        while self.write_queue:
            self._complete(core, self.write_queue.popleft())

    def _fsync_delay(self) -> int:
        c = self.cluster
        if self.fsync_range is None:
            return c.rng.randrange(c.persist_delay + 1)
        delay = c.rng.randint(*self.fsync_range)
        if self.fsync_stall and c.rng.random() < self.fsync_stall:
            delay += c.rng.randint(*self.fsync_stall_time)
        return delay

    def fsync_done(self, incarnation: int) -> None:
        """The fsync of the oldest batch completed: it is durable; acknowledge it."""
        if incarnation != self.incarnation or self.core is None or not self.syncing:
            return
        self.disk.fsync()
        core = self.core
        for _ in range(self.syncing):
            self._complete(core, self.write_queue.popleft())
        self.syncing = 0
        self._pump(core)
        self.drain()

    def _complete(self, core: RaftCore, rd: Ready) -> None:
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
        meta = SnapshotMeta(LogIndex(index), term, core.conf_at(LogIndex(index)))
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
        tick_periods: Sequence[int] | None = None,
        spares: int = 0,
    ) -> None:
        """tick_periods: each node's own time between ticks (per-node clock rates, each
        starting at a random phase); None ticks every node together, every TICK. spares:
        nodes beyond the first n, running with no configuration until they are added."""
        self.rng = Random(seed)
        self.ids = [NodeId(chr(ord("a") + i)) for i in range(n + spares)]
        self.conf = ConfState(tuple(self.ids[:n]))
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
        self.fifo = False  # True: each directed link delivers in order (one ordered stream)
        # called with (node, role) whenever a node's role changes: lets a nemesis react
        self.on_role: Callable[[NodeId, Role], None] | None = None
        self.on_commit: Callable[[NodeId], None] | None = None  # a leader's commit moved
        self.on_send: Callable[[Message], None] | None = None  # every message, as it is sent
        self.slow_rate = 0.0  # chance a message takes slow_delay more (the tail latency)
        self.slow_delay = (0, 0)
        self._link_free: dict[tuple[NodeId, NodeId], int] = {}  # FIFO: last delivery time
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
        if auto_tick and tick_periods is None:
            self.schedule(1 + self.rng.randrange(TICK), "tick", self.ids[0])
        elif auto_tick and tick_periods is not None:
            for nid, period in zip(self.ids, tick_periods, strict=True):
                self.nodes[nid].tick_period = period
                self.schedule(1 + self.rng.randrange(period), "node-tick", nid)

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
        elif kind == "node-tick":  # per-node clocks: this node alone, at its own rate
            self.schedule(node.tick_period, "node-tick", nid)
            if node.core is not None and not node.paused:
                node.core.tick()
                node.drain()
        elif kind == "msg":
            self._deliver(node, payload)
        elif kind == "fsync":
            if node.paused and payload == node.incarnation:
                self.schedule(TICK, "fsync", nid, payload)  # seen once the process runs again
                return
            node.fsync_done(payload)
        elif kind == "restart":
            if payload == node.incarnation:
                self.restart(nid)
        elif kind == "resume":
            if node.paused:
                self.resume(nid)
        elif kind == "call":  # a scheduled action of the test's nemesis
            payload()
        elif node.paused:  # "snapshot-sent" / "-failed": seen once the process runs again
            self.schedule(TICK, kind, nid, payload)
        elif node.core is not None:
            node.core.report_snapshot(payload, ok=kind == "snapshot-sent")
            node.drain()

    # ----- the network -----

    def link_up(self, a: NodeId, b: NodeId) -> bool:
        return self.groups.get(a, 0) == self.groups.get(b, 0) and (a, b) not in self.blocked_links

    def send(self, m: Message) -> None:
        self.messages_sent += 1
        if self.on_send is not None:
            self.on_send(m)
        payload: Any = m
        if m.type is MessageType.SNAPSHOT:
            sender = self.nodes[m.sender]
            payload = (m, sender.disk.snapshot_data)
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self._lost(m)
            return
        lo, hi = self.delay
        delay = self.rng.randint(lo, hi)
        if self.slow_rate and self.rng.random() < self.slow_rate:
            delay += self.rng.randint(*self.slow_delay)  # a hiccup: retransmits, a full buffer
        if self.fifo:
            link = (m.sender, m.to)
            at = max(self.now + delay, self._link_free.get(link, 0))
            self._link_free[link] = at
            delay = at - self.now
        self.schedule(delay, "msg", m.to, payload)
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

    def crash(self, nid: NodeId, *, torn: bool = True, power: bool = False) -> None:
        """Kill the process (SIGKILL: the page cache survives; torn, its write may have been
        cut short), or with power=True cut the machine's power (the page cache is lost)."""
        node = self.nodes[nid]
        if node.core is None:
            if power:  # the process was already down: its page cache goes now
                self.trace(f"power cut {nid} (down): {node.disk.power_cut(self.rng)}")
            return
        what = node.crash(self.rng if torn else None, power=power)
        self.trace(f"{'power cut' if power else 'crash'} {nid}: {what}")

    def restart_later(self, nid: NodeId, delay: int) -> None:
        """A supervisor brings a down node back after `delay`."""
        self.schedule(delay, "restart", nid, self.nodes[nid].incarnation)

    def resume_later(self, nid: NodeId, delay: int) -> None:
        self.schedule(delay, "resume", nid)

    def call_later(self, delay: int, action: Callable[[], None]) -> None:
        self.schedule(delay, "call", self.ids[0], action)

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

    def change(self, nid: NodeId, change: ConfChange) -> LogIndex | None:
        """Propose a membership change at leader `nid`; None if it refuses (the reason is in
        the trace)."""
        node = self.nodes[nid]
        if node.core is None or node.paused or node.core.role is not Role.LEADER:
            return None
        try:
            index, _ = node.core.propose_conf_change(change)
        except RaftError as exc:
            self.trace(f"change {nid} {change.op.value} {change.node} refused: {exc}")
            return None
        self.trace(f"change {nid} {change.op.value} {change.node} -> {index}")
        node.drain()
        return index

    def members(self) -> ConfState:
        """The configuration of the newest live leader (else the first one)."""
        leaders = sorted(self.leaders(), key=lambda n: self.core(n).term)
        return self.core(leaders[-1]).conf if leaders else self.conf

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
