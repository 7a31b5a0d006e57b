"""Raw replication: how many 10-byte entries/s does a 3-node cluster of real processes commit
when the proposals are made inside the leader process (no client RPC, no chat layer)?

`python -m benchmarks.raw_replication` prints JSON. Each node is a real process running the
real driver, storage (fsync on) and gRPC transport, with a trivial state machine; node a (the
bootstrap leader) proposes --entries entries, --inflight at a time, and reports. The nodes'
configuration is benchmarks/cluster.py's, handed to each process on its stdin as cluster.yaml
text (supervisor/nodeconfig.py): no file is written.
Target (issue 3): at least 40,000 committed entries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from random import Random

import grpc

from benchmarks.cluster import ROOT, bench_cluster
from node.config import load_config, read_cluster_key
from node.driver import RaftDriver
from node.raft.types import NodeId
from node.storage import Storage
from node.transport import ClusterKeyInterceptor, GrpcTransport, RaftService
from protos import raft_pb2_grpc
from protos.vocabulary import SERVER_OPTIONS
from supervisor.nodeconfig import STDIN_PATH, render


class CountingStateMachine:
    """Applies nothing but a count (node.driver.StateMachine): the chat layer is not what
    this measures. Its copies are files holding the count."""

    def __init__(self) -> None:
        self._applied = 0

    @property
    def applied_index(self) -> int:
        return self._applied

    def apply_batch(
        self, entries: Sequence[tuple[int, bytes | None]], conf: str | None = None
    ) -> list[int | None]:
        results: list[int | None] = []
        for index, data in entries:
            results.append(index if data is not None and index > self._applied else None)
            self._applied = max(self._applied, index)
        return results

    def checkpoint(self) -> int | None:
        return self._applied

    def copy_to(self, dest: Path) -> int:
        applied = self._applied
        dest.write_text(str(applied))
        return applied

    def validate_copy(self, path: Path) -> int:
        return int(path.read_text() or "0")  # ValueError if install would fail

    def install(self, path: Path) -> None:
        self._applied = self.validate_copy(path)

    def digest_at(self) -> tuple[int, str]:
        applied = self._applied
        return applied, hashlib.sha256(str(applied).encode()).hexdigest()


class ClientPorts:
    """This benchmark's nodes serve Raft on their client ports: no peers file, no proxies."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self._addresses = addresses

    def known(self) -> list[str]:
        return list(self._addresses)

    def peer_address(self, node: str) -> str | None:
        return self._addresses.get(node)


async def run_node(config_path: str, node_id: str, entries: int, inflight: int) -> None:
    config = load_config(config_path)
    key = read_cluster_key(config)
    storage = Storage.open(config.node_dir(node_id))
    peers = ClientPorts({n.id: n.address for n in config.nodes if n.id != node_id})
    transport = GrpcTransport(
        node_id=NodeId(node_id),
        peers=peers,
        cluster=config.cluster,
        key=key,
        credentials=None,
        cluster_id="raw-replication",
    )
    driver: RaftDriver[int] = RaftDriver(
        node_id=NodeId(node_id),
        config=config,
        storage=storage,
        state=CountingStateMachine(),
        transport=transport,
        rng=Random(),
    )
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[ClusterKeyInterceptor(key)])
    raft_pb2_grpc.add_RaftServicer_to_server(
        RaftService(
            NodeId(node_id),
            config.cluster,
            driver.step,
            driver.receive_snapshot,
            confs=driver.peer_confs,
            spool=lambda: driver.snapshot_spool,
            certificates=False,
            cluster_id="raw-replication",
            incarnation=driver.own_incarnation,
        ),
        server,
    )
    server.add_insecure_port(config.node(node_id).address)
    await server.start()
    driver.start()
    if config.leader != node_id:
        await asyncio.sleep(3600)  # the benchmark kills followers when done
        return
    while not driver.is_leader:
        await asyncio.sleep(0.01)
    payload = b"0123456789"
    await asyncio.gather(*(driver.propose(payload, 10) for _ in range(1000)))  # warm up
    started = time.perf_counter()
    remaining = entries

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await driver.propose(payload, 30)

    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - started
    print(json.dumps({"committed_entries_per_s": round(entries / elapsed)}), flush=True)
    await driver.stop()
    await server.stop(0)
    storage.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.raw_replication", description=__doc__)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--inflight", type=int, default=2000)
    p.add_argument("--node", nargs=2, metavar=("CONFIG", "ID"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.node:
        asyncio.run(run_node(args.node[0], args.node[1], args.entries, args.inflight))
        return
    with tempfile.TemporaryDirectory(prefix="chatbooth-raw-") as tmp:
        # Plaintext: this measures replication itself (bench measures TLS, --plaintext beside)
        config = dataclasses.replace(
            bench_cluster(Path(tmp)), cluster_key="raw-benchmark-key", plaintext=True
        )
        text = render(config)
        cmd = [sys.executable, "-m", "benchmarks.raw_replication", "--entries", str(args.entries)]
        cmd += ["--inflight", str(args.inflight), "--node", STDIN_PATH]
        followers: list[subprocess.Popen[str]] = []
        try:
            for n in ("b", "c"):
                follower = subprocess.Popen([*cmd, n], cwd=ROOT, stdin=subprocess.PIPE, text=True)
                followers.append(follower)
                if follower.stdin is None:
                    raise RuntimeError("stdin=PIPE gave no pipe")
                follower.stdin.write(text)
                follower.stdin.close()
            leader = subprocess.run(
                [*cmd, "a"],
                cwd=ROOT,
                input=text,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
        finally:
            for f in followers:
                f.kill()
                f.wait(10)
    result = {
        "benchmark": "raw-replication",
        "nodes": 3,
        "entry_bytes": 10,
        "fsync": True,
        "inflight": args.inflight,
        **json.loads(leader.stdout.strip().splitlines()[-1]),
        "target_committed_entries_per_s": 40_000,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
