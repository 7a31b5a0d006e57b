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


class StorageFormatError(StorageError):
    """The data directory was written in an on-disk format this build does not read.

    Not damage: an older (or newer) chatbooth wrote it. It is refused, never converted.
    `older_why`, if given, replaces the default account of why an older version is not read.
    """

    def __init__(
        self, path: Path, found: int, supported: int, *, older_why: str | None = None
    ) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        if found < supported:
            why = older_why or (
                "it was written by an older chatbooth, and data directories of that version "
                "are not upgraded in place (they may also hold plaintext session tokens)"
            )
        else:
            why = "it was written by a newer chatbooth"
        super().__init__(
            _refusal(
                f"{path}: on-disk format version {found}, but this build reads only version "
                f"{supported}: {why}"
            )
        )


class CommandFormatError(StorageFormatError):
    """The log's entries hold commands in an encoding this node does not read.

    The storage never decodes entries: the caller says at open which command format it reads
    (`Storage.open(..., command_format=...)`), every segment header records the format of the
    entries under it, and a log whose segments say another one is refused, never re-encoded.
    `found` is the log's command format, `supported` this node's.
    """

    def __init__(self, path: Path, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        if found < supported:
            why = "they were encoded by an older chatbooth, and a log is not re-encoded in place"
        else:
            why = "they were encoded by a newer chatbooth"
        # StorageError's constructor, not StorageFormatError's: the message is another one.
        StorageError.__init__(
            self,
            _refusal(
                f"{path}: the log's entries are in command format {found}, but this node reads "
                f"only command format {supported}: {why}"
            ),
        )


def _refusal(what: str) -> str:
    """A format refusal's message: what was found, then the way out."""
    return (
        f"{what}. Start the cluster afresh with `python -m supervisor up --fresh` (that deletes "
        "every node's data), or run the chatbooth that wrote it."
    )


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
