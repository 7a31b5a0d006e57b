"""Compaction never runs ahead of the database (issue 13): the Raft log is compacted only after
a complete checkpoint of the SQLite state, and only up to the applied index read just before
it, so whatever a power cut leaves of the database, the log still holds what it must replay.

Three real drivers with real ChatStates (the cluster of test_sqlite_drivers). The power cut is
modelled as TRAPS says: the database returns to any commit at or after its last complete
checkpoint; these tests take the worst, the checkpoint itself (the copy CountingState keeps of
the file right after each complete checkpoint).

A driver that compacts whatever the checkpoint says (tests.driversim.broken) is run through the
same tests to show they fail on it. A compaction records the snapshot's metadata only (the
database holds the data), so at restart the broken driver finds its database behind its own
snapshot with nothing to restore it from, and refuses to start: the entries in between are
lost, which is exactly the bug."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from node.chat.replies import ApplyResult
from node.driver import FatalNodeError, RaftDriver
from node.raft.types import NodeId
from tests.driversim.broken import _PartialIgnoredState
from tests.node.test_sqlite_drivers import (
    IDS,
    Cluster,
    send_many,
    setup_accounts,
    until,
    vrun,
)


class IgnoresCheckpointDriver(RaftDriver[ApplyResult]):
    """Broken on purpose: compacts after every checkpoint, complete or not."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = _PartialIgnoredState(self.state)  # type: ignore[arg-type]


DRIVERS: dict[str, type[RaftDriver[ApplyResult]]] = {
    "real": RaftDriver,
    "ignores-checkpoint": IgnoresCheckpointDriver,
}


def power_cut(cluster: Cluster, node: NodeId) -> None:
    """The worst a power cut may do to the database: back to its last complete checkpoint,
    every commit after it lost (the WAL and its index gone with them). The Raft storage loses
    what it never synced."""
    cluster.drivers[node].crash()
    cluster.net.detach(node)
    state = cluster.states[node]
    cluster.durable[node] = state.durable
    state.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{state.path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(state.checkpoint_copy, state.path)
    cluster.fs[node].crash(random.Random(node))


def test_after_the_worst_power_cut_the_database_replays_to_the_same_digest(
    tmp_path: Path,
) -> None:
    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        follower = next(n for n in IDS if n != leader.id)
        await send_many(leader, 120)  # snapshots (and so checkpoints) every 40 entries
        await cluster.converged()
        driver = cluster.drivers[follower]
        await until(lambda: driver.storage.first_index() > 1, "the follower compacted")
        await send_many(leader, 25, start=120)  # commits after the last checkpoint
        await cluster.converged()
        state = cluster.states[follower]
        applied_at_cut = state.applied_index
        compacted_to = driver.storage.first_index() - 1
        assert 0 < compacted_to <= state.durable < applied_at_cut

        power_cut(cluster, follower)
        await send_many(leader, 20, start=145)
        restarted = cluster.start(follower)
        state = cluster.states[follower]
        reverted = state.applied_index
        assert reverted == cluster.durable[follower] < applied_at_cut  # commits were lost
        # the log still holds every entry after the database's applied index: a replay, no
        # snapshot needed
        assert restarted.storage.first_index() <= reverted + 1
        assert state.installs == 0
        await cluster.converged()
        assert state.batches[0][0] == reverted + 1
        assert state.installs == 0
        assert len(cluster.digests()) == 1
        assert state.history("bob", "alice", 1000)[-1].text == "m164"

    vrun(tmp_path, test, snapshot_entries=40)


@pytest.mark.parametrize("driver", ["real", "ignores-checkpoint"])
def test_a_power_cut_after_partial_checkpoints_finds_the_log_reaching_the_database(
    tmp_path: Path, driver: str
) -> None:
    """After one complete checkpoint, every later one is partial (a reader held it back). The
    real driver compacts no further; the broken one does, and is caught here."""
    found: dict[str, Any] = {}

    async def test(cluster: Cluster) -> None:
        leader = await setup_accounts(cluster)
        follower = next(n for n in IDS if n != leader.id)
        state = cluster.states[follower]
        await send_many(leader, 50)
        await until(lambda: state.checkpoint_copy.exists(), "a complete checkpoint")
        state.refuse_checkpoints = True
        await send_many(leader, 100, start=50)  # two or three snapshots due, all partial
        await cluster.converged()
        power_cut(cluster, follower)
        try:
            restarted = cluster.start(follower)
        except FatalNodeError as exc:
            found["fatal"] = str(exc)
            return
        found["reverted"] = cluster.states[follower].applied_index
        found["first"] = restarted.storage.first_index()
        found["installs"] = cluster.states[follower].installs
        await cluster.converged()
        assert len(cluster.digests()) == 1

    cluster = vrun(
        tmp_path, test, clean=driver == "real", snapshot_entries=40, driver_class=DRIVERS[driver]
    )
    if driver == "real":
        assert "fatal" not in found, found
        assert found["first"] <= found["reverted"] + 1 and found["installs"] == 0, found
    else:  # the checks above fail on it
        assert "behind the log" in found.get("fatal", ""), found
        assert cluster.compacted_ahead, found


@pytest.mark.parametrize("durable", ["none", "complete"])
@pytest.mark.parametrize("driver", ["real", "ignores-checkpoint"])
def test_the_log_is_never_compacted_past_what_the_database_holds_durably(
    tmp_path: Path, durable: str, driver: str
) -> None:
    """The rule of issue 13: compact only after a complete checkpoint, and only up to the
    applied index read just before it. A state whose checkpoints are partial (None) must
    leave the log uncompacted; with complete ones (the control) the log is compacted. The
    broken driver compacts either way, and fails."""

    async def test(cluster: Cluster) -> None:
        for state in cluster.states.values():
            if durable == "none":
                state.refuse_checkpoints = True
        leader = await setup_accounts(cluster)
        await send_many(leader, 60)
        await cluster.converged()
        await asyncio.sleep(1.0)  # every snapshot due has had its time

    cluster = vrun(
        tmp_path, test, clean=driver == "real", snapshot_entries=10, driver_class=DRIVERS[driver]
    )
    compacted = {n: d.storage.first_index() - 1 for n, d in cluster.drivers.items()}
    assert all(d.fatal is None for d in cluster.drivers.values())
    if durable == "complete":
        assert all(c > 0 for c in compacted.values()), compacted
        assert cluster.compacted_ahead == []
    elif driver == "real":
        assert compacted == dict.fromkeys(IDS, 0)
        assert all(d.core.log.snapshot_index() == 0 for d in cluster.drivers.values())
    else:  # the guard's assertions above fail on the broken driver
        assert any(c > 0 for c in compacted.values()) and cluster.compacted_ahead


def test_the_log_is_compacted_to_the_index_the_checkpoint_reports_not_to_the_applied_one(
    tmp_path: Path,
) -> None:
    """The checkpoint says which applied index it made durable (the one read just before it);
    the driver compacts to that, never to what has been applied since. Here every checkpoint
    completes but reports index 2: every log is compacted to 2 and no further."""

    async def test(cluster: Cluster) -> None:
        for state in cluster.states.values():
            checkpoint = state.checkpoint

            def reports_two(checkpoint: Any = checkpoint) -> int | None:
                return None if checkpoint() is None else 2

            state.checkpoint = reports_two  # type: ignore[method-assign]
        leader = await setup_accounts(cluster)
        await send_many(leader, 60)
        await cluster.converged()
        await asyncio.sleep(1.0)  # every snapshot due has had its time

    cluster = vrun(tmp_path, test, snapshot_entries=10)
    assert {n: d.storage.first_index() - 1 for n, d in cluster.drivers.items()} == dict.fromkeys(
        IDS, 2
    )
    assert cluster.compacted_ahead == []
