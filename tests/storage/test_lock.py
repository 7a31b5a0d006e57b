"""One data directory, one process: the LOCK file (DESIGN.md, node/storage/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.storage import Storage, StorageLockedError

REPO = Path(__file__).resolve().parents[2]

HOLD = """
import sys
from pathlib import Path
from node.storage import Storage
storage = Storage.open(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""

TRY = """
import sys
from pathlib import Path
from node.storage import Storage, StorageLockedError
try:
    Storage.open(Path(sys.argv[1]))
except StorageLockedError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_second_open_in_this_process_is_refused(tmp_path: Path) -> None:
    first = Storage.open(tmp_path)
    with pytest.raises(StorageLockedError) as err:
        Storage.open(tmp_path)
    assert str(err.value) == (
        f"data directory {tmp_path} is in use by another process (pid {os.getpid()})"
    )
    assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())
    first.close()
    Storage.open(tmp_path).close()  # close() released it


def test_another_process_is_refused_while_we_hold_it(tmp_path: Path) -> None:
    with Storage.open(tmp_path):
        result = subprocess.run(
            [sys.executable, "-c", TRY, str(tmp_path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    assert f"data directory {tmp_path} is in use by another process (pid {os.getpid()})" in (
        result.stdout
    )


def test_we_are_refused_while_another_process_holds_it_until_it_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StorageLockedError, match=rf"\(pid {holder.pid}\)"):
            Storage.open(tmp_path)
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops its lock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
    Storage.open(tmp_path).close()
