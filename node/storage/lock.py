"""The data directory's lock: an exclusive fcntl.flock on `data_dir/LOCK` that names its owner.

Two processes writing one log would interleave records and break every promise the log makes,
so a node takes this lock before it reads anything. flock locks belong to an open file
description, so a second open in the same process is refused too. The kernel drops the lock
when its holder dies, however it dies; the file itself is never removed (removing it would let
a newcomer lock a fresh inode while the old holder still writes).

Standard library only; must not import anything from chatbooth beyond node.storage.errors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from node.storage.errors import StorageIOError, StorageLockedError


class DirectoryLock:
    """A held lock on one LOCK file. release() gives it up; it is idempotent."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> DirectoryLock:
        """Lock `path` (created if missing) and write our pid into it.

        Raises StorageLockedError naming the holder's pid when someone else holds it.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageIOError(f"cannot open lock file {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageLockedError(path.parent, holder) from None
            raise StorageIOError(f"cannot lock {path}: {exc}") from exc
        try:
            # Only after the lock is ours: truncating earlier would erase the holder's pid.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StorageIOError(f"cannot write lock file {path}: {exc}") from exc
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Closing the last descriptor drops the flock; unlocking first is belt and braces.
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, or None if it is unreadable (it may be writing it right now)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
