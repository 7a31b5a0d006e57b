"""Fixtures for the failure matrix.

- `async def` tests run in a fresh event loop each (as in tests/client/conftest.py), on the
  main thread: the Cluster spawns nodes from the thread that calls it (TRAPS:
  PR_SET_PDEATHSIG), so control calls are made directly from the test coroutine.
- `cluster_dir`: a temporary directory for one cluster.yaml and its data; every Cluster a test
  opens is a context manager that stops its nodes by PID.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

MATRIX_TEST_TIMEOUT_S = 110.0  # under pytest-timeout's 120 s


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests in their own event loop, with a time limit."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**arguments), MATRIX_TEST_TIMEOUT_S)

    asyncio.run(run())
    return True


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    return tmp_path
