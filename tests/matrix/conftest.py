"""Fixtures for the failure matrix.

- `async def` tests run in a fresh event loop each (as in tests/client/conftest.py), on the
  main thread: the Cluster spawns nodes from the thread that calls it (TRAPS:
  PR_SET_PDEATHSIG), so control calls are made directly from the test coroutine.
- `cluster_dir`: a temporary directory for one cluster.yaml and its data; every Cluster a test
  opens is a context manager that stops its nodes by PID.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    return tmp_path
