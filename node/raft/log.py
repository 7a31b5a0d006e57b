"""The in-memory Raft log of one core: a compacted prefix (the snapshot) and the entries after it.

It tracks four positions: `committed` (known replicated on a majority), `applied` (handed to
the state machine), `stable` (known durable on this node's disk) and `handed` (handed to the
driver to persist). Pure data structure: imports only node.raft.types and node.raft.errors.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.raft.errors import InvariantError
from node.raft.types import ConfState, Entry, LogIndex, SnapshotMeta, Term


class RaftLog:
    def __init__(
        self,
        snapshot: SnapshotMeta | None,
        entries: Sequence[Entry],
        committed: LogIndex,
    ) -> None:
        self.snapshot: SnapshotMeta | None = snapshot
        snap_index = snapshot.index if snapshot else 0
        # _entries[i].index == _offset + i; everything below _offset is in the snapshot.
        self._offset: int = snap_index + 1
        self._entries: list[Entry] = []
        for e in entries:
            if e.index <= snap_index:
                continue
            if e.index != self._offset + len(self._entries):
                raise InvariantError(f"stored entries are not contiguous at index {e.index}")
            self._entries.append(e)
        last = self.last_index()
        self.committed = LogIndex(min(max(committed, snap_index), last))
        self.applied = LogIndex(snap_index)  # the state machine starts from the snapshot
        self.stable = LogIndex(last)  # everything given to the constructor came from disk
        self.handed = LogIndex(last)

    # ----- positions -----

    def snapshot_index(self) -> LogIndex:
        return LogIndex(self._offset - 1)

    def first_index(self) -> LogIndex:
        return LogIndex(self._offset)

    def last_index(self) -> LogIndex:
        return LogIndex(self._offset + len(self._entries) - 1)

    def last_term(self) -> Term:
        t = self.term(self.last_index())
        return t if t is not None else Term(0)

    def term(self, index: int) -> Term | None:
        """The term of the entry at `index`; None if compacted away or beyond the end."""
        if index == self._offset - 1:
            return self.snapshot.term if self.snapshot else Term(0)
        i = index - self._offset
        if 0 <= i < len(self._entries):
            return self._entries[i].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        t = self.term(index)
        return t is not None and t == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log is more up-to-date if its last term is later, or equal and longer."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    # ----- reading -----

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi), at least one if any, then up to max_bytes in total."""
        if lo < self._offset:
            raise InvariantError(f"slice from {lo} below the first index {self._offset}")
        start, stop = lo - self._offset, min(hi, self.last_index() + 1) - self._offset
        out: list[Entry] = []
        size = 0
        for e in self._entries[start:stop]:
            size += e.size()
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def all_entries(self) -> list[Entry]:
        return list(self._entries)

    def find_conflict_by_term(self, index: int, term: int) -> LogIndex:
        """The largest index <= `index` whose term is <= `term` (or that is compacted).

        Used for fast backtracking (§5.3): one round trip skips a whole term of mismatch.
        """
        index = min(index, self.last_index())
        while index >= self._offset:
            t = self.term(index)
            if t is not None and t <= term:
                break
            index -= 1
        return LogIndex(max(index, 0))

    # ----- writing -----

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that follow the last index (the leader's own proposals)."""
        for e in entries:
            if e.index != self.last_index() + 1:
                raise InvariantError(f"append of index {e.index} after {self.last_index()}")
            self._entries.append(e)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> LogIndex | None:
        """A follower's AppendEntries: None if the consistency check fails (§5.3).

        Otherwise skips entries already present, truncates the first conflicting suffix,
        appends the rest, advances the commit index, and returns the last new index.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for k, e in enumerate(entries):
            t = self.term(e.index)
            if t is None and e.index <= self.snapshot_index():
                continue  # already compacted, hence committed and identical
            if t != e.term:
                self._truncate_from(e.index)
                self.append(entries[k:])
                break
        self.commit_to(min(commit, last_new))
        return LogIndex(last_new)

    def _truncate_from(self, index: int) -> None:
        if index <= self.committed:
            raise InvariantError(f"truncating committed entry {index} (commit {self.committed})")
        del self._entries[index - self._offset :]
        self.stable = LogIndex(min(self.stable, index - 1))
        self.handed = LogIndex(min(self.handed, index - 1))

    def commit_to(self, index: int) -> bool:
        if index <= self.committed:
            return False
        if index > self.last_index():
            raise InvariantError(f"commit {index} beyond the last index {self.last_index()}")
        self.committed = LogIndex(index)
        return True

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.snapshot = snapshot
        self._offset = snapshot.index + 1
        self._entries = []
        self.committed = snapshot.index
        self.applied = snapshot.index
        self.stable = snapshot.index
        self.handed = snapshot.index

    def compact(self, index: int, term: int, conf: ConfState) -> None:
        """Drop entries up to `index`, which the state machine has durably snapshotted."""
        if index <= self.snapshot_index():
            return
        if index > self.applied or index > self.stable:
            raise InvariantError(f"compaction to {index} beyond applied/stable entries")
        if self.term(index) != term:
            raise InvariantError(f"compaction to {index}: term {term} does not match the log")
        del self._entries[: index + 1 - self._offset]
        self._offset = index + 1
        self.snapshot = SnapshotMeta(LogIndex(index), Term(term), conf)

    # ----- hand-out to the driver -----

    def take_unhanded(self) -> list[Entry]:
        """Entries not yet given to the driver to persist."""
        start = self.handed + 1 - self._offset
        out = self._entries[start:] if start < len(self._entries) else []
        self.handed = self.last_index()
        return out

    def has_unhanded(self) -> bool:
        return self.handed < self.last_index()

    def committed_to_apply_bound(self) -> int:
        return min(self.committed, self.stable)

    def take_committed(self, max_count: int = 1 << 30) -> list[Entry]:
        """Committed entries that are durable here and not yet handed to the state machine."""
        hi = self.committed_to_apply_bound()
        if hi <= self.applied:
            return []
        lo = self.applied + 1 - self._offset
        out = self._entries[lo : lo + min(hi - self.applied, max_count)]
        if out:
            self.applied = out[-1].index
        return out

    def has_committed(self) -> bool:
        return self.committed_to_apply_bound() > self.applied

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to (index, term); ignore if since overwritten."""
        if index > self.stable and index <= self.handed and self.match_term(index, term):
            self.stable = LogIndex(index)
