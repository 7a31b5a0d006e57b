"""A simulated node's disk, with the WAL's batch semantics and both kinds of crash.

Every write between two fsyncs is one batch, framed as `length | payload | checksum` (the
checksum at its end), and the driver fsyncs a batch before it writes the next one that
matters. So at any moment the disk holds synced batches, which nothing takes away, and at most
one unsynced batch in the page cache:

- process crash (SIGKILL): the page cache survives, so the unsynced batch is still there at
  restart; the node replays it and fsyncs it before counting it as stable (`recover`).
- power cut: the page cache is lost. The kernel may have written any subset of the batch's
  pages, in any order, so the file can hold zeros in the middle of the batch and valid bytes
  after them. Recovery reads the frame and drops the whole incomplete batch (a torn tail):
  the batch survives whole or not at all. `power_cut` builds those bytes page by page and
  runs that recovery on them, so "whole or nothing" is the parser's verdict, not an assumption.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from random import Random
from typing import Any

from node.raft.types import Entry, HardState, SnapshotMeta

PAGE = 64  # small pages, so that even a one-entry batch spans several of them
_LEN = struct.Struct(">I")
_SUM = struct.Struct(">I")

# One write inside a batch: ("entries", (Entry, ...)) | ("hard", HardState)
# | ("snapshot", (SnapshotMeta, bytes)).
Op = tuple[str, Any]


def frame(ops: list[Op]) -> bytes:
    payload = pickle.dumps(ops, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(payload)) + payload + _SUM.pack(zlib.crc32(payload))


def read_frame(data: bytes) -> list[Op] | None:
    """The batch at the start of `data`, or None if it is incomplete (a torn tail)."""
    if len(data) < _LEN.size:
        return None
    (n,) = _LEN.unpack_from(data)
    end = _LEN.size + n
    if n == 0 or end + _SUM.size > len(data):
        return None
    payload = data[_LEN.size : end]
    (checksum,) = _SUM.unpack_from(data, end)
    if zlib.crc32(payload) != checksum:
        return None
    ops: list[Op] = pickle.loads(payload)
    return ops


def torn_bytes(batch: bytes, offset: int, landed: Iterable[bool]) -> bytes:
    """What a power cut leaves of `batch`, written at file `offset`: each page it spans
    either reached the platter or still reads as zeros (the file was extended)."""
    out = bytearray(len(batch))
    start = offset % PAGE
    for page, ok in enumerate(landed):
        lo = max(page * PAGE - start, 0)
        hi = min((page + 1) * PAGE - start, len(batch))
        if ok and lo < hi:
            out[lo:hi] = batch[lo:hi]
    return bytes(out)


def pages_spanned(length: int, offset: int) -> int:
    start = offset % PAGE
    return (start + length + PAGE - 1) // PAGE


def _estimated_size(ops: list[Op]) -> int:
    """About a batch's framed size: only its page alignment matters, and pickling every
    synced batch just to measure it would slow every run down."""
    size = 8
    for kind, value in ops:
        size += 40
        if kind == "entries":
            size += sum(len(e.data) + 40 for e in value)
    return size


@dataclass
class SimDisk:
    """The synced state (fields) and the batch written since the last fsync (`unsynced`)."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes = b""
    entries: list[Entry] = field(default_factory=list)  # contiguous, after the snapshot
    unsynced: list[Op] = field(default_factory=list)  # in the page cache, not yet fsynced
    size: int = 0  # bytes of synced batches: where the next batch starts in the file

    # ----- the driver's writes -----

    def write(
        self,
        entries: tuple[Entry, ...],
        hard_state: HardState | None,
        snapshot: tuple[SnapshotMeta, bytes] | None,
    ) -> None:
        """One Ready's writes, in the Ready's order: snapshot, entries, hard state."""
        if snapshot is not None:
            self.unsynced.append(("snapshot", snapshot))
        if entries:
            self.unsynced.append(("entries", entries))
        if hard_state is not None:
            self.unsynced.append(("hard", hard_state))

    def fsync(self) -> None:
        if self.unsynced:
            self._apply(self.unsynced)
            self.size += _estimated_size(self.unsynced)
            self.unsynced = []

    # ----- crashes -----

    def recover(self) -> None:
        """Open after a process crash: replay what the page cache kept, and fsync it."""
        self.fsync()

    def torn_write(self) -> None:
        """The process died inside the write of its batch: a torn tail, cut at open."""
        self.unsynced = []

    def power_cut(self, rng: Random) -> str:
        """Lose the page cache. Returns what happened to the unsynced batch, for the trace."""
        if not self.unsynced:
            return "nothing unsynced"
        batch = frame(self.unsynced)
        pages = pages_spanned(len(batch), self.size)
        mode = rng.random()
        if mode < 0.3:
            landed = [True] * pages  # write-back had flushed it all
        elif mode < 0.6:
            landed = [False] * pages
        else:
            landed = [rng.random() < 0.5 for _ in range(pages)]
        ops = read_frame(torn_bytes(batch, self.size, landed))
        self.unsynced = []
        if ops is None:
            return f"unsynced batch torn ({sum(landed)}/{pages} pages), cut"
        self._apply(ops)
        self.size += _estimated_size(ops)
        return "unsynced batch survived whole"

    # ----- applying a batch -----

    def _apply(self, ops: list[Op]) -> None:
        for kind, value in ops:
            if kind == "entries":
                self.append(value)
            elif kind == "hard":
                self.hard_state = value
            else:
                meta, data = value
                self.save_snapshot(meta, data, discard_log=True)

    def append(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            first = (self.snapshot.index if self.snapshot else 0) + 1
            del self.entries[max(e.index - first, 0) :]
            if e.index >= first:
                self.entries.append(e)

    def save_snapshot(self, meta: SnapshotMeta, data: bytes, *, discard_log: bool) -> None:
        old_first = (self.snapshot.index if self.snapshot else 0) + 1
        self.snapshot, self.snapshot_data = meta, data
        if discard_log:
            self.entries = []
        else:
            self.entries = self.entries[max(meta.index + 1 - old_first, 0) :]
