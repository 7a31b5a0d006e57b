"""Shared fixtures. Each real resource (temp data dir, free ports, processes) gets a fixture
that cleans up what it started."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from supervisor.ports import free_port

__all__ = ["free_port", "write_cluster_yaml"]

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


def write_cluster_yaml(
    directory: Path,
    ids: str = "abc",
    *,
    name: str = "test",
    leader: str | None = "a",
    key: bool = False,
    extra: str = "",
) -> Path:
    """A cluster.yaml in `directory`: nodes named by the letters of `ids` on distinct free
    127.0.0.1 ports, data in directory/data, a cheap scrypt cost, and `extra` YAML sections.
    Without `key`, whoever starts the cluster (`supervisor up`, Cluster) writes the key file."""
    directory.mkdir(parents=True, exist_ok=True)
    ports: list[int] = []
    while len(ports) < len(ids):
        port = free_port(avoid=ports)
        ports.append(port)
    nodes = "\n".join(
        f"  {n}: {{host: 127.0.0.1, port: {p}}}" for n, p in zip(ids, ports, strict=True)
    )
    text = f"cluster: {name}\n"
    if key:
        text += "cluster_key: test-key\n"
    if leader is not None:
        text += f"leader: {leader}\n"
    text += "data_dir: ./data\n"
    text += "chat:\n  scrypt: {n: 16, r: 8, p: 1}\n"
    text += extra
    text += f"nodes:\n{nodes}\n"
    path = directory / "cluster.yaml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # it may hold the cluster key (an inline key readable by others: a warning)
    return path
