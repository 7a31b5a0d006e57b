"""The thin file layer every storage read and write goes through.

Durability is decided here and nowhere else: a write is durable only after `AppendFile.sync()`
(flush, then fsync), and a directory entry (a create, rename or removal) only after
`FileSystem.fsync_dir()` of its directory. Storage code talks to the `FileSystem` protocol so
that tests can substitute a file system whose crash discards exactly what was not fsynced
(tests/storage/crashfs.py); a durability test that passes with fsync deleted proves nothing.
Large files (snapshots, up to hundreds of MB) are read through `open_read`, a piece at a time,
never whole.

Standard library only; must not import anything from chatbooth beyond node.storage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol

from node.storage.lock import DirectoryLock


class AppendFile(Protocol):
    """A file open for appending. Writes land at the end; nothing is durable before sync()."""

    def write(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """Flush buffers, then fsync: every byte written so far survives a power cut."""

    def truncate(self, size: int) -> None:
        """Cut the file to `size` bytes (durable after sync()); later writes append after it."""

    def close(self) -> None: ...


class ReadFile(Protocol):
    """A file open for reading, with its own position: what was unlinked after it was opened
    can still be read to the end (as an open file descriptor can)."""

    def read(self, n: int) -> bytes:
        """Up to `n` bytes from the position on: fewer only at the end of the file."""

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position (as io does); returns the new one, so seek(0, SEEK_END) is the
        file's size."""

    def close(self) -> None: ...


class FileLock(Protocol):
    def release(self) -> None: ...


class FileSystem(Protocol):
    """What storage needs from a file system, and no more. Paths are absolute."""

    def open_append(self, path: Path) -> AppendFile:
        """Open `path` for appending, creating it (empty) if it does not exist."""

    def read_bytes(self, path: Path) -> bytes:
        """The whole file: for small ones (WAL segments). Snapshots go through open_read."""

    def open_read(self, path: Path) -> ReadFile:
        """Open `path` for reading from its start."""

    def fsync_dir(self, path: Path) -> None:
        """Make the entries of directory `path` (creates, renames, removals) durable."""

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically replace `dst` with `src` (both in one directory)."""

    def remove(self, path: Path) -> None: ...

    def listdir(self, path: Path) -> list[str]:
        """The names in directory `path`, sorted."""

    def exists(self, path: Path) -> bool: ...

    def mkdir(self, path: Path) -> None:
        """Create directory `path`; its parent must exist."""

    def lock(self, path: Path) -> FileLock:
        """Take the exclusive lock on file `path` or raise StorageLockedError."""


class RealFileSystem:
    """The operating system's file system."""

    def open_append(self, path: Path) -> AppendFile:
        return _RealAppendFile(open(path, "ab"))

    def read_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

    def open_read(self, path: Path) -> ReadFile:
        return _RealReadFile(open(path, "rb"))

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def remove(self, path: Path) -> None:
        os.remove(path)

    def listdir(self, path: Path) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def lock(self, path: Path) -> FileLock:
        return DirectoryLock.acquire(path)


class _RealAppendFile:
    __slots__ = ("_file",)

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def sync(self) -> None:
        # Python's buffer first: os.fsync only sees what has reached the kernel.
        self._file.flush()
        os.fsync(self._file.fileno())

    def truncate(self, size: int) -> None:
        self._file.flush()
        self._file.truncate(size)

    def close(self) -> None:
        self._file.close()


class _RealReadFile:
    __slots__ = ("_file",)

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def read(self, n: int) -> bytes:
        return self._file.read(n)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def close(self) -> None:
        self._file.close()


def ensure_dir(fs: FileSystem, path: Path) -> None:
    """Create directory `path` and any missing parents, each made durable in its parent."""
    if fs.exists(path):
        return
    ensure_dir(fs, path.parent)
    fs.mkdir(path)
    fs.fsync_dir(path.parent)
