"""Raft's safety properties (Figure 3), checked incrementally as the simulation runs.

- Election Safety: at most one leader per term.
- Log Matching: if two logs contain an entry with the same index and term, the logs are
  identical up to that index. Checked inductively: every (index, term) ever appended anywhere
  must carry the same data and follow the same previous term.
- Leader Completeness: a leader's log holds every entry committed in earlier terms.
- State Machine Safety: no two nodes apply different entries at one index.
- Linearizable reads: a ReadIndex answer is no older than any commit made before the read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.raft.core import RaftCore
from node.raft.types import Entry, NodeId, Role, SnapshotMeta, SoftState

if TYPE_CHECKING:
    from tests.simulator.harness import SimCluster, StateMachine


class SafetyViolation(AssertionError):
    pass


class SafetyChecker:
    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.leader_of_term: dict[int, NodeId] = {}
        self.entry_shape: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data), first applier
        self.max_applied = 0
        self.commit_term: dict[int, int] = {}  # index -> term of the leader that committed it
        self.committed_term: dict[int, int] = {}  # index -> term of the committed entry
        self.max_committed = 0
        self.read_floor: dict[int, int] = {}  # read request -> commit known when asked

    def fail(self, what: str) -> None:
        raise SafetyViolation(f"t={self.cluster.now}: {what}")

    def on_soft_state(self, nid: NodeId, soft: SoftState, core: RaftCore) -> None:
        if soft.role is not Role.LEADER:
            return
        other = self.leader_of_term.setdefault(soft.term, nid)
        if other != nid:
            self.fail(f"election safety: {other} and {nid} both leaders of term {soft.term}")
        # Leader completeness: every entry committed in an earlier term must be in the new
        # leader's log (or inside its snapshot).
        log = core.log
        for index in range(log.snapshot_index() + 1, self.max_committed + 1):
            if self.commit_term[index] >= soft.term:
                continue
            term = self.committed_term[index]
            if log.term(index) != term:
                self.fail(
                    f"leader completeness: {nid}, leader of term {soft.term}, lacks committed "
                    f"entry {index} (term {term}); has term {log.term(index)}"
                )

    def on_leader_commit(self, term: int, commit: int, core: RaftCore) -> None:
        """A leader of `term` declared entries up to `commit` committed."""
        for index in range(self.max_committed + 1, commit + 1):
            t = core.log.term(index)
            if t is None:
                self.fail(f"leader of term {term} committed {index}, which it does not hold")
            self.commit_term[index] = term
            self.committed_term[index] = t
        self.max_committed = max(self.max_committed, commit)

    def on_entries(self, nid: NodeId, entries: tuple[Entry, ...], core: RaftCore) -> None:
        log = core.log
        for e in entries:
            prev_term = log.term(e.index - 1)
            shape = (e.kind.value, e.data, prev_term)
            seen = self.entry_shape.setdefault((e.index, e.term), shape)
            if seen != shape and not (seen[:2] == shape[:2] and None in (seen[2], prev_term)):
                self.fail(
                    f"log matching: {nid} has entry {e.index} of term {e.term} unlike another "
                    f"node's ({shape} vs {seen})"
                )

    def on_apply(self, nid: NodeId, e: Entry) -> None:
        mine = (e.term, e.data)
        first = self.applied.setdefault(e.index, mine)
        if first != mine:
            self.fail(
                f"state machine safety: {nid} applied {mine} at index {e.index}, "
                f"another node applied {first}"
            )
        if e.index > self.max_applied:
            self.max_applied = e.index

    def on_restore(self, nid: NodeId, meta: SnapshotMeta, sm: StateMachine) -> None:
        for index, term, data in sm.base:
            first = self.applied.setdefault(index, (term, data))
            if first != (term, data):
                self.fail(
                    f"state machine safety: {nid} restored a snapshot that differs at {index}"
                )
        if sm.applied != meta.index:
            self.fail(f"{nid} restored a snapshot ending at {sm.applied}, meta says {meta.index}")

    def on_read_request(self, request: int) -> None:
        # Every entry applied anywhere was committed before this read was asked for.
        self.read_floor[request] = self.max_applied

    def on_read_state(self, nid: NodeId, request: int, index: int) -> None:
        floor = self.read_floor.get(request, 0)
        if index < floor:
            self.fail(f"stale read: {nid} answered read {request} at {index} < commit {floor}")
