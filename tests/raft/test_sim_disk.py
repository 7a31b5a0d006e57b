"""The simulator's disk keeps the WAL's promises and breaks only where a real disk breaks."""

from __future__ import annotations

from random import Random

from node.raft.types import Entry, HardState, LogIndex, NodeId, Term
from tests.simulator.disk import PAGE, SimDisk, frame, pages_spanned, read_frame, torn_bytes
from tests.simulator.harness import SimCluster


def entries(lo: int, hi: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(Term(term), LogIndex(i), data=b"x" * 50) for i in range(lo, hi))


def test_a_torn_batch_with_zeros_in_the_middle_and_valid_bytes_after_is_dropped_whole() -> None:
    ops = [("entries", entries(1, 6))]
    batch = frame(ops)
    pages = pages_spanned(len(batch), 0)
    assert pages >= 3
    landed = [True] * pages
    landed[1] = False  # a middle page never reached the platter: zeros, then valid bytes
    torn = torn_bytes(batch, 0, landed)
    assert torn[PAGE : 2 * PAGE] == bytes(PAGE) and torn[-4:] == batch[-4:]
    assert read_frame(torn) is None
    assert read_frame(torn_bytes(batch, 0, [True] * pages)) == ops


def test_a_power_cut_keeps_synced_batches_and_the_unsynced_one_whole_or_not_at_all() -> None:
    outcomes = set()
    for seed in range(200):
        disk = SimDisk()
        disk.write(entries(1, 3), HardState(Term(1), NodeId("a"), LogIndex(0)), None)
        disk.fsync()
        disk.write(entries(3, 8, term=2), HardState(Term(2), None, LogIndex(2)), None)
        disk.power_cut(Random(seed))
        last = [e.index for e in disk.entries]
        assert last in ([1, 2], [1, 2, 3, 4, 5, 6, 7])
        assert disk.hard_state.term == (1 if len(last) == 2 else 2)
        outcomes.add(len(last))
    assert outcomes == {2, 7}


def test_a_process_crash_keeps_the_page_cache_and_the_restart_syncs_it() -> None:
    c = SimCluster(3, seed=1, auto_tick=False)
    node = c.nodes[NodeId("a")]
    node.disk.write(entries(1, 3), None, None)  # written, never fsynced
    c.crash(NodeId("a"), torn=False)
    c.restart(NodeId("a"))
    assert c.core("a").log.last_index() == 2
    c.crash(NodeId("a"), power=True)  # replayed is synced: a power cut now takes nothing
    assert [e.index for e in node.disk.entries] == [1, 2]


def test_a_power_cut_on_a_crashed_node_still_loses_its_page_cache() -> None:
    lost = 0
    for seed in range(50):
        c = SimCluster(3, seed=seed, auto_tick=False)
        node = c.nodes[NodeId("a")]
        node.disk.write(entries(1, 3), None, None)
        c.crash(NodeId("a"), torn=False)
        c.crash(NodeId("a"), power=True)
        lost += not node.disk.entries
    assert 0 < lost < 50
