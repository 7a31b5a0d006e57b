"""Real node processes for the node tests: a cluster.yaml on free ports in a temp dir, the
nodes run by supervisor.Cluster, every process stopped by PID at the end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from node.config import ClusterConfig, load_config
from protos import chat_pb2, chat_pb2_grpc
from supervisor.cluster import Cluster
from supervisor.nodeconfig import STDIN_PATH, render
from tests.conftest import node_channel, peer_channel, write_cluster_yaml

ROOT = Path(__file__).resolve().parents[2]


class NodeProcesses:
    """The node tests' cluster: supervisor.Cluster (direct links) runs the nodes; `spawn_raw`
    starts the extra processes the refusal tests need, which Cluster rightly refuses to."""

    def __init__(self, tmp: Path, ids: str = "abc", extra_yaml: str = "") -> None:
        self.tmp = tmp
        self.ids = list(ids)
        self.config = write_cluster_yaml(tmp, ids, leader=self.ids[0], key=True, extra=extra_yaml)
        self.ports = {n.id: n.port for n in load_config(self.config).nodes}
        self.cluster: Cluster | None = None
        self.raw: list[subprocess.Popen[bytes]] = []  # all stopped at close

    def address(self, n: str) -> str:
        """Node n's client port (server TLS with the cluster's CA)."""
        return f"127.0.0.1:{self.ports[n]}"

    @property
    def ca_path(self) -> Path:
        """The test cluster's CA, made under data/tls when the cluster starts."""
        files = load_config(self.config).tls
        if files is None:
            raise AssertionError("a plaintext cluster has no CA")
        return files.ca

    def channel(self, n: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An aio channel to node n's client port, TLS with the cluster's CA."""
        return node_channel(self.config, self.address(n), options)

    def log(self, n: str) -> str:
        path = self.tmp / "data" / n / "node.log"
        return path.read_text() if path.exists() else ""

    def running(self, n: str) -> bool:
        return self.cluster is not None and self.cluster.pid(n) is not None

    def start_all(self) -> None:
        """Start every node that is down (the first call starts the cluster, leader first)."""
        if self.cluster is None:
            self.cluster = Cluster(self.config, links=False)
            self.cluster.start()
            return
        for n in self.ids:
            if not self.running(n):
                self.cluster.start_node(n)

    def start(self, n: str) -> None:
        """Start node n again (it must be down); NodeExitedError if it exits instead."""
        if self.cluster is None:
            raise AssertionError("start_all first")
        self.cluster.start_node(n)

    def spawn_raw(
        self, n: str, config: ClusterConfig | None = None, flags: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """`python -m node` outside the Cluster (a second process on a used port or data
        directory), given `config` (relocated, on stdin) or the cluster's file, and `flags`
        (`--bootstrap ID`, say); its output goes to raw-N.log."""
        out = open(self.tmp / f"raw-{n}.log", "ab")  # noqa: SIM115 (owned by the process)
        source = STDIN_PATH if config is not None else str(self.config)
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--config", source, "--id", n, *flags],
            cwd=ROOT,
            stdin=subprocess.DEVNULL if config is None else subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        if config is not None and proc.stdin is not None:
            proc.stdin.write(render(config).encode())
            proc.stdin.close()
        out.close()
        self.raw.append(proc)
        return proc

    def raw_log(self, n: str) -> str:
        path = self.tmp / f"raw-{n}.log"
        return path.read_text() if path.exists() else ""

    def kill(self, n: str) -> None:
        if self.cluster is not None:
            self.cluster.kill(n)

    def stop(self, n: str) -> int:
        if self.cluster is None:
            raise AssertionError("start_all first")
        return self.cluster.stop(n).exit_code

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        for proc in self.raw:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    async def status(self, n: str, *, digest: bool = False) -> chat_pb2.StatusReply | None:
        # The digest is served on the peer port, to the tool certificate.
        async with peer_channel(self.config, n) if digest else self.channel(n) as ch:
            try:
                return await chat_pb2_grpc.ChatStub(ch).Status(
                    chat_pb2.StatusRequest(with_digest=digest), timeout=1
                )
            except grpc.aio.AioRpcError:
                return None

    async def wait_serving(self, n: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while await self.status(n) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} does not answer: {self.log(n)[-2000:]}")
            await asyncio.sleep(0.05)

    async def wait_leader(self, timeout_s: float = 15.0, among: list[str] | None = None) -> str:
        deadline = time.monotonic() + timeout_s
        nodes = among or [n for n in self.ids if self.running(n)]
        while time.monotonic() < deadline:
            statuses = [s for s in [await self.status(n) for n in nodes] if s is not None]
            leaders = {s.node_id for s in statuses if s.role == chat_pb2.LEADER}
            if len(leaders) == 1:
                leader = leaders.pop()
                if sum(s.leader_id == leader for s in statuses) > len(self.ids) // 2:
                    return leader
            await asyncio.sleep(0.05)
        raise AssertionError(f"no leader within {timeout_s} s")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeProcesses]:
    cluster = NodeProcesses(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        leftover = [p.pid for p in cluster.raw if p.poll() is None]
        assert not leftover, leftover
        os.sync()
