"""`python -m supervisor bench cluster.yaml [--json] [--quick]`: how fast is a real cluster?

The cluster of cluster.yaml (same nodes, ports and timings; data in a temporary directory, so
the cluster's own data is never touched; fsync on) is started through supervisor.Cluster, with
direct links between the nodes unless --links; and, in the same run under the same client load,
a bare gRPC echo server (benchmarks/echo_server.py), so every figure stands beside the
machine's own yardstick (absolute times drift on a shared machine):

- one sender: sends/s, and send latency p50/p99 (echo beside each);
- 64 sends in flight (recipient not subscribed): sends/s (echo calls/s beside it);
- failover over --failovers leader SIGKILLs: from the kill to the next committed send, with
  the breakdown (from the kill until a survivor stops following the old leader; until a new
  leader answers; until the client's next send commits);
- stability: leader changes (term increases) during --stability-s seconds of full load without
  faults.

`--quick` uses small counts (seconds in all, 3 failovers, no stability window) for tests and for
a first look. `--scale N` measures something else instead: the cluster filled with N messages
(memory, sizes, restarts, History, catch-up by snapshot; JSON), by running `python -m
benchmarks.scale --config FILE --messages N` (benchmarks/scale.py, whose docstring lists the
figures) as a child process: the supervisor does not import the benchmarks.

The result is a table, or one JSON object with --json; `run_benchmark` returns the same
document to callers, given a ClusterConfig (benchmarks/cluster.py is a thin wrapper around it).

With --report DIR it also writes DIR/report.html (supervisor.report): every cluster send of each
phase over time (warm-up, latency, throughput, stability, failover), the failovers' kills as
fault intervals (from the kill to the restart, the time to the next commit in the label), every
node's role and term sampled four times a second, and the figures table. Only then is anything
recorded: a (start, end) pair per send, and the Status rounds of the sampler's thread.

A tool on top of the supervisor library: imports node.config, protos, grpc and the supervisor
modules cluster, errors, history, membership, ports, report and sender; never node internals or
client (it sends through supervisor/sender.py, raw gRPC, so that it measures the cluster and not
the client library).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio

from node.config import ClusterConfig, ConfigError, load_config
from protos import chat_pb2 as pb
from protos import chat_pb2_grpc as pbg
from protos.vocabulary import CLIENT_CHANNEL_OPTIONS
from supervisor.certs import Credentials, issue, secure_channel
from supervisor.cluster import Cluster, NodeStatus, PortInUseError
from supervisor.errors import SupervisorError
from supervisor.history import Outcome
from supervisor.load import CpuMeter, LoadSpec, per_call, run_processes
from supervisor.membership import Membership
from supervisor.ports import free_port
from supervisor.report import (
    FaultInterval,
    Operation,
    ReportError,
    RoleSampler,
    describe_written,
    prepare_report_dir,
    write_report,
)
from supervisor.sender import Sender, client_channel

ROOT: Final = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.echo_server` runs
SEND_TIMEOUT_S: Final = 2.0
WARMUP_SENDS: Final = 50
LEADER_TIMEOUT_S: Final = 30.0
ECHO_START_TIMEOUT_S: Final = 15.0
# Sends go to a recipient nobody reads: its queue must not fill during the throughput windows.
BENCH_QUEUE_LIMIT: Final = 10_000_000
# A send is resent (with its one request id) at most this long before the run fails.
SEND_GIVE_UP_S: Final = 30.0
PASSWORD: Final = "pw"
DETECTION: Final = "detection (a survivor drops the old leader)"
ELECTION: Final = "election (a new leader answers)"
COMMIT: Final = "commit + client redirect (the next send commits)"

# The keys of every result (failover and stability ones are present even when not measured).
EXPECTED_KEYS: Final = (
    "benchmark",
    "python",
    "nodes",
    "fsync",
    "links",
    "cpus",
    "quick",
    "sends_per_s_1_sender",
    "send_p50_ms",
    "send_p99_ms",
    "sends_per_s_64_inflight",
    "inflight",
    "echo_calls_per_s_1_sender",
    "echo_p50_ms",
    "echo_p99_ms",
    "echo_calls_per_s",
    "latency_p50_vs_echo",
    "latency_p99_vs_echo",
    "throughput_1_sender_vs_echo",
    "throughput_vs_echo",
    "failover_rounds",
    "failover_kill_to_commit",
    "failover_breakdown",
    "stability_seconds",
    "leader_changes_under_load",
)


class BenchError(SupervisorError):
    """The benchmark could not run (the cluster did not catch up, the echo server failed)."""


@dataclass(frozen=True, slots=True)
class BenchSettings:
    count: int = 300  # sequential sends for latency
    inflight: int = 64
    seconds: float = 5.0  # each throughput window
    failovers: int = 20
    stability_s: float = 60.0
    links: bool = False  # node-to-node traffic through the supervisor's link proxies
    plaintext: bool = False  # `tls: plaintext`: measure what TLS costs
    quick: bool = False
    # >1: the in-flight window is driven from this many client processes as well (one Python
    # client process saturates near the echo rate); both figures are reported.
    client_processes: int = 1


QUICK: Final = BenchSettings(count=100, seconds=1.0, failovers=3, stability_s=0.0, quick=True)

Spans = list[tuple[float, float]]  # (start, end) of each send, time.perf_counter()


@dataclass
class Recording:
    """What `bench --report` draws, recorded only when it is asked for: each phase's sends as
    (start, end) pairs of time.perf_counter(), the failovers' kills, the role samples. Times
    in the report count from `origin`, set when the cluster is up."""

    origin: float = field(default_factory=time.perf_counter)
    phases: dict[str, Spans] = field(default_factory=dict)
    # (node, kill, next commit, restart), time.perf_counter()
    kills: list[tuple[str, float, float, float]] = field(default_factory=list)
    sampler: RoleSampler | None = None
    ended_s: float = 0.0  # since origin: when the cluster's figures were done

    def now(self) -> float:
        return time.perf_counter() - self.origin

    def phase(self, name: str) -> Spans:
        """The list the sends of phase `name` are appended to."""
        return self.phases.setdefault(name, [])

    def operations(self) -> list[Operation]:
        o = self.origin
        return [
            Operation(name, start - o, end - o, Outcome.OK)  # a send that fails stops the run
            for name, spans in self.phases.items()
            for start, end in spans
        ]

    def faults(self) -> list[FaultInterval]:
        return [
            FaultInterval(
                f"kill {node} (leader): next commit {(commit - kill) * 1000:.0f} ms later",
                kill - self.origin,
                restart - self.origin,
            )
            for node, kill, commit, restart in self.kills
        ]


# -- figures ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The value a fraction q (0..1) of the way up the sorted values, by rank: no interpolation,
    so it is always a measured value. The one percentile of bench and the benchmarks."""
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def summary(values: Sequence[float]) -> dict[str, int]:
    """median, p90 and max in whole milliseconds; empty when nothing was measured."""
    if not values:
        return {}
    return {
        "median_ms": round(statistics.median(values)),
        "p90_ms": round(percentile(values, 0.9)),
        "max_ms": round(max(values)),
    }


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


@dataclass(frozen=True, slots=True)
class Latency:
    p50_ms: float
    p99_ms: float
    calls_per_s: float  # one call at a time


async def latency(
    call: Callable[[], Awaitable[object]], count: int, spans: Spans | None = None
) -> Latency:
    """`count` calls one after the other (each one's start and end appended to spans)."""
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        await call()
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1000)
        if spans is not None:
            spans.append((t0, t1))
    elapsed = time.perf_counter() - started
    return Latency(
        round(percentile(times, 0.5), 3), round(percentile(times, 0.99), 3), count / elapsed
    )


async def throughput(
    make_call: Callable[[int], Callable[[], Awaitable[object]]],
    inflight: int,
    seconds: float,
    spans: Spans | None = None,
) -> float:
    """Calls per second with `inflight` workers, each calling again as soon as one returns
    (each call's start and end appended to spans)."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        call = make_call(k)
        while (t0 := time.perf_counter()) < stop_at:
            await call()
            done += 1
            if spans is not None:
                spans.append((t0, time.perf_counter()))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(inflight)))
    return done / (time.perf_counter() - t0)


# -- talking to the cluster -------------------------------------------------------------------


def new_sender(addresses: dict[str, str], leader: str, tls: Credentials | None) -> Sender:
    """One sending client (a client id of its own), asking the leader first."""
    return Sender(addresses, leader=leader, call_timeout_s=SEND_TIMEOUT_S, tls=tls)


async def send(client: Sender, token: str, text: str = "x" * 100) -> None:
    """One 100-character message to the sink, committed."""
    await client.send(token, "sink", text, timeout_s=SEND_GIVE_UP_S)


async def login(addresses: dict[str, str], leader: str, tls: Credentials | None, name: str) -> str:
    """Register `name` and log in; the session token."""
    async with new_sender(addresses, leader, tls) as client:
        await client.register(name, PASSWORD, timeout_s=10)
        return await client.login(name, PASSWORD, timeout_s=10)


def _statuses(cluster: Cluster) -> dict[str, NodeStatus]:
    return {s.id: s for s in cluster.status(timeout_s=0.5)}


async def _caught_up(cluster: Cluster, timeout_s: float = 30.0) -> None:
    """Every node answers, at one applied index."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = _statuses(cluster)
        applied = {s.applied_index for s in statuses.values() if s.answered}
        if all(s.answered for s in statuses.values()) and len(applied) == 1:
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"the cluster did not catch up within {timeout_s:g} s")


async def _watch_election(
    addresses: dict[str, str],
    tls: Credentials | None,
    survivors: Sequence[str],
    old_leader: str,
) -> tuple[float, float]:
    """When a survivor first stops naming the old leader, and when a new leader answers."""
    t_detect: float | None = None
    while True:
        for node_id in survivors:
            async with client_channel(addresses[node_id], tls) as channel:
                try:
                    st = await pbg.ChatStub(channel).Status(pb.StatusRequest(), timeout=0.2)
                except grpc.aio.AioRpcError:
                    continue
            now = time.perf_counter()
            if t_detect is None and st.leader_id != old_leader:
                t_detect = now
            if st.role == pb.LEADER:
                return t_detect or now, now
        await asyncio.sleep(0.005)


async def failover(
    cluster: Cluster,
    addresses: dict[str, str],
    tls: Credentials | None,
    token: str,
    rounds: int,
    recording: Recording | None = None,
) -> dict[str, Any]:
    """SIGKILL the leader `rounds` times; from each kill until the next send commits. Kills and
    restarts are made here, on the main thread (spawning needs it: TRAPS, PR_SET_PDEATHSIG)."""
    totals: list[float] = []
    detect: list[float] = []
    elect: list[float] = []
    spans = recording.phase("failover") if recording is not None else None
    for _ in range(rounds):
        leader = cluster.wait_leader(LEADER_TIMEOUT_S)
        client = new_sender(addresses, leader, tls)
        await _timed(send(client, token), spans)  # warm: a connection to the leader
        survivors = [n for n in addresses if n != leader]
        t_kill = time.perf_counter()
        cluster.kill(leader)
        watcher = asyncio.create_task(_watch_election(addresses, tls, survivors, leader))
        await _timed(send(client, token), spans)
        t_commit = time.perf_counter()
        try:
            t_detect, t_elect = await asyncio.wait_for(watcher, 5)
            detect.append((t_detect - t_kill) * 1000)
            elect.append((t_elect - t_kill) * 1000)
        except TimeoutError:
            pass
        totals.append((t_commit - t_kill) * 1000)
        await client.close()
        cluster.start_node(leader)
        if recording is not None:  # down from the kill until it serves again
            recording.kills.append((leader, t_kill, t_commit, time.perf_counter()))
        await _caught_up(cluster)
    return {
        "failover_rounds": rounds,
        "failover_kill_to_commit": summary(totals),
        "failover_breakdown": {
            DETECTION: summary(detect),
            ELECTION: summary(elect),
            COMMIT: summary(totals),
        },
    }


async def _timed(call: Awaitable[object], spans: Spans | None) -> None:
    """Await call, appending its start and end to spans."""
    t0 = time.perf_counter()
    await call
    if spans is not None:
        spans.append((t0, time.perf_counter()))


async def cluster_figures(
    cluster: Cluster, settings: BenchSettings, recording: Recording | None = None
) -> dict[str, Any]:
    """The cluster's figures; with a recording, its sends, kills and role samples too (the
    recording's origin is now)."""
    if recording is None:
        return await _cluster_figures(cluster, settings, None)
    recording.origin = time.perf_counter()
    recording.sampler = RoleSampler(lambda: cluster.status(timeout_s=0.3), recording.now)
    try:
        with recording.sampler:
            return await _cluster_figures(cluster, settings, recording)
    finally:
        recording.ended_s = recording.now()


async def _cluster_figures(
    cluster: Cluster, settings: BenchSettings, recording: Recording | None
) -> dict[str, Any]:
    def spans(phase: str) -> Spans | None:
        return recording.phase(phase) if recording is not None else None

    leader = cluster.wait_leader(LEADER_TIMEOUT_S)
    addresses = Membership(cluster).client_addresses()  # the members, from Members
    tls = cluster.credentials
    token = await login(addresses, leader, tls, "bench")
    await login(addresses, leader, tls, "sink")
    one = new_sender(addresses, leader, tls)

    def sending(client: Sender) -> Callable[[], Awaitable[None]]:
        return lambda: send(client, token)

    warm_up = spans("warm-up")
    for _ in range(WARMUP_SENDS):
        await _timed(send(one, token), warm_up)
    lat = await latency(sending(one), settings.count, spans("latency"))
    senders = [new_sender(addresses, leader, tls) for _ in range(settings.inflight)]
    meter = CpuMeter(cluster.pids() | {"client": os.getpid()})
    meter.start()
    tput = await throughput(
        lambda k: sending(senders[k]), settings.inflight, settings.seconds, spans("throughput")
    )
    spent = meter.stop()
    loaded = _statuses(cluster)  # their event loops' lag over the window just ended
    result: dict[str, Any] = {
        "sends_per_s_1_sender": round(lat.calls_per_s),
        "send_p50_ms": lat.p50_ms,
        "send_p99_ms": lat.p99_ms,
        "sends_per_s_64_inflight": round(tput),
        "inflight": settings.inflight,
        "stability_seconds": settings.stability_s,
        "leader_changes_under_load": None,
        "cpu_ms_per_send": per_call(spent, round(tput * settings.seconds)),
        "loop_lag_ms": {
            s.id: {"p99": s.loop_lag_p99_ms, "max": s.loop_lag_max_ms}
            for s in loaded.values()
            if s.answered
        },
    }
    if settings.client_processes > 1:
        spec = LoadSpec(
            settings.inflight, settings.seconds, "x" * 100, addresses, leader, token, tls=tls
        )
        nodes = CpuMeter(cluster.pids())
        nodes.start()
        load = await asyncio.to_thread(run_processes, spec, settings.client_processes)
        spent = nodes.stop() | load.cpu_ms
        result["sends_per_s_inflight_processes"] = round(load.calls_per_s)
        result["cpu_ms_per_send_processes"] = per_call(spent, load.calls)
    if settings.stability_s > 0:
        before = _statuses(cluster)
        await throughput(
            lambda k: sending(senders[k]),
            settings.inflight,
            settings.stability_s,
            spans("stability"),
        )
        after = _statuses(cluster)
        terms_before = max(s.term or 0 for s in before.values())
        terms_after = max(s.term or 0 for s in after.values())
        result["leader_changes_under_load"] = terms_after - terms_before
    for client in [one, *senders]:
        await client.close()
    rounds = settings.failovers if cluster.size >= 3 else 0  # a kill must leave a majority
    if rounds > 0:
        result |= await failover(cluster, addresses, tls, token, rounds, recording)
    else:
        result |= {
            "failover_rounds": 0,
            "failover_kill_to_commit": {},
            "failover_breakdown": {DETECTION: {}, ELECTION: {}, COMMIT: {}},
        }
    return result


async def echo_figures(
    port: int, pid: int, settings: BenchSettings, tls: Credentials | None
) -> dict[str, Any]:
    """The echo server's figures, over the same TLS and channel options as the cluster's."""
    address = f"127.0.0.1:{port}"
    async with client_channel(address, tls) as channel:
        stub = pbg.ChatStub(channel)
        request = pb.SendRequest(token="t", recipient="sink", text="x" * 100)

        async def call() -> None:
            await stub.Send(request, timeout=SEND_TIMEOUT_S)

        for _ in range(WARMUP_SENDS):
            await call()
        lat = await latency(call, settings.count)
        meter = CpuMeter({"echo": pid, "client": os.getpid()})
        meter.start()
        tput = await throughput(lambda k: call, settings.inflight, settings.seconds)
        spent = meter.stop()
    result = {
        "echo_calls_per_s_1_sender": round(lat.calls_per_s),
        "echo_p50_ms": lat.p50_ms,
        "echo_p99_ms": lat.p99_ms,
        "echo_calls_per_s": round(tput),
        "echo_cpu_ms_per_call": per_call(spent, round(tput * settings.seconds)),
    }
    if settings.client_processes > 1:
        spec = LoadSpec(
            settings.inflight, settings.seconds, "x" * 100, echo_address=address, tls=tls
        )
        server = CpuMeter({"echo": pid})
        server.start()
        load = await asyncio.to_thread(run_processes, spec, settings.client_processes)
        result["echo_calls_per_s_processes"] = round(load.calls_per_s)
        result["echo_cpu_ms_per_call_processes"] = per_call(server.stop() | load.cpu_ms, load.calls)
    return result


# -- the run ---------------------------------------------------------------------------------


def bench_config(config: ClusterConfig, directory: Path) -> ClusterConfig:
    """The same cluster (nodes, ports, timings) with its data in `directory`, a key of its own,
    and a recipient queue long enough for the throughput windows."""
    return replace(
        config,
        data_dir=directory / "data",
        cluster_key_file=None,
        chat=replace(config.chat, queue_limit=BENCH_QUEUE_LIMIT),
    )


def _wait_echo(port: int, echo: subprocess.Popen[bytes], tls: Credentials | None) -> None:
    deadline = time.monotonic() + ECHO_START_TIMEOUT_S
    with secure_channel(f"127.0.0.1:{port}", tls, CLIENT_CHANNEL_OPTIONS) as channel:
        stub = pbg.ChatStub(channel)
        while True:
            try:
                stub.Status(pb.StatusRequest(), timeout=0.5)
                return
            except grpc.RpcError:
                if echo.poll() is not None:
                    raise BenchError(f"the echo server exited with {echo.returncode}") from None
                if time.monotonic() > deadline:
                    raise BenchError("the echo server did not answer in time") from None
                time.sleep(0.05)


def run_benchmark(
    config: ClusterConfig, settings: BenchSettings, recording: Recording | None = None
) -> dict[str, Any]:
    """Run the benchmark on the cluster of config (fresh data in a temporary directory, never
    its own data_dir) and an echo server beside it; the result document. With a recording, the
    cluster's sends, kills and role samples are recorded in it (for --report). Call it from the
    main thread."""
    result: dict[str, Any] = {
        "benchmark": "cluster",
        "python": platform.python_version(),
        "nodes": len(config.nodes),
        "fsync": True,
        "links": "proxied" if settings.links else "direct",
        "tls": "plaintext" if settings.plaintext or config.plaintext else "on",
        "cpus": os.cpu_count(),
        "quick": settings.quick,
    }
    with tempfile.TemporaryDirectory(prefix="chatbooth-bench-") as tmp:
        scratch = bench_config(config, Path(tmp))
        if settings.plaintext:
            scratch = replace(scratch, plaintext=True, tls_dir=None)
        with Cluster(scratch, fresh=True, links=settings.links) as cluster:  # starts it
            result |= asyncio.run(cluster_figures(cluster, settings, recording))
            tls = cluster.credentials
        time.sleep(0.3)  # the nodes' exit is not measured against the echo server
        echo_port = free_port({p for n in config.nodes for p in (n.port, n.peer_port)})
        command = [sys.executable, "-m", "benchmarks.echo_server", str(echo_port)]
        if tls is not None:  # the same TLS: a certificate of the cluster's CA
            echo_tls = Path(tmp) / "echo-tls"
            issue(scratch, "echo", ["127.0.0.1"], echo_tls)
            command.append(str(echo_tls))
        echo = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)
        try:
            _wait_echo(echo_port, echo, tls)
            result |= asyncio.run(echo_figures(echo_port, echo.pid, settings, tls))
            result["echo_tls"] = tls is not None
        finally:
            echo.terminate()
            try:
                echo.wait(10)
            except subprocess.TimeoutExpired:
                echo.kill()
                echo.wait()
    result["latency_p50_vs_echo"] = ratio(result["send_p50_ms"], result["echo_p50_ms"], 2)
    result["latency_p99_vs_echo"] = ratio(result["send_p99_ms"], result["echo_p99_ms"], 2)
    result["throughput_1_sender_vs_echo"] = ratio(
        result["sends_per_s_1_sender"], result["echo_calls_per_s_1_sender"]
    )
    result["throughput_vs_echo"] = ratio(
        result["sends_per_s_64_inflight"], result["echo_calls_per_s"]
    )
    if settings.client_processes > 1:
        result["throughput_vs_echo_processes"] = ratio(
            result["sends_per_s_inflight_processes"], result["echo_calls_per_s_processes"]
        )
    return {key: result[key] for key in EXPECTED_KEYS} | result


# -- the table -------------------------------------------------------------------------------


def _cell(value: object, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:g}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def render_table(result: dict[str, Any]) -> str:
    """The result for people."""
    head = (
        f"chatbooth cluster benchmark: {result['nodes']} nodes, {result['links']} links, "
        f"TLS {result.get('tls', 'on')}, fsync on; Python {result['python']}, {result['cpus']} CPUs"
        + (" (--quick: small counts)" if result.get("quick") else "")
    )
    inflight = result.get("inflight", 64)
    rows: list[tuple[str, str, str, str]] = [
        ("", "cluster", "echo", "cluster/echo"),
        (
            "sends/s, 1 sender",
            _cell(result["sends_per_s_1_sender"]),
            _cell(result["echo_calls_per_s_1_sender"]),
            _cell(result["throughput_1_sender_vs_echo"]),
        ),
        (
            f"sends/s, {inflight} in flight",
            _cell(result["sends_per_s_64_inflight"]),
            _cell(result["echo_calls_per_s"]),
            _cell(result["throughput_vs_echo"]),
        ),
        (
            "latency p50, 1 sender",
            _cell(result["send_p50_ms"], " ms"),
            _cell(result["echo_p50_ms"], " ms"),
            _cell(result["latency_p50_vs_echo"]),
        ),
        (
            "latency p99, 1 sender",
            _cell(result["send_p99_ms"], " ms"),
            _cell(result["echo_p99_ms"], " ms"),
            _cell(result["latency_p99_vs_echo"]),
        ),
    ]
    processes = result.get("sends_per_s_inflight_processes")
    if processes is not None:
        rows.append(
            (
                f"sends/s, {inflight} in flight from client processes",
                _cell(processes),
                _cell(result.get("echo_calls_per_s_processes")),
                _cell(result.get("throughput_vs_echo_processes")),
            )
        )
    lines = [head, "", *_columns(rows), ""]
    for label, key in (
        (f"CPU ms per send, {inflight} in flight", "cpu_ms_per_send"),
        ("  from client processes", "cpu_ms_per_send_processes"),
        ("CPU ms per echo call", "echo_cpu_ms_per_call"),
        ("  from client processes", "echo_cpu_ms_per_call_processes"),
    ):
        figures = result.get(key)
        if figures:
            lines.append(f"{label}: " + ", ".join(f"{n} {v:g}" for n, v in figures.items()))
    lags = result.get("loop_lag_ms") or {}
    if lags:
        lines.append(
            "event loop lag under load, p99 / max: "
            + ", ".join(f"{n} {v['p99']:g} / {v['max']:g} ms" for n, v in lags.items())
        )
    rounds = result.get("failover_rounds", 0)
    lines.append("")
    if rounds:
        lines.append(f"failover, {rounds} leader SIGKILLs: time from the kill until")
        breakdown = result["failover_breakdown"]
        frows: list[tuple[str, str, str, str]] = [("", "median", "p90", "max")]
        for label, key in (
            ("a survivor drops the old leader", DETECTION),
            ("a new leader answers", ELECTION),
            ("the next send commits", COMMIT),
        ):
            figures = breakdown.get(key) or {}
            frows.append(
                (
                    "  " + label,
                    _cell(figures.get("median_ms"), " ms"),
                    _cell(figures.get("p90_ms"), " ms"),
                    _cell(figures.get("max_ms"), " ms"),
                )
            )
        lines += _columns(frows)
    else:
        lines.append("failover: not measured (0 rounds, or fewer than 3 nodes)")
    changes = result.get("leader_changes_under_load")
    if changes is None:
        lines.append("stability: not measured (no stability window)")
    else:
        lines.append(
            f"stability: {changes} leader change{'s' if changes != 1 else ''} (term increases) "
            f"in {_cell(result['stability_seconds'])} s of full load without faults"
        )
    return "\n".join(lines)


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


# -- the command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    """The benchmark's options (`config`: the positional cluster.yaml)."""
    if config:
        parser.add_argument("config", type=Path, help="cluster.yaml (its data is not touched)")
        parser.add_argument(
            "--scale",
            type=int,
            metavar="N",
            help="instead: fill the cluster with N messages and measure it at that size "
            "(benchmarks/scale.py; JSON; with --quick, its quick form)",
        )
        parser.add_argument(
            "--report",
            type=Path,
            metavar="DIR",
            help="also write DIR/report.html: every send over time, the failovers' kills, "
            "roles and terms, the figures (one self-contained file)",
        )
    defaults = BenchSettings()
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small counts for a first look or a test ({QUICK.failovers} failovers, "
        "1 s windows, no stability window); explicit options still win",
    )
    parser.add_argument("--count", type=int, help=f"sequential sends (default {defaults.count})")
    parser.add_argument("--inflight", type=int, help=f"default {defaults.inflight}")
    parser.add_argument(
        "--seconds", type=float, help=f"each throughput window (default {defaults.seconds:g})"
    )
    parser.add_argument(
        "--failovers", type=int, help=f"leader kills (default {defaults.failovers})"
    )
    parser.add_argument(
        "--stability-s",
        type=float,
        help=f"seconds of load counting leader changes (default {defaults.stability_s:g})",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        metavar="N",
        help="also drive the in-flight window from N client processes (default 1: one, the "
        "bench itself)",
    )
    parser.add_argument("--links", action="store_true", help="node traffic through the proxies")
    parser.add_argument(
        "--plaintext",
        action="store_true",
        help="run the cluster with `tls: plaintext` (to measure what TLS costs)",
    )


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """BenchSettings from parsed options; ValueError for a count out of range."""
    base = QUICK if args.quick else BenchSettings()
    chosen: dict[str, Any] = {"links": bool(args.links), "plaintext": bool(args.plaintext)}
    for name in ("count", "inflight", "seconds", "failovers", "stability_s", "client_processes"):
        value = getattr(args, name)
        if value is not None:
            chosen[name] = value
    settings = replace(base, **chosen)
    if settings.count < 1 or settings.inflight < 1 or settings.seconds <= 0:
        raise ValueError("--count and --inflight must be at least 1, --seconds more than 0")
    if settings.client_processes < 1 or settings.client_processes > settings.inflight:
        raise ValueError("--client-processes must be from 1 to --inflight")
    if settings.failovers < 0 or settings.stability_s < 0:
        raise ValueError("--failovers and --stability-s must not be negative")
    return settings


def run_command(args: argparse.Namespace) -> int:
    """`python -m supervisor bench`: 0 done, 1 the benchmark failed, 2 bad usage or config."""
    report = getattr(args, "report", None)
    if getattr(args, "scale", None) is not None:
        if report is not None:
            print("bench: --report does not apply to --scale (JSON only)", file=sys.stderr)
            return 2
        return run_scale(args)
    try:
        settings = settings_from(args)
        config = load_config(args.config)  # a bad file is a clear error before anything starts
        if report is not None:
            prepare_report_dir(report)
    except (ValueError, ConfigError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    except ReportError as error:
        print(f"bench: --report: {error}", file=sys.stderr)
        return 2
    recording = Recording() if report is not None else None
    started = datetime.datetime.now().astimezone()
    if not args.json:
        print(
            f"bench: measuring the cluster of {args.config} (data in a temporary directory)"
            + (" with --quick counts" if settings.quick else "; this takes a few minutes"),
            file=sys.stderr,
            flush=True,
        )
    try:
        result = run_benchmark(config, settings, recording)
    except (ConfigError, PortInUseError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    except (BenchError, SupervisorError, grpc.RpcError, OSError) as error:
        print(f"bench: failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else render_table(result), flush=True)
    if report is not None and recording is not None:
        try:
            path = write_bench_report(report, config, settings, result, recording, started)
        except ReportError as error:
            print(f"bench: --report: {error}", file=sys.stderr)
            return 1
        # With --json, stdout is the document alone.
        print(describe_written(path), file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0


def write_bench_report(
    directory: Path,
    config: ClusterConfig,
    settings: BenchSettings,
    result: dict[str, Any],
    recording: Recording,
    started: datetime.datetime,
) -> Path:
    """DIR/report.html of a bench run: its sends, kills and role samples, the figures table."""
    params = {
        "cluster": f"{config.path} ({len(config.nodes)} nodes: {', '.join(config.node_ids)})",
        "duration": f"{recording.ended_s:.1f} s of the cluster's figures (the echo server's "
        "run not shown)",
        "nemesis": f"failover: {result['failover_rounds']} leader SIGKILLs",
        "settings": (
            f"{settings.count} sequential sends, {settings.inflight} in flight for "
            f"{settings.seconds:g} s, stability window {settings.stability_s:g} s"
            + (" (--quick)" if settings.quick else "")
        ),
        "links": result["links"],
        "tls": result.get("tls", "on"),
        "started": started.isoformat(timespec="seconds"),
    }
    roles = recording.sampler.samples if recording.sampler is not None else []
    return write_report(
        directory,
        f"chatbooth bench: {len(config.nodes)} nodes" + (" (--quick)" if settings.quick else ""),
        params,
        recording.operations(),
        recording.faults(),
        roles,
        figures=render_table(result),
    )


def run_scale(args: argparse.Namespace) -> int:
    """`bench CONFIG --scale N`: benchmarks/scale.py on CONFIG's cluster (moved to free ports
    and a temporary directory), in a child process; its JSON on stdout, its exit status."""
    if args.scale < 1:
        print(f"bench: --scale must be positive (got {args.scale})", file=sys.stderr)
        return 2
    try:
        load_config(args.config)  # a bad file is a clear error before anything starts
    except ConfigError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "benchmarks.scale", "--messages", str(args.scale)]
    command += ["--config", str(args.config.resolve())] + (["--quick"] if args.quick else [])
    return subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, check=False).returncode
