"""Shared fixtures. Each real resource (temp data dir, free ports, processes) gets a fixture
that cleans up what it started."""

from __future__ import annotations

import asyncio
import inspect
import random
import socket

import pytest

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


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the ephemeral range (TRAPS: binding port 0 races
    with outgoing connections, which use 32768 and up)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found in 20000-32000")
