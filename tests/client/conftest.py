"""Fixtures for the client's tests.

- `async def` tests run in a fresh event loop each (the hook is in tests/conftest.py;
  grpc.aio objects belong to the loop that made them, so each test builds its
  cluster and clients inside its own loop: `async with open_cluster(kind) as cluster`).
- `cluster_kind`: which cluster the generic tests (test_failover.py) run against: "fake"
  (tests/client/fakechat.py) and "real" (node processes through supervisor.Cluster, with the
  link proxies, marked `cluster`).
- `fake_servers`: the fake cluster as a separate process (the launcher), for tests that run
  `python -m client` as a subprocess; stopped by its PID.

Every server listens on 127.0.0.1 on a port below the ephemeral range, retrying on a failed
bind (tests/client/fakechat.py).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from client.api import ChatClient
from tests.client.fakechat import ChatCluster, FakeCluster
from tests.conftest import cluster_ca

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_KINDS = ["fake", pytest.param("real", marks=pytest.mark.cluster)]


@pytest.fixture(params=CLUSTER_KINDS)
def cluster_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@asynccontextmanager
async def open_cluster(kind: str, nodes: int = 3) -> AsyncIterator[ChatCluster]:
    """A running cluster of `nodes` nodes named a, b, c, ..."""
    names = [chr(ord("a") + i) for i in range(nodes)]
    if kind == "fake":
        async with FakeCluster(names) as cluster:
            yield cluster
        return
    if kind == "real":
        with (
            tempfile.TemporaryDirectory(prefix="chatbooth-client-") as tmp,
            RealCluster(Path(tmp), names) as cluster,
        ):
            yield cluster
        return
    raise ValueError(f"no cluster kind {kind!r}")


class RealCluster:
    """Real node processes (supervisor.Cluster) behind the ChatCluster protocol. Its control
    calls run on the main thread, as spawning nodes must (PR_SET_PDEATHSIG)."""

    def __init__(self, directory: Path, names: Sequence[str]) -> None:
        from supervisor.cluster import Cluster
        from tests.conftest import write_cluster_yaml

        config = write_cluster_yaml(directory, "".join(names), name="client-tests")
        self._cluster = Cluster(config, fresh=True)
        self._names = tuple(names)

    def __enter__(self) -> RealCluster:
        self._cluster.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cluster.__exit__(*exc)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def address(self, name: str) -> str:
        return self._cluster.address(name)

    @property
    def ca(self) -> bytes:
        """The PEM of the cluster's CA (its nodes serve TLS)."""
        return cluster_ca(self._cluster.config)

    @property
    def addresses(self) -> list[str]:
        return [self.address(n) for n in self._names]

    async def kill(self, name: str) -> None:
        self._cluster.kill(name)

    async def start(self, name: str) -> None:
        self._cluster.start_node(name)

    async def isolate(self, *names: str) -> None:
        self._cluster.partition(list(names), [n for n in self._names if n not in names])

    async def heal(self) -> None:
        self._cluster.heal()

    async def wait_leader(self, timeout_s: float = 5.0) -> str:
        return self._cluster.wait_leader(timeout_s)


def make_client(
    cluster: ChatCluster, *, servers: Sequence[str] | None = None, **options: Any
) -> ChatClient:
    """A client of the whole cluster (or of the nodes named in `servers`), nodes named by
    their ids, with deadlines short enough for tests."""
    settings: dict[str, Any] = {
        "call_timeout_s": 0.5,
        "overall_timeout_s": 5.0,
        # The fake elects at once; real nodes need an election timeout or two.
        "no_majority_grace_s": 0.3 if isinstance(cluster, FakeCluster) else 1.5,
        "watch_interval_s": 0.3,
    }
    settings.update(options)
    names = cluster.names if servers is None else servers
    ca = cluster.ca if isinstance(cluster, RealCluster) else None  # the fake serves plaintext
    return ChatClient({name: cluster.address(name) for name in names}, ca=ca, **settings)


async def logged_in(cluster: ChatCluster, username: str, **options: Any) -> ChatClient:
    """A client logged in as username (registered first if need be)."""
    client = make_client(cluster, **options)
    try:
        await client.register(username, "pw")
    except Exception as error:  # already registered by an earlier client
        if "already taken" not in str(error):
            raise
    await client.login(username, "pw")
    return client


async def eventually(check: Any, timeout_s: float = 5.0, interval_s: float = 0.02) -> None:
    """Poll check() (sync or async) until it is truthy, or fail after timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {check}")
        await asyncio.sleep(interval_s)


# --- the fake cluster as a process ---------------------------------------------------------


@dataclass
class FakeServers:
    """The launcher process (tests/client/fakechat.py run as a program)."""

    process: subprocess.Popen[str]
    addresses: dict[str, str]

    @property
    def servers(self) -> str:
        return ",".join(self.addresses.values())

    def command(self, line: str, timeout_s: float = 5.0) -> str:
        """Send one control command (`kill a`, `isolate a b`, `heal`, ...); its answer."""
        if self.process.stdin is None:
            raise RuntimeError("launcher has no stdin")
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = _read_line(self.process, timeout_s)
        if answer != "ok":
            raise AssertionError(f"launcher: {line!r} -> {answer!r}")
        return answer

    def cluster_yaml(self, directory: Path) -> Path:
        """A cluster.yaml naming these nodes, for --cluster. The fakes serve plaintext, and
        no peer port (none is dialled: the fakes do not forward)."""
        lines = ["cluster: fake", f"data_dir: {directory / 'data'}", "tls: plaintext", "nodes:"]
        for name, address in self.addresses.items():
            host, port = address.rsplit(":", 1)
            lines.append(f"  {name}: {{host: {host}, port: {port}, peer_port: {int(port) + 1}}}")
        path = directory / "cluster.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    if process.stdout is None:
        raise RuntimeError("launcher has no stdout")
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    if not ready:
        raise AssertionError(f"launcher said nothing within {timeout_s} s")
    return process.stdout.readline().strip()


@pytest.fixture
def fake_servers(tmp_path: Path) -> Iterator[FakeServers]:
    log = (tmp_path / "fakechat.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.client.fakechat", "--nodes", "a,b,c"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        bufsize=1,
    )
    try:
        line = _read_line(process, 10.0)
        if not line.startswith("READY "):
            raise AssertionError(f"launcher did not start: {line!r}")
        yield FakeServers(process, json.loads(line.removeprefix("READY ")))
    finally:
        if process.stdin is not None:
            process.stdin.close()  # end of commands: it stops by itself
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, 9)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        log.close()


def run_client(
    args: list[str], script: str, timeout_s: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """`python -m client ARGS` with script on stdin (piped mode)."""
    env = dict(os.environ)
    env.pop("PYTHONHASHSEED", None)
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        input=script,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout_s,
        check=False,
    )
