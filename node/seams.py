"""The driver's seams: what it needs from the world, as interfaces with a real implementation
each (hashicorp/raft's Transport, trio's Clock). Tests put test doubles in their place: an
in-memory network (node.memory_transport), a skewed virtual clock, and executors that run
inline in the event loop (real threads reorder completions, and a seed would not replay).

- Transport: sends the core's messages to peers; reports links that broke, links that came
  up and snapshots that were delivered or not. Inbound messages reach the driver through
  RaftDriver.step / receive_snapshot, called by whatever serves the link.
- Snapshots travel as files, never whole in memory (one is a SQLite database of up to hundreds
  of MB): a sender reads a SnapshotSource SNAPSHOT_CHUNK_BYTES at a time, a receiving transport
  writes the chunks into a SpoolFile in the receiver's spool directory and hands the receiver
  its path. A FileSource reads a plain file (the state's copy made for a follower).
- Clock: the monotonic time the driver ticks and times out by, the wall clock that stamps
  log time, and sleeping.
- Executor: where blocking work runs (storage writes, snapshot serialization, scrypt).

Imports asyncio, os, pathlib, tempfile, time, concurrent.futures and node.raft.types only: no
grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from node.raft.types import ConfState, Message, NodeId, SnapshotMeta

T = TypeVar("T")

SNAPSHOT_CHUNK_BYTES = 1 << 20  # a snapshot is sent in pieces of this size, read one at a time


class SnapshotInvalidError(Exception):
    """A snapshot from the leader does not decode: refused before anything stored it."""


class SnapshotSource(Protocol):
    """A snapshot's data being sent, read sequentially (node.storage's SnapshotReader is one).

    read() blocks on the disk: a sender in an event loop calls it in a thread (the simulator's
    inline, to stay deterministic). A damaged snapshot raises from the read that reaches its
    end, so its last chunk is never sent.
    """

    @property
    def size(self) -> int:
        """The data's length in bytes."""
        ...

    def read(self, n: int) -> bytes:
        """The next up to `n` bytes; b"" at the end."""
        ...

    def close(self) -> None: ...


class TransportEvents(Protocol):
    """What a transport tells the driver (the driver implements it)."""

    def on_unreachable(self, peer: NodeId) -> None: ...

    def on_connected(self, peer: NodeId) -> None: ...

    def on_snapshot_sent(self, peer: NodeId, ok: bool) -> None: ...

    def peer_confs(self) -> tuple[ConfState, ...]:
        """The configuration in force here, then the committed one if it differs: the peers
        are the members of either, with their incarnations. A leader that removed itself goes
        on leading until its removal commits (thesis §4.2.2), so its followers, which put the
        removal in force as soon as it reached their logs, must still hear and answer it."""
        ...

    def own_incarnation(self) -> int:
        """This member's incarnation (ConfState), from its member record."""
        ...

    async def open_snapshot(self, meta: SnapshotMeta) -> SnapshotSource:
        """The data of snapshot `meta`, for sending; the transport closes it when done."""
        ...


class SpoolFile:
    """A snapshot being received: a new file `<directory>/snapshot-<random>.part` (mode 0600)
    that the chunks are appended to, fsynced by finish() before the receiver is handed its
    path, and removed by discard() unless the receiver renamed it away. Blocking calls: a
    transport in an event loop makes them in a thread (the simulator's inline)."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(prefix="snapshot-", suffix=".part", dir=directory)
        self.path = Path(name)
        self.size = 0  # bytes written so far
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def finish(self) -> None:
        """Make what was written durable and close the file: it is complete."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self) -> None:
        """Close the file and remove it if it is still there. Never raises."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):  # FileNotFoundError: the receiver took it
            os.remove(self.path)


class FileSource:
    """A SnapshotSource over a plain file: a copy of the state made for a follower. It opens
    its own handle, so the file may be removed while it is read."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close(), as a source is
        self._size = os.fstat(self._file.fileno()).st_size

    @property
    def size(self) -> int:
        return self._size

    def read(self, n: int) -> bytes:
        return self._file.read(n)

    def close(self) -> None:
        self._file.close()


class Transport(Protocol):
    """Outbound Raft traffic of one node. send() never blocks and may drop (Raft retries)."""

    def start(self, events: TransportEvents) -> None: ...

    def send(self, m: Message) -> None: ...

    async def close(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, never going back; what ticks and deadlines are measured in."""
        ...

    def wall_ms(self) -> int:
        """This machine's wall clock in milliseconds; it may jump either way."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class SystemClock:
    """The real clocks: the event loop's monotonic time and time.time()."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)


class Executor(Protocol):
    async def run(self, fn: Callable[..., T], *args: object) -> T: ...

    def shutdown(self) -> None: ...


class ThreadExecutor:
    """A thread pool. One worker keeps the calls in order (the storage writer)."""

    def __init__(self, workers: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class InlineExecutor:
    """Runs each call in the event loop's thread, one at a time in call order, after an
    optional delay (a slow disk): deterministic under a virtual clock."""

    def __init__(self, delay: Callable[[], float] | None = None) -> None:
        self._delay = delay
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        async with self._lock:  # FIFO: writes land in the order they were asked for
            if self._delay is not None:
                await asyncio.sleep(self._delay())
            return fn(*args)

    def shutdown(self) -> None:
        pass
