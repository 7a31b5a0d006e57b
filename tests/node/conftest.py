"""Real node processes for the node tests: a cluster.yaml on free ports in a temp dir, nodes
started as `python -m node`, every one stopped by PID at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import chat_pb2, chat_pb2_grpc
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


class NodeProcesses:
    def __init__(self, tmp: Path, ids: str = "abc", extra_yaml: str = "") -> None:
        self.tmp = tmp
        self.ids = list(ids)
        self.ports = {n: free_port() for n in self.ids}
        nodes = "\n".join(f"  {n}: {{host: 127.0.0.1, port: {p}}}" for n, p in self.ports.items())
        self.config = tmp / "cluster.yaml"
        self.config.write_text(
            "cluster: test\n"
            "cluster_key: test-key\n"
            f"leader: {self.ids[0]}\n"
            "data_dir: ./data\n"
            "chat:\n  scrypt: {n: 16, r: 8, p: 1}\n"
            f"{extra_yaml}"
            f"nodes:\n{nodes}\n"
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # the current process per node
        self.every_proc: list[subprocess.Popen[bytes]] = []  # all ever started: all stopped

    def address(self, n: str) -> str:
        return f"127.0.0.1:{self.ports[n]}"

    def log(self, n: str) -> str:
        path = self.tmp / f"{n}.log"
        return path.read_text() if path.exists() else ""

    def start(self, n: str, *extra: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{n}.log", "ab")  # noqa: SIM115 (owned by the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--config", str(self.config), "--id", n, *extra],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        self.procs[n] = proc
        self.every_proc.append(proc)
        return proc

    def start_all(self) -> None:
        for n in self.ids:
            self.start(n)

    def kill(self, n: str) -> None:
        proc = self.procs.pop(n)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, n: str) -> int:
        proc = self.procs.pop(n)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(15)

    def close(self) -> None:
        self.procs.clear()
        for proc in self.every_proc:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    async def status(self, n: str, *, digest: bool = False) -> chat_pb2.StatusReply | None:
        async with grpc.aio.insecure_channel(self.address(n)) as ch:
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
        nodes = among or [n for n in self.ids if n in self.procs]
        while time.monotonic() < deadline:
            statuses = [s for s in [await self.status(n) for n in nodes] if s is not None]
            leaders = {s.node_id for s in statuses if s.role == "leader"}
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
        leftover = [p.pid for p in cluster.every_proc if p.poll() is None]
        assert not leftover, leftover
        os.sync()
