"""`python -m supervisor up` with real nodes: every REPL command through the plain mode with
its effect on the cluster checked from outside; no orphans when the supervisor itself is
SIGKILLed with a node paused; a node that dies on its own is announced; and the interactive
REPL in a real terminal (tmux) with completion, the live toolbar and red errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.config import load_config
from supervisor.repl import prompt
from tests.conftest import peer_channel_sync
from tests.supervisor.conftest import (
    ROOT,
    Supervisor,
    assert_gone,
    needs_real_node,
    poll,
    write_config,
)

pytestmark = [pytest.mark.cluster, needs_real_node]


class Session:
    """A supervisor in plain mode with a pipe for stdin: one command at a time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.pids = supervisor.wait_up(45)
        # The REPL reads commands (and so announces exits) once it answers one.
        supervisor.command("help quit", r"^quit$")

    def run(self, command: str, expect: str, timeout_s: float = 20.0) -> str:
        """Send a command; the first line of its output that matches expect."""
        return self.supervisor.command(command, expect, timeout_s)

    def status(self) -> dict[str, Any]:
        line = self.run("status --json", r"^\{")
        document: dict[str, Any] = json.loads(line)
        return document

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.status()["nodes"] if n["id"] == node_id)

    def poll_status(self, condition: Callable[[dict[str, Any]], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not condition(self.status()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within 20 s")
            time.sleep(0.1)


@pytest.fixture
def session(tmp_path: Path, supervisors: Callable[..., Supervisor]) -> Iterator[Session]:
    yield Session(supervisors(write_config(tmp_path), real=True))


def health_rtt_s(config: Path, node_id: str, address: str) -> float:
    """Median health round trip to node_id's peer port at address (a link proxy's)."""
    with peer_channel_sync(config, node_id, address=address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        samples = []
        for _ in range(3):
            started = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def test_process_commands_and_their_effects(session: Session) -> None:
    pids = session.pids
    assert session.status()["leader"] == "a"  # the configured leader, started first
    session.run("kill b", rf"^killed b \(pid {pids['b']}\)")
    assert not psutil.pid_exists(pids["b"])
    assert session.node("b")["process"] == "down"
    session.run("start b", r"^started b \(pid \d+\), serving")
    new_b = session.node("b")["pid"]
    assert new_b != pids["b"] and psutil.Process(new_b).is_running()

    session.run("pause c", "^paused c")
    assert psutil.Process(pids["c"]).status() == psutil.STATUS_STOPPED
    assert session.node("c")["process"] == "paused"
    session.run("wait leader 10", r"^leader: a")  # a and b are a majority
    session.run("resume c", "^resumed c")
    assert psutil.Process(pids["c"]).status() != psutil.STATUS_STOPPED
    session.poll_status(lambda s: all(n["role"] for n in s["nodes"]), "every node answering")

    session.run("stop b", r"^stopped b \(pid \d+\): exit code 0 \(stopped cleanly\)")
    assert not psutil.pid_exists(new_b)
    session.run("restart b", r"^started b \(pid \d+\)")
    newest_b = session.node("b")["pid"]
    session.run("restart b", r"^started b \(pid \d+\)")  # a running node: stopped first
    assert not psutil.pid_exists(newest_b)

    session.run("logs b 3", r"^\d{4}-\d\d-\d\d .* b ")  # the node's own log lines
    session.run("logs z", r"^error: no node 'z'")
    session.run("kill", r"^error: name a node")
    session.run("help", r"^  status \[--json\]")
    session.run("help slow", r"^slow N MS")
    last_b = session.node("b")["pid"]
    echoed = re.escape(session.supervisor.prompt)
    session.run("sleep 0.1", rf"^{echoed}sleep 0\.1$")  # prints nothing but its echo
    session.supervisor.send("quit")
    assert session.supervisor.wait() == 1  # two commands failed on purpose
    assert_gone([*pids.values(), new_b, newest_b, last_b], 1)


def test_network_commands_and_their_effects(session: Session) -> None:
    pids = session.pids
    a_peers = psutil.Process(pids["a"]).cmdline()
    proxy_a_to_b = next(arg.split("=", 1)[1] for arg in a_peers if arg.startswith("b="))

    session.run("partition a | b,c", r"^partition a \| b,c")
    # The majority elects a leader of its own; the cut-off leader steps down.
    session.poll_status(
        lambda s: (
            s["leader"] in ("b", "c")
            and next(n for n in s["nodes"] if n["id"] == "a")["role"] != "leader"
        ),
        "a new leader on the majority side, and a stepping down",
    )
    groups = {n["id"]: n["group"] for n in session.status()["nodes"]}
    assert groups == {"a": 1, "b": 2, "c": 2}
    session.run("leader", r"^leader: [bc] \(term \d+")
    session.run("heal", "^healed")
    session.poll_status(
        lambda s: s["leader"] is not None and all(n["leader"] == s["leader"] for n in s["nodes"]),
        "every node following one leader after heal",
    )
    session.run("wait leader 10", r"^leader: \w")

    leader = session.status()["leader"]
    session.run(f"isolate {leader}", rf"^partition {leader} \| ")
    # Right after the cut the majority still names the old leader, until its election timeout.
    session.run("sleep 1.5", rf"^{re.escape(session.supervisor.prompt)}sleep 1\.5$")
    line = session.run("wait leader 10", r"^leader: \w")
    assert not line.startswith(f"leader: {leader} ")
    session.run("heal", "^healed")

    plain = health_rtt_s(session.supervisor.config, "b", proxy_a_to_b)
    session.run("slow b 100", r"^b: \+100 ms each way")
    assert (
        health_rtt_s(session.supervisor.config, "b", proxy_a_to_b) - plain >= 0.19
    )  # 100 ms each way
    assert session.node("b")["slow_ms"] == 100
    session.run("slow b 0", r"^b: no added latency")
    assert health_rtt_s(session.supervisor.config, "b", proxy_a_to_b) < 0.1
    session.run("partition a,x | b", r"^error: no node 'x'")
    session.supervisor.close_stdin()  # EOF ends the session like quit
    assert session.supervisor.wait() == 1
    assert_gone(list(pids.values()), 1)


def test_a_node_dying_on_its_own_is_announced(session: Session) -> None:
    pid = session.pids["c"]
    os.kill(pid, signal.SIGKILL)  # not the supervisor's doing
    line = session.supervisor.expect(r"^!! node c", 10)
    assert f"node c (pid {pid}) exited on its own: killed by SIGKILL" in line
    assert "last lines of" in line and "node.log" in line
    session.supervisor.expect(r"^    .*c", 5)  # its log lines follow
    assert session.node("c")["last_exit"] == "killed by SIGKILL"
    session.run("start c", r"^started c")
    session.supervisor.close_stdin()
    assert session.supervisor.wait() == 0


@pytest.mark.parametrize("mode", ["plain", "no-repl"])
def test_no_orphans_when_the_supervisor_is_sigkilled_with_a_node_paused(
    tmp_path: Path, supervisors: Callable[..., Supervisor], mode: str
) -> None:
    config = write_config(tmp_path)
    if mode == "plain":
        supervisor = supervisors(config, real=True)
        pids = supervisor.wait_up(45)
        supervisor.send("pause b")
        supervisor.expect("^paused b")
    else:
        supervisor = supervisors(config, "--no-repl", real=True, stdin=subprocess.DEVNULL)
        pids = supervisor.wait_up(45)
        psutil.Process(pids["b"]).suspend()
    poll(lambda: psutil.Process(pids["b"]).status() == psutil.STATUS_STOPPED, 5, "b to be paused")
    supervisor.proc.send_signal(signal.SIGKILL)
    supervisor.proc.wait(10)
    assert_gone(list(pids.values()), 5)  # PR_SET_PDEATHSIG: SIGKILL reaches a paused node too


# -- the interactive REPL in a real terminal ----------------------------------------------------


class Tmux:
    """One tmux server of our own (its socket in tmp_path) running one command in a pane."""

    def __init__(self, tmp_path: Path, command: list[str], env: dict[str, str]) -> None:
        self.socket = tmp_path / "tmux.sock"
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        self.tmux("new-session", "-d", "-x", "160", "-y", "40", "-s", "t", "-c", str(ROOT))
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on")
        self.tmux("respawn-pane", "-k", "-t", "t", *env_args, "--", *command)
        self.server_pid = int(self.tmux("display-message", "-p", "-t", "t", "#{pid}"))
        self.pane_pid = int(self.tmux("display-message", "-p", "-t", "t", "#{pane_pid}"))

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return result.stdout.strip()

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)

    def screen(self, colors: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if colors else []), "-t", "t")

    def wait_for(self, pattern: str, timeout_s: float = 20.0, colors: bool = False) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen(colors)
            if re.search(pattern, screen, re.MULTILINE):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the screen:\n{screen}")
            time.sleep(0.1)

    def pane_dead(self) -> bool:
        return self.tmux("display-message", "-p", "-t", "t", "#{pane_dead}") == "1"

    def close(self) -> None:
        with _quiet():
            self.tmux("kill-server")
        for pid in (self.pane_pid, self.server_pid):
            with _quiet():
                os.kill(pid, signal.SIGKILL)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, traceback: object) -> bool:
        return isinstance(value, (OSError, subprocess.SubprocessError))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize(
    "cpr",
    [
        pytest.param(False, id="no-cpr-ctrl-d"),
        pytest.param(True, id="cpr-ctrl-c-during-a-command"),
    ],
)
def test_interactive_repl_in_a_terminal(tmp_path: Path, cpr: bool) -> None:
    """With PROMPT_TOOLKIT_NO_CPR=1 (TRAPS) prompt_toolkit never learns how many rows lie below
    the cursor, and it then hides the bottom toolbar by design; tmux is a real terminal that
    answers cursor position requests, so the second run leaves CPR on to see the toolbar."""
    config = write_config(tmp_path)
    shown = re.escape(prompt(load_config(config).cluster))  # `cluster test> `, escaped
    env = {"TERM": "xterm-256color"}
    if not cpr:
        env["PROMPT_TOOLKIT_NO_CPR"] = "1"
    tmux = Tmux(tmp_path, [sys.executable, "-m", "supervisor", "up", str(config)], env)
    pids: list[int] = []
    try:
        # The screen drops the prompt's trailing space.
        tmux.wait_for(rf"^{re.escape(prompt(load_config(config).cluster).rstrip())}", 45)
        pids = [c.pid for c in psutil.Process(tmux.pane_pid).children()]
        assert len(pids) == 3
        if cpr:  # the toolbar: every node with its role and process state, live
            tmux.wait_for(r" a leader up .* b follower up .* c follower up")

        # Completion of commands, then of node ids.
        tmux.type("pa")
        screen = tmux.wait_for(r"partition")
        assert "pause" in screen
        tmux.keys("C-u")
        tmux.type("kill ")
        tmux.wait_for(r"^\s+a\s*$")
        tmux.keys("C-u")
        tmux.type("pau")
        tmux.wait_for(r"pause\s+SIGSTOP")  # completions ready: Tab must not race them
        tmux.keys("Tab")
        tmux.wait_for(rf"{shown}pause")
        tmux.type(" c")
        tmux.keys("Enter")
        tmux.wait_for(r"^paused c")
        assert psutil.Process(pids[2]).status() == psutil.STATUS_STOPPED
        if cpr:
            tmux.wait_for(r" c - paused")  # the toolbar follows

        tmux.type("partition a | b,c")
        tmux.keys("Enter")
        tmux.wait_for(r"^partition a \| b,c")
        if cpr:
            tmux.wait_for(r" a \S+ up \[1\] .* b \S+ up \[2\] .*partition a \| b,c")

        # A wrong node id: what was wrong and the usage, in red; the REPL carries on.
        tmux.type("kill z")
        tmux.keys("Enter")
        screen = tmux.wait_for(r"no node 'z' \(nodes are a, b, c\)", colors=True)
        assert re.search(r"\x1b\[(\d+;)*31m[^\n]*no node 'z'", screen), screen
        tmux.wait_for(r"usage: kill N")
        tmux.type("status")
        tmux.keys("Enter")
        tmux.wait_for(r"^c\s+\d+\s+paused")

        if not cpr:
            tmux.keys("C-d")  # at an empty prompt: the end
        else:
            tmux.type("sleep 60")
            tmux.keys("Enter")
            tmux.wait_for(rf"{shown}sleep 60")
            time.sleep(0.3)
            tmux.keys("C-c")  # while a command runs
        poll(tmux.pane_dead, 20, "the supervisor to exit")
        assert_gone(pids, 5)  # c was paused: stopped all the same
        history = (tmp_path / "data" / ".supervisor_history").read_text()
        assert "pause c" in history and "partition a | b,c" in history
    finally:
        tmux.close()
        for pid in pids:
            with _quiet():
                os.kill(pid, signal.SIGKILL)
