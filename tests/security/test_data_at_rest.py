"""What rests on disk is for the cluster's owner only (issue 11: "Every WAL segment, snapshot
and node.log is mode 0644 in 0755 directories ... a local unprivileged user read 38 tokens
from one node's data dir"). Files 0600 in 0700 directories; as root, an unprivileged user
(nobody) is shown to read nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.node.conftest import NodeProcesses
from tests.node.test_node_process import Session

pytestmark = pytest.mark.cluster

READ_ALL = """
import os, sys
readable = []
for root, dirs, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                f.read(1)
            readable.append(path)
        except OSError:
            pass
print("\\n".join(readable))
"""


def _write_some_state(nodes: NodeProcesses) -> None:
    async def scenario() -> None:
        s = await Session.open(nodes.channel(await nodes.wait_leader()))
        await s.register_and_login("owner")
        for i in range(20):
            await s.send("owner", f"secret {i}")
        await s.close()

    asyncio.run(scenario())


def test_data_dirs_are_the_owners_only(nodes: NodeProcesses, tmp_path: Path) -> None:
    nodes.start_all()
    _write_some_state(nodes)
    data = tmp_path / "data"
    checked = 0
    for root, dirs, files in os.walk(data):
        for name in dirs:
            mode = stat.S_IMODE((Path(root) / name).stat().st_mode)
            assert mode & 0o077 == 0, f"{root}/{name} is mode {mode:o}"
        for name in files:
            mode = stat.S_IMODE((Path(root) / name).stat().st_mode)
            assert mode & 0o077 == 0, f"{root}/{name} is mode {mode:o}"
            checked += 1
    assert checked >= 6  # WAL segments, logs, locks and the key of three nodes


# The reader needs an interpreter that user can run: the system's, not the venv's under /root.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no system python3 for the nobody user")
def test_an_unprivileged_user_reads_nothing_of_the_data_dir(
    nodes: NodeProcesses, tmp_path: Path
) -> None:
    nodes.start_all()
    _write_some_state(nodes)
    data = tmp_path / "data"
    # Let nobody reach the data dir itself, so that only chatbooth's own modes stand between.
    opened: list[tuple[Path, int]] = []
    for directory in [tmp_path, *tmp_path.parents]:
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o001 == 0:
            opened.append((directory, mode))
            directory.chmod(mode | 0o011)
    try:
        os.chmod(data, stat.S_IMODE(data.stat().st_mode) | 0o055)  # as if made 0755
        seen = subprocess.run(
            [str(SYSTEM_PYTHON), "-I", "-c", READ_ALL, str(data)],
            user="nobody",
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            cwd="/",
        )
    finally:
        os.chmod(data, 0o700)
        for directory, mode in reversed(opened):
            directory.chmod(mode)
    assert seen.stdout.strip() == "", f"nobody could read:\n{seen.stdout}"
