"""Unit tests of RaftDriver's fixes from the seams change (issue 9), one driver at a time on
the virtual-time loop (tests/driversim/vloop.py), with real storage on the crash-model file
system and a transport that only records what is sent. The peers are played by the test: it
hands the driver the messages a leader would send.

Each test names the fix it guards and fails without it (see the docstrings)."""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from node.config import ClusterConfig, parse_config
from node.driver import NoQuorumError, OutcomeUnknownError, RaftDriver
from node.raft.errors import InvariantError, NotLeaderError
from node.raft.types import (
    ConfState,
    Entry,
    LogIndex,
    Message,
    MessageType,
    NodeId,
    SnapshotMeta,
    Term,
)
from node.seams import InlineExecutor, SnapshotInvalidError, SpoolFile, TransportEvents
from node.storage import Storage
from tests.driversim.harness import ListState, StateDisk
from tests.driversim.vloop import SkewedClock, run
from tests.storage.crashfs import CrashFileSystem

T = TypeVar("T")

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")
CONF = ConfState((A, B, C))
ROOT = Path("/units")
SPOOL = Path(tempfile.gettempdir())  # replaced per test by a temporary directory (below)


@pytest.fixture(autouse=True)
def _spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real directory for the state's copies and snapshots in transit (SQLite and the
    transports write them outside the storage's crash-model file layer)."""
    monkeypatch.setitem(globals(), "SPOOL", tmp_path)


def list_state() -> ListState:
    return ListState(StateDisk(random.Random(0)), lambda index, data, expected: None, _NO_PARTIAL)


class _NeverPartial(random.Random):
    def random(self) -> float:
        return 1.0  # ListState's checkpoints are never partial here


_NO_PARTIAL = _NeverPartial()


def config(ids: str = "abc", snapshot_entries: int = 1000) -> ClusterConfig:
    nodes = "".join(
        f"  {n}: {{host: 127.0.0.1, port: {i + 1}, peer_port: {i + 101}}}\n"
        for i, n in enumerate(ids)
    )
    text = (
        f"cluster: units\ndata_dir: {ROOT}\nsnapshot: {{entries: {snapshot_entries}}}\n"
        f"nodes:\n{nodes}"
    )
    return parse_config(text, ROOT / "cluster.yaml")


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    def start(self, events: TransportEvents) -> None:
        pass

    def send(self, m: Message) -> None:
        self.sent.append(m)

    async def close(self) -> None:
        pass


class ThreadLikeExecutor:
    """The CPU pool as two threads would run it: calls overlap in time (each takes `delay_s`
    of virtual time between starting and finishing), and a call named in `held` waits at a
    gate until the test releases it. Records every pair of state.copy_to()/state.checkpoint()
    and state.install() calls that were under way at once (the test gives it as the CPU and
    the apply executor)."""

    def __init__(self, delay_s: float = 0.001, held: tuple[str, ...] = ()) -> None:
        self.delay_s = delay_s
        self.held = set(held)
        self.gates: dict[str, asyncio.Event] = {}
        self.active: list[str] = []
        self.overlaps: list[tuple[str, str]] = []

    def waiting(self, name: str) -> bool:
        return name in self.gates and not self.gates[name].is_set()

    def release(self, name: str) -> None:
        self.held.discard(name)
        if name in self.gates:
            self.gates[name].set()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        name = getattr(fn, "__name__", repr(fn))
        for other in self.active:
            if "install" in {name, other} and {name, other} <= {"copy_to", "checkpoint", "install"}:
                self.overlaps.append((other, name))
        self.active.append(name)
        try:
            if name in self.held:
                gate = self.gates[name] = asyncio.Event()
                await gate.wait()
            await asyncio.sleep(self.delay_s)
            return fn(*args)
        finally:
            self.active.remove(name)

    def shutdown(self) -> None:
        pass


class GatedStorageExecutor(InlineExecutor):
    """The storage thread (FIFO, a small delay), whose next call matching `hold` waits until
    the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(lambda: 0.001)
        self.hold: Callable[[Callable[..., Any], tuple[object, ...]], bool] | None = None
        self.gate = asyncio.Event()
        self.holding = False

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.hold is not None and self.hold(fn, args):
            self.hold = None
            self.holding = True
            await self.gate.wait()
            self.holding = False
        return await super().run(fn, *args)


def make_driver(
    node: NodeId = B,
    *,
    cfg: ClusterConfig | None = None,
    cpu: Any = None,
    storage_executor: Any = None,
    fs: CrashFileSystem | None = None,
) -> tuple[RaftDriver[int], RecordingTransport]:
    transport = RecordingTransport()
    storage = Storage.open(ROOT / node, fs=fs or CrashFileSystem())
    spool = SPOOL / node
    spool.mkdir(exist_ok=True)
    cpu = cpu or ThreadLikeExecutor()
    driver: RaftDriver[int] = RaftDriver(
        node_id=node,
        config=cfg or config(),
        storage=storage,
        state=list_state(),
        transport=transport,
        clock=SkewedClock(),
        storage_executor=storage_executor or InlineExecutor(lambda: 0.001),
        cpu_executor=cpu,
        apply_executor=cpu,
        spool_dir=spool,
    )
    return driver, transport


def entries(lo: int, hi: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(Term(term), LogIndex(i), data=b"e%d" % i) for i in range(lo, hi + 1))


def append(prev: int, new: tuple[Entry, ...], commit: int, term: int = 1) -> Message:
    return Message(
        MessageType.APPEND,
        A,
        B,
        Term(term),
        log_term=Term(term if prev else 0),
        index=LogIndex(prev),
        entries=new,
        commit=LogIndex(commit),
    )


def heartbeat(commit: int, term: int = 1) -> Message:
    return Message(MessageType.HEARTBEAT, A, B, Term(term), commit=LogIndex(commit))


def snapshot_of(index: int, term: int = 1) -> tuple[Message, Path]:
    """The leader's InstallSnapshot at `index`, and a file with the state it carries (as a
    transport leaves it in the receiver's spool)."""
    leader_state = list_state()
    leader_state.apply_batch([(i, b"leader-%d" % i) for i in range(1, index + 1)])
    meta = SnapshotMeta(LogIndex(index), Term(term), CONF)
    m = Message(MessageType.SNAPSHOT, A, B, Term(term), snapshot=meta)
    received = SPOOL / f"received-{index}-{term}.part"
    leader_state.copy_to(received)
    return m, received


async def deliver(driver: RaftDriver[int], m: Message, path: Path) -> None:
    """As a transport hands a snapshot over (node.memory_transport.send_snapshot): the data
    streamed into a SpoolFile in the receiver's spool, and the file discarded afterwards,
    whatever the receiver did with it."""
    spooled = SpoolFile(driver.snapshot_spool)
    try:
        spooled.write(path.read_bytes())
        spooled.finish()
        await driver.receive_snapshot(m, spooled.path)
    finally:
        spooled.discard()
        path.unlink()


def stored_snapshot(driver: RaftDriver[int]) -> tuple[int, bytes] | None:
    """The index and the data of the snapshot the driver's storage holds."""
    reader = driver.storage.open_snapshot()
    if reader is None:
        return None
    with reader:
        data = b""
        while piece := reader.read(1 << 20):
            data += piece
        return reader.meta.index, data


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Virtual time: waits cost nothing, and a deadline still ends a test that would hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in virtual time")
        await asyncio.sleep(0.001)


def vrun(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run(asyncio.wait_for(test(), 60.0))


def applied(driver: RaftDriver[int]) -> int:
    return driver.applied_index


# ---------------------------------------------------------------------------- snapshot vs install


def test_a_local_snapshot_and_an_install_never_run_at_once_and_the_stale_one_is_harmless() -> None:
    """Fix: _state_lock around state.snapshot() and state.restore(), and the guard
    `if index > self.core.log.snapshot_index(): compact`.

    The follower starts a local compaction (its checkpoint is slow: held at a gate) and,
    meanwhile, the leader's InstallSnapshot for a later index arrives. Without the lock, the
    install replaces the state while it is being checkpointed (an overlap), and then the stale
    compaction is refused by storage and stops the node. Without the guard, core.compact() of
    the stale index (already inside the installed snapshot) raises and stops the node."""

    async def test() -> None:
        cpu = ThreadLikeExecutor(held=("checkpoint",))
        driver, _ = make_driver(cfg=config(snapshot_entries=3), cpu=cpu)
        driver.start()
        driver.step(append(0, entries(1, 5), commit=5))
        await until(lambda: cpu.waiting("checkpoint"))
        assert applied(driver) == 5

        m, path = snapshot_of(20)
        data = path.read_bytes()
        await driver.receive_snapshot(m, path)
        await asyncio.sleep(0.5)  # the install has every chance to run now
        cpu.release("checkpoint")
        await until(lambda: applied(driver) == 20 or driver.fatal is not None)

        assert cpu.overlaps == []
        assert driver.fatal is None and not driver.stopped.is_set()
        assert stored_snapshot(driver) == (20, data)
        assert driver.core.log.snapshot_index() == 20
        # and the node goes on from the installed snapshot
        driver.step(append(20, entries(21, 22), commit=22))
        await until(lambda: applied(driver) == 22)
        await driver.stop()

    vrun(test)


def test_a_local_snapshot_overtaken_by_an_install_while_it_waited_is_dropped() -> None:
    """Fix: `if index <= self.core.log.snapshot_index(): return` in _take_snapshot, the
    check made once the lock is held. Here the local snapshot starts only after an install
    (the order the lock can produce); without the check it saves a snapshot at the installed
    index, which storage refuses (not after the current one): the node stops."""

    async def test() -> None:
        driver, _ = make_driver(cfg=config(snapshot_entries=3))
        driver.start()
        driver.step(append(0, entries(1, 2), commit=2))
        await until(lambda: applied(driver) == 2)
        m, path = snapshot_of(20)
        data = path.read_bytes()
        await driver.receive_snapshot(m, path)
        await until(lambda: applied(driver) == 20)
        driver._snapshotting = True  # as _maybe_snapshot does before starting the task
        await driver._take_snapshot()
        assert driver.fatal is None and not driver.stopped.is_set()
        assert stored_snapshot(driver) == (20, data)
        await driver.stop()

    vrun(test)


# ---------------------------------------------------------------------------- receive_snapshot


def test_a_snapshot_that_does_not_decode_is_refused_before_storage() -> None:
    """Fix: receive_snapshot validates the data (state.validate_copy) before the core
    sees the message. Without it the core takes the snapshot, the driver installs it on disk
    and then cannot restore it: the node stops, and restarts into the same bad snapshot."""

    async def test() -> None:
        fs = CrashFileSystem()
        driver, transport = make_driver(fs=fs)
        driver.start()
        driver.step(append(0, entries(1, 2), commit=2))
        await until(lambda: applied(driver) == 2)
        m, _ = snapshot_of(20)
        junk = SPOOL / "junk.part"
        junk.write_bytes(b"\x00 not a snapshot")
        with pytest.raises(SnapshotInvalidError):
            await driver.receive_snapshot(m, junk)
        await asyncio.sleep(0.5)
        assert stored_snapshot(driver) is None
        assert fs.listdir(ROOT / B / "snap") == []
        assert driver.core.pending_snapshot is None and driver._incoming_snapshot is None
        assert driver.core.log.snapshot_index() == 0 and applied(driver) == 2
        assert driver.fatal is None
        # the refusal is not an answer: the leader heard nothing about snapshot 20
        assert not any(s.type is MessageType.APPEND_RESP and s.index >= 20 for s in transport.sent)
        # the control: the same message with good data installs
        m, path = snapshot_of(20)
        await driver.receive_snapshot(m, path)
        await until(lambda: applied(driver) == 20)
        await driver.stop()

    vrun(test)


def test_the_data_of_a_snapshot_the_core_ignores_is_not_kept() -> None:
    """Fix: `if self.core.pending_snapshot == meta: self._incoming_snapshot = ...`. A
    snapshot at or below the commit index is old news to the core; without the check the
    driver takes its file (renames it out of the transport's reach) and keeps it. Delivered
    as the transports deliver it (a SpoolFile in the driver's spool, discarded afterwards),
    it leaves nothing behind; one the core installs leaves nothing either."""

    async def test() -> None:
        driver, _ = make_driver()
        driver.start()
        driver.step(append(0, entries(1, 5), commit=5))
        await until(lambda: applied(driver) == 5)
        m, path = snapshot_of(3)
        await deliver(driver, m, path)
        assert driver.core.pending_snapshot is None
        assert driver._incoming_snapshot is None
        assert list(driver.snapshot_spool.iterdir()) == []  # the spooled file is removed
        await asyncio.sleep(0.2)
        assert driver.fatal is None and applied(driver) == 5
        assert stored_snapshot(driver) is None
        # the control: one the core takes is kept until installed, then removed too
        m, path = snapshot_of(20)
        await deliver(driver, m, path)
        assert driver._incoming_snapshot is not None
        assert driver._incoming_snapshot[1].parent == driver.snapshot_spool
        await until(lambda: applied(driver) == 20)
        assert driver._incoming_snapshot is None
        assert list(driver.snapshot_spool.iterdir()) == []
        await driver.stop()

    vrun(test)


# ---------------------------------------------------------------------------- step()


def test_an_invariant_error_in_step_stops_the_node_and_does_not_reach_the_caller() -> None:
    """Fix: step() catches InvariantError and calls _fail_fatally. Without it the error
    propagates into whoever delivered the message (the RPC handler: one failed RPC, while
    the node goes on with a broken core)."""

    async def test() -> None:
        driver, _ = make_driver()
        driver.start()
        misaddressed = Message(MessageType.HEARTBEAT, A, C, Term(1))  # for c, handed to b
        driver.step(misaddressed)  # must not raise
        assert isinstance(driver.fatal, InvariantError)
        assert driver.stopped.is_set()
        # a stopped node takes nothing more
        driver.step(append(0, entries(1, 1), commit=1))
        await asyncio.sleep(0.2)
        assert driver.core.log.last_index() == 0
        await driver.stop()

    vrun(test)


def test_a_bad_message_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Fix: step() catches RaftError (a message the core finds impossible) and logs it.
    Without it the error propagates into the RPC handler."""

    async def test() -> None:
        driver, _ = make_driver()
        driver.start()
        no_meta = Message(MessageType.SNAPSHOT, A, B, Term(1))  # InstallSnapshot without one
        with caplog.at_level(logging.WARNING, logger="node.driver"):
            driver.step(no_meta)  # must not raise
        assert any("dropped a SNAPSHOT from a" in r.getMessage() for r in caplog.records)
        assert driver.fatal is None and not driver.stopped.is_set()
        # and the node goes on
        driver.step(append(0, entries(1, 2), commit=2))
        await until(lambda: applied(driver) == 2)
        await driver.stop()

    vrun(test)


# ---------------------------------------------------------------------------- stop()


async def _single_node_leader(
    storage_executor: GatedStorageExecutor,
) -> RaftDriver[int]:
    driver, _ = make_driver(A, cfg=config("a"), storage_executor=storage_executor)
    driver.start()
    await until(lambda: driver.is_leader and not driver.core.has_ready())
    return driver


def test_stop_fails_appended_proposals_as_unknown_outcome() -> None:
    """Fix: stop() fails waiting proposals with OutcomeUnknownError (they are in the log and
    may commit), not NotLeaderError ("nothing happened": a client would give up on a write
    that may yet be applied)."""

    async def test() -> None:
        disk = GatedStorageExecutor()
        driver = await _single_node_leader(disk)
        disk.hold = lambda fn, args: getattr(fn, "__name__", "") == "_persist"
        proposal = asyncio.ensure_future(driver.propose(b"hello", 30.0))
        await until(lambda: disk.holding)  # appended, its write under way
        assert driver.core.log.last_index() >= 2
        await driver.stop()
        with pytest.raises(OutcomeUnknownError):
            await proposal

    vrun(test)


def test_propose_on_a_stopping_driver_is_refused() -> None:
    """Fix: require_leader() checks _stopping. Without it a driver whose stop() is under way
    still accepts a proposal into a core that will never replicate it."""

    async def test() -> None:
        disk = GatedStorageExecutor()
        driver = await _single_node_leader(disk)
        stopping = asyncio.ensure_future(driver.stop())
        await asyncio.sleep(0)  # stop() has begun: it is waiting for the tasks to end
        assert not stopping.done()
        assert driver.is_leader  # the core still thinks it leads
        with pytest.raises(NotLeaderError):
            await asyncio.wait_for(driver.propose(b"late", 5.0), 5.0)
        await stopping
        with pytest.raises(NotLeaderError):
            await asyncio.wait_for(driver.propose(b"later", 5.0), 5.0)

    vrun(test)


# ------------------------------------------------------------------ status for the web view


def test_status_tells_the_last_contact_with_the_leader_and_counts_leader_changes() -> None:
    """Status.last_contact_ms: -1 before any leader is heard, then the time since the leader's
    last message (0 on the leader itself); leader_changes counts each new leader, as etcd's
    leader_changes_seen does."""

    async def test() -> None:
        driver, _ = make_driver(B)
        driver.start()
        try:
            before = driver.status()
            assert (before.last_contact_ms, before.leader_changes) == (-1, 0)
            driver.step(heartbeat(0))
            await until(lambda: driver.leader == A)
            await asyncio.sleep(0.04)
            heard = driver.status()
            assert 35 <= heard.last_contact_ms <= 60, heard.last_contact_ms
            assert heard.leader_changes == 1
            driver.step(heartbeat(0))  # the same leader again: no change, contact renewed
            await asyncio.sleep(0)
            assert driver.status().last_contact_ms <= 5
            new_leader = Message(MessageType.HEARTBEAT, C, B, Term(2), commit=LogIndex(0))
            driver.step(new_leader)
            await until(lambda: driver.leader == C)
            assert driver.status().leader_changes == 2
            stale = Message(MessageType.HEARTBEAT, A, B, Term(1), commit=LogIndex(0))
            await asyncio.sleep(0.02)
            driver.step(stale)  # an old leader's message is not contact with the leader
            assert driver.status().last_contact_ms >= 15
        finally:
            await driver.stop()

    vrun(test)


def test_a_leader_reports_its_contact_as_zero() -> None:
    async def test() -> None:
        driver, _ = make_driver(A, cfg=config("a"))
        driver.start()
        try:
            await until(lambda: driver.is_leader)
            status = driver.status()
            assert (status.last_contact_ms, status.leader_changes) == (0, 1)
        finally:
            await driver.stop()

    vrun(test)


# ------------------------------------------------------------------ the leader's catch-up wait


def test_wait_caught_up_waits_for_the_commit_index_it_found_not_a_moving_one() -> None:
    """Fix (issue 16): a write's session check waits until the leader applied what was
    committed when the write arrived, woken by the apply, not polled each tick chasing a
    commit index that moves on under load (which cost every write of a busy leader a tick,
    10 ms, before it was even proposed)."""

    async def test() -> None:
        cpu = ThreadLikeExecutor()
        driver, _ = make_driver(A, cfg=config("a"), cpu=cpu)
        driver.start()
        try:
            await until(lambda: driver.is_leader and driver.applied_index >= 1)
            cpu.held.add("apply_batch")
            first = asyncio.ensure_future(driver.propose(b"one", 30.0))
            await until(lambda: driver.core.log.committed >= 2 and cpu.waiting("apply_batch"))
            loop = asyncio.get_running_loop()
            asked = loop.time()
            caught_up = asyncio.ensure_future(driver.wait_caught_up(5.0))
            await asyncio.sleep(0.05)
            assert not caught_up.done()  # index 2 committed, not applied: it waits
            more = [asyncio.ensure_future(driver.propose(b"more", 30.0)) for _ in range(3)]
            await until(lambda: driver.core.log.committed >= 5)
            cpu.release("apply_batch")  # index 2 is applied ...
            cpu.held.add("apply_batch")  # ... and 3..5, committed later, wait at the gate
            await caught_up
            assert driver.applied_index == 2 and driver.core.log.committed >= 5
            waited = loop.time() - asked
            assert waited < 0.2, waited
            await until(lambda: cpu.waiting("apply_batch"))
            cpu.release("apply_batch")
            await first
            await asyncio.gather(*more)
        finally:
            await driver.stop()

    vrun(test)


def test_wait_caught_up_gives_up_at_its_deadline() -> None:
    async def test() -> None:
        cpu = ThreadLikeExecutor()
        driver, _ = make_driver(A, cfg=config("a"), cpu=cpu)
        driver.start()
        try:
            await until(lambda: driver.is_leader and driver.applied_index >= 1)
            cpu.held.add("apply_batch")
            pending = asyncio.ensure_future(driver.propose(b"one", 30.0))
            await until(lambda: driver.core.log.committed >= 2 and cpu.waiting("apply_batch"))
            with pytest.raises(NoQuorumError):
                await driver.wait_caught_up(0.2)
            cpu.release("apply_batch")
            await pending
        finally:
            await driver.stop()

    vrun(test)
