"""A follower that lost acknowledged entries (a lost disk) is repaired, never left stalled.

Self-contained: a few RaftCores on a lossless, instant network, persisting at once, so each
step is explicit. (etcd's MaybeDecrTo ignores a rejection at or below the recorded match as
stale; a follower whose log fell below that match was then probed at match+1 forever.)
"""

from __future__ import annotations

import logging
from random import Random

import pytest

from node.raft.core import RaftConfig, RaftCore
from node.raft.types import ConfState, Message, NodeId, Role

IDS = (NodeId("a"), NodeId("b"), NodeId("c"))


class Net:
    def __init__(self) -> None:
        self.cores = {nid: self.fresh(nid) for nid in IDS}
        self.down: set[NodeId] = set()
        self.committed: dict[NodeId, list[tuple[int, bytes]]] = {nid: [] for nid in IDS}

    @staticmethod
    def fresh(nid: NodeId) -> RaftCore:
        config = RaftConfig(
            node_id=nid, election_ticks_min=10, election_ticks_max=20, preferred_leader=nid == "a"
        )
        return RaftCore(config, Random(7), conf=ConfState(IDS))

    def settle(self) -> None:
        for _ in range(200):
            moved = False
            for nid, core in self.cores.items():
                if nid in self.down or not core.has_ready():
                    continue
                moved = True
                rd = core.ready()
                outbox: list[Message] = [*rd.messages, *rd.persisted_messages]
                for e in rd.committed_entries:
                    self.committed[nid].append((e.index, e.data))
                core.advance(rd)
                for m in outbox:
                    if m.to not in self.down:
                        self.cores[m.to].step(m)
            if not moved:
                return
        raise AssertionError("the cluster did not settle")

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for nid, core in self.cores.items():
                if nid not in self.down:
                    core.tick()
            self.settle()


def test_a_follower_below_its_recorded_match_is_probed_again_and_catches_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Raft §5.3: "the leader ... decrements nextIndex and retries the AppendEntries RPC.
    Eventually nextIndex will reach a point where the leader and follower logs match." That
    must hold even when the follower's log fell below the leader's matchIndex, which only
    a lost disk can cause; the committed prefix never changes."""
    net = Net()
    net.tick(2)
    leader = net.cores[NodeId("a")]
    assert leader.role is Role.LEADER
    for i in range(5):
        leader.propose(f"m{i}".encode())
    net.settle()
    net.tick(2)
    committed_before = leader.log.committed
    assert committed_before == 6  # the leader's no-op and five writes
    assert leader.progress(NodeId("c")).match == 6  # type: ignore[union-attr]
    before = [(i, d) for i, d in net.committed[NodeId("a")]]

    # c loses its disk and comes back empty (the membership issue will refuse this; the
    # core must still not stall on it).
    net.cores[NodeId("c")] = Net.fresh(NodeId("c"))
    net.committed[NodeId("c")] = []
    net.tick(2)
    with caplog.at_level(logging.ERROR, logger="node.raft.core"):
        leader.propose(b"after the loss")
        net.settle()
        net.tick(3)
    assert any("lost acknowledged entries" in r.getMessage() for r in caplog.records)

    c = net.cores[NodeId("c")]
    assert c.log.last_index() == leader.log.last_index() == 7
    assert leader.log.committed >= committed_before  # never moves back
    assert net.committed[NodeId("a")][: len(before)] == before
    # c applied the same entries, in the same order, as the leader did
    assert [d for _, d in net.committed[NodeId("c")]] == [d for _, d in net.committed[NodeId("a")]]
    assert leader.progress(NodeId("c")).match == 7  # type: ignore[union-attr]


def test_a_stale_rejection_below_match_does_not_lose_or_change_entries() -> None:
    """A duplicated old rejection (the simulator's network duplicates) makes the leader probe
    again; the follower, which still has its log, keeps every entry."""
    from node.raft.types import MessageType

    net = Net()
    net.tick(2)
    leader = net.cores[NodeId("a")]
    for i in range(3):
        leader.propose(f"m{i}".encode())
    net.settle()
    net.tick(2)
    b_log = [(e.index, e.term) for e in net.cores[NodeId("b")].log.all_entries()]
    stale = Message(
        MessageType.APPEND_RESP,
        NodeId("b"),
        NodeId("a"),
        leader.term,
        index=2,  # type: ignore[arg-type]
        reject=True,
        reject_hint=1,  # type: ignore[arg-type]
    )
    leader.step(stale)
    net.settle()
    net.tick(2)
    assert [(e.index, e.term) for e in net.cores[NodeId("b")].log.all_entries()] == b_log
    assert leader.progress(NodeId("b")).match == leader.log.last_index()  # type: ignore[union-attr]
