"""A FileSystem for tests whose crash() keeps exactly what a power cut is guaranteed to keep.

Two kinds of crash, which a durability test must tell apart:

- crash() is a power cut: everything not fsynced is lost, directory entries included.
- crash_process() is a SIGKILL: the process dies (its handles and locks with it) but the page
  cache survives, so what it wrote without fsync is still there for the next reader, and is
  still not durable: a later crash() takes it away unless someone fsyncs it first.

Everything lives in memory. Each file remembers the bytes its last sync() made durable; each
directory remembers the entries (creates, renames, removals) its last fsync_dir() made durable.
crash() throws the rest away: unsynced data and every directory change not covered by an fsync
of its directory, just as DESIGN.md asks. Given a random.Random, crash() instead tears each
file's unsynced appended bytes as a power cut may (TRAPS.md, "A power cut tears out of order"):
the file's size reaches anywhere from its synced size to its written size, and each block of
the unsynced part (BLOCK_BYTES, aligned to the file offset, standing for a page or a sector)
independently reached the disk, stayed zeros or holds garbage. So zeros in the middle with a
valid record after them happen, and so does a whole prefix. A truncate not yet synced is lost.

cut_power_after(n) lets n more mutating operations happen; the next one raises PowerCut (a
BaseException, so storage code cannot swallow it) without taking effect, and so does every
operation after it, until crash() or crash_process(). A test runs a workload once per n to
crash at every write (with crash_process() after it, to SIGKILL it there).

Reads go through read_bytes() (whole files) or open_read() (a handle with its own position, as
an open file descriptor has: a file removed while it is open still reads to its end). Reads are
not operations: they never become durable or undone, and a power cut stops them only in that
nothing answers while the power is out.

Also part of the file layer: lock() is an in-memory lock, released by either crash (the process
that held it died).
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path, PurePosixPath

from node.storage.errors import StorageLockedError
from node.storage.files import AppendFile, FileLock, ReadFile

BLOCK_BYTES = 16  # far below a page, so a tear lands inside the small batches tests write


class PowerCut(BaseException):
    """The power went out: the operation that raised did not happen."""


class _File:
    __slots__ = ("data", "synced")

    def __init__(self) -> None:
        self.data = bytearray()  # what a reader sees now
        self.synced = b""  # what survives a crash


class _Dir:
    __slots__ = ("entries", "synced")

    def __init__(self) -> None:
        self.entries: dict[str, _File | _Dir] = {}  # what a reader sees now
        self.synced: dict[str, _File | _Dir] = {}  # what survives a crash


class CrashFileSystem:
    def __init__(self) -> None:
        self._root = _Dir()
        self._generation = 0  # bumped by crash(): handles from before it are dead
        self._locks: set[str] = set()
        self._budget: int | None = None
        self.powered = True
        self.ops = 0  # mutating operations performed so far
        self.log: list[str] = []  # what each operation was, for failure messages

    # -- test controls --------------------------------------------------------------------

    def cut_power_after(self, ops: int) -> None:
        """Allow `ops` more mutating operations; the next one raises PowerCut."""
        self._budget = self.ops + ops

    def crash(self, torn: random.Random | None = None, *, block_bytes: int = BLOCK_BYTES) -> None:
        """Lose everything a power cut may lose (with `torn`, tear it out of order), then
        power back on."""
        self._restore(self._root, torn, block_bytes)
        self._generation += 1
        self._locks.clear()
        self._budget = None
        self.powered = True

    def crash_process(self) -> None:
        """The writing process is SIGKILLed: nothing is lost, nothing becomes durable."""
        self._generation += 1
        self._locks.clear()
        self._budget = None
        self.powered = True

    def clone(self) -> CrashFileSystem:
        """An independent copy of the current contents (no locks held, no power cut armed)."""
        twin = copy.deepcopy(self)
        twin._locks.clear()
        twin._budget = None
        twin._generation += 1
        return twin

    def put_bytes(self, path: Path, data: bytes) -> None:
        """Replace a file's contents, durably, without counting an operation (for damage)."""
        node = self._file(path)
        node.data = bytearray(data)
        node.synced = bytes(data)

    def durable_bytes(self, path: Path) -> bytes:
        return self._file(path).synced

    # -- FileSystem -----------------------------------------------------------------------

    def open_append(self, path: Path) -> AppendFile:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            self._op(f"create {path}")
            node = parent.entries[name] = _File()
        if not isinstance(node, _File):
            raise IsADirectoryError(str(path))
        return _CrashAppendFile(self, node, path)

    def read_bytes(self, path: Path) -> bytes:
        self._check_power()
        return bytes(self._file(path).data)

    def open_read(self, path: Path) -> ReadFile:
        self._check_power()
        return _CrashReadFile(self, self._file(path), path)

    def fsync_dir(self, path: Path) -> None:
        directory = self._dir(path)
        self._op(f"fsync dir {path}")
        directory.synced = dict(directory.entries)

    def rename(self, src: Path, dst: Path) -> None:
        src_parent, src_name = self._parent(src)
        dst_parent, dst_name = self._parent(dst)
        if src_name not in src_parent.entries:
            raise FileNotFoundError(str(src))
        self._op(f"rename {src} -> {dst}")
        dst_parent.entries[dst_name] = src_parent.entries.pop(src_name)

    def remove(self, path: Path) -> None:
        parent, name = self._parent(path)
        if isinstance(parent.entries.get(name), _Dir):
            raise IsADirectoryError(str(path))
        if not isinstance(parent.entries.get(name), _File):
            raise FileNotFoundError(str(path))
        self._op(f"remove {path}")
        del parent.entries[name]

    def listdir(self, path: Path) -> list[str]:
        self._check_power()
        return sorted(self._dir(path).entries)

    def exists(self, path: Path) -> bool:
        self._check_power()
        try:
            self._lookup(path)
        except FileNotFoundError:
            return False
        return True

    def mkdir(self, path: Path) -> None:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise FileExistsError(str(path))
        self._op(f"mkdir {path}")
        parent.entries[name] = _Dir()

    def lock(self, path: Path) -> FileLock:
        self._check_power()
        key = str(path)
        if key in self._locks:
            raise StorageLockedError(path.parent, os.getpid())
        self._locks.add(key)
        return _MemoryLock(self, key, self._generation)

    # -- internals ------------------------------------------------------------------------

    def _check_power(self) -> None:
        if not self.powered:
            raise PowerCut("the power is out")

    def _op(self, what: str) -> None:
        self._check_power()
        if self._budget is not None and self.ops >= self._budget:
            self.powered = False
            raise PowerCut(f"power cut before op {self.ops}: {what}")
        self.ops += 1
        self.log.append(what)

    def _lookup(self, path: Path) -> _File | _Dir:
        pure = PurePosixPath(path)
        if not pure.is_absolute():
            raise ValueError(f"CrashFileSystem wants absolute paths, not {path}")
        node: _File | _Dir = self._root
        for part in pure.parts[1:]:
            if not isinstance(node, _Dir) or part not in node.entries:
                raise FileNotFoundError(str(path))
            node = node.entries[part]
        return node

    def _file(self, path: Path) -> _File:
        node = self._lookup(path)
        if not isinstance(node, _File):
            raise IsADirectoryError(str(path))
        return node

    def _dir(self, path: Path) -> _Dir:
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise NotADirectoryError(str(path))
        return node

    def _parent(self, path: Path) -> tuple[_Dir, str]:
        self._check_power()
        return self._dir(path.parent), path.name

    def _restore(self, directory: _Dir, torn: random.Random | None, block_bytes: int) -> None:
        directory.entries = dict(directory.synced)
        for node in directory.entries.values():
            if isinstance(node, _Dir):
                self._restore(node, torn, block_bytes)
                continue
            kept = node.synced
            unsynced = len(node.data) - len(node.synced)
            if torn is not None and unsynced > 0 and node.data.startswith(node.synced):
                kept = _tear(node.data, len(node.synced), torn, block_bytes)
            node.data = bytearray(kept)
            node.synced = kept


def _tear(data: bytearray, synced: int, rng: random.Random, block_bytes: int) -> bytes:
    """What a power cut may leave of `data` whose first `synced` bytes were fsynced."""
    size = synced + rng.randint(0, len(data) - synced)
    out = bytearray(data[:size])
    block = synced - synced % block_bytes
    while block < size:
        lo, hi = max(block, synced), min(block + block_bytes, size)
        fate = rng.random()
        if fate < 0.3:
            out[lo:hi] = bytes(hi - lo)  # the block never reached the disk
        elif fate < 0.4:
            out[lo:hi] = rng.randbytes(hi - lo)  # a half-written sector, or stale garbage
        block += block_bytes
    return bytes(out)


class _CrashAppendFile:
    __slots__ = ("_fs", "_generation", "_node", "_path")

    def __init__(self, fs: CrashFileSystem, node: _File, path: Path) -> None:
        self._fs = fs
        self._node = node
        self._path = path
        self._generation = fs._generation

    def write(self, data: bytes) -> None:
        self._live()
        self._fs._op(f"write {len(data)} bytes to {self._path}")
        self._node.data += data

    def sync(self) -> None:
        self._live()
        self._fs._op(f"fsync {self._path}")
        self._node.synced = bytes(self._node.data)

    def truncate(self, size: int) -> None:
        self._live()
        self._fs._op(f"truncate {self._path} to {size}")
        del self._node.data[size:]

    def close(self) -> None:
        pass

    def _live(self) -> None:
        if self._generation != self._fs._generation:
            raise OSError(f"{self._path}: handle from before a crash")


class _CrashReadFile:
    __slots__ = ("_fs", "_generation", "_node", "_path", "_position")

    def __init__(self, fs: CrashFileSystem, node: _File, path: Path) -> None:
        self._fs = fs
        self._node = node  # held, not looked up again: a removed file still reads
        self._path = path
        self._generation = fs._generation
        self._position = 0

    def read(self, n: int) -> bytes:
        self._live()
        piece = bytes(self._node.data[self._position : self._position + max(n, 0)])
        self._position += len(piece)
        return piece

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._live()
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: len(self._node.data)}
        position = base[whence] + offset
        if position < 0:
            raise OSError(f"{self._path}: seek to {position}")
        self._position = position
        return position

    def close(self) -> None:
        pass

    def _live(self) -> None:
        self._fs._check_power()
        if self._generation != self._fs._generation:
            raise OSError(f"{self._path}: handle from before a crash")


class _MemoryLock:
    __slots__ = ("_fs", "_generation", "_key")

    def __init__(self, fs: CrashFileSystem, key: str, generation: int) -> None:
        self._fs = fs
        self._key = key
        self._generation = generation

    def release(self) -> None:
        if self._generation == self._fs._generation:
            self._fs._locks.discard(self._key)
