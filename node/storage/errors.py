"""Conditions node.storage reports, all rooted in StorageError.

Standard library only; must not import anything from chatbooth.
"""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Root of every error node.storage raises."""


class StorageCorruptedError(StorageError):
    """Durable data is damaged in a way that is not a torn write: the node must stop.

    `path` and `offset` say where (the file and the byte offset of the bad record or header).
    """

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: corrupted at byte offset {offset}: {reason}")


class StorageLockedError(StorageError):
    """Another process (or another open in this one) holds the data directory."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"data directory {data_dir} is in use by another process ({who})")


class StorageIOError(StorageError):
    """The operating system failed a read, write or fsync.

    After a failed write or fsync nothing is known about what reached the disk, so the storage
    refuses every later call; the only way on is to close it and open it again (which recovers).
    """


class StorageClosedError(StorageError):
    """The storage was used after close()."""


class StorageMisuseError(StorageError):
    """The caller broke the storage contract (a bug in the caller, never a disk condition):
    a gap in appended entries, an entry below the snapshot, a snapshot that goes backwards."""


class CompactedError(StorageError):
    """The requested index is at or below the snapshot: its entry was compacted away."""

    def __init__(self, index: int, first_index: int) -> None:
        self.index = index
        self.first_index = first_index
        super().__init__(f"entry {index} is compacted (the log starts at {first_index})")


class UnavailableError(StorageError):
    """The requested index is beyond the last stored entry."""

    def __init__(self, index: int, last_index: int) -> None:
        self.index = index
        self.last_index = last_index
        super().__init__(f"entry {index} is not stored (the log ends at {last_index})")
