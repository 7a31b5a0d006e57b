"""supervisor/processes.py: spawn with stdin from /dev/null and output appended to node.log;
kill, stop (SIGTERM, SIGCONT, grace, SIGKILL), pause and resume by PID; every child reaped; an
exit on its own noticed at once with its code and log tail. Small shell scripts stand in for
nodes (the flags a node takes are the cluster's business, tested there)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.processes import (
    NodeExit,
    NodeProcess,
    ProcessError,
    ProcessState,
    ProcessTable,
    describe_exit,
    tail,
)
from tests.supervisor.conftest import assert_gone, poll

# Each loops on short sleeps so that a signal is handled within 50 ms.
RUNS = "while :; do sleep 0.05; done"
OBEYS_TERM = f"trap 'echo got-$((0)) TERM; exit 0' TERM; echo ready-$((0)); {RUNS}"
IGNORES_TERM = f"trap '' TERM; echo ready-$((0)); {RUNS}"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """NodeProcesses to make; any still running at the end is killed by PID and reaped."""
    made: list[NodeProcess] = []
    yield made
    pids = [p.pid for p in made if p.pid is not None]
    for process in made:
        if process.running:
            process.kill()
    assert_gone([p for p in pids if p is not None])


def make(
    processes: list[NodeProcess], tmp_path: Path, script: str, node_id: str = "a"
) -> NodeProcess:
    process = NodeProcess(node_id, ["sh", "-c", script], node_dir=tmp_path / node_id)
    processes.append(process)
    return process


def wait_for_log(process: NodeProcess, text: str) -> None:
    poll(lambda: text in process.log_path.read_text(), 5, f"{text!r} in the log")


def test_spawn_appends_output_to_node_log_with_stdin_from_dev_null(
    processes: list[NodeProcess], tmp_path: Path
) -> None:
    process = make(
        processes, tmp_path, "cat; echo stdin ended $?; echo err-$((1 + 1)) >&2; " + RUNS
    )
    pid = process.spawn()
    assert process.pid == pid and process.state() is ProcessState.UP
    wait_for_log(process, "err-2")  # stderr too
    text = process.log_path.read_text()
    assert "supervisor: starting a: sh -c" in text  # a header per run
    assert "stdin ended 0" in text  # cat saw /dev/null's EOF at once
    process.kill()
    process.spawn()  # a second run appends
    wait_for_log(process, text.splitlines()[-1])
    poll(lambda: process.log_path.read_text().count("supervisor: starting a") == 2, 5, "2 runs")
    assert process.starts == 2


def test_kill_sigkills_and_reaps(processes: list[NodeProcess], tmp_path: Path) -> None:
    process = make(processes, tmp_path, IGNORES_TERM)
    pid = process.spawn()
    exit = process.kill()
    assert exit == NodeExit("a", pid, -9, True, process.log_path, exit.log_tail)
    assert not psutil.pid_exists(pid)  # reaped: not even a zombie
    assert process.state() is ProcessState.DOWN and process.pid is None
    with pytest.raises(ProcessError, match="cannot kill a: it is not running; it last exited"):
        process.kill()


def test_stop_is_sigterm_first(processes: list[NodeProcess], tmp_path: Path) -> None:
    process = make(processes, tmp_path, OBEYS_TERM)
    process.spawn()
    wait_for_log(process, "ready-0")
    exit = process.stop(grace_s=5)
    assert exit.exit_code == 0 and exit.expected
    assert "got-0 TERM" in process.log_path.read_text()


def test_stop_of_a_paused_node_sends_sigcont_so_it_handles_sigterm(
    processes: list[NodeProcess], tmp_path: Path
) -> None:
    process = make(processes, tmp_path, OBEYS_TERM)
    process.spawn()
    wait_for_log(process, "ready-0")
    process.pause()
    started = time.monotonic()
    exit = process.stop(grace_s=5)
    assert exit.exit_code == 0  # handled SIGTERM: not SIGKILLed after the grace period
    assert time.monotonic() - started < 4


def test_stop_sigkills_after_the_grace_period(processes: list[NodeProcess], tmp_path: Path) -> None:
    process = make(processes, tmp_path, IGNORES_TERM)
    process.spawn()
    wait_for_log(process, "ready-0")
    started = time.monotonic()
    exit = process.stop(grace_s=0.3)
    assert exit.exit_code == -9
    assert 0.3 <= time.monotonic() - started < 5


def test_pause_and_resume(processes: list[NodeProcess], tmp_path: Path) -> None:
    process = make(processes, tmp_path, RUNS)
    pid = process.spawn()
    process.pause()
    assert process.state() is ProcessState.PAUSED
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    process.resume()
    assert process.state() is ProcessState.UP
    process.pause()
    process.kill()  # SIGKILL reaches a stopped process too
    assert not psutil.pid_exists(pid)


def test_actions_on_a_node_that_is_down_fail_clearly(
    processes: list[NodeProcess], tmp_path: Path
) -> None:
    process = make(processes, tmp_path, RUNS)
    for action in (process.kill, process.pause, process.resume, lambda: process.stop(1)):
        with pytest.raises(ProcessError, match="it is not running"):
            action()
    process.spawn()
    with pytest.raises(ProcessError, match="already running"):
        process.spawn()


def test_spawning_off_the_main_thread_is_refused(
    processes: list[NodeProcess], tmp_path: Path
) -> None:
    process = make(processes, tmp_path, RUNS)
    errors: list[Exception] = []

    def spawn() -> None:
        try:
            process.spawn()
        except ProcessError as error:
            errors.append(error)

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join()
    assert errors and "main thread" in str(errors[0])
    assert not process.running


def test_an_exit_on_its_own_is_reported_with_code_and_log_tail(
    processes: list[NodeProcess], tmp_path: Path
) -> None:
    old = make(processes, tmp_path, "echo from an old run; exit 0")
    old.spawn()
    poll(lambda: old.poll() is not None, 5, "the old run to end")
    crashing = make(
        processes, tmp_path, "sleep 0.2; echo opening storage; echo corrupt record >&2; exit 3"
    )
    exits: list[NodeExit] = []
    table = ProcessTable({"a": crashing}, on_exit=exits.append)
    table.start_monitor()
    try:
        pid = crashing.spawn()
        poll(lambda: bool(exits), 5, "the exit to be noticed")
    finally:
        table.close(grace_s=1)
    (exit,) = exits
    assert (exit.node_id, exit.pid, exit.exit_code, exit.expected) == ("a", pid, 3, False)
    assert exit.log_tail == ("opening storage", "corrupt record")  # this run's lines only
    assert not psutil.pid_exists(pid)  # reaped by the monitor
    text = exit.describe()
    assert "exited on its own: exit code 3 (storage error" in text
    assert "corrupt record" in text


def test_stop_all_stops_every_node_at_once(processes: list[NodeProcess], tmp_path: Path) -> None:
    table = ProcessTable(
        {n: make(processes, tmp_path, IGNORES_TERM if n == "c" else OBEYS_TERM, n) for n in "abc"}
    )
    pids = [table[n].spawn() for n in "abc"]
    for node_id in "abc":
        wait_for_log(table[node_id], "ready-0")
    table["b"].pause()  # once it runs: paused before its shell started, it would never print
    started = time.monotonic()
    exits = {e.node_id: e.exit_code for e in table.close(grace_s=0.5)}
    assert exits == {"a": 0, "b": 0, "c": -9}
    assert time.monotonic() - started < 4  # one grace period for all, not one each
    assert not any(psutil.pid_exists(p) for p in pids)


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0 (stopped cleanly)"
    assert describe_exit(4) == "exit code 4 (address in use)"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(77) == "exit code 77"


def test_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    assert tail(path, 5) == []
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(path, 2) == ["line 98", "line 99"]
    assert tail(path, 3, max_bytes=20) == ["line 98", "line 99"]  # no partial first line
    offset = len("".join(f"line {i}\n" for i in range(95)))
    assert tail(path, 100, start_offset=offset) == [f"line {i}" for i in range(95, 100)]
