"""Fixtures for the supervisor tests: a cluster.yaml on free ports in tmp_path, clusters of
fake or real nodes, and the supervisor itself as a subprocess, every process stopped by PID at
the end and checked gone."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from node.config import load_config
from supervisor.cluster import Cluster
from supervisor.repl import prompt
from tests.conftest import write_cluster_yaml
from tests.supervisor.fake_supervisor import FAKE_NODE

ROOT = Path(__file__).resolve().parents[2]
REAL_NODE_EXISTS = (ROOT / "node" / "__main__.py").exists()

needs_real_node = pytest.mark.skipif(
    not REAL_NODE_EXISTS, reason="node/__main__.py (the real node) is not written yet"
)


def write_config(
    directory: Path,
    ids: str = "abc",
    *,
    leader: str | None = "a",
    key: bool = False,
    extra: str = "",
) -> Path:
    """The shared cluster.yaml writer, with the timings these tests were written for."""
    raft = "raft:\n  heartbeat_ms: 50\n  election_timeout_ms: [300, 600]\n"
    return write_cluster_yaml(directory, ids, leader=leader, key=key, extra=raft + extra)


def node_children() -> list[psutil.Process]:
    """This test process's children that are nodes (or fake nodes): not, say, the resource
    tracker a multiprocessing pool of an earlier test left running."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "-m node" in cmdline or "fake_node" in cmdline:
            found.append(child)
    return found


def assert_gone(pids: list[int], timeout_s: float = 5.0) -> None:
    """Every pid has exited (and is not a zombie) within timeout_s."""
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive:
        alive = [p for p in alive if _alive(p)]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still alive after {timeout_s} s: {alive}")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def poll(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.02)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def _cluster(config: Path, node_command: list[str] | None) -> Iterator[Cluster]:
    cluster = Cluster(config, node_command=node_command, stop_grace_s=3.0)
    cluster.start()
    seen: set[int] = set(cluster.pids().values())
    try:
        yield cluster
        seen |= set(cluster.pids().values())
    finally:
        seen |= set(cluster.pids().values()) if not cluster.closed else set()
        cluster.close()
        assert_gone(sorted(seen))


@pytest.fixture
def fake_cluster(config: Path) -> Iterator[Cluster]:
    """A started 3-node cluster of fake nodes (fast)."""
    yield from _cluster(config, FAKE_NODE)


@pytest.fixture
def real_cluster(config: Path) -> Iterator[Cluster]:
    """A started 3-node cluster of real nodes."""
    if not REAL_NODE_EXISTS:
        pytest.skip("node/__main__.py (the real node) is not written yet")
    yield from _cluster(config, None)


class Supervisor:
    """`python -m supervisor up ...` as a subprocess (with fake nodes unless real=True), its
    stdin a pipe the test writes commands to, its output read by threads."""

    def __init__(
        self,
        config: Path,
        *args: str,
        real: bool = False,
        stdin: int | None = subprocess.PIPE,
    ) -> None:
        module = "supervisor" if real else "tests.supervisor.fake_supervisor"
        self.config = config
        self.prompt = prompt(load_config(config).cluster)  # what each echoed command follows
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "up", str(config), *args],
            cwd=ROOT,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.lines: list[str] = []  # stdout and stderr, in the order read
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.node_pids: set[int] = set()
        for name, stream, sink in (
            ("out", self.proc.stdout, self.out),
            ("err", self.proc.stderr, self.err),
        ):
            threading.Thread(target=self._read, args=(name, stream, sink), daemon=True).start()

    def _read(self, name: str, stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line.rstrip("\n"))
            self.lines.append(line.rstrip("\n"))
            self._lines.put((name, line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(self.out) + "\n" + "\n".join(self.err)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout_s: float = 20.0, stream: str | None = None) -> str:
        """Wait for a line (on stdout or stderr, or the one named) matching pattern."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output}")
            try:
                name, line = self._lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self._lines.empty():
                    time.sleep(0.1)
                    if self._lines.empty():
                        raise AssertionError(
                            f"exited ({self.proc.returncode}) before {pattern!r}:\n{self.output}"
                        ) from None
                continue
            if (stream is None or name == stream) and regex.search(line):
                return line

    def command(self, command: str, expect: str, timeout_s: float = 20.0) -> str:
        """Send a command; wait for its echo and for a line matching expect, in either order
        (stdout and stderr are separate pipes); that line."""
        start = len(self.lines)
        self.send(command)
        echo = f"{self.prompt}{command}"
        regex = re.compile(expect)
        deadline = time.monotonic() + timeout_s
        while True:
            lines = self.lines[start:]
            if echo in lines:
                found = [line for line in lines if regex.search(line)]
                if found:
                    return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r}: no {expect!r}; output:\n{self.output}")
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers catch up, then look once more
                if not [line for line in self.lines[start:] if regex.search(line)]:
                    raise AssertionError(f"exited during {command!r}:\n{self.output}")
            time.sleep(0.01)

    def wait_up(self, timeout_s: float = 30.0) -> dict[str, int]:
        """Wait until the cluster is up; the node PIDs (from the supervisor's children)."""
        line = self.expect(r"is up: ", timeout_s)
        pids = {m[0]: int(m[1]) for m in re.findall(r"(\w+) pid (\d+)", line)}
        self.node_pids |= set(pids.values())
        return pids

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self, timeout_s: float = 30.0) -> int:
        self.close_stdin()
        return self.proc.wait(timeout=timeout_s)

    def cleanup(self) -> None:
        """Stop the supervisor and every node it started, by PID."""
        if self.proc.poll() is None:
            with _suppress():
                self.node_pids |= {c.pid for c in psutil.Process(self.proc.pid).children()}
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for pid in self.node_pids:
            with _suppress():
                os.kill(pid, signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with _suppress():
                    stream.close()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, traceback: object) -> bool:
        return isinstance(value, (ProcessLookupError, psutil.Error, OSError, ValueError))


@pytest.fixture
def supervisors() -> Iterator[Callable[..., Supervisor]]:
    """Start supervisors as subprocesses; every one (and its nodes) killed by PID at the end."""
    started: list[Supervisor] = []

    def start(config: Path, *args: str, **kwargs: object) -> Supervisor:
        supervisor = Supervisor(config, *args, **kwargs)  # type: ignore[arg-type]
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.cleanup()
    assert_gone(sorted(p for s in started for p in s.node_pids))
