"""Shared fixtures. Each real resource (temp data dir, free ports, processes) gets a fixture
that cleans up what it started."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from supervisor.ports import free_port

__all__ = ["free_port"]

ASYNC_TEST_TIMEOUT_S = 110.0  # under pytest-timeout's 120 s


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests each in its own event loop (grpc.aio objects belong to the loop
    that made them; pytest-asyncio is not a dependency), with a time limit."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**arguments), ASYNC_TEST_TIMEOUT_S)

    asyncio.run(run())
    return True
