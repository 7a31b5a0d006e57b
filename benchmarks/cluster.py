"""How fast is a real cluster? `python -m benchmarks.cluster` prints one JSON object.

A 3-node cluster of real processes (fsync on) through supervisor.Cluster, with direct links
unless --links; and, in the same run under the same client load, a bare gRPC echo server, so
every figure stands beside the machine's own yardstick (absolute times drift on a shared
machine):

- one sender: send latency p50/p99 (echo p50/p99 beside it);
- 64 sends in flight (recipient not subscribed): sends/s (echo calls/s beside it);
- failover over --failovers leader SIGKILLs: from the kill to the next committed send, with
  the breakdown (detection: a survivor stops following the old leader; election: a new leader
  answers; commit: the client's next send commits);
- stability: leader changes during --stability-s seconds of full load without faults.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from protos import chat_pb2 as pb
from protos import chat_pb2_grpc as pbg
from supervisor.cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]
SEND_TIMEOUT_S = 2.0


def _free_port() -> int:
    import random
    import socket

    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def write_config(directory: Path, nodes: int = 3) -> Path:
    ids = [chr(ord("a") + i) for i in range(nodes)]
    lines = "\n".join(f"  {n}: {{host: 127.0.0.1, port: {_free_port()}}}" for n in ids)
    path = directory / "cluster.yaml"
    path.write_text(
        "cluster: bench\n"
        "leader: a\n"
        "data_dir: ./data\n"
        "chat:\n  queue_limit: 10000000\n  scrypt: {n: 1024, r: 8, p: 1}\n"
        f"nodes:\n{lines}\n"
    )
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


class Sender:
    """Sends with a request id, following the leader through failovers (same id on retry)."""

    _clients = itertools.count(1)

    def __init__(self, addresses: dict[str, str], token: str, target: str) -> None:
        self.addresses = addresses
        self.channels = {n: grpc.aio.insecure_channel(a) for n, a in addresses.items()}
        self.stubs = {n: pbg.ChatStub(ch) for n, ch in self.channels.items()}
        self.client_id = f"bench-{os.getpid()}-{next(self._clients)}"
        self.seq = 0
        self.token = token
        self.target = target

    async def send(self, text: str = "x" * 100, recipient: str = "sink") -> None:
        self.seq += 1
        request = pb.SendRequest(
            request=pb.RequestId(
                client_id=self.client_id, seq=self.seq, first_outstanding=self.seq
            ),
            token=self.token,
            recipient=recipient,
            text=text,
        )
        order = list(self.stubs)
        attempt = 0
        while True:
            try:
                await self.stubs[self.target].Send(request, timeout=SEND_TIMEOUT_S)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.INTERNAL,
                ):
                    raise
                hint = dict(err.trailing_metadata() or ()).get("x-chatbooth-leader-id")
                attempt += 1
                if hint and hint in self.stubs and hint != self.target:
                    self.target = str(hint)
                else:
                    self.target = order[attempt % len(order)]
                    await asyncio.sleep(0.005)

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


async def _login(address: str, name: str) -> str:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pbg.ChatStub(ch)
        rid = pb.RequestId(client_id=f"setup-{name}", seq=1, first_outstanding=1)
        await stub.Register(
            pb.RegisterRequest(request=rid, username=name, password="pw"), timeout=10
        )
        rid = pb.RequestId(client_id=f"setup-{name}", seq=2, first_outstanding=2)
        reply = await stub.Login(
            pb.LoginRequest(request=rid, username=name, password="pw"), timeout=10
        )
        return reply.token


async def latency(call: Callable[[], Awaitable[Any]], count: int) -> dict[str, float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(percentile(times, 0.5), 3), "p99_ms": round(percentile(times, 0.99), 3)}


async def throughput(
    make_call: Callable[[int], Callable[[], Awaitable[Any]]], inflight: int, seconds: float
) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        call = make_call(k)
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(inflight)))
    return done / (time.perf_counter() - t0)


async def echo_figures(port: int, count: int, inflight: int, seconds: float) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pbg.ChatStub(ch)
        req = pb.SendRequest(token="t", recipient="sink", text="x" * 100)
        for _ in range(50):
            await stub.Send(req, timeout=2)
        lat = await latency(lambda: stub.Send(req, timeout=2), count)
        tput = await throughput(lambda k: lambda: stub.Send(req, timeout=2), inflight, seconds)
        return {"echo_" + k: v for k, v in lat.items()} | {"echo_calls_per_s": round(tput)}


def _statuses(cluster: Cluster) -> dict[str, Any]:
    return {s.id: s for s in cluster.status(timeout_s=0.5)}


async def failover(
    cluster: Cluster, addresses: dict[str, str], token: str, rounds: int
) -> dict[str, Any]:
    totals: list[float] = []
    detect: list[float] = []
    elect: list[float] = []
    for _ in range(rounds):
        leader = cluster.wait_leader(30.0)
        sender = Sender(addresses, token, leader)
        await sender.send()  # warm
        survivors = [n for n in addresses if n != leader]
        t_kill = time.perf_counter()
        cluster.kill(leader)  # control calls stay on the main thread (PDEATHSIG)
        watcher = asyncio.create_task(_watch_election(addresses, survivors, leader))
        await sender.send()
        t_commit = time.perf_counter()
        try:
            t_detect, t_elect = await asyncio.wait_for(watcher, 5)
        except TimeoutError:
            t_detect = t_elect = None
        totals.append((t_commit - t_kill) * 1000)
        if t_detect is not None:
            detect.append((t_detect - t_kill) * 1000)
        if t_elect is not None:
            elect.append((t_elect - t_kill) * 1000)
        await sender.close()
        cluster.start_node(leader)
        await _caught_up(cluster)

    def summary(xs: list[float]) -> dict[str, float]:
        if not xs:
            return {}
        return {
            "median_ms": round(statistics.median(xs)),
            "p90_ms": round(percentile(xs, 0.9)),
            "max_ms": round(max(xs)),
        }

    return {
        "failover_rounds": rounds,
        "failover_kill_to_commit": summary(totals),
        "failover_breakdown": {
            "detection (a survivor drops the old leader)": summary(detect),
            "election (a new leader answers)": summary(elect),
            "commit + client redirect (the next send commits)": summary(totals),
        },
    }


async def _watch_election(
    addresses: dict[str, str], survivors: list[str], old_leader: str
) -> tuple[float | None, float | None]:
    """When a survivor first stops naming the old leader, and when a new leader answers."""
    t_detect = None
    while True:
        for n in survivors:
            async with grpc.aio.insecure_channel(addresses[n]) as ch:
                try:
                    st = await pbg.ChatStub(ch).Status(pb.StatusRequest(), timeout=0.2)
                except grpc.aio.AioRpcError:
                    continue
            now = time.perf_counter()
            if t_detect is None and st.leader_id != old_leader:
                t_detect = now
            if st.role == "leader":
                return t_detect or now, now
        await asyncio.sleep(0.005)


async def _caught_up(cluster: Cluster, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = _statuses(cluster)
        applied = {s.applied_index for s in st.values() if s.answered}
        if (
            len(st) == len(cluster.node_ids)
            and all(s.answered for s in st.values())
            and len(applied) == 1
        ):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the cluster did not catch up")


async def cluster_figures(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    addresses = {n: cluster.address(n) for n in cluster.node_ids}
    leader = cluster.wait_leader(30.0)
    token = await _login(addresses[leader], "bench")
    await _login(addresses[leader], "sink")
    one = Sender(addresses, token, leader)
    for _ in range(50):
        await one.send()
    lat = await latency(one.send, args.count)
    senders = [Sender(addresses, token, leader) for _ in range(args.inflight)]
    tput = await throughput(lambda k: senders[k].send, args.inflight, args.seconds)
    result: dict[str, Any] = {
        "send_p50_ms": lat["p50_ms"],
        "send_p99_ms": lat["p99_ms"],
        "sends_per_s_64_inflight": round(tput),
    }
    if args.stability_s > 0:
        before = _statuses(cluster)
        await throughput(lambda k: senders[k].send, args.inflight, args.stability_s)
        after = _statuses(cluster)
        terms_before = max(s.term or 0 for s in before.values())
        terms_after = max(s.term or 0 for s in after.values())
        result["stability_seconds"] = args.stability_s
        result["leader_changes_under_load"] = terms_after - terms_before
    for s in [one, *senders]:
        await s.close()
    if args.failovers > 0:
        result.update(await failover(cluster, addresses, token, args.failovers))
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    p.add_argument("--count", type=int, default=300, help="sequential sends for latency")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="throughput window")
    p.add_argument("--failovers", type=int, default=20)
    p.add_argument("--stability-s", type=float, default=60.0)
    p.add_argument("--links", action="store_true", help="node traffic through the link proxies")
    args = p.parse_args()
    result: dict[str, Any] = {
        "benchmark": "cluster",
        "python": platform.python_version(),
        "nodes": 3,
        "fsync": True,
        "links": "proxied" if args.links else "direct",
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="chatbooth-bench-") as tmp:
        config = write_config(Path(tmp))
        echo_port = _free_port()
        echo = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.echo_server", str(echo_port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        try:
            with Cluster(config, fresh=True, links=args.links) as cluster:  # starts it
                result |= asyncio.run(cluster_figures(cluster, args))
            time.sleep(0.3)
            result |= asyncio.run(echo_figures(echo_port, args.count, args.inflight, args.seconds))
        finally:
            echo.terminate()
            echo.wait(10)
    result["latency_p50_vs_echo"] = round(result["send_p50_ms"] / result["echo_p50_ms"], 2)
    result["throughput_vs_echo"] = round(
        result["sends_per_s_64_inflight"] / result["echo_calls_per_s"], 3
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
