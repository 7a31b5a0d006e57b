"""The write-ahead log: entries, hard state and snapshot markers in append-only segment files.

In the manner of etcd's WAL. Files are `wal/<seq:016x>-<first_index:016x>.wal`; each holds a
header and then batches of records (records.py, format version 4), and nothing is ever
rewritten in place: an entry whose index is at or below the last stored one replaces that
suffix when the log is replayed.

- Group commit: append() and set_hard_state() only write; sync() closes the batch with a
  BATCH_END record (length and crc32 of everything written since the last one) and makes it
  durable with one fsync. A hard state written without a sync (the driver does that when only
  the commit index moved) joins the batch the next sync() closes; until then a crash may lose
  it, which is allowed: the commit index need not be durable.
- A segment is created whole: written to `<name>.tmp`, fsynced, renamed, and the directory
  fsynced; the previous segment's batch is closed and fsynced first. Each segment begins with
  a head batch of two records, the hard state and the snapshot marker current when it was cut,
  so once a snapshot covers every entry of the segments before it they can be deleted without
  losing anything.
- Recovery: a power cut may write the pages of the batch whose fsync it interrupted in any
  order (TRAPS.md), so damage there (zeros, garbage, a short file, valid records after a hole,
  even with its BATCH_END on disk) is a torn tail. Damage is a torn tail when it is in the
  newest segment and no whole batch (a BATCH_END whose checksum holds over its batch) follows
  it: the records before it, a prefix of what was written, are kept, the file is cut back
  after them, their batch is closed with the BATCH_END the crash kept from it, and fsynced,
  with a warning. Damage followed by a whole batch was synced (fsyncs happen in order) and, like
  damage in any older segment, raises StorageCorruptedError naming the file and byte offset:
  nothing that was synced is ever dropped silently. (A newest segment damaged inside its head
  records, which a crash cannot do since segments appear whole, is removed when an older
  segment still holds what they repeated, and is corruption otherwise.)
- Replayed is not synced: after a SIGKILL the newest segment may hold records that only reached
  the page cache, and the node counts all it replays as stable. open() therefore fsyncs the
  newest segment and the directory before it returns.
- A segment of another format version (1 had no batches, 2 kept session tokens, 3 did not
  record its command format) raises StorageFormatError: an older data directory is refused,
  never converted.
- Every segment header records the command format of its entries' data, which the caller names
  at open (the storage never decodes a command): new segments get it, and a segment with
  another one raises CommandFormatError, so entries are never handed to a decoder of another
  encoding.

Not thread-safe: one caller at a time. Standard library only; must not import anything from
chatbooth beyond node.raft.types and node.storage.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.raft.types import Entry, HardState, LogIndex, Term
from node.storage.errors import (
    CommandFormatError,
    CompactedError,
    StorageClosedError,
    StorageCorruptedError,
    StorageFormatError,
    StorageIOError,
    StorageMisuseError,
    UnavailableError,
)
from node.storage.files import AppendFile, FileSystem
from node.storage.records import (
    BATCH_END_SIZE,
    FORMAT_VERSION,
    MAX_COMMAND_FORMAT,
    SEGMENT_HEADER_SIZE,
    BatchEnd,
    Malformed,
    Record,
    SnapshotMarker,
    Torn,
    batch_end_for,
    check_segment_header,
    closes_batch,
    decode_at,
    encode_record,
    encode_segment_header,
    next_complete_batch,
    segment_command_format,
    segment_version,
)

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 << 20
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_TMP_SUFFIX = ".tmp"
_HEAD_RECORDS = 2  # every segment starts with a HARD_STATE and a SNAPSHOT marker record
_NO_SNAPSHOT = SnapshotMarker(LogIndex(0), Term(0))


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


@dataclass(frozen=True, slots=True)
class Segment:
    seq: int
    first_index: int  # the index the log's next entry had when this segment was cut
    path: Path


class _Replay:
    """The log as its records rebuild it, segment after segment.

    Segments before the oldest one present may have been deleted after a snapshot: entries in
    (marker.index, first) are then unknown until a marker covers them, which a later record
    always does unless the newest segment was damaged (WriteAheadLog.unknown_range()).
    """

    def __init__(self, first_index: int) -> None:
        self.hard_state = HardState()
        self.marker = _NO_SNAPSHOT
        self.first = first_index  # entries[i].index == first + i
        self.entries: list[Entry] = []

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1

    def apply(self, record: Record) -> str | None:
        """Apply one record; returns why it is impossible here, or None."""
        if isinstance(record, HardState):
            self.hard_state = record
        elif isinstance(record, Entry):
            return self._apply_entry(record)
        else:
            return self._apply_marker(record)
        return None

    def _apply_entry(self, entry: Entry) -> str | None:
        if entry.index <= self.marker.index:
            return f"entry {entry.index} is at or below the snapshot at index {self.marker.index}"
        if entry.index > self.last + 1:
            return f"entry {entry.index} leaves a gap after entry {self.last}"
        if entry.index < self.first:
            # It replaces a suffix that began in a deleted segment.
            self.entries = [entry]
            self.first = entry.index
        else:
            del self.entries[entry.index - self.first :]
            self.entries.append(entry)
        return None

    def _apply_marker(self, marker: SnapshotMarker) -> str | None:
        if marker.index < self.marker.index:
            return f"snapshot marker goes back from index {self.marker.index} to {marker.index}"
        if marker.index == self.marker.index and marker.term != self.marker.term:
            return (
                f"snapshot marker at index {marker.index} changes its term from "
                f"{self.marker.term} to {marker.term}"
            )
        if marker.reset:
            self.entries = []
            self.first = marker.index + 1
        else:
            if self.first <= marker.index <= self.last:
                term = self.entries[marker.index - self.first].term
                if term != marker.term:
                    return (
                        f"snapshot marker at index {marker.index} term {marker.term} "
                        f"contradicts the entry there, of term {term}"
                    )
            if marker.index >= self.first:
                del self.entries[: marker.index - self.first + 1]
                self.first = marker.index + 1
        self.marker = SnapshotMarker(marker.index, marker.term)
        return None


class WriteAheadLog:
    """The log store and the stable store of one node, in one sequence of segment files.

    Everything after the snapshot marker is kept in memory as well.
    """

    def __init__(
        self,
        fs: FileSystem,
        wal_dir: Path,
        segment_bytes: int,
        replay: _Replay,
        segments: list[Segment],
        next_seq: int,
        *,
        command_format: int,
    ) -> None:
        if segment_bytes <= 0:
            raise StorageMisuseError(f"segment_bytes must be positive, not {segment_bytes}")
        self._fs = fs
        self._command_format = command_format  # written into every segment this log cuts
        self._dir = wal_dir
        self._segment_bytes = segment_bytes
        self._hard_state = replay.hard_state
        self._marker = replay.marker
        # entries[i].index == first + i. first == marker.index + 1, except after an open whose
        # newest segment lost the marker that let older segments go: see unknown_range().
        self._first = replay.first
        self._entries = replay.entries
        self._segments = segments  # oldest first; the last one is open for appending
        self._next_seq = next_seq
        self._file: AppendFile | None = None
        self._size = 0  # bytes in the current segment
        self._unsynced = False  # written since the last fsync
        # The open batch: bytes written to the current segment since its last BATCH_END.
        self._batch_bytes = 0
        self._batch_crc = 0
        self._failed: str | None = None
        self._closed = False

    # -- opening and recovery -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        wal_dir: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        command_format: int = 0,
    ) -> WriteAheadLog:
        """Replay every segment in `wal_dir` (which must exist), repairing a torn tail.

        `command_format` is the encoding of the entries' data that the caller reads and writes
        (a u32; the storage does not interpret it): a new log records it, and a log that
        records another one raises CommandFormatError. Raises StorageCorruptedError for
        anything that is not a torn tail, and StorageFormatError for a segment of another
        on-disk format.
        """
        if not 0 <= command_format <= MAX_COMMAND_FORMAT:
            raise StorageMisuseError(
                f"command_format must be in 0..{MAX_COMMAND_FORMAT}, not {command_format}"
            )
        segments = _list_segments(fs, wal_dir)
        if not segments:
            wal = cls(fs, wal_dir, segment_bytes, _Replay(1), [], 0, command_format=command_format)
            wal._cut()
            return wal

        replay = _Replay(segments[0].first_index)
        kept: list[Segment] = []
        tail_size = 0
        for position, segment in enumerate(segments):
            newest = position == len(segments) - 1
            if segment.first_index != replay.last + 1:
                raise StorageCorruptedError(
                    segment.path,
                    0,
                    f"segment starts at index {segment.first_index} but the log before it "
                    f"ends at {replay.last}",
                )
            size = _replay_segment(
                fs,
                segment,
                replay,
                newest=newest,
                only=len(segments) == 1,
                command_format=command_format,
            )
            if size is not None:
                kept.append(segment)
                tail_size = size
        next_seq = kept[-1].seq + 1
        wal = cls(fs, wal_dir, segment_bytes, replay, kept, next_seq, command_format=command_format)
        if len(kept) < len(segments):
            wal._cut()  # the newest segment was removed: start its successor
        else:
            with wal._guard("opening the newest segment"):
                wal._file = fs.open_append(kept[-1].path)
                # Replayed is not synced: after a SIGKILL the newest segment's tail (and even
                # its directory entry) may be in the page cache only. The caller counts all of
                # it as stable, so make it so before anyone can rely on it.
                wal._file.sync()
                fs.fsync_dir(wal_dir)
            wal._size = tail_size
        return wal

    @staticmethod
    def has_segments(fs: FileSystem, wal_dir: Path) -> bool:
        """Whether `wal_dir` holds any segment (open() of one without starts a new log)."""
        return any(_SEGMENT_NAME.match(name) for name in fs.listdir(wal_dir))

    # -- reading --------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        return self._hard_state

    def snapshot_marker(self) -> SnapshotMarker:
        """The newest snapshot the log was compacted to (index 0: none)."""
        return self._marker

    def unknown_range(self) -> tuple[int, int] | None:
        """Entries (lo, hi inclusive) after the marker that no segment holds any more, if any.

        Only a damaged newest segment leaves such a range: it lost the snapshot marker that
        let older segments be deleted. The owner must cover it with mark_snapshot() (from a
        snapshot file) or give up; until then nothing can be appended.
        """
        if self._first == self._marker.index + 1:
            return None
        return self._marker.index + 1, self._first - 1

    def first_index(self) -> LogIndex:
        return LogIndex(self._first)

    def last_index(self) -> LogIndex:
        return LogIndex(self._first + len(self._entries) - 1)

    def term(self, index: int) -> Term:
        """The term of entry `index`; at the snapshot's index, the snapshot's term."""
        if index == self._marker.index:
            return self._marker.term
        if index < self._first:
            raise CompactedError(index, self._first)
        if index > self.last_index():
            raise UnavailableError(index, self.last_index())
        return self._entries[index - self._first].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi."""
        if lo > hi:
            raise StorageMisuseError(f"entries({lo}, {hi}): lo is above hi")
        if lo < self._first:
            raise CompactedError(lo, self._first)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi - 1, self.last_index())
        return self._entries[lo - self._first : hi - self._first]

    def segments(self) -> list[Segment]:
        return list(self._segments)

    @property
    def command_format(self) -> int:
        """The command format of the entries' data, as every segment's header records it."""
        return self._command_format

    # -- writing --------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Write contiguous entries; the first may replace a stored suffix. Not yet durable."""
        self._check_usable()
        if not entries:
            return
        first = entries[0].index
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise StorageMisuseError(
                    f"appended entries are not contiguous: {entry.index} after {first + offset - 1}"
                )
        if self.unknown_range() is not None:
            raise StorageMisuseError(f"cannot append: entries {self.unknown_range()} are unknown")
        if first <= self._marker.index:
            raise StorageMisuseError(
                f"cannot append entry {first}: the log is compacted through {self._marker.index}"
            )
        if first > self.last_index() + 1:
            raise StorageMisuseError(
                f"cannot append entry {first}: the log ends at {self.last_index()}"
            )
        self._write(b"".join(encode_record(entry) for entry in entries))
        del self._entries[first - self._first :]
        self._entries.extend(entries)
        self._maybe_cut()

    def set_hard_state(self, hard_state: HardState) -> None:
        """Write the hard state (if it changed). Not yet durable."""
        self._check_usable()
        if hard_state == self._hard_state:
            return
        self._write(encode_record(hard_state))
        self._hard_state = hard_state
        self._maybe_cut()

    def mark_snapshot(self, marker: SnapshotMarker) -> None:
        """Record that entries through marker.index are compacted (with `reset`, all of them).

        Not yet durable. Without `reset`, the log must hold entry marker.index of marker.term.
        """
        self._check_usable()
        if marker.index <= self._marker.index:
            raise StorageMisuseError(
                f"snapshot at index {marker.index} is not after the current one at "
                f"{self._marker.index}"
            )
        if not marker.reset:
            # first - 1 is the snapshot's own index, or the end of an unknown range (which a
            # marker there covers without dropping anything).
            if not self._first - 1 <= marker.index <= self.last_index():
                raise StorageMisuseError(
                    f"snapshot at index {marker.index} is not in the log "
                    f"({self._first}..{self.last_index()}); only a reset can go there"
                )
            if marker.index >= self._first and self.term(marker.index) != marker.term:
                raise StorageMisuseError(
                    f"snapshot at index {marker.index} term {marker.term} disagrees with the "
                    f"log's entry there, of term {self.term(marker.index)}"
                )
        self._write(encode_record(marker))
        if marker.reset:
            self._entries = []
        else:
            del self._entries[: marker.index - self._first + 1]
        self._first = marker.index + 1
        self._marker = SnapshotMarker(marker.index, marker.term)
        self._maybe_cut()

    def sync(self) -> None:
        """Make everything written so far durable: close the batch, then one fsync."""
        self._check_usable()
        if not self._unsynced:
            return
        self._end_batch()
        with self._guard("fsync"):
            self._current().sync()
        self._unsynced = False

    def release_segments(self) -> int:
        """Delete the segments whose every entry the snapshot marker covers; returns how many.

        Syncs first: the marker that makes them unnecessary must be durable before they go.
        """
        self.sync()
        covered = 0
        for position in range(len(self._segments) - 1):
            if self._segments[position + 1].first_index - 1 <= self._marker.index:
                covered = position + 1
        for segment in self._segments[:covered]:
            with self._guard(f"removing {segment.path.name}"):
                self._fs.remove(segment.path)
                # One at a time, oldest first: a crash must never leave a gap in the sequence.
                self._fs.fsync_dir(self._dir)
            self._segments.pop(0)
        if covered:
            logger.info(
                "%s: removed %d segment(s) covered by the snapshot at index %d",
                self._dir,
                covered,
                self._marker.index,
            )
        return covered

    def close(self) -> None:
        """Sync what was written (unless a write already failed) and close the segment."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._closed = True
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    # -- internals ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageClosedError(f"{self._dir}: the write-ahead log is closed")
        if self._failed is not None:
            raise StorageIOError(
                f"{self._dir}: an earlier {self._failed}; what reached the disk is unknown, "
                "so nothing more is written until the storage is reopened"
            )

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn an OSError into StorageIOError and refuse every later write."""
        try:
            yield
        except OSError as exc:
            self._failed = f"{action} failed ({exc})"
            raise StorageIOError(f"{self._dir}: {action} failed: {exc}") from exc

    def _current(self) -> AppendFile:
        if self._file is None:
            raise StorageClosedError(f"{self._dir}: no segment is open")
        return self._file

    def _write(self, data: bytes) -> None:
        with self._guard("write"):
            self._current().write(data)
        self._size += len(data)
        self._unsynced = True
        self._batch_bytes += len(data)
        self._batch_crc = zlib.crc32(data, self._batch_crc)

    def _end_batch(self) -> None:
        """Write the BATCH_END of the open batch (if anything is in it); the fsync is next."""
        if not self._batch_bytes:
            return
        with self._guard("write"):
            self._current().write(encode_record(BatchEnd(self._batch_bytes, self._batch_crc)))
        self._size += BATCH_END_SIZE
        self._unsynced = True
        self._batch_bytes = self._batch_crc = 0

    def _maybe_cut(self) -> None:
        if self._size >= self._segment_bytes:
            self._cut()

    def _cut(self) -> None:
        """Start the next segment, whole and durable, beginning with the head records."""
        with self._guard("cutting a new segment"):
            if self._file is not None:
                # The old segment's tail must be durable, its last batch closed, before a newer
                # segment exists: damage in any segment but the newest is corruption.
                self._end_batch()
                self._file.sync()
                self._unsynced = False
                self._file.close()
                self._file = None
            seq = self._next_seq
            first_index = self.last_index() + 1
            path = self._dir / segment_name(seq, first_index)
            tmp = path.with_name(path.name + _TMP_SUFFIX)
            records = encode_record(self._hard_state) + encode_record(self._marker)
            header = encode_segment_header(seq, first_index, self._command_format)
            head = header + records + batch_end_for(records)
            if self._fs.exists(tmp):
                self._fs.remove(tmp)
            staged = self._fs.open_append(tmp)
            try:
                staged.write(head)
                staged.sync()
            finally:
                staged.close()
            self._fs.rename(tmp, path)
            self._fs.fsync_dir(self._dir)
            self._file = self._fs.open_append(path)
        self._segments.append(Segment(seq, first_index, path))
        self._next_seq = seq + 1
        self._size = len(head)


def _list_segments(fs: FileSystem, wal_dir: Path) -> list[Segment]:
    """The segments in `wal_dir`, oldest first; removes leftovers of an interrupted cut."""
    segments: list[Segment] = []
    removed_tmp = False
    for name in fs.listdir(wal_dir):
        match = _SEGMENT_NAME.match(name)
        if match:
            segments.append(Segment(int(match[1], 16), int(match[2], 16), wal_dir / name))
        elif name.endswith(".wal" + _TMP_SUFFIX):
            # Never renamed into place, so never part of the log.
            fs.remove(wal_dir / name)
            removed_tmp = True
        else:
            logger.warning("%s: ignoring %r, which is not a WAL segment", wal_dir, name)
    if removed_tmp:
        fs.fsync_dir(wal_dir)
    segments.sort(key=lambda segment: segment.seq)
    for before, after in itertools.pairwise(segments):
        if after.seq != before.seq + 1:
            raise StorageCorruptedError(
                after.path,
                0,
                f"segment {after.seq:#x} follows segment {before.seq:#x}: segments are missing",
            )
    return segments


def _replay_segment(
    fs: FileSystem,
    segment: Segment,
    replay: _Replay,
    *,
    newest: bool,
    only: bool,
    command_format: int,
) -> int | None:
    """Apply one segment's records to `replay`.

    Returns the segment's (possibly cut back) size, or None if it was the newest one and was
    removed because it was cut short inside its head records. (Segments are created whole, so
    only damage, never a crash, does that; an older segment still holds what the head repeated.
    If there is no older segment the hard state is gone, and that is corruption.)
    """
    path = segment.path

    def torn_head(what: str) -> None:
        if only:
            raise StorageCorruptedError(
                path,
                0,
                f"the only segment is damaged inside its head records ({what}): "
                "the hard state cannot be recovered",
            )
        _remove_torn_segment(fs, path, what)

    buf = fs.read_bytes(path)
    expected = encode_segment_header(segment.seq, segment.first_index, command_format)
    version = segment_version(buf)
    if version is not None and version != FORMAT_VERSION:
        raise StorageFormatError(path, version, FORMAT_VERSION, older_why=_older_why(version))
    problem = check_segment_header(buf, segment.seq, segment.first_index)
    if problem is not None:
        if newest and len(buf) < SEGMENT_HEADER_SIZE and expected.startswith(buf):
            torn_head(f"{len(buf)} bytes of header")
            return None
        raise StorageCorruptedError(path, *problem)
    found = segment_command_format(buf)
    if found != command_format:
        raise CommandFormatError(path, found, command_format)

    offset = batch_start = SEGMENT_HEADER_SIZE  # the open batch began at batch_start
    count = 0  # records applied from this segment (batch ends not counted)

    def damaged(reason: str) -> int | None:
        # Batches are synced in order, so a whole batch after the damage means the damaged one
        # had been synced: corruption. Without one, the damage is in the batch whose fsync
        # never finished, whose pages a power cut may have written in any order: a torn tail.
        later = next_complete_batch(buf, offset + 1, SEGMENT_HEADER_SIZE)
        if later is not None:
            raise StorageCorruptedError(
                path, offset, f"{reason}; a later batch, synced after this one, ends at {later}"
            )
        if not newest:
            raise StorageCorruptedError(
                path, offset, f"{reason} in a segment that is not the newest"
            )
        if count < _HEAD_RECORDS:
            torn_head(f"{reason} at offset {offset}")
            return None
        return _close_tail(fs, path, buf, batch_start, offset, reason)

    while offset < len(buf):
        result = decode_at(buf, offset)
        if isinstance(result, Malformed):
            raise StorageCorruptedError(path, offset, result.reason)
        if isinstance(result, Torn):
            return damaged(result.reason)
        record = result.record
        if isinstance(record, BatchEnd):
            unclosed = closes_batch(buf, offset, record, batch_start)
            if unclosed is not None:
                return damaged(unclosed)
            offset = batch_start = result.end
            continue
        if count == 0 and not isinstance(record, HardState):
            raise StorageCorruptedError(path, offset, "segment does not start with a hard state")
        if count == 1 and not (isinstance(record, SnapshotMarker) and not record.reset):
            raise StorageCorruptedError(
                path, offset, "segment's second record is not its snapshot marker"
            )
        reason = replay.apply(record)
        if reason is not None:
            raise StorageCorruptedError(path, offset, reason)
        count += 1
        offset = result.end
    if count < _HEAD_RECORDS:
        if not newest:
            raise StorageCorruptedError(path, offset, "segment ends inside its head records")
        torn_head(f"it ends at offset {offset}")
        return None
    if batch_start < offset:
        if not newest:
            raise StorageCorruptedError(
                path, batch_start, "a segment that is not the newest ends inside a batch"
            )
        return _close_tail(fs, path, buf, batch_start, offset, None)
    return offset


def _older_why(version: int) -> str | None:
    """Why a segment of an older format version is not read (None: the default account, which
    warns of plaintext session tokens, as versions 1 and 2 may hold)."""
    if version <= 2:
        return None
    return (
        f"it was written by an older chatbooth, and data directories of that version are not "
        f"upgraded in place (a version {version} segment does not record which command format "
        "its entries are in)"
    )


def _close_tail(
    fs: FileSystem, path: Path, buf: bytes, batch_start: int, end: int, damage: str | None
) -> int:
    """Keep the newest segment up to `end`, a record boundary inside the batch that began at
    `batch_start` and was never closed; returns the segment's new size.

    The records kept of that batch are whole (their checksums hold) and a prefix of what was
    written, so the state they give is one the log went through. They get the BATCH_END the
    crash kept them from, and an fsync, so that later batches can follow them.
    """
    file = fs.open_append(path)
    try:
        if end < len(buf):
            file.truncate(end)
        if batch_start < end:
            file.write(batch_end_for(memoryview(buf)[batch_start:end]))
        file.sync()
    finally:
        file.close()
    if damage is not None:
        logger.warning(
            "%s: cut back a torn tail at byte offset %d (%d bytes dropped: %s); no whole "
            "batch follows it, so none of it had been synced",
            path,
            end,
            len(buf) - end,
            damage,
        )
    else:
        logger.info(
            "%s: closed the last batch (%d bytes from offset %d), written but never synced "
            "before a crash",
            path,
            end - batch_start,
            batch_start,
        )
    return end + (BATCH_END_SIZE if batch_start < end else 0)


def _remove_torn_segment(fs: FileSystem, path: Path, what: str) -> None:
    fs.remove(path)
    fs.fsync_dir(path.parent)
    logger.warning(
        "%s: removed the newest segment, damaged inside its head records (%s); "
        "the segment before it holds what they repeated",
        path,
        what,
    )
