"""supervisor/repl.py without processes: parsing, what a wrong command or node id prints (and
that it never raises), help, completion, the status table and JSON. The commands' effects on a
running cluster are tested end to end in test_cli.py and test_cli_cluster.py."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from client.repl import PROMPT as CLIENT_PROMPT
from supervisor.cluster import Cluster, NodeStatus
from supervisor.processes import ProcessState
from supervisor.repl import (
    COMMANDS,
    CommandError,
    Outcome,
    Repl,
    format_table,
    make_completer,
    parse_groups,
    prompt,
    run_plain,
    split_line,
    status_document,
    terminal_mode,
)
from tests.supervisor.conftest import write_config


class Recorded:
    """An Output that keeps what it was given."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.errors: list[str] = []
        self.events: list[str] = []

    def info(self, text: str) -> None:
        self.infos.append(text)

    def error(self, text: str) -> None:
        self.errors.append(text)

    def event(self, text: str) -> None:
        self.events.append(text)


@pytest.fixture
def repl(tmp_path: Path) -> Repl:
    """A REPL over a cluster that is configured and not started: enough for everything that is
    checked before the cluster is asked."""
    return Repl(Cluster(write_config(tmp_path)), Recorded())


def run(repl: Repl, line: str) -> tuple[Outcome, Recorded]:
    out = repl.out
    assert isinstance(out, Recorded)
    return asyncio.run(repl.execute(line)), out


@pytest.mark.parametrize(
    ("line", "problem", "usage"),
    [
        ("fly a", "unknown command 'fly'", "commands: status, kill"),
        ("stpo a", "did you mean 'stop'?", "help COMMAND"),
        ("kill z", "no node 'z' (nodes are a, b, c)", "usage: kill N    e.g. kill b"),
        ("kill", "name a node", "usage: kill N"),
        ("kill a b", "expected 1 argument", "usage: kill N"),
        ("pause", "name a node", "usage: pause N"),
        ("slow a", "expected 2 arguments", "usage: slow N MS"),
        ("slow a fast", "MS must be a number, got 'fast'", "e.g. slow b 200"),
        ("slow a -5", "MS must be from 0 to 60000, got -5", "usage: slow N MS"),
        ("slow q 5", "no node 'q'", "usage: slow N MS"),
        ("partition", "name at least one group", "usage: partition GROUP | GROUP"),
        ("partition a,b |", "group 2 of 'a,b |' is empty", "e.g. partition a,b | c"),
        ("partition a | x", "no node 'x'", "usage: partition"),
        ("wait", "expected `wait leader [SECONDS]`", "usage: wait leader [SECONDS]"),
        ("wait follower", "expected `wait leader [SECONDS]`", "e.g. wait leader 5"),
        ("wait leader soon", "SECONDS must be a number", "usage: wait leader"),
        ("sleep", "expected one argument, SECONDS", "usage: sleep SECONDS"),
        ("sleep -1", "SECONDS must be from 0", "usage: sleep SECONDS"),
        ("sleep nan", "SECONDS must be from 0", "usage: sleep SECONDS"),
        ("logs a many", "LINES must be a number", "usage: logs N [LINES]"),
        ("logs", "name a node", "usage: logs N [LINES]"),
        ("heal now", "takes no arguments, got 'now'", "usage: heal"),
        ("status --yaml", "unexpected arguments '--yaml'", "usage: status [--json]"),
        ("help nothing", "unknown command 'nothing'", "commands:"),
        ('kill "a', "cannot parse", ""),
        ("quit now", "takes no arguments", "usage: quit"),
    ],
)
def test_a_wrong_command_says_what_is_wrong_and_the_usage(
    repl: Repl, line: str, problem: str, usage: str
) -> None:
    outcome, out = run(repl, line)
    assert outcome is Outcome.FAILED
    (error,) = out.errors
    assert problem in error and usage in error
    assert repl.failures == 1


def test_a_failing_action_is_reported_not_raised(repl: Repl) -> None:
    outcome, out = run(repl, "kill a")  # the cluster is not started
    assert outcome is Outcome.FAILED and "not started" in out.errors[0]


def test_blank_lines_and_comments_do_nothing(repl: Repl) -> None:
    for line in ("", "   ", "# a comment"):
        assert run(repl, line)[0] is Outcome.OK
    assert not repl.out.errors  # type: ignore[attr-defined]


def test_quit_and_its_aliases(repl: Repl) -> None:
    for line in ("quit", "exit", "q"):
        assert run(repl, line)[0] is Outcome.QUIT


def test_help_lists_every_command_and_explains_each_with_an_example(repl: Repl) -> None:
    outcome, out = run(repl, "help")
    assert outcome is Outcome.OK
    for name in COMMANDS:
        assert f"\n  {name}" in "\n" + out.infos[0]
    assert "nodes: a, b, c" in out.infos[0]
    for name, entry in COMMANDS.items():
        outcome, out = run(repl, f"help {name}")
        assert outcome is Outcome.OK
        assert entry.usage in out.infos[-1] and f"example: {entry.example}" in out.infos[-1]
        assert entry.example.split()[0] == name  # every example runs the command it explains


def test_parse_groups() -> None:
    assert parse_groups(["a,b", "|", "c"]) == [["a", "b"], ["c"]]
    assert parse_groups(["a,b|c"]) == [["a", "b"], ["c"]]
    assert parse_groups(["a", "b", "|", "c", "|", "d,e"]) == [["a", "b"], ["c"], ["d", "e"]]
    assert parse_groups(["a"]) == [["a"]]
    with pytest.raises(CommandError, match="empty"):
        parse_groups(["|", "a"])


def test_split_line() -> None:
    assert split_line("partition a,b | c  # cut c off") == ["partition", "a,b", "|", "c"]
    with pytest.raises(CommandError, match="cannot parse"):
        split_line("logs 'a")


def completions(cluster: Cluster, text: str) -> list[str]:
    completer = make_completer(cluster)
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def test_completion_of_commands_and_node_ids(tmp_path: Path) -> None:
    cluster = Cluster(write_config(tmp_path, "abc"))
    assert completions(cluster, "")[:3] == ["status", "kill", "stop"]
    assert set(completions(cluster, "st")) == {"status", "stop", "start"}
    assert completions(cluster, "kill ") == ["a", "b", "c"]
    assert completions(cluster, "kill b") == ["b"]
    assert completions(cluster, "kill b ") == []  # one node only
    assert completions(cluster, "slow ") == ["a", "b", "c"]
    assert completions(cluster, "partition a,") == ["a", "b", "c"]
    assert completions(cluster, "partition a,b | ") == ["a", "b", "c"]
    assert completions(cluster, "help pa") == ["pause", "partition"]  # table order
    assert completions(cluster, "wait ") == ["leader"]
    assert completions(cluster, "status --") == ["--json"]
    assert completions(cluster, "heal ") == []
    assert completions(cluster, "nonsense ") == []


def status(node: str, role: str | None, process: ProcessState, **extra: object) -> NodeStatus:
    fields: dict[str, object] = {
        "id": node,
        "address": f"127.0.0.1:{8000 + ord(node)}",
        "pid": 100 + ord(node) if process is not ProcessState.DOWN else None,
        "process": process,
        "role": role,
        "term": 3 if role else None,
        "leader": "a" if role else None,
        "commit_index": 7 if role else None,
        "applied_index": 7 if role else None,
        "last_index": 7 if role else None,
        "snapshot_index": 0 if role else None,
        "digest": None,
        "last_contact_s": 0.25 if role else None,
        "error": None if role else "paused",
        "group": None,
        "slow_ms": 0.0,
        "last_exit": None,
    }
    fields.update(extra)
    return NodeStatus(**fields)  # type: ignore[arg-type]


def test_status_table_and_json() -> None:
    statuses = [
        status("a", "leader", ProcessState.UP),
        status("b", "follower", ProcessState.UP, slow_ms=50.0, group=2),
        status("c", None, ProcessState.DOWN, error="not running", last_exit="killed by SIGKILL"),
    ]
    table = format_table(statuses).splitlines()
    assert table[0].split() == [
        "ID", "PID", "PROCESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "CONTACT",
        "GROUP", "SLOW", "NOTE",
    ]  # fmt: skip
    row = ["a", "197", "up", "leader", "3", "a", "7", "7", "0.2s", "ago", "-", "-"]
    assert table[1].split() == row
    assert "50ms" in table[2] and " 2 " in table[2]
    assert table[3].split()[:4] == ["c", "-", "down", "-"]
    assert table[3].endswith("last exit: killed by SIGKILL")
    document = json.loads(status_document(statuses, 3, (("a", "b"), ("c",))))
    assert document["leader"] == "a"  # a and b name a at term 3: 2 of 3
    assert document["partition"] == [["a", "b"], ["c"]]
    assert [n["process"] for n in document["nodes"]] == ["up", "up", "down"]
    assert document["nodes"][0]["role"] == "leader"


def test_plain_mode_echoes_each_command_and_fails_if_one_failed(tmp_path: Path) -> None:
    cluster = Cluster(write_config(tmp_path))
    out = Recorded()
    lines = ["# setup", "help heal", "", "fly", "sleep 0"]
    assert asyncio.run(run_plain(cluster, lines, out)) == 1
    assert out.infos[0] == "cluster test> help heal"
    assert "cluster test> fly" in out.infos and "cluster test> sleep 0" in out.infos
    assert len(out.errors) == 1
    out = Recorded()
    assert asyncio.run(run_plain(cluster, ["sleep 0", "quit", "fly"], out)) == 0  # stops at quit
    assert out.infos == ["cluster test> sleep 0", "cluster test> quit"]


def test_the_prompt_names_the_cluster_not_the_chat_client() -> None:
    """With the chat client's terminal open beside it, a person can tell the two REPLs apart."""
    assert prompt("chatbooth") == "cluster chatbooth> "
    assert not prompt("chatbooth").startswith(CLIENT_PROMPT)
    assert prompt("chatbooth") != CLIENT_PROMPT


def test_terminal_mode_needs_both_ends_to_be_terminals(tmp_path: Path) -> None:
    with (tmp_path / "file").open("w+") as regular:
        assert not terminal_mode(regular, regular)
    with open("/dev/null") as null:
        assert not terminal_mode(null, sys.stdout)


def test_status_and_the_toolbar_show_the_committed_membership(tmp_path: Path) -> None:
    """The membership the leader reports: `status` names voters and learners, and the toolbar
    marks a learner and a node the committed membership does not have yet."""
    from supervisor.cluster import committed_members
    from supervisor.repl import Repl

    leader = status("a", "leader", ProcessState.UP, voters=("a", "b"), learners=("c",))
    stale = status("b", "follower", ProcessState.UP, voters=("a", "b", "c"), learners=())
    statuses = [leader, stale, status("c", None, ProcessState.PAUSED)]
    assert committed_members(statuses, 3) == (("a", "b"), ("c",))  # the leader's, not b's
    assert committed_members([status("a", None, ProcessState.PAUSED)], 1) is None
    lagging = status("b", "follower", ProcessState.UP, voters=("a",), learners=(), commit_index=3)
    no_leader = [status("a", "candidate", ProcessState.UP, voters=("a", "b")), lagging]
    assert committed_members(no_leader, 2) == (("a", "b"), ())  # who has committed most

    cluster = Cluster(write_config(tmp_path))
    repl = Repl(cluster, Recorded())
    repl.view = [leader, stale]
    text = "".join(fragment for _, fragment in repl.toolbar_fragments())  # not started: down
    assert " a - down  " in text and " b - down  " in text and " c - down learner " in text
    repl.view = [status("a", "leader", ProcessState.UP, voters=("a", "b"), learners=())]
    text = "".join(fragment for _, fragment in repl.toolbar_fragments())
    assert " c - down not a member yet " in text and "learner" not in text


def test_a_web_command_waits_for_the_repl_s_command_is_echoed_and_does_not_fail_a_script(
    repl: Repl,
) -> None:
    """The page's commands run on the REPL's loop under the one lock its own commands take:
    after a command in progress, echoed as `[web] ...`, answered with what it printed."""

    async def scenario() -> tuple[list[str], Any]:
        order: list[str] = []
        typed = asyncio.create_task(repl.execute("sleep 0.3"))
        await asyncio.sleep(0.05)  # the typed command holds the lock now
        started = time.monotonic()
        clicked = await repl.execute_from_web("kill z")  # refused: no node z
        order.append(f"web done after {time.monotonic() - started:.1f}")
        assert await typed is Outcome.OK
        ok = await repl.execute_from_web("help heal")
        return order, (clicked, ok)

    order, (clicked, ok) = asyncio.run(scenario())
    assert order in (["web done after 0.2"], ["web done after 0.3"], ["web done after 0.4"])
    assert not clicked.ok and "no node 'z'" in clicked.output
    assert clicked.command == "kill z"
    assert ok.ok and ok.output.startswith("heal")
    out = repl.out
    assert isinstance(out, Recorded)
    assert "[web] cluster test> kill z" in out.infos
    assert repl.failures == 0  # a bad click is the page's answer, not the session's failure


def test_the_web_command_says_when_the_page_is_off(repl: Repl) -> None:
    outcome, out = run(repl, "web")
    assert outcome is Outcome.FAILED and "the web view is off" in out.errors[-1]
