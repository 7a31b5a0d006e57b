"""Power cuts at every file operation (DESIGN.md, "How we know it works", item 2).

The crash file system keeps only what was fsynced (directory entries included). After a cut
before any operation of the workload, reopening must give a state the workload passed through,
no older than the last completed sync, with no error; and the tests must fail when fsync goes.
"""

from __future__ import annotations

import contextlib
import random

import pytest

from node.storage import Storage
from node.storage import wal as wal_module
from node.storage.files import ensure_dir
from node.storage.records import Decoded, decode_at
from node.storage.wal import WriteAheadLog
from tests.storage import crashfs
from tests.storage.crashfs import CrashFileSystem
from tests.storage.workload import (
    DATA_DIR,
    DurabilityViolation,
    State,
    crash_check,
    entry,
    hard,
    open_storage,
    run_steps,
    workload,
)

# What the check says when something synced is gone: a wrong state, or an error on reopening.
LOSS = "only these are allowed|reopening failed"


def test_the_workload_exercises_rotation_compaction_and_pruning() -> None:
    """The crash check is only as good as its workload: make sure it does the hard parts."""
    fs = CrashFileSystem()
    run_steps(open_storage(fs), workload(), fs, lambda _: None)
    assert sum(".wal.tmp ->" in op for op in fs.log) >= 6  # segments cut
    assert sum(op.startswith("remove") and op.endswith(".wal") for op in fs.log) >= 4
    assert sum(op.startswith("remove") and op.endswith(".snap") for op in fs.log) >= 2
    assert sum(".snap.tmp ->" in op for op in fs.log) == 4  # three saved, one installed


def test_crash_at_every_operation_keeps_everything_synced() -> None:
    checked = crash_check()
    assert checked > 100


@pytest.mark.parametrize("seed", range(1, 9))
def test_crash_with_unsynced_writes_torn_out_of_order_keeps_everything_synced(seed: int) -> None:
    """TRAPS.md, "A power cut tears out of order": of what was written but not synced, any
    blocks may be lost (zeros, garbage) and others kept, valid records after the holes. That
    is a torn tail, not corruption: nothing synced was lost, so the node must start."""
    crash_check(torn_seed=seed)


def test_torn_crash_check_fails_under_the_old_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tearing is strong enough to catch format 1's rule, "any valid record after the
    damage means it was synced": a node that then refuses to start is caught."""

    def any_valid_record(buf: bytes, start: int, floor: int) -> int | None:
        for offset in range(start, len(buf)):
            if isinstance(decode_at(buf, offset), Decoded):
                return offset
        return None

    monkeypatch.setattr(wal_module, "next_complete_batch", any_valid_record)
    caught = 0
    for seed in range(1, 9):
        try:
            crash_check(torn_seed=seed, then_write=False)
        except DurabilityViolation as exc:
            assert "reopening failed" in str(exc) and "a later batch" in str(exc)
            caught += 1
    assert caught >= 2


def test_the_crash_model_tears_out_of_order() -> None:
    """The crash file system does produce holes with written blocks after them, keeps every
    synced byte, and leaves a size between the synced and the written one."""
    path = DATA_DIR / "file"
    synced, unsynced = b"s" * 40, bytes(range(1, 201)) * 2
    holes_before_data = 0
    for seed in range(50):
        fs = CrashFileSystem()
        ensure_dir(fs, DATA_DIR)
        handle = fs.open_append(path)
        fs.fsync_dir(DATA_DIR)
        handle.write(synced)
        handle.sync()
        handle.write(unsynced)
        fs.crash(random.Random(seed))
        torn = fs.read_bytes(path)
        assert torn.startswith(synced) and len(torn) <= len(synced) + len(unsynced)
        written = synced + unsynced
        step = crashfs.BLOCK_BYTES
        starts = range(-(-len(synced) // step) * step, len(torn), step)  # unsynced blocks
        zero = [lo for lo in starts if not any(torn[lo : lo + step])]
        intact = [lo for lo in starts if torn[lo : lo + step] == written[lo : lo + step]]
        if zero and intact and max(intact) > min(zero):
            holes_before_data += 1
    assert holes_before_data >= 10


def test_what_a_restart_replays_survives_a_power_cut() -> None:
    """TRAPS.md, "Replayed is not synced": a SIGKILL keeps unsynced writes in the page cache,
    the restarted node counts what it replays as stable (and acks a leader's re-send of it at
    once), so open() must make it durable before anything relies on it."""
    fs = CrashFileSystem()
    storage = open_storage(fs)
    storage.sync()
    storage.append([entry(1, i) for i in range(1, 4)])
    storage.set_hard_state(hard(1, "a", 2))
    fs.crash_process()  # SIGKILL before the sync
    replayed = State.of(open_storage(fs))
    assert [e.index for e in replayed.entries] == [1, 2, 3]
    assert replayed.hard_state == hard(1, "a", 2)
    fs.crash()  # and then the power goes
    assert State.of(open_storage(fs)) == replayed


def test_sigkill_then_power_cut_at_every_operation_keeps_what_was_replayed() -> None:
    """The same at every operation of the workload, segment cuts and snapshots included: the
    state a SIGKILLed node restarts in is the state it is in after a power cut next."""
    assert crash_check(killed_first=True) > 100


def test_crash_check_fails_when_file_fsync_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crashfs._CrashAppendFile, "sync", lambda self: None)
    with pytest.raises(DurabilityViolation, match=LOSS):
        crash_check(then_write=False)


def test_crash_check_fails_when_directory_fsync_is_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(CrashFileSystem, "fsync_dir", lambda self, path: None)
    with pytest.raises(DurabilityViolation, match=LOSS):
        crash_check(then_write=False)


def test_crash_check_fails_when_the_log_skips_its_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage, not just the file layer: a sync() that forgets to fsync is caught."""
    monkeypatch.setattr(WriteAheadLog, "sync", lambda self: None)
    with pytest.raises(DurabilityViolation, match=LOSS):
        crash_check(then_write=False)


def test_power_cut_in_first_open_leaves_an_openable_directory() -> None:
    for cut in range(12):
        fs = CrashFileSystem()
        fs.cut_power_after(cut)
        with contextlib.suppress(crashfs.PowerCut):
            Storage.open(DATA_DIR, fs=fs).close()
        fs.crash()
        storage = Storage.open(DATA_DIR, fs=fs)
        assert storage.initial_state().entries == []
        storage.close()
