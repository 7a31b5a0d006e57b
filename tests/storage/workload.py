"""A scripted storage workload, a model of what it should leave, and the crash-at-every-write check.

The model turns the workload into the list of states the storage may be found in: one state per
record the storage writes (each entry of a batch, each hard state, each snapshot), so a crash
that keeps part of an unsynced batch still matches a state. A crash during step k may leave any
state from the one the last completed sync made durable up to the end of step k; anything else
is a DurabilityViolation, and so is an error on reopening.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    NodeId,
    SnapshotMeta,
    Term,
)
from node.storage import Storage, StorageError
from tests.storage.crashfs import CrashFileSystem, PowerCut

DATA_DIR = Path("/data/node")
SEGMENT_BYTES = 300  # a handful of entries per segment: the workload cuts many segments
VOTERS = ConfState((NodeId("a"), NodeId("b"), NodeId("c")))


class DurabilityViolation(AssertionError):
    """After a crash the storage came back in a state it must never be in."""


def entry(term: int, index: int, data: bytes | None = None) -> Entry:
    payload = data if data is not None else f"msg {index} of term {term}".encode()
    return Entry(Term(term), LogIndex(index), EntryKind.NORMAL, payload)


def hard(term: int, vote: str | None, commit: int) -> HardState:
    return HardState(Term(term), NodeId(vote) if vote else None, LogIndex(commit))


def snap(index: int, term: int) -> SnapshotMeta:
    return SnapshotMeta(LogIndex(index), Term(term), VOTERS)


def snapshot_data(meta: SnapshotMeta) -> bytes:
    return f"state machine at {meta.index}/{meta.term}".encode() * 3


# Snapshot data is a file the caller made (SQLite's, outside the file layer), so even under a
# CrashFileSystem it is a real file: one per content, made once, in a directory that goes away
# with the test process.
_SOURCES = tempfile.TemporaryDirectory(prefix="chatbooth-snapshot-data-")


def data_file(data: bytes) -> Path:
    """A real file holding `data`, to pass to save_snapshot / install_snapshot."""
    path = Path(_SOURCES.name) / hashlib.sha256(data).hexdigest()
    if not path.exists():
        path.write_bytes(data)
    return path


def read_snapshot(storage: Storage) -> tuple[SnapshotMeta, bytes] | None:
    """The current snapshot's meta and data, read through open_snapshot (small in tests)."""
    reader = storage.open_snapshot()
    if reader is None:
        return None
    with reader:
        pieces = []
        while piece := reader.read(7):  # an odd size: reads that straddle nothing in particular
            pieces.append(piece)
        return reader.meta, b"".join(pieces)


# -- steps --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class SetHardState:
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class Sync:
    pass


@dataclass(frozen=True, slots=True)
class SaveSnapshot:
    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class Reopen:
    """close() (which syncs) and open again."""


Step = Append | SetHardState | Sync | SaveSnapshot | InstallSnapshot | Reopen


def workload() -> list[Step]:
    """~30 entries with hard states, syncs at points, an overwritten suffix, two local
    snapshots, an installed one, and a reopen in the middle."""

    def append(term: int, lo: int, hi: int) -> Append:
        return Append(tuple(entry(term, i) for i in range(lo, hi + 1)))

    return [
        SetHardState(hard(1, "a", 0)),
        append(1, 1, 3),
        Sync(),
        append(1, 4, 4),
        append(1, 5, 5),
        SetHardState(hard(1, "a", 3)),
        append(1, 6, 8),
        Sync(),
        append(1, 9, 10),
        SetHardState(hard(1, "a", 8)),
        Sync(),
        SaveSnapshot(snap(5, 1)),
        append(1, 11, 14),
        SetHardState(hard(2, "b", 8)),
        append(2, 12, 13),  # a new leader replaces the uncommitted suffix 12..14
        Sync(),
        Reopen(),
        append(2, 14, 15),
        Sync(),
        append(2, 16, 18),
        Sync(),
        SaveSnapshot(snap(15, 2)),
        SetHardState(hard(3, None, 15)),
        append(3, 19, 20),
        Sync(),
        InstallSnapshot(snap(25, 4)),  # from a leader, beyond our log: the log restarts at 26
        SetHardState(hard(4, "c", 25)),
        append(4, 26, 30),
        Sync(),
        append(5, 28, 28),
        SetHardState(hard(5, "c", 27)),
        Sync(),
        SaveSnapshot(snap(27, 4)),
        append(5, 29, 31),
        SetHardState(hard(5, "c", 30)),
        Sync(),
    ]


# -- the model ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class State:
    hard_state: HardState
    snapshot: SnapshotMeta | None
    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, storage: Storage) -> State:
        initial = storage.initial_state()
        return cls(initial.hard_state, initial.snapshot, tuple(initial.entries))

    def describe(self) -> str:
        snapshot = (
            "none" if self.snapshot is None else f"{self.snapshot.index}/{self.snapshot.term}"
        )
        log = " ".join(f"{e.index}/{e.term}" for e in self.entries)
        hs = self.hard_state
        return f"hs=({hs.term},{hs.vote},{hs.commit}) snap={snapshot} log=[{log}]"


EMPTY = State(HardState(), None, ())


def with_entry(state: State, new: Entry) -> State:
    kept = tuple(e for e in state.entries if e.index < new.index)
    return State(state.hard_state, state.snapshot, (*kept, new))


@dataclass(frozen=True, slots=True)
class Model:
    states: list[State]  # every state the storage may be found in, in order
    span: list[tuple[int, int]]  # step i moves from states[span[i][0]] to states[span[i][1]]
    durable: list[int]  # after step i completes, states before durable[i] are superseded

    @classmethod
    def of(cls, steps: Sequence[Step]) -> Model:
        states = [EMPTY]
        span: list[tuple[int, int]] = []
        durable: list[int] = []
        floor = 0
        for step in steps:
            before = len(states) - 1
            current = states[-1]
            if isinstance(step, Append):
                for new in step.entries:
                    current = with_entry(current, new)
                    states.append(current)
            elif isinstance(step, SetHardState):
                states.append(State(step.hard_state, current.snapshot, current.entries))
            elif isinstance(step, SaveSnapshot):
                kept = tuple(e for e in current.entries if e.index > step.meta.index)
                states.append(State(current.hard_state, step.meta, kept))
            elif isinstance(step, InstallSnapshot):
                states.append(State(current.hard_state, step.meta, ()))
            after = len(states) - 1
            if not isinstance(step, (Append, SetHardState)):
                floor = after  # sync, snapshots and reopen all make everything durable
            span.append((before, after))
            durable.append(floor)
        return cls(states, span, durable)

    def allowed(self, completed: int) -> tuple[int, int]:
        """The states a crash may leave after `completed` steps finished (and maybe during the
        next one): (lo, hi) inclusive."""
        lo = self.durable[completed - 1] if completed else 0
        hi = self.span[completed][1] if completed < len(self.span) else len(self.states) - 1
        return lo, hi


def run_steps(
    storage: Storage, steps: Sequence[Step], fs: CrashFileSystem, on_step: Callable[[int], None]
) -> Storage:
    for position, step in enumerate(steps):
        if isinstance(step, Append):
            storage.append(step.entries)
        elif isinstance(step, SetHardState):
            storage.set_hard_state(step.hard_state)
        elif isinstance(step, Sync):
            storage.sync()
        elif isinstance(step, SaveSnapshot):
            storage.save_snapshot(step.meta, data_file(snapshot_data(step.meta)))
        elif isinstance(step, InstallSnapshot):
            storage.install_snapshot(step.meta, data_file(snapshot_data(step.meta)))
        else:
            storage.close()
            storage = open_storage(fs)
        on_step(position + 1)
    return storage


def open_storage(fs: CrashFileSystem) -> Storage:
    return Storage.open(DATA_DIR, fs=fs, segment_bytes=SEGMENT_BYTES)


def count_ops(steps: Sequence[Step]) -> int:
    fs = CrashFileSystem()
    run_steps(open_storage(fs), steps, fs, lambda _: None)
    return fs.ops


def crash_check(
    steps: Sequence[Step] | None = None,
    *,
    torn_seed: int | None = None,
    then_write: bool = True,
    killed_first: bool = False,
) -> int:
    """Crash before every mutating file operation of the workload, reopen and check.

    With `killed_first`, the crash is a SIGKILL (the page cache survives), and after reopening
    the power is cut as well: what the reopened storage showed must survive it exactly, since
    a restarted node counts everything it replayed as stable.
    With `then_write`, also append to what recovery left, sync, crash and check that again.
    Returns how many crash points were checked; raises DurabilityViolation on the first bad one.
    """
    steps = list(workload() if steps is None else steps)
    model = Model.of(steps)
    total = count_ops(steps)
    for cut in range(total + 1):
        fs = CrashFileSystem()
        fs.cut_power_after(cut)
        completed = 0

        def note(done: int) -> None:
            nonlocal completed
            completed = done

        with contextlib.suppress(PowerCut):
            run_steps(open_storage(fs), steps, fs, note)
        torn = random.Random(torn_seed * 100_003 + cut) if torn_seed is not None else None
        where = f"crash before op {cut} of {total} (after step {completed} of {len(steps)})"
        lo, hi = model.allowed(completed)
        allowed = model.states[lo : hi + 1]
        if killed_first:
            fs.crash_process()
            where = f"SIGKILL before op {cut} of {total} (after step {completed} of {len(steps)})"
            restarted = fs.clone()
            seen = _reopen(fs, where)
            _expect(seen, allowed, where, fs)
            # The restarted node writes, syncs and acks: that must survive the power cut too.
            _check_still_writable(restarted, seen, f"{where}, then restarted", killed=True)
            where += f", reopened as {seen.describe()}, then a power cut"
            allowed = [seen]
        fs.crash(torn)
        found = _reopen(fs, where)
        _expect(found, allowed, where, fs)
        if then_write:
            _check_still_writable(fs, found, where)
    return total + 1


def _expect(found: State, allowed: Sequence[State], where: str, fs: CrashFileSystem) -> None:
    if found not in allowed:
        listed = "\n  ".join(s.describe() for s in allowed)
        raise DurabilityViolation(
            f"{where}: reopened as\n  {found.describe()}\nbut only these are allowed:\n"
            f"  {listed}\nlast operations: {fs.log[-5:]}"
        )


def _reopen(fs: CrashFileSystem, where: str) -> State:
    try:
        storage = open_storage(fs)
    except StorageError as exc:
        raise DurabilityViolation(f"{where}: reopening failed: {exc}") from exc
    return State.of(storage)  # left open on purpose: the next crash() releases it


def _check_still_writable(
    fs: CrashFileSystem, found: State, where: str, *, killed: bool = False
) -> None:
    """What recovery left must accept new writes that survive the next crash.

    With `killed`, `fs` is as a SIGKILL left it: the storage opened here replays it.
    """
    if not killed:
        fs.crash()  # drop the lock of the storage _reopen left open
    storage = open_storage(fs)
    new = entry(99, storage.last_index() + 1, b"after the crash")
    hs = hard(99, "z", 0)
    storage.append([new])
    storage.set_hard_state(hs)
    storage.sync()
    fs.crash()
    expected = with_entry(State(hs, found.snapshot, found.entries), new)
    try:
        again = State.of(open_storage(fs))
    except StorageError as exc:
        raise DurabilityViolation(
            f"{where}, then a synced append: reopening failed: {exc}"
        ) from exc
    if again != expected:
        raise DurabilityViolation(
            f"{where}, then a synced append: reopened as\n  {again.describe()}\n"
            f"expected\n  {expected.describe()}"
        )
