"""The three narrow boundaries of node storage, in the manner of hashicorp/raft.

- LogStore: the entries after the snapshot (WriteAheadLog).
- StableStore: the hard state, term, vote and commit (WriteAheadLog too: one file, one fsync).
- SnapshotStore: the current snapshot (SnapshotFiles).

Storage (the facade in node/storage/__init__.py) is written against these. Typing only: must
not import anything from chatbooth beyond node.raft.types and node.storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from node.raft.types import Entry, HardState, LogIndex, SnapshotMeta, Term
from node.storage.records import SnapshotMarker
from node.storage.snapshots import SnapshotReader


class LogStore(Protocol):
    def first_index(self) -> LogIndex:
        """The index of the first stored entry (one past the snapshot)."""

    def last_index(self) -> LogIndex:
        """The index of the last stored entry (the snapshot's index if there is none)."""

    def term(self, index: int) -> Term:
        """The term of entry `index`, from first_index() - 1 (the snapshot) to last_index()."""

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """The entries with lo <= index < hi."""

    def append(self, entries: Sequence[Entry]) -> None:
        """Write contiguous entries, replacing any stored at or after the first. Not durable."""

    def mark_snapshot(self, marker: SnapshotMarker) -> None:
        """Drop the entries a snapshot covers (with marker.reset, all of them). Not durable."""

    def release_segments(self) -> int:
        """Sync, then delete stored files holding only dropped entries."""

    def sync(self) -> None:
        """Make everything written so far durable."""

    def close(self) -> None:
        """Sync what was written and close."""


class StableStore(Protocol):
    def hard_state(self) -> HardState: ...

    def set_hard_state(self, hard_state: HardState) -> None:
        """Write the hard state. Not durable before sync()."""

    def sync(self) -> None: ...


class SnapshotStore(Protocol):
    def latest(self) -> SnapshotMeta | None: ...

    def latest_held_by_state(self) -> bool:
        """Whether the current snapshot's data is the state machine's (save_held)."""

    def open_current(self) -> SnapshotReader | None:
        """The current snapshot, open for streaming its data (None: there is none, or the
        state machine holds its data)."""

    def save(self, meta: SnapshotMeta, source: Path, *, replaces_log: bool = False) -> None:
        """Durably store a snapshot whose data is the file `source` (streamed, never held
        whole) and make it the current one; `replaces_log` records that it came from the
        leader and the log restarts after it."""

    def save_held(self, meta: SnapshotMeta) -> None:
        """Durably store a snapshot whose data the state machine holds itself (the metadata
        only) and make it the current one."""

    def prune(self) -> int:
        """Delete snapshots too old to be needed; returns how many."""
