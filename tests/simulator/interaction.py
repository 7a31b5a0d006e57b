"""Transcript tests in the manner of etcd's raft/testdata/*.txt (cockroachdb/datadriven).

A transcript is a text file of blocks. Each block is a command, a line `----`, and the output
the command must produce, ended by a blank line; lines starting with `#` are comments:

    change a add-learner d
    ----
    index 4

The commands drive a SimCluster with manual ticks and a one-unit network, so every step is
deterministic, and its SafetyChecker watches every step. CHATBOOTH_REWRITE=1 rewrites the
files with what the commands printed (then read the diff before committing it).

Commands (X, Y: node ids):
  cluster voters=a,b,c [spares=d,e]    a cluster; spares run with no configuration
  elect X          X campaigns after every other node's lease expired; everything settles
  win X            X campaigns; stop as soon as it leads (its first entries not yet out)
  campaign X       X campaigns as its election timer would; everything settles
  propose X DATA   a proposal at X
  change X OP Y    a membership change at X: OP is add-learner, promote or remove
  settle           deliver every message and fsync in flight
  tick X [N]       N ticks (default 1) at X, settling after each
  ticks N          N ticks at every live node, settling after each
  partition X,Y Z  cut the network into the groups given
  heal             join them again
  crash X          a process crash of X (it stays down)
  restart X        X starts again from its disk
  compact X        X snapshots everything it applied and compacts its log
  snapshot X       the snapshot X's log starts from
  status [X ...]   one line per node (all by default)
  progress X       leader X's view of each replica
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.raft.errors import RaftError
from node.raft.types import ConfChange, ConfChangeOp, NodeId, Role
from tests.simulator.harness import SimCluster

SEPARATOR = "----"


@dataclass
class Block:
    comments: list[str]
    command: str
    expected: list[str]


def parse(text: str, path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    comments: list[str] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            comments.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise ValueError(f"{path}:{i + 2}: expected {SEPARATOR!r} after the command {line!r}")
        i += 2
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        i += 1  # the blank line that ends the block
        blocks.append(Block(comments, line, expected))
        comments = []
    if comments:
        blocks.append(Block(comments, "", []))
    return blocks


def render(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        out.extend(b.comments)
        if b.command:
            out.extend([b.command, SEPARATOR, *b.expected, ""])
    return "\n".join(out).rstrip("\n") + "\n"


class Interaction:
    def __init__(self) -> None:
        self.c: SimCluster | None = None

    @property
    def cluster(self) -> SimCluster:
        if self.c is None:
            raise ValueError("no cluster yet: start with `cluster voters=...`")
        return self.c

    def run(self, command: str) -> list[str]:
        name, *args = command.split()
        handler: Callable[[list[str]], list[str]] | None = getattr(
            self, "do_" + name.replace("-", "_"), None
        )
        if handler is None:
            raise ValueError(f"unknown command {name!r}")
        return handler(args)

    # ----- commands

    def do_cluster(self, args: list[str]) -> list[str]:
        opts = dict(a.split("=", 1) for a in args)
        voters = opts["voters"].split(",")
        spares = opts["spares"].split(",") if "spares" in opts else []
        c = SimCluster(len(voters), seed=1, auto_tick=False, spares=len(spares))
        if c.ids != [*voters, *spares]:
            raise ValueError(f"nodes are named {','.join(c.ids)} in order")
        c.delay = (1, 1)
        c.persist_delay = 0
        self.c = c
        return self.status([])

    def _expire(self, nid: NodeId) -> None:
        core = self.cluster.nodes[nid].core
        if core is not None:
            core._election_elapsed = core.config.election_ticks_min

    def do_elect(self, args: list[str]) -> list[str]:
        c = self.cluster
        for n in c.ids:
            self._expire(n)
        c.core(args[0]).campaign()
        c.settle()
        return self.status([args[0]])

    def do_win(self, args: list[str]) -> list[str]:
        c = self.cluster
        for n in c.ids:
            self._expire(n)
        c.core(args[0]).campaign()
        c.run_until_true(lambda: c.core(args[0]).role is Role.LEADER, strict=False)
        return self.status([args[0]])

    def do_campaign(self, args: list[str]) -> list[str]:
        c = self.cluster
        c.core(args[0]).campaign()
        c.settle()
        return self.status([])

    def do_propose(self, args: list[str]) -> list[str]:
        c = self.cluster
        try:
            index, _ = c.core(args[0]).propose(args[1].encode())
        except RaftError as exc:
            return [f"refused: {exc}"]
        c.drain_all()
        return [f"index {index}"]

    def do_change(self, args: list[str]) -> list[str]:
        c = self.cluster
        nid, op, node = args
        try:
            index, _ = c.core(nid).propose_conf_change(ConfChange(ConfChangeOp(op), NodeId(node)))
        except RaftError as exc:
            return [f"refused: {exc}"]
        c.drain_all()
        return [f"index {index}"]

    def do_settle(self, args: list[str]) -> list[str]:
        self.cluster.settle()
        return ["ok"]

    def do_tick(self, args: list[str]) -> list[str]:
        c = self.cluster
        for _ in range(int(args[1]) if len(args) > 1 else 1):
            c.tick(NodeId(args[0]))
            c.settle()
        return self.status([])

    def do_ticks(self, args: list[str]) -> list[str]:
        c = self.cluster
        for _ in range(int(args[0])):
            for nid in c.ids:
                c.tick(nid)
            c.settle()
        return self.status([])

    def do_partition(self, args: list[str]) -> list[str]:
        self.cluster.partition(*[[NodeId(n) for n in g.split(",")] for g in args])
        return ["ok"]

    def do_heal(self, args: list[str]) -> list[str]:
        self.cluster.heal()
        return ["ok"]

    def do_crash(self, args: list[str]) -> list[str]:
        self.cluster.crash(NodeId(args[0]), torn=False)
        return ["ok"]

    def do_restart(self, args: list[str]) -> list[str]:
        self.cluster.restart(NodeId(args[0]))
        self.cluster.settle()
        return self.status([args[0]])

    def do_compact(self, args: list[str]) -> list[str]:
        self.cluster.nodes[NodeId(args[0])].maybe_compact(keep=0)
        return self.do_snapshot(args)

    def do_snapshot(self, args: list[str]) -> list[str]:
        meta = self.cluster.core(args[0]).log.snapshot
        if meta is None:
            return ["no snapshot"]
        return [
            f"snapshot {meta.index} t{meta.term} voters {_names(meta.conf.voters)} "
            f"learners {_names(meta.conf.learners)}"
        ]

    def do_status(self, args: list[str]) -> list[str]:
        return self.status(args)

    def do_progress(self, args: list[str]) -> list[str]:
        core = self.cluster.core(args[0])
        if core.role is not Role.LEADER:
            return [f"{args[0]} is not the leader"]
        out = []
        for peer in sorted(core.conf.members()):
            pr = core.progress(peer)
            if peer == core.id or pr is None:
                continue
            role = "voter" if peer in core.conf.voters else "learner"
            out.append(f"{peer}: {role} match {pr.match} next {pr.next} {pr.state.value}")
        return out

    # ----- output

    def status(self, nids: list[str]) -> list[str]:
        c = self.cluster
        out = []
        for nid in nids or c.ids:
            node = c.nodes[NodeId(nid)]
            core = node.core
            if core is None:
                out.append(f"{nid}: down")
                continue
            out.append(
                f"{nid}: {core.role.value} t{core.term} last {core.log.last_index()} "
                f"commit {core.log.committed} applied {node.sm.applied} "
                f"voters {_names(core.conf.voters)} learners {_names(core.conf.learners)}"
            )
        return out


def _names(ids: tuple[NodeId, ...]) -> str:
    return ",".join(ids) or "-"


def run_file(path: Path) -> tuple[str, str]:
    """(the file's text, the text its commands produce); equal when the transcript holds."""
    text = path.read_text()
    blocks = parse(text, path)
    interaction = Interaction()
    for b in blocks:
        if b.command:
            b.expected = interaction.run(b.command)
    actual = render(blocks)
    if os.environ.get("CHATBOOTH_REWRITE") == "1" and actual != text:
        path.write_text(actual)
    return text, actual
