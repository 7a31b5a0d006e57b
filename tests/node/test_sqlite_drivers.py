"""Three real RaftDrivers with real SQLite chat states (node.chat.state.ChatState) on an
in-memory network in one virtual-time event loop (issue 13, "Tests on the driver seam"): group
commit and apply batches, crash and replay from the database's applied index, snapshot install
to a follower behind the compacted log, and the digest alike on all three. Every test also
checks that no log is ever compacted past the database's last complete checkpoint (the
worst-case power cut, and the guards, are in test_compaction_guard.py).

Storage is the crash-model file system; the databases are real files in a temporary directory
(SQLite's I/O bypasses the project's file layer), and so is each node's spool."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from node.chat.commands import Login, Register, Send, encode, session_of
from node.chat.replies import ApplyResult
from node.chat.state import ChatState
from node.config import ChatLimits, ClusterConfig, parse_config
from node.driver import FatalNodeError, RaftDriver
from node.memory_transport import MemoryNetwork, NetworkFaults
from node.raft.errors import NotLeaderError
from node.raft.membership import ConfChangeBusyError, ConfChangeError
from node.raft.types import ConfChange, ConfChangeOp, ConfState, NodeId, SnapshotMeta
from node.seams import InlineExecutor
from node.storage import MemberRecord, Storage
from tests.chat.conftest import fast_hash
from tests.driversim.vloop import SkewedClock, run
from tests.storage.crashfs import CrashFileSystem

IDS = [NodeId("a"), NodeId("b"), NodeId("c")]
JOINER = NodeId("d")
ROOT = Path("/sqlite-drivers")
LIMITS = ChatLimits()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (in virtual time, at most 20 s of it) until `condition` holds."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def config(snapshot_entries: int) -> ClusterConfig:
    nodes = "".join(
        f"  {n}: {{host: 127.0.0.1, port: {i + 1}, peer_port: {i + 101}}}\n"
        for i, n in enumerate(IDS)
    )
    text = (
        f"cluster: sqlite\ndata_dir: {ROOT}\nleader: a\nsnapshot: {{entries: {snapshot_entries}}}\n"
        f"nodes:\n{nodes}"
    )
    return parse_config(text, ROOT / "cluster.yaml")


class CountingState(ChatState):
    """A ChatState that counts its batches and keeps a copy of its database file after each
    complete checkpoint: what the file holds if the power fails before the next one."""

    def __init__(self, directory: Path, durable: int = 0) -> None:
        super().__init__(LIMITS, directory, voters=IDS)
        self.batches: list[tuple[int, int]] = []  # (first index, entries) of each apply_batch
        self.checkpoint_copy = directory.parent / f"{directory.name}.at-checkpoint"
        self.refuse_checkpoints = False
        # What the file holds whatever happens: the last complete checkpoint or install,
        # carried across restarts (what a SIGKILL left in the WAL is not durable yet).
        self.durable = durable
        self.installs = 0

    def apply_batch(
        self, entries: Sequence[tuple[int, bytes | None]], conf: str | None = None
    ) -> list[ApplyResult | None]:
        self.batches.append((entries[0][0], len(entries)))
        return super().apply_batch(entries, conf)

    def checkpoint(self) -> int | None:
        if self.refuse_checkpoints:
            return None  # as when a reader holds the checkpoint back
        durable = super().checkpoint()
        if durable is not None:  # the WAL is empty: the file alone is the state
            shutil.copyfile(self.path, self.checkpoint_copy)
            self.durable = durable
        return durable

    def install(self, path: Path) -> None:
        super().install(path)
        self.installs += 1
        self.durable = self.applied_index


class Cluster:
    def __init__(
        self,
        tmp: Path,
        snapshot_entries: int = 1000,
        driver_class: type[RaftDriver[ApplyResult]] = RaftDriver,
    ) -> None:
        self.tmp = tmp
        self.driver_class = driver_class
        self.config = config(snapshot_entries)
        self.net = MemoryNetwork(random.Random(7), NetworkFaults(delay_s=(0.0005, 0.002)))
        self.fs = {n: CrashFileSystem() for n in [*IDS, JOINER]}
        self.drivers: dict[NodeId, RaftDriver[ApplyResult]] = {}
        self.states: dict[NodeId, CountingState] = {}
        self.fsyncs = 0
        self.compacted_ahead: list[str] = []  # every compaction past the database's durable
        self.durable: dict[NodeId, int] = {}

    def start(
        self, node: NodeId, *, joining: MemberRecord | None = None
    ) -> RaftDriver[ApplyResult]:
        """Start `node`: an initial member, or with `joining`, a new one to be added."""
        storage = Storage.open(ROOT / node, fs=self.fs[node])
        if joining is not None and storage.member is None:
            storage.record_member(joining)
        state = CountingState(self.tmp / node / "state", self.durable.get(node, 0))
        spool = self.tmp / node / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        sync = storage.sync

        def counted_sync() -> None:
            self.fsyncs += 1
            sync()

        storage.sync = counted_sync  # type: ignore[method-assign]
        compact = storage.compact

        def watched_compact(meta: SnapshotMeta) -> None:
            # compact() compacts the stored log: never past the last complete checkpoint
            if meta.index > state.durable:
                self.compacted_ahead.append(f"{node}: log to {meta.index}, db {state.durable}")
            compact(meta)

        storage.compact = watched_compact  # type: ignore[method-assign]
        driver: RaftDriver[ApplyResult] = self.driver_class(
            node_id=node,
            config=self.config,
            storage=storage,
            state=state,
            transport=self.net.transport(node),
            rng=random.Random(f"{node}/{len(self.drivers)}"),
            clock=SkewedClock(),
            storage_executor=InlineExecutor(lambda: 0.002),
            cpu_executor=InlineExecutor(lambda: 0.001),
            apply_executor=InlineExecutor(lambda: 0.0005),
            spool_dir=spool,
            conf=ConfState(()) if joining is not None else None,
        )
        self.net.attach(node, driver)
        driver.start()
        self.drivers[node], self.states[node] = driver, state
        return driver

    def crash(self, node: NodeId) -> None:
        """SIGKILL: every committed transaction survives, in the database file and its WAL.
        Closing the connections would checkpoint the WAL into the file, which a killed
        process never does: the files are kept as they were and put back after the close."""
        self.drivers[node].crash()
        self.net.detach(node)
        state = self.states[node]
        self.durable[node] = state.durable
        files = [state.path, Path(f"{state.path}-wal")]
        kept = {f: f.read_bytes() for f in files if f.exists()}
        state.close()
        for f in files:
            f.unlink(missing_ok=True)
        Path(f"{state.path}-shm").unlink(missing_ok=True)
        for f, data in kept.items():
            f.write_bytes(data)
        self.fs[node].crash_process()

    async def leader(self) -> RaftDriver[ApplyResult]:
        for _ in range(5000):
            leaders = [d for d in self.drivers.values() if d.is_leader and not d.stopped.is_set()]
            if leaders:
                return leaders[0]
            await asyncio.sleep(0.01)
        raise AssertionError("no leader")

    async def converged(self, nodes: Sequence[NodeId] | None = None) -> None:
        """Wait (bounded) until `nodes` (default: all) have applied the leader's commit."""
        drivers = [self.drivers[n] for n in nodes] if nodes else list(self.drivers.values())
        for _ in range(5000):
            leader = await self.leader()
            commit = leader.core.log.committed
            if all(d.applied_index == commit and d.core.log.committed == commit for d in drivers):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the nodes did not converge")

    def digests(self) -> set[str]:
        return {s.digest() for s in self.states.values()}

    async def stop(self) -> None:
        for driver in self.drivers.values():
            if not driver.stopped.is_set():
                await driver.stop()
        for state in self.states.values():
            state.close()


TOKEN = "ab" * 32


async def setup_accounts(cluster: Cluster) -> RaftDriver[ApplyResult]:
    leader = await cluster.leader()
    h = fast_hash("pw")
    for name in ("alice", "bob"):
        reply = await leader.propose(
            encode(
                Register(
                    timestamp_ms=1, log_time_ms=1, request=None, username=name, password_hash=h
                )
            ),
            10.0,
        )
        assert reply.ok
    login = Login(
        timestamp_ms=2,
        log_time_ms=2,
        request=None,
        username="alice",
        session=session_of(TOKEN),
        verified_digest=h.digest,
    )
    assert (await leader.propose(encode(login), 10.0)).ok
    return leader


def send(text: str) -> Send:
    return Send(
        timestamp_ms=3,
        log_time_ms=3,
        request=None,
        session=session_of(TOKEN),
        recipient="bob",
        text=text,
    )


async def send_many(leader: RaftDriver[ApplyResult], count: int, start: int = 0) -> None:
    sends = [leader.propose(encode(send(f"m{i}")), 30.0) for i in range(start, start + count)]
    results = await asyncio.gather(*sends)
    assert all(r.ok for r in results)


def vrun(
    tmp_path: Path,
    test: Callable[[Cluster], Coroutine[Any, Any, None]],
    *,
    clean: bool = True,
    **kw: Any,
) -> Cluster:
    """Run `test` on a fresh cluster; unless told otherwise (`clean=False`, for a driver
    broken on purpose), no node may have compacted its log past its database."""
    cluster = Cluster(tmp_path, **kw)

    async def main() -> None:
        for node in IDS:
            cluster.start(node)
        try:
            await asyncio.wait_for(test(cluster), 120.0)
        finally:
            await cluster.stop()

    run(main())
    if clean:
        assert cluster.compacted_ahead == [], cluster.compacted_ahead
    return cluster


def test_group_commit_apply_batches_and_one_digest(tmp_path: Path) -> None:
    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        before = cluster.fsyncs
        await send_many(leader, 200)
        await cluster.converged()
        assert len(cluster.digests()) == 1
        # group commit: 200 proposals in flight cost far fewer than 200 fsyncs on 3 nodes
        assert cluster.fsyncs - before < 3 * 200 / 2
        # apply batches: one transaction carries several entries, on every node
        for state in cluster.states.values():
            assert max(n for _, n in state.batches) > 1
            assert len(state.batches) < state.applied_index / 2
            assert sum(n for _, n in state.batches) == state.applied_index
        assert all(s.digest() == s.scan_digest() for s in cluster.states.values())
        assert cluster.states[leader.id].history("bob", "alice", 1000)[-1].text == "m199"

    vrun(tmp_path, test)


def test_a_crashed_follower_replays_from_its_databases_applied_index(tmp_path: Path) -> None:
    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        await send_many(leader, 50)
        await cluster.converged()
        follower = next(n for n in IDS if n != leader.id)
        applied_before = cluster.states[follower].applied_index
        cluster.crash(follower)
        assert Path(f"{cluster.states[follower].path}-wal").stat().st_size > 0  # as killed
        await send_many(leader, 50, start=50)
        restarted = cluster.start(follower)
        state = cluster.states[follower]
        # the database kept what it had committed: nothing is rebuilt from the start
        assert state.applied_index == applied_before > 0
        await cluster.converged()
        # the replay began right after the database's applied index, in batches
        assert state.batches[0][0] == applied_before + 1
        assert sum(n for _, n in state.batches) == leader.applied_index - applied_before
        assert state.installs == 0
        assert restarted.applied_index == leader.applied_index
        assert len(cluster.digests()) == 1
        assert state.history("bob", "alice", 1000)[-1].text == "m99"

    vrun(tmp_path, test)


def test_a_follower_behind_the_compacted_log_installs_the_database(tmp_path: Path) -> None:
    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        follower = next(n for n in IDS if n != leader.id)
        generation = cluster.states[follower].path.name
        cluster.net.partition([follower], [n for n in IDS if n != follower])
        await send_many(leader, 150)
        behind = cluster.drivers[follower].core.log.last_index()
        # the leader snapshots off the loop, soon after it applies
        await until(lambda: leader.core.log.snapshot_index() > behind, "the leader compacted")
        cluster.net.heal()
        await cluster.converged()
        state = cluster.states[follower]
        assert state.path.name != generation and state.installs == 1  # a new generation
        left = {p.name.split(".")[0] for p in state.path.parent.iterdir()}
        assert left == {state.path.stem}  # the old generation deleted, -wal/-shm with it
        assert list((tmp_path / follower / "spool").iterdir()) == []  # nothing left in transit
        assert len(cluster.digests()) == 1
        assert cluster.states[follower].history("alice", "bob", 5)[-1].text == "m149"

    vrun(tmp_path, test, snapshot_entries=30)


def test_a_node_whose_database_is_gone_after_its_own_compaction_refuses_to_start(
    tmp_path: Path,
) -> None:
    """A compaction of its own records the snapshot's metadata only: the database holds the
    data (Storage.compact). With the database gone the entries compacted away are gone too,
    so the node must not start as the member it was (it would apply the log after the
    snapshot to an empty state): it stops with an error that names the way out."""

    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        await send_many(leader, 100)
        await cluster.converged()
        follower = next(n for n in IDS if n != leader.id)
        snapshot = cluster.drivers[follower].core.log.snapshot_index()
        assert snapshot > 0
        assert cluster.drivers[follower].storage.snapshot_held_by_state()
        cluster.crash(follower)
        shutil.rmtree(cluster.tmp / follower / "state")
        cluster.durable.pop(follower, None)
        with pytest.raises(FatalNodeError, match=f"compacted to {snapshot}.*replace"):
            cluster.start(follower)

    vrun(tmp_path, test, snapshot_entries=30)


def test_a_compaction_copies_nothing_and_a_follower_gets_a_copy_made_when_it_needs_one(
    tmp_path: Path,
) -> None:
    """The snapshot files of a node's own compactions hold no data (the cost of compacting
    must not grow with the state); a follower behind the compacted log is sent a copy of the
    leader's state made then, which may hold more than the snapshot's index: it installs it
    and skips the entries it already holds, to the same digest as everyone."""

    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        lagging = next(n for n in IDS if n != leader.id)
        cluster.crash(lagging)
        await send_many(leader, 100)
        await until(lambda: leader.core.log.snapshot_index() > 0, "the leader compacted")
        snapshot = leader.core.log.snapshot_index()
        assert snapshot > 0 and leader.storage.snapshot_held_by_state()
        fs, snap_dir = cluster.fs[leader.id], ROOT / leader.id / "snap"
        sizes = [len(fs.read_bytes(snap_dir / name)) for name in fs.listdir(snap_dir)]
        assert sizes and max(sizes) < 200, sizes  # metadata only
        await send_many(leader, 5, start=100)  # applied past the snapshot: the copy holds more
        restarted = cluster.start(lagging)
        await cluster.converged()
        state = cluster.states[lagging]
        assert state.installs == 1
        copied = leader._outgoing_copy
        assert copied is not None and copied[0] > restarted.core.log.snapshot_index() >= snapshot
        assert not restarted.storage.snapshot_held_by_state()  # the install's file holds it
        assert len(cluster.digests()) == 1
        await send_many(leader, 40, start=105)  # the leader compacts past what the copy holds
        await until(lambda: leader.core.log.snapshot_index() > copied[0], "compacted past it")
        assert leader._outgoing_copy is None and not copied[1].exists()  # not kept for nothing

    vrun(tmp_path, test, snapshot_entries=30)


def test_a_membership_change_resolves_once_applied_and_reaches_every_state(
    tmp_path: Path,
) -> None:
    """Thesis §4.1: one change at a time; the driver resolves change_membership with the new
    configuration only after its CONFIG entry is applied, and every state stores it."""

    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        follower = next(n for n in IDS if n != leader.id)
        stays = tuple(n for n in IDS if n != follower)
        change = leader.change_membership(ConfChange(ConfChangeOp.REMOVE, follower), 10.0)
        task = asyncio.ensure_future(change)
        await asyncio.sleep(0)  # one loop turn: the task proposes, then waits for the commit
        with pytest.raises(ConfChangeBusyError):  # the first is not committed yet
            await leader.change_membership(ConfChange(ConfChangeOp.REMOVE, stays[0]), 10.0)
        conf = await task
        assert conf == leader.core.conf == ConfState(conf.voters)
        assert set(conf.voters) == set(stays) and follower not in conf
        assert leader.core.pending_conf_index() == 0  # committed
        assert set(cluster.states[leader.id].voters) == set(stays)  # and applied
        with pytest.raises(ConfChangeError, match="not a member"):
            await leader.change_membership(ConfChange(ConfChangeOp.REMOVE, follower), 10.0)
        other = cluster.drivers[stays[1] if stays[0] == leader.id else stays[0]]
        with pytest.raises(NotLeaderError):
            await other.change_membership(ConfChange(ConfChangeOp.ADD_LEARNER, follower), 10.0)
        await send_many(leader, 20)  # two voters commit without the removed one
        await cluster.converged(stays)
        for node in stays:
            assert set(cluster.states[node].voters) == set(stays)
        assert len({cluster.states[n].digest() for n in stays}) == 1

    vrun(tmp_path, test)


@pytest.mark.parametrize("snapshot_entries", [1000, 30], ids=["by-log", "by-snapshot"])
def test_an_added_member_starts_empty_as_its_incarnation_and_catches_up(
    tmp_path: Path, snapshot_entries: int
) -> None:
    """Issue 14: an added member's incarnation is the index of the entry that added it. The
    add is made first; the member starts empty with that incarnation in its record (--join ID
    --incarnation N) and an empty configuration, and catches up from the leader: from the log,
    or, when the leader compacted the add away before the member came up, by a snapshot."""

    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        by_snapshot = snapshot_entries < 1000
        conf = await leader.change_membership(ConfChange(ConfChangeOp.ADD_LEARNER, JOINER), 10.0)
        added_at = conf.incarnation(JOINER)
        assert added_at == leader.core.log.last_index()  # the CONFIG entry's own index
        assert JOINER in conf.learners and conf.incarnations == ((JOINER, added_at),)
        if by_snapshot:  # d comes up only once the leader's log starts past its CONFIG entry
            await send_many(leader, 60)
            for _ in range(500):  # the snapshot is taken off the apply path: wait for it
                if leader.core.log.first_index() > added_at:
                    break
                await asyncio.sleep(0.01)
            assert leader.core.log.first_index() > added_at
        joiner = cluster.start(JOINER, joining=MemberRecord("cid", added_at))
        assert joiner.own_incarnation() == added_at and joiner.core.conf == ConfState(())
        await send_many(leader, 5, start=100)
        await cluster.converged([*IDS, JOINER])
        installs = cluster.states[JOINER].installs
        assert installs >= 1 if by_snapshot else installs == 0  # how it came
        assert joiner.core.conf == leader.core.conf
        assert leader.own_incarnation() == 0  # the initial members: incarnation 0, unlisted

    vrun(tmp_path, test, snapshot_entries=snapshot_entries)
