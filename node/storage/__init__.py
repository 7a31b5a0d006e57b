"""Durable storage of one node: its log, its hard state and its snapshots, in one data directory.

    data_dir/LOCK                              exclusive flock, holds the owner's pid (lock.py)
    data_dir/wal/<seq>-<first_index>.wal       the write-ahead log (wal.py, records.py)
    data_dir/snap/<term>-<index>.snap          snapshots, the newest two (snapshots.py)
    data_dir/spool/                            temporary snapshot files, emptied at open
    data_dir/MEMBER                            the cluster and member it belongs to (identity.py)

`Storage` is the facade the driver uses; behind it are three narrow stores (protocols.py): the
log and the stable store are one WriteAheadLog, so entries and hard state share one fsync, and
the snapshot store is SnapshotFiles. Every file operation goes through the file layer
(files.py), which tests replace with one that crashes.

Nothing acknowledged is lost: what sync() returned from is recovered by open(), or open() raises
StorageCorruptedError naming the file and byte offset. What open() recovers is durable when it
returns (it fsyncs what it replayed), so the caller may count all of it as stable. A data
directory of another on-disk format raises StorageFormatError, and a log whose entries are in
another command format than the caller's (the WAL header records it; the storage never decodes
a command) raises CommandFormatError, a StorageFormatError. Not thread-safe: one caller at
a time (a SnapshotReader from open_snapshot() is the exception: it has its own file handle).

A snapshot's data is a file (a SQLite database, up to hundreds of MB), so it is never held in
memory whole: save_snapshot and install_snapshot stream it from a file the caller made (in
spool_dir, on the snapshots' file system, so a rename works), and open_snapshot streams it back.
A state machine that keeps its state durably itself (chatbooth's database) compacts with
compact() instead: the snapshot then records the metadata only, and the caller makes a copy of
its state when a follower needs one (snapshot_held_by_state()).

Standard library only, plus node.raft.types: no asyncio, no grpc, nothing else from chatbooth.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from node.raft.types import Entry, HardState, LogIndex, SnapshotMeta, Term
from node.storage.errors import (
    CommandFormatError,
    CompactedError,
    StorageClosedError,
    StorageCorruptedError,
    StorageError,
    StorageFormatError,
    StorageIOError,
    StorageLockedError,
    StorageMisuseError,
    UnavailableError,
)
from node.storage.files import FileLock, FileSystem, RealFileSystem, ensure_dir
from node.storage.identity import MemberRecord, read_member, write_member
from node.storage.protocols import LogStore, SnapshotStore, StableStore
from node.storage.records import SnapshotMarker
from node.storage.snapshots import SnapshotFiles, SnapshotReader, check_meta
from node.storage.wal import DEFAULT_SEGMENT_BYTES, WriteAheadLog

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "CommandFormatError",
    "CompactedError",
    "FileSystem",
    "InitialState",
    "MemberRecord",
    "RealFileSystem",
    "SnapshotReader",
    "Storage",
    "StorageClosedError",
    "StorageCorruptedError",
    "StorageError",
    "StorageFormatError",
    "StorageIOError",
    "StorageLockedError",
    "StorageMisuseError",
    "UnavailableError",
]

logger = logging.getLogger(__name__)

LOCK_NAME = "LOCK"
WAL_DIR = "wal"
SNAP_DIR = "snap"
SPOOL_DIR = "spool"


@dataclass(frozen=True, slots=True)
class InitialState:
    """What a node restarts from."""

    hard_state: HardState
    snapshot: SnapshotMeta | None
    entries: list[Entry]  # every entry after the snapshot, in order, contiguous


class Storage:
    """The durable log, hard state and snapshots of one node. Open with Storage.open()."""

    def __init__(
        self,
        data_dir: Path,
        lock: FileLock,
        log: LogStore,
        stable: StableStore,
        snapshots: SnapshotStore,
        *,
        fs: FileSystem,
        member: MemberRecord | None,
    ) -> None:
        self.data_dir = data_dir
        self._fs = fs
        self._member = member
        self._lock: FileLock | None = lock
        self._log = log
        self._stable = stable
        self._snapshots = snapshots
        self._failed: str | None = None

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        fs: FileSystem | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        command_format: int = 0,
    ) -> Storage:
        """Create `data_dir` if needed, lock it and recover its state.

        `command_format` is the version of the encoding of the entries' data that the caller
        reads and writes (a u32, not interpreted here): a new log records it in its segment
        headers, and a log that records another one is refused.

        Raises StorageLockedError if another process (or another open here) holds it,
        StorageCorruptedError if its contents are damaged beyond a torn tail,
        StorageFormatError if an older (or newer) chatbooth wrote it, and CommandFormatError
        (a StorageFormatError) if its entries are in another command format. What it recovers
        is durable on return.
        """
        fs = fs if fs is not None else RealFileSystem()
        data_dir = Path(data_dir).absolute()
        try:
            ensure_dir(fs, data_dir)
        except OSError as exc:
            raise StorageIOError(f"cannot create data directory {data_dir}: {exc}") from exc
        lock = fs.lock(data_dir / LOCK_NAME)
        try:
            return cls._recover(data_dir, fs, lock, segment_bytes, command_format)
        except OSError as exc:
            lock.release()
            raise StorageIOError(f"{data_dir}: cannot open the storage: {exc}") from exc
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _recover(
        cls,
        data_dir: Path,
        fs: FileSystem,
        lock: FileLock,
        segment_bytes: int,
        command_format: int,
    ) -> Storage:
        wal_dir, snap_dir = data_dir / WAL_DIR, data_dir / SNAP_DIR
        ensure_dir(fs, wal_dir)
        ensure_dir(fs, snap_dir)
        _empty_spool(fs, data_dir / SPOOL_DIR)
        _fsync_ancestors(fs, data_dir)
        snapshots = SnapshotFiles.open(fs, snap_dir)
        # Before WriteAheadLog.open starts an empty log, which would hide the loss next time.
        if not WriteAheadLog.has_segments(fs, wal_dir) and snapshots.files():
            raise StorageCorruptedError(
                wal_dir,
                0,
                f"there is no WAL segment but {snap_dir} holds snapshots: "
                "the log and the hard state were lost",
            )
        wal = WriteAheadLog.open(
            fs, wal_dir, segment_bytes=segment_bytes, command_format=command_format
        )
        try:
            _reconcile(wal, snapshots)
        except BaseException:
            wal.close()
            raise
        try:
            member = read_member(fs, data_dir)
        except BaseException:
            wal.close()
            raise
        return cls(data_dir, lock, wal, wal, snapshots, fs=fs, member=member)

    # -- reading --------------------------------------------------------------------------

    @property
    def member(self) -> MemberRecord | None:
        """Which cluster and member this directory belongs to; None before it joined one."""
        return self._member

    def holds_nothing(self) -> bool:
        """Whether the directory has no entry, no snapshot and no term: a new (or wiped) one."""
        self._check_open()
        return (
            self._log.last_index() == 0
            and self._snapshots.latest() is None
            and self._stable.hard_state().term == 0
        )

    def initial_state(self) -> InitialState:
        self._check_open()
        return InitialState(
            hard_state=self._stable.hard_state(),
            snapshot=self._snapshots.latest(),
            entries=self._log.entries(self._log.first_index(), self._log.last_index() + 1),
        )

    def hard_state(self) -> HardState:
        self._check_open()
        return self._stable.hard_state()

    def first_index(self) -> LogIndex:
        """The first stored entry's index: one past the snapshot."""
        self._check_open()
        return self._log.first_index()

    def last_index(self) -> LogIndex:
        """The last stored entry's index (the snapshot's if no entry follows it)."""
        self._check_open()
        return self._log.last_index()

    def term(self, index: int) -> Term:
        """The term of entry `index`, for first_index() - 1 (the snapshot) to last_index()."""
        self._check_open()
        return self._log.term(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi. CompactedError / UnavailableError outside the log."""
        self._check_open()
        return self._log.entries(lo, hi)

    @property
    def spool_dir(self) -> Path:
        """Where temporary snapshot files live (a database copy being made, a snapshot being
        received): on the snapshots' file system, so a rename into place works. Emptied at
        open: what is there then was left by an interrupted copy or transfer."""
        return self.data_dir / SPOOL_DIR

    def open_snapshot(self) -> SnapshotReader | None:
        """The current snapshot, open for reading its data a piece at a time (None: there is
        none, or its data is the state machine's: snapshot_held_by_state()). The reader has
        its own file handle: it may be used from any thread while this storage goes on, and a
        later prune that removes the file does not disturb it. Close it."""
        self._check_open()
        return self._snapshots.open_current()

    # -- writing --------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Write contiguous entries; the first may replace a stored suffix. Durable at sync()."""
        self._check_open()
        with self._failing_on_io_error():
            self._log.append(entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        """Write the hard state. Durable at sync()."""
        self._check_open()
        with self._failing_on_io_error():
            self._stable.set_hard_state(hard_state)

    def record_member(self, record: MemberRecord) -> None:
        """Replace the member record (durable on return)."""
        self._check_open()
        with self._failing_on_io_error():
            try:
                write_member(self._fs, self.data_dir, record)
            except OSError as exc:
                raise StorageIOError(
                    f"{self.data_dir}: cannot write the member record: {exc}"
                ) from exc
        self._member = record

    def sync(self) -> None:
        """Make every append and hard state written so far durable, with one fsync."""
        self._check_open()
        with self._failing_on_io_error():
            self._log.sync()

    def save_snapshot(self, meta: SnapshotMeta, source: Path) -> None:
        """Store a snapshot of this node's own state machine and compact the log to it.

        The data is the contents of file `source`, streamed into the snapshot file (and left
        in place: the caller deletes it). Durable on return, together with everything written
        before. Entries <= meta.index are gone afterwards; the log must hold entry meta.index,
        of meta.term.
        """
        self._check_compaction(meta)
        with self._failing_on_io_error():
            self._snapshots.save(meta, source)
            self._record_snapshot(meta, reset=False)

    def compact(self, meta: SnapshotMeta) -> None:
        """Compact the log to `meta` for a state machine that holds its state durably itself,
        at meta.index or later (its caller checkpointed it): the snapshot records the metadata
        only, and open_snapshot() returns None while it is the current one. Durable on
        return, with everything written before; the same rules as save_snapshot."""
        self._check_compaction(meta)
        with self._failing_on_io_error():
            self._snapshots.save_held(meta)
            self._record_snapshot(meta, reset=False)

    def snapshot_held_by_state(self) -> bool:
        """Whether the current snapshot came from compact(): its data is the state machine's."""
        self._check_open()
        return self._snapshots.latest_held_by_state()

    def check_install(self, meta: SnapshotMeta) -> None:
        """Raise StorageMisuseError if install_snapshot(meta, ...) would refuse `meta`.

        Reads nothing, writes nothing. For a caller that validates a received snapshot's data
        itself before installing it: check this first, so that nothing is validated (or
        restored) that the storage then refuses.
        """
        self._check_open()
        snapshot_index = self._log.first_index() - 1
        if meta.index <= snapshot_index:
            raise StorageMisuseError(
                f"snapshot at index {meta.index} is not after the current one at {snapshot_index}"
            )
        check_meta(meta)

    def install_snapshot(
        self,
        meta: SnapshotMeta,
        source: Path,
        *,
        validate: Callable[[Path], object] | None = None,
    ) -> None:
        """Store a snapshot received from the leader: every stored entry is discarded and the
        log restarts after meta.index. Durable on return, with everything written before.

        A snapshot must be validated before it is durable: once it is, every restart loads it
        again, and one the state machine cannot restore is a crash loop. `validate(source)` (the
        state machine's check of the data file) runs after check_install(meta) and before
        anything is written; whatever it raises propagates, and then nothing was stored. The
        data is streamed from `source`, which is left in place. A crash before this returns
        leaves the old snapshot and log (a half-stored snapshot is removed at open).
        """
        self.check_install(meta)
        if validate is not None:
            validate(source)
        with self._failing_on_io_error():
            # The file first: once the marker is durable the log may depend on it.
            self._snapshots.save(meta, source, replaces_log=True)
            self._record_snapshot(meta, reset=True)

    def close(self) -> None:
        """Sync what was written (unless a write failed), close the files, release the lock."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            self._log.close()
        finally:
            lock.release()

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _check_compaction(self, meta: SnapshotMeta) -> None:
        self._check_open()
        snapshot_index = self._log.first_index() - 1
        if meta.index <= snapshot_index:
            raise StorageMisuseError(
                f"snapshot at index {meta.index} is not after the current one at {snapshot_index}"
            )
        if meta.index > self._log.last_index():
            raise StorageMisuseError(
                f"cannot snapshot at index {meta.index}: the log ends at {self._log.last_index()}"
            )
        if self._log.term(meta.index) != meta.term:
            raise StorageMisuseError(
                f"snapshot at index {meta.index} says term {meta.term}, "
                f"the log's entry there is of term {self._log.term(meta.index)}"
            )

    def _record_snapshot(self, meta: SnapshotMeta, *, reset: bool) -> None:
        """After the snapshot file is durable (the log may depend on it only then): the
        marker, then the segments it made unneeded, then the older snapshots."""
        self._log.mark_snapshot(SnapshotMarker(meta.index, meta.term, reset))
        self._log.sync()
        self._log.release_segments()
        self._snapshots.prune()

    def _check_open(self) -> None:
        if self._lock is None:
            raise StorageClosedError(f"{self.data_dir}: the storage is closed")
        if self._failed is not None:
            raise StorageIOError(
                f"{self.data_dir}: an earlier {self._failed}; reopen the storage to recover"
            )

    @contextlib.contextmanager
    def _failing_on_io_error(self) -> Iterator[None]:
        """After a StorageIOError what reached the disk is unknown: refuse every later call."""
        try:
            yield
        except StorageIOError as exc:
            if self._failed is None:
                self._failed = f"write failed ({exc})"
            raise


def _fsync_ancestors(fs: FileSystem, data_dir: Path) -> None:
    """Make the data directory's own entry, and its parents', durable.

    ensure_dir fsyncs a parent only when it creates the child, so after a SIGKILL between a
    mkdir and that fsync the directory is there but not durable, and the next open would not
    notice: a power cut would then take the whole log, synced or not. (The WAL fsyncs its own
    directory at open.) A parent this process may not open was not created by it, in practice:
    it is skipped.
    """
    fs.fsync_dir(data_dir)
    for parent in data_dir.parents:
        try:
            fs.fsync_dir(parent)
        except PermissionError:
            logger.debug("%s: not fsynced: permission denied", parent)


def _empty_spool(fs: FileSystem, spool: Path) -> None:
    """Create the spool directory, or remove what an interrupted copy or transfer left in it.

    Nothing there is ever part of the durable state, so the removals need no fsync: any of
    them surviving a crash is as good as none.
    """
    ensure_dir(fs, spool)
    for name in fs.listdir(spool):
        try:
            fs.remove(spool / name)
        except IsADirectoryError:
            logger.warning(
                "%s: leaving directory %r, which no snapshot transfer makes", spool, name
            )
        else:
            logger.info("%s: removed %r, left by an interrupted snapshot copy", spool, name)


def _reconcile(wal: WriteAheadLog, snapshots: SnapshotFiles) -> None:
    """Pick the current snapshot and bring the log's snapshot marker up to it.

    Normally that is the snapshot the marker names, and nothing changes. A newer one is taken
    only when the log's own is damaged or a damaged segment lost entries the marker does not
    cover; the snapshot file says whether it was installed from the leader, so the log then
    ends up as save_snapshot() or install_snapshot() would have left it.
    """
    marker = wal.snapshot_marker()
    unknown = wal.unknown_range()
    needed = unknown[1] if unknown is not None else marker.index
    meta = snapshots.select(marker.index, marker.term, needed)
    if meta is None:
        return
    path = snapshots.current_path() or snapshots.directory
    if meta.index == marker.index:
        if meta.term != marker.term:
            raise StorageCorruptedError(
                path,
                0,
                f"snapshot at index {meta.index} has term {meta.term}, "
                f"the log's snapshot marker says term {marker.term}",
            )
        return
    first, last = wal.first_index(), wal.last_index()
    reset = snapshots.latest_replaces_log() or meta.index > last
    if not reset and meta.index >= first and wal.term(meta.index) != meta.term:
        raise StorageCorruptedError(
            path,
            0,
            f"snapshot at index {meta.index} term {meta.term} was taken from this log, "
            f"but the log's entry there is of term {wal.term(meta.index)}",
        )
    wal.mark_snapshot(SnapshotMarker(meta.index, meta.term, reset))
    wal.sync()
    logger.warning(
        "%s: took the snapshot at index %d term %d, newer than the log's own at %d; %s",
        path,
        meta.index,
        meta.term,
        marker.index,
        "the log restarts after it" if reset else "the entries after it stay",
    )
