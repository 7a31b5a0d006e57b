"""The fault REPL: commands that break a running cluster on purpose and show what it does.

One command table serves two front ends:

- in a terminal, a prompt_toolkit prompt with completion of commands and node ids, history in
  data_dir/.supervisor_history, a bottom toolbar refreshed live with every node's role,
  process state and partition group, and errors in red;
- on a pipe, a file (`--script FILE`) or /dev/null, plain lines: each command is echoed, run,
  and the session ends with the input (failing if any command failed).

The caller decides which before any prompt_toolkit object exists (`terminal_mode`): a
PromptSession on a pipe prints "Input is not a terminal" and escape codes, and on /dev/null it
raises (TRAPS, "prompt_toolkit"). A wrong command or node id prints what was wrong and the
usage; it never ends the REPL or harms the cluster.

Commands are plain entries in COMMANDS, registered with @command; a new one (chaos, check)
is one more decorated coroutine. Commands that wait run their blocking Cluster calls in a
worker thread, so the event loop keeps the toolbar and Ctrl-C alive; a node is only ever
spawned from the main thread (the loop's), which PR_SET_PDEATHSIG needs.

Imports the supervisor modules under it, node.config (for ConfigError) and client.lines (the
stdin reader the chat REPL uses too; standard library only) only; prompt_toolkit only inside
the terminal front end, so that plain mode never loads it. Never node internals, nor the rest
of the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import difflib
import enum
import json
import math
import random
import shlex
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TextIO, TypeVar

from client.lines import LineReader
from node.config import ConfigError
from supervisor.chaos import (
    ALL_KINDS,
    DEFAULT_INTERVAL_S,
    MIN_INTERVAL_S,
    NETWORK_KINDS,
    Chaos,
    ChaosRunner,
    FaultKind,
)
from supervisor.cluster import Cluster, NodeStatus, committed_members, majority_leader
from supervisor.errors import SupervisorError
from supervisor.links import Groups, format_groups
from supervisor.membership import Membership, format_members
from supervisor.processes import NodeExit, ProcessState, describe_exit
from supervisor.web.server import CommandResult, CommandRunner, WebView

T = TypeVar("T")


def prompt(cluster_name: str) -> str:
    """The REPL's prompt: it names what it drives, the cluster (`cluster chatbooth> `), so that
    it never reads like a chat client's prompt in the terminal beside it."""
    return f"cluster {cluster_name}> "


HISTORY_NAME: Final = ".supervisor_history"
TOOLBAR_REFRESH_S: Final = 0.5
DEFAULT_LOG_LINES: Final = 20
DEFAULT_WAIT_LEADER_S: Final = 10.0
MAX_SLEEP_S: Final = 24 * 3600.0


class CommandError(SupervisorError):
    """A command line that cannot be run as written: unknown command, bad argument, unknown
    node. The REPL prints it with the command's usage."""


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    QUIT = "quit"


class Output(Protocol):
    """Where the REPL writes. info and error are called on the event loop's thread; event may
    be called from any thread (node exits are noticed by the monitor thread)."""

    def info(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...
    def event(self, text: str) -> None: ...


class PlainOutput:
    """Lines on stdout (errors on stderr, prefixed `error:`), for pipes, scripts and logs."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err
        self._lock = threading.Lock()

    def _write(self, stream: TextIO | None, fallback: TextIO, text: str) -> None:
        target = stream or fallback
        with self._lock:
            target.write(text + "\n")
            target.flush()

    def info(self, text: str) -> None:
        self._write(self._out, sys.stdout, text)

    def error(self, text: str) -> None:
        self._write(self._err, sys.stderr, "error: " + text.replace("\n", "\n       "))

    def event(self, text: str) -> None:
        self._write(self._out, sys.stdout, "!! " + text)


# -- the command table ----------------------------------------------------------------------

Handler = Callable[["Repl", list[str]], Awaitable[Outcome | None]]


class Complete(enum.Enum):
    """What a command's arguments complete to."""

    NOTHING = "nothing"
    NODE = "node"  # the first argument is a node id
    NODES = "nodes"  # every argument is node ids (partition groups)
    COMMAND = "command"  # help COMMAND
    WORDS = "words"  # the command's own words (Command.words)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    args: str  # the usage after the name: "N MS", "[--json]"
    summary: str  # one line for `help`
    detail: str  # what it does, for `help COMMAND`
    example: str
    handler: Handler
    complete: Complete = Complete.NOTHING
    words: tuple[str, ...] = ()

    @property
    def usage(self) -> str:
        return f"{self.name} {self.args}".rstrip()


COMMANDS: dict[str, Command] = {}
ALIASES: dict[str, str] = {"exit": "quit", "q": "quit", "?": "help"}


def command(
    name: str,
    args: str,
    summary: str,
    example: str,
    detail: str = "",
    complete: Complete = Complete.NOTHING,
    words: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    """Register a REPL command."""

    def register(handler: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        COMMANDS[name] = Command(
            name, args, summary, detail or summary, example, handler, complete, words
        )
        return handler

    return register


def find_command(name: str) -> Command:
    name = ALIASES.get(name, name)
    found = COMMANDS.get(name)
    if found is None:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CommandError(
            f"unknown command {name!r}{hint}; commands: {', '.join(COMMANDS)} "
            "(`help COMMAND` explains one)"
        )
    return found


def split_line(line: str) -> list[str]:
    """A command line in words; `#` starts a comment."""
    try:
        return shlex.split(line, comments=True)
    except ValueError as error:
        raise CommandError(f"cannot parse {line!r}: {error}") from None


def parse_groups(words: Sequence[str]) -> list[list[str]]:
    """`a,b | c` (or `a b | c`, `a,b|c`) as groups of ids; empty groups are refused."""
    text = " ".join(words)
    if not text.strip():
        raise CommandError("name at least one group of nodes")
    groups = []
    for index, part in enumerate(text.split("|")):
        ids = [n for n in part.replace(",", " ").split() if n]
        if not ids:
            raise CommandError(f"group {index + 1} of {text.strip()!r} is empty")
        groups.append(ids)
    return groups


def parse_number(text: str, what: str, *, low: float = 0.0, high: float = math.inf) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{what} must be a number, got {text!r}") from None
    if not (low <= value <= high) or math.isnan(value):
        limit = f"from {low:g} to {high:g}" if high != math.inf else f"at least {low:g}"
        raise CommandError(f"{what} must be {limit}, got {text}")
    return value


# -- the REPL -------------------------------------------------------------------------------


class Repl:
    """Runs command lines against a cluster, writing to an Output."""

    def __init__(self, cluster: Cluster, out: Output) -> None:
        self.cluster = cluster
        self.out = out
        self.failures = 0
        self.view: list[NodeStatus] = []  # the last status seen (the toolbar's roles)
        self.chaos: ChaosRunner | None = None  # running while not None
        self.membership = Membership(cluster)
        self.web: WebView | None = None  # the live page, when `up` serves one
        # One command at a time, whether typed here or clicked on the web page.
        self._command_lock = asyncio.Lock()

    async def close(self) -> None:
        """The session ends (quit, Ctrl-D, end of script): stop chaos's timer once its step in
        progress is done. Faults are left as they are: every node is stopped next anyway."""
        runner, self.chaos = self.chaos, None
        if runner is not None:
            await runner.halt()
            self.out.info("chaos: off (the session is ending)")

    # -- running lines ------------------------------------------------------------------------

    async def execute(self, line: str) -> Outcome:
        """Run one command line; print its result or what was wrong. Never raises for a bad
        command or a failed action (those are FAILED); cancellation passes through."""
        async with self._command_lock:
            return await self._execute(line)

    async def execute_from_web(self, line: str) -> CommandResult:
        """A command clicked on the web page: echoed to this REPL's output as `[web] LINE`,
        run as if typed (after any command in progress), its output returned to the page."""
        async with self._command_lock:
            self.out.info(f"[web] {prompt(self.cluster.config.cluster)}{line}")
            capture = _Capture(self.out)
            self.out = capture
            failures = self.failures
            try:
                outcome = await self._execute(line)
            finally:
                self.out = capture.inner
                self.failures = failures  # a bad click does not fail the session's script
        return CommandResult(line, outcome is Outcome.OK, "\n".join(capture.lines))

    def web_runner(self, loop: asyncio.AbstractEventLoop) -> CommandRunner:
        """What the web view calls (from its own thread) to run a command on this loop."""

        def run(line: str) -> concurrent.futures.Future[CommandResult]:
            return asyncio.run_coroutine_threadsafe(self.execute_from_web(line), loop)

        return run

    async def _execute(self, line: str) -> Outcome:
        current: Command | None = None
        try:
            words = split_line(line)
            if not words:
                return Outcome.OK
            current = find_command(words[0])
            outcome = await current.handler(self, words[1:])
            return outcome or Outcome.OK
        except CommandError as error:
            self._fail(str(error), current)
        except (SupervisorError, ConfigError) as error:
            self._fail(str(error), None)
        except Exception as error:  # a bug must not take the cluster down with the REPL
            self._fail(f"{type(error).__name__}: {error}", None)
        return Outcome.FAILED

    def _fail(self, message: str, current: Command | None) -> None:
        self.failures += 1
        if current is not None:
            message += f"\nusage: {current.usage}    e.g. {current.example}"
        self.out.error(message)

    def attach_web(self, web: WebView | None) -> None:
        """Take the web page's commands (web) or stop taking them (None)."""
        if self.web is not None:
            self.web.serve_commands(None)
        self.web = web
        if web is not None:
            web.serve_commands(self.web_runner(asyncio.get_running_loop()))

    def announce(self, exit: NodeExit) -> None:
        """A node exited on its own (called from the monitor thread)."""
        self.out.event(exit.describe())

    async def blocking(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking cluster call in a worker thread; the loop stays responsive."""
        return await asyncio.to_thread(function, *args)

    # -- argument helpers ---------------------------------------------------------------------

    def node_arg(self, args: list[str], count: int = 1, optional: int = 0) -> str:
        """The node id in args[0], checked, with count..count+optional arguments in all."""
        if not count <= len(args) <= count + optional:
            if not args:
                raise CommandError("name a node")
            raise CommandError(f"expected {count} argument{'s' if count > 1 else ''}, got {args}")
        node_id = args[0]
        if node_id not in self.cluster.node_ids:
            raise CommandError(
                f"no node {node_id!r} (nodes are {', '.join(self.cluster.node_ids)})"
            )
        return node_id

    @staticmethod
    def no_args(args: list[str]) -> None:
        if args:
            raise CommandError(f"takes no arguments, got {' '.join(args)!r}")

    # -- the status view ----------------------------------------------------------------------

    async def refresh_view(self, timeout_s: float = 0.4) -> None:
        self.view = await self.blocking(lambda: self.cluster.status(timeout_s=timeout_s))

    def toolbar_fragments(self) -> list[tuple[str, str]]:
        """The bottom toolbar: each node's role (a learner or a member not yet in the committed
        membership marked so), process state and group; the partition."""
        roles = {s.id: s for s in self.view}
        members = committed_members(self.view, self.cluster.size)
        fragments: list[tuple[str, str]] = []
        for node_id in self.cluster.node_ids:
            try:
                state = self.cluster.process_state(node_id)
            except SupervisorError:
                state = ProcessState.DOWN
            seen = roles.get(node_id)
            role = (seen.role if seen is not None and seen.role else None) or "?"
            if state is not ProcessState.UP:
                role = "-"
            style = {
                "leader": "class:toolbar.leader",
                "follower": "class:toolbar.follower",
            }.get(role, "class:toolbar.other")
            if state is ProcessState.PAUSED:
                style = "class:toolbar.paused"
            elif state is ProcessState.DOWN:
                style = "class:toolbar.down"
            group = self.cluster.network.group_of(node_id) if self.cluster.network else None
            slow = self.cluster.network.slow_ms(node_id) if self.cluster.network else 0.0
            text = f" {node_id} {role} {state.value}"
            if members is not None:
                voters, learners = members
                if node_id in learners:
                    text += " learner"
                elif node_id not in voters:
                    text += " not a member yet"
            if group is not None:
                text += f" [{group}]"
            if slow:
                text += f" +{slow:g}ms"
            fragments.append((style, text + " "))
            fragments.append(("class:toolbar", " "))
        groups = self.cluster.groups
        if groups is not None:
            fragments.append(("class:toolbar.partition", f" partition {format_groups(groups)} "))
        if self.chaos is not None:
            fragments.append(("class:toolbar", " "))
            fragments.append(("class:toolbar.chaos", f" {self.chaos.describe()} "))
        return fragments


def format_table(statuses: Sequence[NodeStatus]) -> str:
    """The `status` table."""
    header: tuple[str, ...] = ("ID", "PID", "PROCESS", "ROLE", "TERM", "LEADER", "COMMIT")
    header += ("APPLIED", "CONTACT", "GROUP", "SLOW", "NOTE")
    rows: list[tuple[str, ...]] = [header]

    def show(value: object) -> str:
        return "-" if value is None or value == "" else str(value)

    for s in statuses:
        contact = "never" if s.last_contact_s is None else f"{s.last_contact_s:.1f}s ago"
        note = s.error or ""
        if s.process is ProcessState.DOWN and s.last_exit:
            note = f"last exit: {s.last_exit}"
        rows.append(
            (
                s.id,
                show(s.pid),
                s.process.value,
                show(s.role),
                show(s.term),
                show(s.leader),
                show(s.commit_index),
                show(s.applied_index),
                contact,
                show(s.group),
                f"{s.slow_ms:g}ms" if s.slow_ms else "-",
                note if s.role is None else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def status_document(statuses: Sequence[NodeStatus], size: int, groups: Groups | None) -> str:
    """`status --json`: one line of JSON."""
    return json.dumps(
        {
            "leader": majority_leader(statuses, size),
            "partition": [list(g) for g in groups] if groups is not None else None,
            "nodes": [s.as_dict() for s in statuses],
        },
        separators=(",", ":"),
    )


# -- the commands ---------------------------------------------------------------------------


@command(
    "status",
    "[--json]",
    "every node: process, role, term, leader, indexes, last contact",
    "status --json",
    "Asks every running node for its Raft status (with a deadline; a paused node is not "
    "asked) and shows it with the process state, the partition group and added latency. "
    "--json prints one line of JSON for scripts.",
    Complete.WORDS,
    ("--json",),
)
async def _status(repl: Repl, args: list[str]) -> None:
    if args not in ([], ["--json"]):
        raise CommandError(f"unexpected arguments {' '.join(args)!r}")
    statuses = await repl.blocking(repl.cluster.status)
    repl.view = list(statuses)
    if args:
        repl.out.info(status_document(statuses, repl.cluster.size, repl.cluster.groups))
        return
    lines = [format_table(statuses)]
    leader = majority_leader(statuses, repl.cluster.size)
    lines.append(f"leader: {leader or 'none known to a majority'}")
    members = committed_members(statuses, repl.cluster.size)
    if members is not None:
        voters, learners = members
        lines.append(
            f"members: {', '.join(voters)} voting"
            + (f"; {', '.join(learners)} learning" if learners else "")
        )
    if repl.cluster.groups is not None:
        lines.append(f"partition: {format_groups(repl.cluster.groups)}")
    repl.out.info("\n".join(lines))


@command(
    "kill",
    "N",
    "SIGKILL node N: a crash",
    "kill b",
    "Sends SIGKILL to node N (paused or not) and reaps it: a crash, losing whatever the node "
    "had not written to disk. `start N` brings it back.",
    Complete.NODE,
)
async def _kill(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args)
    exit = await repl.blocking(repl.cluster.kill, node_id)
    repl.out.info(f"killed {node_id} (pid {exit.pid})")


@command(
    "stop",
    "N",
    "SIGTERM node N: a clean shutdown",
    "stop b",
    "Sends SIGTERM (and SIGCONT, in case it is paused), waits for it to exit, and SIGKILLs it "
    "if it does not within the grace period.",
    Complete.NODE,
)
async def _stop(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args)
    exit = await repl.blocking(repl.cluster.stop, node_id)
    repl.out.info(f"stopped {node_id} (pid {exit.pid}): {describe_exit(exit.exit_code)}")


@command(
    "start",
    "N",
    "start node N again and wait until it serves",
    "start b",
    "Starts a node that is down, with its data as it left it, and waits until it serves.",
    Complete.NODE,
)
async def _start(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args)
    await _spawn_and_wait(repl, node_id)


async def _spawn_and_wait(repl: Repl, node_id: str) -> None:
    started = time.monotonic()
    pid = repl.cluster.start_node(node_id, wait=False)  # here: the main thread spawns
    await repl.blocking(repl.cluster.wait_serving, node_id)
    repl.out.info(f"started {node_id} (pid {pid}), serving after {time.monotonic() - started:.1f}s")


@command(
    "restart",
    "N",
    "stop node N if it runs, then start it",
    "restart b",
    "`stop N` (if it is running) followed by `start N`.",
    Complete.NODE,
)
async def _restart(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args)
    if repl.cluster.pid(node_id) is not None:
        await repl.blocking(repl.cluster.stop, node_id)
    await _spawn_and_wait(repl, node_id)


@command(
    "members",
    "",
    "the cluster's membership: voters, learners, incarnations, lag",
    "members",
    "Asks the leader's Membership service (with the tool certificate) who the members are: "
    "each one's role, its incarnation (initial, or the index of the entry that added it) and, "
    "on the leader, how far its log is behind.",
)
async def _members(repl: Repl, args: list[str]) -> None:
    if args:
        raise CommandError(f"members takes no arguments, got {args}")
    repl.out.info(format_members(await repl.blocking(repl.membership.members)))


@command(
    "add",
    "N",
    "add a new member N: it joins empty, catches up as a learner, then votes",
    "add d",
    "Gives the new member free ports on 127.0.0.1, a certificate from the cluster's CA and "
    "links through proxies (so partitions cut it like any other), writes every node's peers "
    "file, adds it as a learner (that entry's index is its incarnation), starts it empty with "
    "--join ID --incarnation N, waits until its log has caught up and promotes it to voter. "
    "One change at a time (single-server changes).",
)
async def _add(repl: Repl, args: list[str]) -> None:
    if len(args) != 1:
        raise CommandError("add takes one new node id: add d")
    await _join(repl, args[0], repl.membership.prepare_add, "added")


async def _join(repl: Repl, node_id: str, prepare: Callable[[str], None], done: str) -> None:
    """add and replace (Membership.join_from_loop), timed."""
    started = time.monotonic()
    view = await repl.membership.join_from_loop(node_id, prepare)
    took = f"{done} {node_id} in {time.monotonic() - started:.1f}s"
    repl.out.info(took + "\n" + format_members(view))


@command(
    "remove",
    "N",
    "take member N out of the cluster, then stop it",
    "remove c",
    "Proposes the removal of N (a voter or a learner) through the leader and stops its process "
    "once the change is applied. A leader that removes itself steps down and hands over.",
    Complete.NODE,
)
async def _remove(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args)
    view = await repl.blocking(repl.membership.remove, node_id)
    repl.out.info(f"removed {node_id}\n" + format_members(view))


@command(
    "replace",
    "N",
    "give member N a new, empty disk: wipe, remove, join, add, promote",
    "replace b",
    "For a member that lost its disk (its node exits with code 5) or should get a new one: "
    "kills it, wipes its data directory, removes it from the configuration and adds it back "
    "as another incarnation of its name, then starts it empty with --join, so nothing its old "
    "disk held can ever count again.",
    Complete.NODE,
)
async def _replace(repl: Repl, args: list[str]) -> None:
    await _join(repl, repl.node_arg(args), repl.membership.prepare_replace, "replaced")


@command(
    "pause",
    "N",
    "SIGSTOP node N: a frozen machine",
    "pause a",
    "Freezes node N with SIGSTOP: its sockets stay open but it answers nothing, as a stalled "
    "machine or a long GC pause. `resume N` continues it.",
    Complete.NODE,
)
async def _pause(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args)
    await repl.blocking(repl.cluster.pause, node_id)
    repl.out.info(f"paused {node_id}")


@command(
    "resume",
    "N",
    "SIGCONT a paused node N",
    "resume a",
    "Continues a node frozen by `pause N`.",
    Complete.NODE,
)
async def _resume(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args)
    await repl.blocking(repl.cluster.resume, node_id)
    repl.out.info(f"resumed {node_id}")


@command(
    "partition",
    "GROUP | GROUP [| ...]",
    "cut the network between groups of nodes",
    "partition a,b | c",
    "Nodes in different groups cannot reach each other: the proxies of the links between "
    "them stop forwarding both ways, open connections included (silence, as a real network "
    "failure). Nodes no group names form one more group, so `partition a` cuts a off. A new "
    "partition replaces the old one. Clients still reach every node directly.",
    Complete.NODES,
)
async def _partition(repl: Repl, args: list[str]) -> None:
    groups = parse_groups(args)
    for group in groups:
        for node_id in group:
            if node_id not in repl.cluster.node_ids:
                known = ", ".join(repl.cluster.node_ids)
                raise CommandError(f"no node {node_id!r} (nodes are {known})")
    applied = await repl.blocking(repl.cluster.partition, *groups)
    repl.out.info(f"partition {format_groups(applied)}")


@command(
    "isolate",
    "N",
    "cut node N off from every other node",
    "isolate a",
    "The same as `partition N`: N alone on one side, every other node on the other.",
    Complete.NODE,
)
async def _isolate(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args)
    applied = await repl.blocking(repl.cluster.isolate, node_id)
    repl.out.info(f"partition {format_groups(applied)}")


@command(
    "heal",
    "",
    "end the partition and any added latency",
    "heal",
    "Every link forwards again at full speed; connections that were open across the cut are "
    "reset, and the nodes reconnect.",
)
async def _heal(repl: Repl, args: list[str]) -> None:
    repl.no_args(args)
    await repl.blocking(repl.cluster.heal)
    repl.out.info("healed")


@command(
    "slow",
    "N MS",
    "add MS milliseconds of latency on node N's links",
    "slow b 200",
    "Every byte on a link of node N, either way, arrives MS milliseconds later (so a request "
    "and its answer gain 2*MS). `slow N 0` removes it; `heal` removes all.",
    Complete.NODE,
)
async def _slow(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args, count=2)
    ms = parse_number(args[1], "MS", high=60_000)
    await repl.blocking(repl.cluster.slow, node_id, ms)
    repl.out.info(f"{node_id}: +{ms:g} ms each way" if ms else f"{node_id}: no added latency")


@command(
    "leader",
    "",
    "the leader known to a majority now",
    "leader",
    "Asks every node once; fails if no leader is known to a majority right now "
    "(`wait leader` waits for one).",
)
async def _leader(repl: Repl, args: list[str]) -> None:
    repl.no_args(args)
    statuses = await repl.blocking(repl.cluster.status)
    leader = majority_leader(statuses, repl.cluster.size)
    if leader is None:
        raise SupervisorError("no leader known to a majority right now")
    term = next((s.term for s in statuses if s.id == leader), None)
    repl.out.info(f"leader: {leader} (term {term}, {repl.cluster.address(leader)})")


@command(
    "logs",
    "N [LINES]",
    f"the last LINES (default {DEFAULT_LOG_LINES}) lines of node N's log",
    "logs b 50",
    "Prints the end of data_dir/N/node.log: the node's own output, every run of it.",
    Complete.NODE,
)
async def _logs(repl: Repl, args: list[str]) -> None:
    node_id = repl.node_arg(args, count=1, optional=1)
    lines = DEFAULT_LOG_LINES
    if len(args) == 2:
        lines = int(parse_number(args[1], "LINES", low=1, high=100_000))
    text = await repl.blocking(repl.cluster.log_tail, node_id, lines)
    repl.out.info("\n".join(text) if text else f"({repl.cluster.log_path(node_id)} is empty)")


@command(
    "wait",
    "leader [SECONDS]",
    f"wait until one leader is known to a majority (default {DEFAULT_WAIT_LEADER_S:g} s)",
    "wait leader 5",
    "Returns as soon as exactly one leader is known to a majority of the nodes; fails at the "
    "deadline, saying what each node answered. Right after a partition the majority may still "
    "name the old leader until their election timeout passes: `sleep 1` first to see the new "
    "one.",
    Complete.WORDS,
    ("leader",),
)
async def _wait(repl: Repl, args: list[str]) -> None:
    if not args or args[0] != "leader" or len(args) > 2:
        raise CommandError("expected `wait leader [SECONDS]`")
    timeout_s = DEFAULT_WAIT_LEADER_S
    if len(args) == 2:
        timeout_s = parse_number(args[1], "SECONDS", high=MAX_SLEEP_S)
    started = time.monotonic()
    leader = await repl.blocking(repl.cluster.wait_leader, timeout_s)
    repl.out.info(f"leader: {leader} (after {time.monotonic() - started:.1f}s)")


@command(
    "sleep",
    "SECONDS",
    "wait a while (in scripts)",
    "sleep 1.5",
    "Does nothing for SECONDS; in a script, lets the cluster react before the next command.",
)
async def _sleep(repl: Repl, args: list[str]) -> None:
    if len(args) != 1:
        raise CommandError("expected one argument, SECONDS")
    await asyncio.sleep(parse_number(args[0], "SECONDS", high=MAX_SLEEP_S))


@dataclass(frozen=True, slots=True)
class ChaosStart:
    """The arguments of `chaos start`."""

    interval_s: float = DEFAULT_INTERVAL_S
    unsafe: bool = False
    seed: int | None = None
    membership: bool = False

    def command(self, seed: int) -> str:
        """The command that repeats this session with `seed`."""
        options = " --unsafe" * self.unsafe + " --membership" * self.membership
        return f"chaos start {self.interval_s:g}{options} --seed {seed}"


def _parse_chaos_start(args: list[str]) -> ChaosStart:
    """`[SECONDS] [--unsafe] [--membership] [--seed N]`, in any order."""
    interval_s, unsafe, seed, membership = DEFAULT_INTERVAL_S, False, None, False
    words = iter(args)
    seen_interval = False
    for word in words:
        if word == "--unsafe":
            unsafe = True
        elif word == "--membership":
            membership = True
        elif word == "--seed":
            value = next(words, None)
            if value is None:
                raise CommandError("--seed needs a number")
            seed = int(parse_number(value, "--seed", high=2**63 - 1))
        elif word.startswith("-") and not word[1:2].isdigit():
            raise CommandError(f"unknown option {word!r}")
        elif not seen_interval:
            interval_s = parse_number(word, "SECONDS", low=MIN_INTERVAL_S, high=MAX_SLEEP_S)
            seen_interval = True
        else:
            raise CommandError(f"unexpected argument {word!r}")
    return ChaosStart(interval_s, unsafe, seed, membership)


@command(
    "chaos",
    "start [SECONDS] [--unsafe] [--membership] [--seed N] | stop",
    "random faults, one per interval, each undone at the next",
    "chaos start 5",
    f"`chaos start [SECONDS]` (default {DEFAULT_INTERVAL_S:g}) makes one random fault every "
    "SECONDS (kill, pause, partition or slow, on one or more nodes) and first undoes the "
    "previous one (start, resume, heal, unslow); each is announced (`chaos: kill b`). At most "
    "a minority of the nodes is faulted at once, nodes already down counted, unless --unsafe "
    "(then any number, quorum lost included). --membership adds membership changes: a member "
    "removed (added back, with an empty disk, at the next step) or replaced (wiped, removed and "
    "added again), the leader too. The seed is printed; --seed N repeats a session. "
    "`chaos stop` undoes the current fault and leaves the cluster whole: every node up and "
    "serving, resumed, healed, no latency; it then waits for a leader. `chaos` alone says "
    "whether it is on. The toolbar shows it while it runs; quit or Ctrl-D stops it.\n"
    "  e.g.  chaos start 2 --seed 42    then    chaos stop",
    Complete.WORDS,
    ("start", "stop"),
)
async def _chaos(repl: Repl, args: list[str]) -> None:
    if not args:
        repl.out.info(repl.chaos.describe() if repl.chaos is not None else "chaos is off")
        return
    if args[0] == "stop":
        repl.no_args(args[1:])
        runner, repl.chaos = repl.chaos, None
        if runner is None:
            raise CommandError("chaos is not running")
        leader = await runner.stop()
        made = runner.chaos.faults_made
        repl.out.info(
            f"chaos: off after {made} fault{'s' if made != 1 else ''}; every node up, healed; "
            f"leader {leader or 'not known yet'}"
        )
        return
    if args[0] != "start":
        raise CommandError(f"expected `chaos start` or `chaos stop`, got {args[0]!r}")
    if repl.chaos is not None:
        raise CommandError(f"chaos is running already ({repl.chaos.describe()}); `chaos stop`")
    start = _parse_chaos_start(args[1:])
    seed = start.seed if start.seed is not None else random.SystemRandom().randrange(1 << 31)
    kinds = ALL_KINDS + (FaultKind.MEMBERSHIP,) * start.membership
    if repl.cluster.network is None:  # no link proxies: no partitions, no latency
        kinds = tuple(k for k in kinds if k not in NETWORK_KINDS)
    chaos = Chaos(
        repl.cluster, seed=seed, kinds=kinds, unsafe=start.unsafe, members=repl.membership
    )
    runner = ChaosRunner(chaos, start.interval_s, repl.out.info)
    repl.out.info(
        f"chaos: on, a fault every {start.interval_s:g} s ({', '.join(k.value for k in kinds)}"
        f"{'; unsafe: any number of nodes' if start.unsafe else '; at most a minority'}), "
        f"seed {seed} (repeat with `{start.command(seed)}`)"
    )
    repl.chaos = runner
    runner.start()


@command(
    "web",
    "",
    "print the live web page's address, with a new one-time secret",
    "web",
    "`supervisor up` serves a live page of the cluster (unless --no-web). Its address carries "
    "a secret that works once, exchanged for a session cookie; `web` prints a new one, for "
    "another browser or after a restart of the browser.",
)
async def _web(repl: Repl, args: list[str]) -> None:
    repl.no_args(args)
    if repl.web is None:
        raise CommandError("the web view is off (`supervisor up` without --no-web serves it)")
    repl.out.info(f"web view: {repl.web.new_url()}")


@command(
    "help",
    "[COMMAND]",
    "list the commands, or explain one",
    "help partition",
    "Without an argument, one line per command; with one, what it does and an example.",
    Complete.COMMAND,
)
async def _help(repl: Repl, args: list[str]) -> None:
    if len(args) > 1:
        raise CommandError("expected at most one command name")
    if args:
        found = find_command(args[0])
        repl.out.info(f"{found.usage}\n  {found.detail}\n  example: {found.example}")
        return
    width = max(len(c.usage) for c in COMMANDS.values())
    lines = [f"  {c.usage.ljust(width)}  {c.summary}" for c in COMMANDS.values()]
    nodes = ", ".join(repl.cluster.node_ids)
    lines.append(f"nodes: {nodes}.  `help COMMAND` explains one, with an example.")
    repl.out.info("\n".join(lines))


@command(
    "quit",
    "",
    "stop every node and leave (also Ctrl-D, Ctrl-C)",
    "quit",
    "Stops every node (SIGTERM, then SIGKILL after a grace period) and exits.",
)
async def _quit(repl: Repl, args: list[str]) -> Outcome:
    repl.no_args(args)
    return Outcome.QUIT


# -- front ends -----------------------------------------------------------------------------


def terminal_mode(stdin: TextIO, stdout: TextIO) -> bool:
    """Whether the interactive (prompt_toolkit) front end can run: stdin and stdout are both
    terminals. Decided before any prompt_toolkit object is made."""
    try:
        return stdin.isatty() and stdout.isatty()
    except (AttributeError, ValueError):
        return False


async def _script_lines(lines: Iterable[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def run_plain(
    cluster: Cluster,
    lines: Iterable[str] | None = None,
    out: Output | None = None,
    web: WebView | None = None,
) -> int:
    """The line-by-line front end: each command echoed and run; 0 if every command succeeded,
    1 otherwise. `lines` None reads stdin. With `web`, the page's buttons run commands here."""
    output = out or PlainOutput()
    repl = Repl(cluster, output)
    cluster.add_exit_listener(repl.announce)
    repl.attach_web(web)
    source: AsyncIterator[str] = LineReader(sys.stdin) if lines is None else _script_lines(lines)
    try:
        async for raw in source:
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            output.info(prompt(cluster.config.cluster) + line)
            if await repl.execute(line) is Outcome.QUIT:
                break
    finally:
        repl.attach_web(None)
        await repl.close()
    return 1 if repl.failures else 0


class _Capture:
    """An Output that passes everything on and keeps a copy (a web command's answer)."""

    def __init__(self, inner: Output) -> None:
        self.inner = inner
        self.lines: list[str] = []

    def info(self, text: str) -> None:
        self.lines.append(text)
        self.inner.info(text)

    def error(self, text: str) -> None:
        self.lines.append(text)
        self.inner.error(text)

    def event(self, text: str) -> None:
        self.inner.event(text)


class TerminalOutput:
    """prompt_toolkit output: printed above the prompt, errors in red."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def info(self, text: str) -> None:
        from prompt_toolkit import print_formatted_text

        print_formatted_text(text)

    def error(self, text: str) -> None:
        from prompt_toolkit import print_formatted_text
        from prompt_toolkit.formatted_text import FormattedText

        print_formatted_text(FormattedText([("ansired", text)]))

    def event(self, text: str) -> None:
        from prompt_toolkit import print_formatted_text
        from prompt_toolkit.formatted_text import FormattedText

        def show() -> None:
            print_formatted_text(FormattedText([("ansired bold", "!! " + text)]))

        self._loop.call_soon_threadsafe(show)


def make_completer(cluster: Cluster) -> Any:
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion
    from prompt_toolkit.document import Document

    class CommandCompleter(Completer):
        """Commands first; then node ids, command names or a command's own words."""

        def get_completions(
            self, document: Document, complete_event: CompleteEvent
        ) -> Iterator[Completion]:
            text = document.text_before_cursor
            words = text.split()
            if not text.strip() or (len(words) == 1 and not text.endswith(" ")):
                prefix = words[0] if words else ""
                for name in COMMANDS:
                    if name.startswith(prefix):
                        yield Completion(name, -len(prefix), display_meta=COMMANDS[name].summary)
                return
            found = COMMANDS.get(ALIASES.get(words[0], words[0]))
            if found is None:
                return
            # The word being typed: after the last space, comma or bar.
            current = ""
            for char in reversed(text):
                if char in " ,|":
                    break
                current = char + current
            position = len(words) - 1 if text.endswith(" ") else len(words) - 2
            candidates: Sequence[str] = ()
            node_word = found.complete is Complete.NODE and position == 0
            if node_word or found.complete is Complete.NODES:
                candidates = cluster.node_ids
            elif found.complete is Complete.COMMAND and position == 0:
                candidates = list(COMMANDS)
            elif found.complete is Complete.WORDS and position == 0:
                candidates = found.words
            for candidate in candidates:
                if candidate.startswith(current):
                    yield Completion(candidate, -len(current))

    return CommandCompleter()


async def run_terminal(
    cluster: Cluster, history_path: Path | None = None, web: WebView | None = None
) -> int:
    """The interactive front end (stdin and stdout must be terminals). Ends on `quit`,
    Ctrl-D or Ctrl-C; returns 0."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.formatted_text import FormattedText
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout
    from prompt_toolkit.styles import Style

    loop = asyncio.get_running_loop()
    output = TerminalOutput(loop)
    repl = Repl(cluster, output)
    cluster.add_exit_listener(repl.announce)
    repl.attach_web(web)
    history_path = history_path or cluster.data_dir / HISTORY_NAME
    try:
        history: Any = FileHistory(str(history_path))
    except OSError:
        history = InMemoryHistory()
    style = Style.from_dict(
        {
            "bottom-toolbar": "noreverse bg:#202020 #d0d0d0",
            "toolbar.leader": "bg:ansigreen #000000 bold",
            "toolbar.follower": "bg:#303030 #d0d0d0",
            "toolbar.other": "bg:ansiyellow #000000",
            "toolbar.paused": "bg:ansiblue #ffffff",
            "toolbar.down": "bg:ansired #ffffff",
            "toolbar.partition": "bg:ansimagenta #ffffff",
            "toolbar.chaos": "bg:ansired #ffffff bold",
        }
    )
    session: PromptSession[str] = PromptSession(
        history=history,
        completer=make_completer(cluster),
        complete_while_typing=True,
        bottom_toolbar=lambda: FormattedText(repl.toolbar_fragments()),
        refresh_interval=TOOLBAR_REFRESH_S,
        style=style,
    )

    async def poll_view() -> None:
        while True:
            with contextlib.suppress(SupervisorError):
                await repl.refresh_view()
            await asyncio.sleep(TOOLBAR_REFRESH_S)

    with patch_stdout(raw=True):
        poller = asyncio.create_task(poll_view())
        try:
            output.info(
                f"cluster {cluster.config.cluster}: {len(cluster.node_ids)} nodes up; "
                "`help` lists the commands, Tab completes, Ctrl-D quits."
            )
            while True:
                try:
                    line = await session.prompt_async(prompt(cluster.config.cluster))
                except (EOFError, KeyboardInterrupt):
                    break
                if await repl.execute(line) is Outcome.QUIT:
                    break
        finally:
            repl.attach_web(None)
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await repl.close()
    return 0
