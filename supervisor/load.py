"""Load for `supervisor bench` from several client processes, and what each process spent.

One Python client process saturates near the echo server's rate (it spends about 0.3 ms of CPU
per call), so `bench --client-processes N` also drives its 64-in-flight window from N child
processes, each with its share of the senders, all starting at one moment; the figure is the
sends every process completed in the window. `CpuMeter` reads the CPU time (user + system,
psutil) of each process of interest across a window, so a figure can be put as CPU
milliseconds per send, per process: the primary figure on a 2-core machine, where every process
competes with the client for the same cores.

The children are started with multiprocessing's spawn context (a fresh interpreter: no gRPC
state inherited across fork) and are ended by the parent whatever happens.

A library module: imports the supervisor's certs and sender, grpc and protos.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import psutil

from protos import chat_pb2 as pb
from protos import chat_pb2_grpc as pbg
from supervisor.certs import Credentials
from supervisor.errors import SupervisorError
from supervisor.sender import Sender, client_channel

START_MARGIN_S: Final = 3.0  # children start this long after they are spawned (an import)
RESULT_GRACE_S: Final = 30.0


class LoadError(SupervisorError):
    """A load process failed or did not report."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What one load process sends, for how long (pickled to a child)."""

    inflight: int
    seconds: float
    text: str
    # The cluster: its client addresses, the leader, and a logged-in session's token.
    addresses: Mapping[str, str] | None = None
    leader: str = ""
    token: str = ""
    # Or the echo server at this address.
    echo_address: str = ""
    tls: Credentials | None = None
    call_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LoadResult:
    calls: int  # completed in the window, by every process
    seconds: float  # the window
    cpu_ms: dict[str, float]  # CPU time each load process spent in the window

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0


class CpuMeter:
    """CPU time (user + system) of named processes between start() and stop()."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._started: dict[str, float] = {}
        self.spent_ms: dict[str, float] = {}

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self._started = {n: self._cpu(p) for n, p in self._processes.items()}

    def stop(self) -> dict[str, float]:
        for name, process in self._processes.items():
            try:
                self.spent_ms[name] = (self._cpu(process) - self._started[name]) * 1000
            except psutil.Error:  # it ended in the window (a failover's kill)
                continue
        return self.spent_ms


def per_call(spent_ms: Mapping[str, float], calls: int) -> dict[str, float]:
    """CPU ms per call for each process; {} when nothing was completed."""
    if calls <= 0:
        return {}
    return {name: round(ms / calls, 3) for name, ms in spent_ms.items()}


def run_processes(spec: LoadSpec, processes: int) -> LoadResult:
    """spec's load split across `processes` children (each with its share of the in-flight
    calls), all starting together; blocks until they report."""
    if processes < 1:
        raise LoadError(f"at least one load process is needed, not {processes}")
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[int, int, float, float]] = context.Queue()
    start_at = time.time() + START_MARGIN_S
    shares = [
        spec.inflight // processes + (k < spec.inflight % processes) for k in range(processes)
    ]
    children = [
        context.Process(
            target=_child,
            args=(k, _with_inflight(spec, share), start_at, results),
            name=f"bench-load-{k}",
            daemon=True,
        )
        for k, share in enumerate(shares)
        if share > 0
    ]
    for child in children:
        child.start()
    try:
        reported: list[tuple[int, int, float, float]] = []
        deadline = start_at + spec.seconds + RESULT_GRACE_S
        while len(reported) < len(children):
            try:
                reported.append(results.get(timeout=max(0.1, deadline - time.time())))
            except queue.Empty:
                raise LoadError(
                    f"{len(children) - len(reported)} of {len(children)} load processes did "
                    "not report"
                ) from None
        failed = [k for k, calls, _, _ in reported if calls < 0]
        if failed:
            raise LoadError(f"load process {failed[0]} failed (its error is on stderr)")
        return LoadResult(
            calls=sum(calls for _, calls, _, _ in reported),
            seconds=max(elapsed for _, _, _, elapsed in reported),
            cpu_ms={f"load-{k}": round(ms, 1) for k, _, ms, _ in sorted(reported)},
        )
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()


def _with_inflight(spec: LoadSpec, inflight: int) -> LoadSpec:
    return LoadSpec(
        inflight,
        spec.seconds,
        spec.text,
        spec.addresses,
        spec.leader,
        spec.token,
        spec.echo_address,
        spec.tls,
        spec.call_timeout_s,
    )


def _child(
    index: int, spec: LoadSpec, start_at: float, results: multiprocessing.Queue[Any]
) -> None:
    """One load process: (index, calls completed or -1, CPU ms spent in the window, the
    window's length in seconds)."""
    try:
        calls, cpu_ms, elapsed = asyncio.run(_load(spec, start_at))
    except Exception as error:
        print(f"bench load process {index}: {type(error).__name__}: {error}", file=sys.stderr)
        results.put((index, -1, 0.0, 0.0))
        return
    results.put((index, calls, cpu_ms, elapsed))


Call = Callable[[], Awaitable[object]]
if TYPE_CHECKING:
    Stub = pbg.ChatAsyncStub


def _echo_call(stub: Stub, request: pb.SendRequest, timeout_s: float) -> Call:
    async def call() -> object:
        return await stub.Send(request, timeout=timeout_s)

    return call


def _send_call(sender: Sender, token: str, text: str) -> Call:
    async def call() -> object:
        return await sender.send(token, "sink", text, timeout_s=30.0)

    return call


async def _load(spec: LoadSpec, start_at: float) -> tuple[int, float, float]:
    done = 0
    me = psutil.Process()
    calls: list[Call]
    closers: list[Callable[[], Awaitable[object]]]
    if spec.echo_address:
        channel = client_channel(spec.echo_address, spec.tls)
        stub = pbg.ChatStub(channel)
        request = pb.SendRequest(token="t", recipient="sink", text=spec.text)
        calls = [_echo_call(stub, request, spec.call_timeout_s) for _ in range(spec.inflight)]
        closers = [lambda: channel.close()]
    else:
        assert spec.addresses is not None
        senders = [
            Sender(
                dict(spec.addresses),
                leader=spec.leader,
                call_timeout_s=spec.call_timeout_s,
                tls=spec.tls,
            )
            for _ in range(spec.inflight)
        ]
        calls = [_send_call(sender, spec.token, spec.text) for sender in senders]
        closers = [sender.close for sender in senders]
    try:
        for call in calls[:2]:  # connected before the window opens
            await call()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        before = me.cpu_times()
        opened = time.perf_counter()
        stop_at = opened + spec.seconds

        async def worker(call: Call) -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await call()
                done += 1

        await asyncio.gather(*(worker(call) for call in calls))
        after = me.cpu_times()
        elapsed = time.perf_counter() - opened
    finally:
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
    spent = (after.user + after.system) - (before.user + before.system)
    return done, spent * 1000, elapsed
