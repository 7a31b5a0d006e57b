"""Real RaftDrivers, on real storage over the crash-model file system, in one virtual-time loop.

Issue 9: "run several real drivers, with real storage on the crash-model file system, in one
event loop, with power cuts at random points. This tests the driver's own persist-before-send
ordering, which nothing tests today."

One run (`run_seed`) is one cluster of 3 or 5 nodes built from one seed:

- a MemoryNetwork with seeded delays, drops and duplicates, partitions and heals;
- per node, a SkewedClock (its own rate and wall-clock offset), a CrashFileSystem of its own,
  Storage.open on it, and storage and CPU executors that run inline after a random delay (the
  disk is sometimes slower than the network);
- clients that follow the leader and keep several proposals in flight;
- random faults: power cuts (now, or armed to strike at the k-th next file operation, in the
  middle of a write), SIGKILLs, a power cut of a node that is already down, a power cut of the
  whole cluster, partitions, one-way cuts, heals. A crashed node restarts later from what its
  file system kept: Storage.open on the same file system and a new driver.

Then the faults stop, every node restarts, the network heals, and the cluster must quiesce.
The checks (Failure.kind):

- "two-leaders": at most one node sends AppendEntries / heartbeats / snapshots in a term, and
  at most one reports itself leader of it;
- "diverged": the applied sequences of all nodes, all incarnations, are prefixes of one another
  (state machine safety), and each is contiguous;
- "lost-ack": every proposal whose future resolved is at its index in every node's final
  applied sequence; "duplicate": no proposal is applied twice; "phantom": nothing refused
  before it was proposed (NotLeaderError, NoQuorumError) is ever applied;
- "compacted-ahead": no node compacts its log (stores a snapshot of its own) past what its
  state holds durably; "state-behind-log": no node restarts with a state behind a snapshot of
  its own, which the log no longer reaches (the state machine's database, modelled by
  StateDisk: a power cut returns it to any commit since its last complete checkpoint);
- "fatal": no driver stopped itself; "corrupt": no restart found its storage damaged;
- "stuck": the cluster converged (one leader, everything applied everywhere) after the faults.

Everything comes from the seed; a failure names the command that replays it (`python -m
tests.driversim`), and the run replays identically (the trace digest says so).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from node.config import ClusterConfig, parse_config
from node.driver import NodeError, OutcomeUnknownError, RaftDriver
from node.memory_transport import MemoryNetwork, MemoryTransport, NetworkFaults
from node.raft.errors import NotLeaderError
from node.raft.types import (
    Message,
    MessageType,
    NodeId,
    Role,
    SnapshotMeta,
    SoftState,
)
from node.seams import InlineExecutor
from node.storage import Storage, StorageError
from tests.driversim.vloop import SkewedClock, VirtualTimeLoop
from tests.storage.crashfs import CrashFileSystem, PowerCut

T = TypeVar("T")

DriverClass = Callable[..., RaftDriver[int]]
LEADER_MESSAGES = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
DATA_ROOT = Path("/sim")
DISK_S = (0.0003, 0.03)  # the range of a node's typical write time (log-uniform)
STALL = 0.02  # the share of writes that stall for 10-80 ms
PARTIAL_CHECKPOINT = 0.15  # the share of the state's checkpoints a reader holds back


def disk_speed(rng: random.Random) -> float:
    lo, hi = DISK_S
    return float(lo * (hi / lo) ** rng.random())


class SimFailure(AssertionError):
    """A seed that broke a check; str() says what, and how to replay it."""

    def __init__(self, kind: str, detail: str, seed: int, nodes: int, driver: str) -> None:
        self.kind = kind
        self.detail = detail
        self.seed = seed
        super().__init__(
            f"{kind}: {detail}\nreplay: {replay_command(seed, nodes, driver)}",
        )


def replay_command(seed: int, nodes: int, driver: str = "real") -> str:
    cmd = f"PYTHONPATH=. .venv/bin/python -m tests.driversim --nodes {nodes} --seed {seed}"
    if driver != "real":
        cmd += f" --driver {driver}"
    return cmd + " -v"


class _Violation(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# ---------------------------------------------------------------------------- the state machine


class StateDisk:
    """What a node's state machine database holds across its incarnations, modelled as SQLite
    in WAL mode with synchronous=NORMAL keeps it (TRAPS): every committed batch survives a
    SIGKILL, but a power cut returns it to any committed batch at or after its last complete
    checkpoint (or install), drawn from the run's seed. The harness keeps the lengths of those
    commits: the copies a real test would keep of the database file."""

    def __init__(self, rng: random.Random) -> None:
        self.seq: list[bytes | None] = []
        self.durable = 0  # length at the last complete checkpoint, install or power cut
        self.commits: list[int] = []  # lengths at each commit since then
        self._rng = rng

    def commit(self) -> None:
        self.commits.append(len(self.seq))

    def make_durable(self) -> None:
        self.durable = len(self.seq)
        self.commits = []

    def power_cut(self) -> int:
        """Back to one of the commits the database may hold; returns the new length."""
        keep = self._rng.choice([self.durable, *self.commits])
        del self.seq[keep:]
        self.make_durable()
        return keep


class ListState:
    """A state machine whose state is its applied sequence: entry data (None for a no-op) in
    log order from index 1, so two replicas agree iff their sequences do. It keeps its state
    on a StateDisk, as the chat state keeps its database, and speaks the driver's protocol
    (node.driver.StateMachine): batches, checkpoints (sometimes partial: a reader held one
    back), copies to a file and installs from one. Every apply and every install is reported
    to `check`, which compares it with every other replica's."""

    def __init__(
        self,
        disk: StateDisk,
        check: Callable[[int, bytes | None, int], None],
        rng: random.Random,
    ) -> None:
        self.disk = disk
        self._check = check
        self._rng = rng

    @property
    def seq(self) -> list[bytes | None]:
        return self.disk.seq

    @property
    def applied_index(self) -> int:
        return len(self.disk.seq)

    def apply_batch(
        self, entries: Sequence[tuple[int, bytes | None]], conf: str | None = None
    ) -> list[int | None]:
        results: list[int | None] = []
        for index, data in entries:
            if index <= len(self.disk.seq):
                results.append(None)
                continue
            self._check(index, data, len(self.disk.seq) + 1)
            self.disk.seq.append(data)
            results.append(None if data is None else index)
        self.disk.commit()
        return results

    def checkpoint(self) -> int | None:
        if self._rng.random() < PARTIAL_CHECKPOINT:
            return None
        self.disk.make_durable()
        return len(self.disk.seq)

    def copy_to(self, dest: Path) -> int:
        items = [None if d is None else d.decode() for d in self.disk.seq]
        dest.write_text(json.dumps(items), encoding="utf-8")
        return len(items)

    @staticmethod
    def _decode(path: Path) -> list[bytes | None]:
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise ValueError(f"not a list-state copy: {exc}") from None
        if not isinstance(items, list) or not all(i is None or isinstance(i, str) for i in items):
            raise ValueError("not a list-state copy: not a list of strings")
        return [None if i is None else i.encode() for i in items]

    def validate_copy(self, path: Path) -> int:
        return len(self._decode(path))

    def install(self, path: Path) -> None:
        seq = self._decode(path)
        for i, d in enumerate(seq, start=1):
            self._check(i, d, i)
        self.disk.seq[:] = seq
        self.disk.make_durable()  # a new generation, fsynced before it is switched to
        path.unlink()

    def digest_at(self) -> tuple[int, str]:
        items = [None if d is None else d.decode() for d in self.disk.seq]
        return len(items), hashlib.sha256(json.dumps(items).encode()).hexdigest()


# ---------------------------------------------------------------------------- seams for the run


class DiskExecutor(InlineExecutor):
    """The storage executor: inline after a random delay; a PowerCut raised by the file system
    in the middle of a write kills the node right there (the call never returns)."""

    def __init__(self, delay: Callable[[], float]) -> None:
        super().__init__(delay)
        self.on_power_cut: Callable[[], None] = lambda: None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await super().run(fn, *args)
        except PowerCut:
            self.on_power_cut()
            raise asyncio.CancelledError() from None


class WatchedNetwork(MemoryNetwork):
    """A MemoryNetwork that notes who acts as leader of which term, from what it carries."""

    def __init__(self, rng: random.Random, faults: NetworkFaults, on_leader: _LeaderBook) -> None:
        super().__init__(rng, faults)
        self._book = on_leader

    def post(self, m: Message) -> None:
        if m.type in LEADER_MESSAGES:
            self._book.saw(m.term, m.sender, f"sent {m.type.value} to {m.to}")
        super().post(m)


class _LeaderBook:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.leaders: dict[int, tuple[NodeId, str]] = {}
        self.violation: _Violation | None = None
        self._clock = clock

    def saw(self, term: int, node: NodeId, how: str) -> None:
        known = self.leaders.setdefault(term, (node, how))
        if known[0] != node and self.violation is None:
            self.violation = _Violation(
                "two-leaders",
                f"term {term}: {known[0]} ({known[1]}) and {node} ({how}) at t={self._clock():.3f}",
            )


# ---------------------------------------------------------------------------- the profile


@dataclass(frozen=True)
class Profile:
    """How hard a run shakes the cluster; every number is drawn per seed within these."""

    fault_s: float = 2.5  # virtual seconds of faults
    calm_s: tuple[float, float] = (0.1, 0.5)  # a spell without new faults, under load
    max_storm: int = 3  # faults in the storm that ends it
    storm_gap_s: float = 0.03  # mean time between the faults of a storm
    heal_after_calm: float = 0.5
    clients: int = 4
    max_burst: int = 6  # proposals a client keeps in flight at once
    propose_timeout_s: float = 1.0
    settle_s: float = 30.0  # virtual seconds the cluster gets to converge afterwards
    # fault weights
    power_cut: float = 3.0
    power_cut_leader: float = 2.0
    sigkill_leader: float = 1.0
    isolate_leader: float = 1.0
    disk_speed: float = 1.0
    armed_power_cut: float = 3.0
    sigkill: float = 1.5
    power_cut_down: float = 0.5
    power_cut_all: float = 0.6
    partition: float = 1.5
    one_way_cut: float = 0.5
    heal: float = 1.5


YAML = """\
cluster: driversim
leader: {leader}
data_dir: {root}
raft: {{heartbeat_ms: 50, election_timeout_ms: [200, 400]}}
snapshot: {{entries: {snapshot_entries}}}
nodes:
{nodes}
"""


def cluster_config(ids: Sequence[str], leader: str | None, snapshot_entries: int) -> ClusterConfig:
    nodes = "\n".join(
        f"  {n}: {{host: 127.0.0.1, port: {i + 1}, peer_port: {i + 101}}}"
        for i, n in enumerate(ids)
    )
    text = YAML.format(
        leader=leader if leader is not None else "null",
        root=DATA_ROOT,
        snapshot_entries=snapshot_entries,
        nodes=nodes,
    )
    if leader is None:
        text = text.replace("leader: null\n", "")
    return parse_config(text, DATA_ROOT / "cluster.yaml")


# ---------------------------------------------------------------------------- one node


@dataclass
class Slot:
    id: NodeId
    fs: CrashFileSystem
    clock: SkewedClock
    disk: StateDisk
    spool: Path  # a real directory: the state's copies and snapshots in transit
    driver: RaftDriver[int] | None = None
    storage: Storage | None = None
    transport: MemoryTransport | None = None
    incarnation: int = 0
    state: ListState | None = None
    # the indexes of the snapshots this node took of its own state (never an install)
    local_snapshots: set[int] = field(default_factory=set)
    disk_s: float = 0.002  # its typical write time: the network is faster or slower

    @property
    def up(self) -> bool:
        return self.driver is not None


@dataclass
class Outcome:
    seed: int
    nodes: int
    driver: str
    acked: int
    unknown: int
    refused: int
    crashes: int
    final_index: int
    digest: str  # of the whole trace: equal digests, identical runs
    trace: list[str] = field(repr=False, default_factory=list)


# ---------------------------------------------------------------------------- the run


class Sim:
    def __init__(
        self, seed: int, nodes: int, driver_class: DriverClass, driver_name: str, profile: Profile
    ) -> None:
        self.seed = seed
        self.n = nodes
        self.driver_class = driver_class
        self.driver_name = driver_name
        self.profile = profile
        self.ids = [NodeId(chr(ord("a") + i)) for i in range(nodes)]
        self.rng = random.Random(f"{seed}/faults")
        self.client_rng = random.Random(f"{seed}/clients")
        self.disk_rng = random.Random(f"{seed}/disk")
        self.tear_rng = random.Random(f"{seed}/tear")
        setup = random.Random(f"{seed}/setup")
        self.config = cluster_config(
            self.ids,
            setup.choice([None, *self.ids]),
            setup.choice([8, 16, 32, 1000]),
        )
        faults = NetworkFaults(
            delay_s=(0.0002, setup.choice([0.001, 0.003, 0.01])),
            drop=setup.choice([0.0, 0.01, 0.05]),
            duplicate=setup.choice([0.0, 0.01, 0.05]),
        )
        self.trace: list[str] = []
        self.book = _LeaderBook(self.now)
        self.net = WatchedNetwork(random.Random(f"{seed}/net"), faults, self.book)
        self.spool_root = Path(tempfile.mkdtemp(prefix="driversim-"))
        self.slots = {
            i: Slot(
                i,
                CrashFileSystem(),
                SkewedClock(setup.uniform(0.9, 1.1), setup.randint(-60_000, 60_000)),
                StateDisk(random.Random(f"{seed}/{i}/state-disk")),
                self.spool_root / i,
                disk_s=disk_speed(setup),
            )
            for i in self.ids
        }
        for slot in self.slots.values():
            slot.spool.mkdir()
        self.canonical: list[tuple[bytes | None, str]] = []  # data, who applied it first
        self.violation: _Violation | None = None
        self.acked: dict[bytes, int] = {}
        self.unknown: set[bytes] = set()
        self.refused: set[bytes] = set()
        self.crashes = 0
        self.faults_on = True
        self.clients_on = True
        self._restarts: list[asyncio.TimerHandle] = []

    # -- bookkeeping ------------------------------------------------------------------------

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def note(self, what: str) -> None:
        self.trace.append(f"{self.now():8.4f} {what}")

    def violate(self, kind: str, detail: str) -> None:
        if self.violation is None:
            self.violation = _Violation(kind, detail)
            self.note(f"VIOLATION {kind}: {detail}")

    def _checker(self, node: NodeId, incarnation: int) -> Callable[[int, bytes | None, int], None]:
        who = f"{node}#{incarnation}"

        def check(index: int, data: bytes | None, expected: int) -> None:
            if index != expected:
                self.violate("diverged", f"{who} applied index {index}, expected {expected}")
            elif index <= len(self.canonical):
                first, by = self.canonical[index - 1]
                if first != data:
                    self.violate(
                        "diverged",
                        f"index {index}: {who} applied {data!r}, {by} applied {first!r}",
                    )
            elif index == len(self.canonical) + 1:
                self.canonical.append((data, who))
            else:
                self.violate("diverged", f"{who} applied index {index} past every other node")

        return check

    # -- nodes ------------------------------------------------------------------------------

    def start(self, slot: Slot) -> None:
        if slot.up:
            return
        slot.incarnation += 1
        try:
            storage = Storage.open(DATA_ROOT / slot.id, fs=slot.fs)
        except StorageError as exc:
            self.violate("corrupt", f"{slot.id} could not reopen its storage: {exc}")
            return
        self._check_state_reaches_log(slot, storage)
        self._watch_snapshots(slot, storage)
        state = ListState(
            slot.disk,
            self._checker(slot.id, slot.incarnation),
            random.Random(f"{self.seed}/{slot.id}/{slot.incarnation}/checkpoints"),
        )
        for leftover in slot.spool.iterdir():  # as Storage.open empties its spool
            leftover.unlink()
        transport = self.net.transport(slot.id)
        rng = random.Random(f"{self.seed}/{slot.id}/{slot.incarnation}")
        disk = self.disk_rng

        def disk_delay() -> float:
            if disk.random() < STALL:
                return disk.uniform(0.01, 0.08)
            return slot.disk_s * disk.uniform(0.5, 1.5)

        disk_executor = DiskExecutor(disk_delay)
        driver = self.driver_class(
            node_id=slot.id,
            config=self.config,
            storage=storage,
            state=state,
            transport=transport,
            rng=rng,
            clock=slot.clock,
            storage_executor=disk_executor,
            cpu_executor=InlineExecutor(lambda: disk.uniform(0.0, 0.004)),
            apply_executor=InlineExecutor(lambda: disk.uniform(0.0, 0.001)),
            spool_dir=slot.spool,
        )
        disk_executor.on_power_cut = lambda: self._mid_op_power_cut(slot, driver)
        self._watch_soft_state(driver)
        slot.driver, slot.storage, slot.transport, slot.state = driver, storage, transport, state
        self.net.attach(slot.id, driver)
        driver.start()
        self.note(f"start {slot.id}#{slot.incarnation}")

    def _watch_soft_state(self, driver: RaftDriver[int]) -> None:
        on_soft_state = driver._on_soft_state

        def watched(soft: SoftState) -> None:
            if soft.role is Role.LEADER:
                self.book.saw(soft.term, driver.id, "became leader")
            on_soft_state(soft)

        driver._on_soft_state = watched  # type: ignore[method-assign]

    def _check_state_reaches_log(self, slot: Slot, storage: Storage) -> None:
        """At restart, the state must reach the log: the entries after its applied index are
        still stored. A state behind the stored snapshot is repaired at start by installing
        that snapshot again, which is right only for an install from the leader that a crash
        cut short (the storage holds it first, then the state switches). Behind a snapshot of
        its own, the log was compacted ahead of the database: the bug of issue 13."""
        snapshot = storage.initial_state().snapshot
        applied = len(slot.disk.seq)
        if snapshot is None or snapshot.index not in slot.local_snapshots:
            return
        if applied < snapshot.index:
            self.violate(
                "state-behind-log",
                f"{slot.id}#{slot.incarnation} restarts with its state at {applied}, but its "
                f"log starts at {snapshot.index + 1} after a snapshot of its own: entries "
                f"{applied + 1}..{snapshot.index} were compacted away",
            )

    def _watch_snapshots(self, slot: Slot, storage: Storage) -> None:
        """The log may be compacted only up to what the state holds durably (issue 13), checked
        where storage compacts it (compact), not only at the next restart: a power cut must
        follow, and draw a commit below the snapshot, for the restart check to see it."""
        compact = storage.compact

        def watched(meta: SnapshotMeta) -> None:
            if meta.index > slot.disk.durable:
                self.violate(
                    "compacted-ahead",
                    f"{slot.id} compacted its log to {meta.index}, but its state holds only "
                    f"{slot.disk.durable} durably",
                )
            slot.local_snapshots.add(meta.index)  # first: a power cut may strike in compact
            compact(meta)

        storage.compact = watched  # type: ignore[method-assign]

    def _kill(self, slot: Slot, how: str) -> bool:
        driver, transport = slot.driver, slot.transport
        if driver is None or transport is None:
            return False
        if driver.fatal is not None:
            self.violate("fatal", f"{slot.id} stopped itself: {driver.fatal!r}")
        driver.crash()
        transport.abandon()
        self.net.detach(slot.id)
        slot.driver = slot.storage = slot.transport = slot.state = None  # never closed
        self.crashes += 1
        self.note(f"{how} {slot.id}#{slot.incarnation}")
        return True

    def _mid_op_power_cut(self, slot: Slot, driver: RaftDriver[int]) -> None:
        if slot.driver is driver:
            self.power_cut(slot, "power cut mid-write of")
        else:  # a stale incarnation's call: that process died already
            self.violate("loop-error", f"{slot.id}: a dead incarnation wrote to its disk")

    def power_cut(self, slot: Slot, how: str = "power-cut") -> None:
        was_up = self._kill(slot, how)
        if not was_up:
            self.note(f"{how} {slot.id} (down)")
        slot.fs.crash(self.tear_rng)
        kept = slot.disk.power_cut()
        self.note(f"state of {slot.id} back to {kept}")
        if was_up:
            self._schedule_restart(slot)

    def sigkill(self, slot: Slot, how: str = "sigkill") -> None:
        if self._kill(slot, how):
            slot.fs.crash_process()
            self._schedule_restart(slot)

    def _schedule_restart(self, slot: Slot) -> None:
        if self.faults_on:
            delay = self.rng.uniform(0.02, 0.8)
            self._restarts.append(asyncio.get_running_loop().call_later(delay, self.start, slot))

    # -- faults -----------------------------------------------------------------------------

    def _up(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.up]

    def _down(self) -> list[Slot]:
        return [s for s in self.slots.values() if not s.up]

    async def nemesis(self) -> None:
        """Calm spells under load, each ended by a storm of a few faults close together."""
        p = self.profile
        kinds = [
            ("power-cut", p.power_cut),
            ("armed-power-cut", p.armed_power_cut),
            ("sigkill", p.sigkill),
            ("power-cut-down", p.power_cut_down),
            ("power-cut-all", p.power_cut_all),
            ("power-cut-leader", p.power_cut_leader),
            ("sigkill-leader", p.sigkill_leader),
            ("isolate-leader", p.isolate_leader),
            ("disk-speed", p.disk_speed),
            ("partition", p.partition),
            ("one-way-cut", p.one_way_cut),
            ("heal", p.heal),
        ]
        names = [k for k, _ in kinds]
        weights = [w for _, w in kinds]
        end = self.now() + p.fault_s
        while self.now() < end and self.violation is None:
            await asyncio.sleep(self.rng.uniform(*p.calm_s))
            if self.rng.random() < p.heal_after_calm:
                self.net.heal()
                self.note("heal")
            for _ in range(self.rng.randint(1, p.max_storm)):
                self.fault(self.rng.choices(names, weights)[0])
                await asyncio.sleep(self.rng.expovariate(1 / p.storm_gap_s))

    def fault(self, kind: str) -> None:
        up, down = self._up(), self._down()
        minority = (self.n - 1) // 2
        may_kill = len(down) < minority or (len(down) == minority and self.rng.random() < 0.2)
        leaders = [s for s in up if s.driver is not None and s.driver.is_leader]
        if kind.endswith("-leader"):
            if not leaders:
                return
            leader = leaders[-1]
            if kind == "isolate-leader":
                others = sorted(i for i in self.ids if i != leader.id)
                self.net.partition([leader.id], others)
                self.note(f"isolate the leader {leader.id}")
            elif may_kill and kind == "power-cut-leader":
                self.power_cut(leader, "power-cut the leader")
            elif may_kill:
                self.sigkill(leader, "sigkill the leader")
        elif kind == "disk-speed":
            slot = self.rng.choice(list(self.slots.values()))
            slot.disk_s = disk_speed(self.rng)
            self.note(f"disk of {slot.id} now writes in {slot.disk_s * 1000:.1f} ms")
        elif kind in ("power-cut", "sigkill", "armed-power-cut") and up and may_kill:
            slot = self.rng.choice(up)
            if kind == "power-cut":
                self.power_cut(slot)
            elif kind == "sigkill":
                self.sigkill(slot)
            else:
                ops = self.rng.randint(0, 24)
                slot.fs.cut_power_after(ops)
                self.note(f"arm power cut of {slot.id} after {ops} file operations")
        elif kind == "power-cut-down" and down:
            self.power_cut(self.rng.choice(down))
        elif kind == "power-cut-all":
            for slot in self.slots.values():
                self.power_cut(slot)
        elif kind == "partition":
            order = list(self.ids)
            self.rng.shuffle(order)
            cut = self.rng.randint(1, self.n - 1)
            groups = [sorted(order[:cut]), sorted(order[cut:])]
            self.net.partition(*groups)
            self.note(f"partition {','.join(groups[0])} | {','.join(groups[1])}")
        elif kind == "one-way-cut":
            a, b = self.rng.sample(self.ids, 2)
            self.net.cut(a, b)
            self.note(f"cut {a} -> {b}")
        elif kind == "heal":
            self.net.heal()
            self.note("heal")

    async def end_faults(self) -> None:
        self.faults_on = False
        for handle in self._restarts:
            handle.cancel()
        for slot in self.slots.values():
            slot.fs.cut_power_after(1 << 60)  # disarm
        self.net.heal()
        self.note("faults end: heal, restart every node")
        for slot in self.slots.values():
            self.start(slot)

    # -- clients ----------------------------------------------------------------------------

    async def client(self, cid: int) -> None:
        rng = self.client_rng
        seq = 0
        target = rng.choice(self.ids)
        while self.clients_on and self.violation is None:
            driver = self.slots[target].driver
            if driver is None or not driver.is_leader:
                hint = driver.leader if driver is not None else None
                target = hint if hint is not None and hint != target else rng.choice(self.ids)
                await asyncio.sleep(rng.uniform(0.005, 0.03))
                continue
            burst = []
            for _ in range(rng.randint(1, self.profile.max_burst)):
                seq += 1
                burst.append(self.propose(driver, f"{cid}.{seq}".encode()))
            await asyncio.gather(*burst)
            await asyncio.sleep(rng.uniform(0.0, 0.02))

    async def propose(self, driver: RaftDriver[int], data: bytes) -> None:
        try:
            index = await driver.propose(data, self.profile.propose_timeout_s)
        except NotLeaderError:
            self.refused.add(data)
        except OutcomeUnknownError:
            self.unknown.add(data)
        except NodeError:  # NoQuorumError: refused before proposing
            self.refused.add(data)
        else:
            self.acked[data] = index

    # -- the end ----------------------------------------------------------------------------

    def converged(self) -> bool:
        drivers = [s.driver for s in self.slots.values()]
        if any(d is None for d in drivers):
            return False
        leaders = [d for d in drivers if d is not None and d.is_leader]
        if len(leaders) != 1:
            return False
        log = leaders[0].core.log
        if log.committed != log.last_index():
            return False
        return all(
            d is not None and d.applied_index == log.committed and d.leader == leaders[0].id
            for d in drivers
        )

    def final_checks(self) -> None:
        seqs = {s.id: s.disk.seq for s in self.slots.values()}
        first = next(iter(seqs.values()))
        for node, seq in seqs.items():
            if seq != first:
                self.violate("diverged", f"final sequences of {self.ids[0]} and {node} differ")
                return
        count: dict[bytes, int] = {}
        for d in first:
            if d is not None:
                count[d] = count.get(d, 0) + 1
        for data, index in sorted(self.acked.items(), key=lambda kv: kv[1]):
            got = first[index - 1] if index <= len(first) else "nothing"
            if got != data:
                self.violate(
                    "lost-ack",
                    f"{data!r} was acknowledged at index {index}; the final log has {got!r} "
                    f"there (final length {len(first)})",
                )
                return
        for data, times in sorted(count.items()):
            if times > 1:
                self.violate("duplicate", f"{data!r} applied {times} times")
                return
            if data in self.refused:
                self.violate("phantom", f"{data!r} was refused before proposing, yet applied")
                return

    async def main(self) -> Outcome:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        self.note(
            f"seed {self.seed}: {self.n} nodes, {self.driver_name} driver, leader hint "
            f"{self.config.leader}, snapshot every {self.config.snapshot.entries}, "
            f"network {self.net.faults}, disks "
            + ", ".join(f"{s.id} {s.disk_s * 1000:.1f} ms" for s in self.slots.values())
        )
        for slot in self.slots.values():
            self.start(slot)
        clients = [
            asyncio.create_task(self.client(c), name=f"client-{c}")
            for c in range(self.profile.clients)
        ]
        await self.nemesis()
        self.clients_on = False
        await asyncio.gather(*clients)
        if self.violation is None:
            await self.end_faults()
            deadline = self.now() + self.profile.settle_s
            while not self.converged() and self.violation is None and self.book.violation is None:
                if self.now() > deadline:
                    self.violate("stuck", self._describe_stuck())
                    break
                await asyncio.sleep(0.05)
        self.violation = self.violation or self.book.violation
        for slot in self.slots.values():
            if slot.driver is not None and slot.driver.fatal is not None:
                self.violate("fatal", f"{slot.id} stopped itself: {slot.driver.fatal!r}")
        if self.violation is None:
            self.final_checks()
        final_index = max((len(s.disk.seq) for s in self.slots.values()), default=0)
        for slot in self.slots.values():
            self._kill(slot, "teardown")
        await self._drain()
        return self._outcome(final_index)

    def _describe_stuck(self) -> str:
        parts = []
        for s in self.slots.values():
            d = s.driver
            if d is None:
                parts.append(f"{s.id}: down")
                continue
            st = d.status()
            parts.append(
                f"{s.id}: {st.role.value} term {st.term} leader {st.leader} commit "
                f"{st.commit_index} applied {st.applied_index} last {st.last_index}"
            )
        return f"no convergence in {self.profile.settle_s} s: " + "; ".join(parts)

    async def _drain(self) -> None:
        me = asyncio.current_task()
        for _ in range(3):
            rest = [t for t in asyncio.all_tasks() if t is not me]
            if not rest:
                return
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, _Violation):
            self.violate(exc.kind, exc.detail)
            return
        self.violate("loop-error", f"{context.get('message')}: {exc!r}")

    def _outcome(self, final_index: int) -> Outcome:
        digest = hashlib.sha256()
        for line in self.trace:
            digest.update(line.encode())
        for acked, index in sorted(self.acked.items()):
            digest.update(b"%s@%d" % (acked, index))
        for data, _ in self.canonical:
            digest.update(data or b"-")
        digest.update(str(self.net.delivered).encode())
        return Outcome(
            seed=self.seed,
            nodes=self.n,
            driver=self.driver_name,
            acked=len(self.acked),
            unknown=len(self.unknown),
            refused=len(self.refused),
            crashes=self.crashes,
            final_index=final_index,
            digest=digest.hexdigest(),
            trace=self.trace,
        )


def run_seed(
    seed: int,
    nodes: int = 3,
    driver: str = "real",
    profile: Profile | None = None,
) -> Outcome:
    """One whole run; raises SimFailure (with the replay command) if a check failed."""
    from tests.driversim.broken import DRIVERS

    sim = Sim(seed, nodes, DRIVERS[driver], driver, profile or Profile())
    quiet = logging.getLogger("node")
    level = quiet.level
    if not os.environ.get("DRIVERSIM_LOG"):
        quiet.setLevel(logging.CRITICAL + 1)
    loop = VirtualTimeLoop()
    try:
        outcome = loop.run_until_complete(sim.main())
    finally:
        quiet.setLevel(level)
        loop.close()
        shutil.rmtree(sim.spool_root, ignore_errors=True)
    if sim.violation is not None:
        tail = "\n".join(sim.trace[-25:])
        raise SimFailure(
            sim.violation.kind,
            f"{sim.violation.detail}\n--- trace tail ---\n{tail}",
            seed,
            nodes,
            driver,
        )
    return outcome
