"""`python -m supervisor up`: configuration errors refused before anything starts, with the file
and key named; the plain line-by-line mode (a script, /dev/null) and --no-repl with SIGTERM,
end to end with the fake node. The same against real nodes is in test_cli_cluster.py."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from supervisor.__main__ import main
from tests.supervisor.conftest import (
    ROOT,
    Supervisor,
    assert_gone,
    node_children,
    poll,
    write_config,
)

GOOD_NODES = (
    "nodes:\n  a: {host: 127.0.0.1, port: 23001, peer_port: 24001}\n"
    "  b: {host: 127.0.0.1, port: 23002, peer_port: 24002}\n"
)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("cluster: x\ndata_dir: d\nnodes: [\n", "line 4", "invalid YAML"),
        ("data_dir: d\n" + GOOD_NODES, "cluster", "required key is missing"),
        ("cluster: x\ndata_dir: d\ncolour: red\n" + GOOD_NODES, "colour", "unknown key"),
        (
            "cluster: x\ndata_dir: d\nnodes:\n"
            "  a: {host: 127.0.0.1, port: 70000, peer_port: 24001}\n",
            "nodes.a.port",
            "from 1 to 65535",
        ),
        ("cluster: x\ndata_dir: d\nleader: z\n" + GOOD_NODES, "leader", "must name a node"),
        (
            "cluster: x\ndata_dir: d\nnodes:\n"
            "  a: {host: 127.0.0.1, port: 23001, peer_port: 24001}\n"
            "  b: {host: 127.0.0.1, port: 23001, peer_port: 24002}\n",
            "nodes.b.port",
            "already uses",
        ),
        (
            "cluster: x\ndata_dir: d\nraft: {heartbeat_ms: 500}\n" + GOOD_NODES,
            "raft.heartbeat_ms",
            "less than the minimum election timeout",
        ),
        (
            "cluster: x\ndata_dir: d\ncluster_key_file: nope.key\n" + GOOD_NODES,
            "cluster_key_file",
            "no such file",
        ),
    ],
)
def test_a_bad_configuration_is_refused_before_anything_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    key: str,
    problem: str,
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    assert main(["up", str(path), "--no-repl"]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: {key}" in err and problem in err, err
    assert not (tmp_path / "d").exists()  # no data directory, no key written
    assert not node_children()  # no node started


def test_a_missing_configuration_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: no such file" in capsys.readouterr().err


def test_an_address_in_use_is_refused_with_the_key_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    port = int(
        re.findall(r"b: \{host: 127.0.0.1, port: (\d+), peer_port: \d+\}", config.read_text())[0]
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        assert main(["up", str(config), "--no-repl"]) == 2
    err = capsys.readouterr().err
    assert f"nodes.b.port: 127.0.0.1:{port} is already in use" in err
    assert not node_children()


def test_an_unreadable_script_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["up", str(config), "--script", str(tmp_path / "none.txt")]) == 2
    assert "--script" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_web_port_in_use_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["up", str(config), "--no-repl", "--web", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"web view: 127.0.0.1:{port} is in use" in err and "--no-web" in err
    assert not node_children()
    assert not (tmp_path / "data").exists()


def test_usage_errors_exit_2() -> None:
    for argv in (
        ["up"],
        ["up", "x.yaml", "--no-repl", "--script", "s"],
        ["chaos"],
        ["up", "x.yaml", "--web", "99999"],
        ["up", "x.yaml", "--web", "8080", "--no-web"],
    ):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2


def test_config_errors_exit_2_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster: x\n")
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "up", str(path)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{path}: data_dir: required key is missing" in result.stderr


# -- end to end with the fake node ----------------------------------------------------------

SCRIPT = """\
# every command once, against fake nodes
status
status --json
kill b
start b
pause c
resume c
partition a | b,c
sleep 0.6
wait leader 5
heal
slow b 20
leader
isolate a
heal
logs b 2
sleep 0.05
restart c
stop b
fly to the moon
help kill
"""


def test_a_script_runs_line_by_line_and_fails_if_a_command_failed(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    config = write_config(tmp_path)
    script = tmp_path / "script.txt"
    script.write_text(SCRIPT)
    supervisor = supervisors(config, "--script", str(script), stdin=subprocess.DEVNULL)
    pids = supervisor.wait_up()
    assert supervisor.wait() == 1  # `fly to the moon` failed; everything else ran
    out = "\n".join(supervisor.out)
    for line in SCRIPT.splitlines():
        if line and not line.startswith("#"):
            assert f"{supervisor.prompt}{line}" in supervisor.out  # each command echoed
    assert f"killed b (pid {pids['b']})" in out
    assert "paused c" in out and "resumed c" in out
    assert "\npartition a | b,c\n" in out
    assert "leader: b" in out  # the fake's majority side follows b
    assert "b: +20 ms each way" in out
    assert re.search(r"stopped b \(pid \d+\): exit code 0", out)
    assert "\nkill N\n  Sends SIGKILL" in out and "example: kill b" in out  # help kill
    document = json.loads(next(line for line in supervisor.out if line.startswith("{")))
    assert [n["pid"] for n in document["nodes"]] == [pids["a"], pids["b"], pids["c"]]
    err = "\n".join(supervisor.err)
    assert "error: unknown command 'fly'" in err
    assert "every node is stopped" in err
    assert re.search(r"web view: http://127\.0\.0\.1:\d+/\?secret=\S+", err)  # on by default
    assert_gone(list(pids.values()), 1)


def test_stdin_from_dev_null_is_plain_mode_and_ends_at_once(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    supervisor = supervisors(write_config(tmp_path), "--no-web", stdin=subprocess.DEVNULL)
    pids = supervisor.wait_up()
    assert supervisor.wait() == 0
    assert "web view" not in supervisor.output  # --no-web
    assert "not a terminal" not in supervisor.output.lower()
    assert "\x1b[" not in supervisor.output  # no escape codes: prompt_toolkit never started
    assert_gone(list(pids.values()), 1)


def test_no_repl_runs_until_sigterm_and_stops_every_node(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    supervisor = supervisors(write_config(tmp_path), "--no-repl", stdin=subprocess.DEVNULL)
    pids = supervisor.wait_up()
    psutil.Process(pids["b"]).suspend()  # a paused node must be stopped too
    poll(lambda: psutil.Process(pids["b"]).status() == psutil.STATUS_STOPPED, 5, "b paused")
    supervisor.proc.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert "stopping (SIGTERM)" in supervisor.output
    assert "every node is stopped" in supervisor.output
    assert_gone(list(pids.values()), 1)
