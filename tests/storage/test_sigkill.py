"""SIGKILL a writer mid-append, reopen: a valid prefix holding everything it promised.

(SIGKILL keeps the page cache, so this passes even without fsync; test_crash.py is the test
of durability. This one is of a real process dying at an arbitrary instruction, on real files.)
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.storage import Storage
from tests.storage.workload import read_snapshot
from tests.storage.writer import payload, snapshot_payload

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 6
PER_ROUND = 400  # entries promised before the kill


def run_writer_until(
    data_dir: Path, target: int, jitter: random.Random, deadline_s: float = 30.0
) -> int:
    """Start a writer, read its promises until one reaches `target`, SIGKILL it; the last
    promise read. The writer keeps appending while we read, so the kill lands mid-work; a
    random delay of up to 20 ms (not a wait for anything) spreads the kills over its loop."""
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.writer", str(data_dir)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    promised = 0
    deadline = time.monotonic() + deadline_s
    try:
        assert writer.stdout is not None
        while promised < target:
            line = writer.stdout.readline()
            assert line, f"the writer exited early with {writer.wait()}"
            promised = int(line.split()[1])
            assert time.monotonic() < deadline, f"the writer only reached {promised}"
        time.sleep(jitter.uniform(0, 0.02))
        writer.send_signal(signal.SIGKILL)
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait(timeout=30)  # reap it
        if writer.stdout is not None:
            writer.stdout.close()
    return promised


def test_sigkill_mid_append_leaves_a_valid_prefix(tmp_path: Path) -> None:
    jitter = random.Random(7)
    promised = 0
    for _ in range(ROUNDS):
        promised = run_writer_until(tmp_path, promised + PER_ROUND, jitter)
        with Storage.open(tmp_path) as storage:
            state = storage.initial_state()
            first = state.snapshot.index + 1 if state.snapshot else 1
            indexes = [e.index for e in state.entries]
            assert indexes == list(range(first, first + len(indexes)))
            assert all(e.data == payload(e.index) for e in state.entries)
            assert storage.last_index() >= promised
            assert state.hard_state.commit >= promised
            assert list(storage.spool_dir.iterdir()) == []  # a killed save's file is gone
            loaded = read_snapshot(storage)
            assert loaded is not None  # 400 entries per round: it has snapshotted
            assert loaded[1] == snapshot_payload(loaded[0].index)
            promised = storage.last_index()  # the next writer continues from here
