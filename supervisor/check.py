"""`python -m supervisor check cluster.yaml`: random faults, then a proof that nothing
acknowledged was lost, doubled or reordered.

It starts the cluster of cluster.yaml (same nodes and ports, data in a temporary directory,
so the cluster's own data is never touched), runs --clients clients that send numbered
messages to each other and read their history, and injects one fault per --interval from
--nemesis (kill, pause, partition; at most a minority at once), undoing it at the next step.
membership changes the members while the clients go on (supervisor.membership): either it
removes one member (stopping it: its clients must move on), and the undoing adds it back as a
new incarnation, or it wipes one member's disk and replaces it (remove, add as a new
incarnation, catch up, promote), which needs no undoing.
The schedule comes from --seed, printed, so a run can be repeated. Then it heals everything,
drains every inbox, checks the history (supervisor.history) and that every node's state
digest is identical, prints the verdict, the counts and the timeline, and exits non-zero on a
violation.

With --report DIR it also samples every node's role and term while it runs (a thread of its own)
and writes DIR/report.html (supervisor.report): the latency of every send and read over time
with the faults shaded, throughput, roles and terms, the verdict. Every operation's start, end
and outcome and every fault's interval are recorded either way (a small value each).

The clients speak gRPC through supervisor/sender.py, not the chat client library: a send whose
outcome is unknown is resent with its one request id until it is answered, and is recorded as
unknown only if it never is; only a definite refusal records it as failed.

A tool on top of the supervisor library: imports node.config, supervisor.cluster,
supervisor.history, supervisor.membership, supervisor.report and supervisor.sender; never client
or node internals.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from node.config import ClusterConfig, load_config
from supervisor.certs import Credentials
from supervisor.cluster import Cluster
from supervisor.history import Delivery, Outcome, ReadRecord, SendRecord, check, render
from supervisor.membership import Membership, MembershipError
from supervisor.report import (
    FaultLog,
    Operation,
    ReportError,
    RoleSampler,
    describe_written,
    prepare_report_dir,
    write_report,
)
from supervisor.sender import OutcomeUnknownError, RefusedError, Sender, SenderError

NEMESES = ("kill", "pause", "partition", "membership")
PASSWORD: Final = "pw"
SETUP_TIMEOUT_S: Final = 20.0  # registering and logging in, on a healthy cluster
READ_TIMEOUT_S: Final = 5.0
# How long after the last fault step a send still without an answer keeps being resent (with
# its one request id) before it is recorded as unknown.
SETTLE_S: Final = 20.0
RETRY_PAUSE_S: Final = 0.02
DRAIN_IDLE_S: Final = 2.0  # an inbox is read until its stream stays quiet this long


@dataclass
class Run:
    started: float = field(default_factory=time.monotonic)
    sends: list[SendRecord] = field(default_factory=list)
    reads: list[ReadRecord] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)  # every send and read, for --report
    timeline: list[str] = field(default_factory=list)
    failed_changes: list[str] = field(default_factory=list)  # membership changes not done
    faults: FaultLog = field(init=False)  # keyed by node id, or "partition"

    def __post_init__(self) -> None:
        self.faults = FaultLog(self.now)

    def now(self) -> float:
        return time.monotonic() - self.started

    def event(self, text: str) -> None:
        line = f"{self.now():7.2f}s  {text}"
        self.timeline.append(line)
        print(line, flush=True)


def scratch_config(config: ClusterConfig, directory: Path) -> ClusterConfig:
    """The same cluster (nodes, ports, timings) with its data in `directory` and a key of its
    own (written there when the cluster starts, unless the file gives one inline)."""
    return dataclasses.replace(config, data_dir=directory / "data", cluster_key_file=None)


async def sender(
    run: Run,
    nodes: dict[str, str],
    tls: Credentials | None,
    user: str,
    users: list[str],
    until: float,
    seed: int,
) -> None:
    """Numbered sends to random others until `until` (run time), one at a time, and a read of
    the history with one partner every tenth send. A send is resent with its one request id
    until it is answered; one still unanswered SETTLE_S after `until` is recorded as unknown,
    and then this sender stops, so that no later send of its can overtake it."""
    rng = random.Random(seed)
    others = [u for u in users if u != user] or [user]
    partner = others[0]
    async with Sender(nodes, retry_pause_s=RETRY_PAUSE_S, tls=tls) as client:
        token = await client.login(user, PASSWORD, timeout_s=SETUP_TIMEOUT_S)
        n = 0
        while run.now() < until:
            n += 1
            text, to = f"{user}#{n}", rng.choice(others)
            start = run.now()
            outcome, mid = Outcome.OK, None
            try:
                reply = await client.send(token, to, text, timeout_s=until + SETTLE_S - start)
                mid = reply.message_id
            except RefusedError:
                outcome = Outcome.FAILED  # definite: it was not applied
            except OutcomeUnknownError:
                outcome = Outcome.UNKNOWN
            end = run.now()
            run.sends.append(SendRecord(user, to, text, start, end, outcome, mid))
            run.operations.append(Operation("send", start, end, outcome, client.target))
            if outcome is Outcome.UNKNOWN:
                return
            if n % 10 == 0:
                start, read = run.now(), Outcome.OK
                try:
                    seen = await client.history(token, partner, timeout_s=READ_TIMEOUT_S)
                except SenderError:
                    read = Outcome.FAILED  # a read changes nothing: unanswered, it failed
                else:
                    newest = max((m.id for m in seen), default=0)
                    run.reads.append(ReadRecord(user, start, run.now(), newest))
                run.operations.append(Operation("read", start, run.now(), read, client.target))


async def drain(
    run: Run,
    nodes: dict[str, str],
    tls: Credentials | None,
    user: str,
    idle_s: float = DRAIN_IDLE_S,
) -> None:
    """Every message queued for user, read once (nothing acked)."""
    async with Sender(nodes, retry_pause_s=RETRY_PAUSE_S, tls=tls) as client:
        token = await client.login(user, PASSWORD, timeout_s=SETUP_TIMEOUT_S)
        start = run.now()
        for m in await client.messages(token, idle_s=idle_s, timeout_s=60.0):
            run.deliveries.append(Delivery(m.recipient, m.id, m.sender, m.text))
        run.operations.append(Operation("drain", start, run.now(), Outcome.OK, client.target))


async def nemesis_step(
    cluster: Cluster, run: Run, rng: random.Random, kinds: list[str], faulted: dict[str, str]
) -> None:
    """Undo the current fault, or make a new one. A membership change waits in a thread (for
    the change to commit, a new member to catch up) while the clients go on; it is the only
    Cluster caller then."""
    ids = list(cluster.node_ids)
    if faulted or cluster.groups is not None:
        for node, how in sorted(faulted.items()):
            if how == "kill":
                cluster.start_node(node, wait=False)
                run.event(f"start {node}")
            elif how == "remove":
                await _join(cluster, run, node, "add")
            else:
                cluster.resume(node)
                run.event(f"resume {node}")
            run.faults.end(node)
        faulted.clear()
        if cluster.groups is not None:
            cluster.heal()
            run.event("heal")
            run.faults.end("partition")
        return
    kind = rng.choice(kinds)
    if kind == "membership":
        node = rng.choice(ids)
        if rng.random() < 0.5:
            await _join(cluster, run, node, "replace")
            return
        run.event(f"remove {node}")
        run.faults.begin(node, f"remove {node}")  # until it is a voter again
        try:
            await asyncio.to_thread(Membership(cluster).remove, node)
        except MembershipError as exc:
            run.event(f"remove {node} failed: {exc}")
            run.failed_changes.append(f"remove {node}: {exc}")
            run.faults.end(node, " (failed)")
            return
        faulted[node] = "remove"
        return
    count = rng.randint(1, max((len(ids) - 1) // 2, 1))
    victims = sorted(rng.sample(ids, count))
    if kind == "partition":
        rest = [n for n in ids if n not in victims]
        cluster.partition(victims, rest)
        run.event(f"partition {','.join(victims)} | {','.join(rest)}")
        run.faults.begin("partition", f"partition {','.join(victims)} | {','.join(rest)}")
        return
    for node in victims:
        if kind == "kill":
            cluster.kill(node)
        else:
            cluster.pause(node)
        faulted[node] = kind
        run.event(f"{kind} {node}")
        run.faults.begin(node, f"{kind} {node}")


async def _join(cluster: Cluster, run: Run, node: str, how: str) -> None:
    """`add` a removed member back, or `replace` one (its disk wiped), as a new incarnation."""
    membership = Membership(cluster)
    run.event(f"{how} {node}" + (" (its disk wiped)" if how == "replace" else ""))
    if how == "replace":
        run.faults.begin(node, f"replace {node}")  # an add closes the removal's interval
    try:
        prepare = membership.prepare_replace if how == "replace" else membership.prepare_add
        view = await membership.join_from_loop(node, prepare)
    except MembershipError as exc:
        run.event(f"{how} {node} failed: {exc}")
        run.failed_changes.append(f"{how} {node}: {exc}")
        run.faults.end(node, f" ({how} failed)")
        return
    run.faults.end(node)
    member = view.member(node)
    run.event(f"{node} is a voter again, incarnation {member.incarnation if member else '?'}")


async def run_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    kinds = [k.strip() for k in args.nemesis.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in NEMESES]
    if unknown or not kinds:
        print(f"check: --nemesis takes {', '.join(NEMESES)}; got {args.nemesis!r}", file=sys.stderr)
        return 2
    if args.report is not None:
        try:
            prepare_report_dir(args.report)  # a bad directory is an error before the run
        except ReportError as exc:
            print(f"check: --report: {exc}", file=sys.stderr)
            return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(
        f"check: seed {seed} (repeat with --seed {seed}), {args.clients} clients, "
        f"{args.duration:g} s, nemesis {','.join(kinds)} every {args.interval:g} s",
        flush=True,
    )
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="chatbooth-check-"))
    run = Run()
    started = datetime.datetime.now().astimezone()
    sampler: RoleSampler | None = None
    try:
        with Cluster(scratch_config(config, tmp), fresh=True) as cluster:
            run.event(f"cluster up, leader {cluster.wait_leader(30)}")
            if args.report is not None:
                sampler = RoleSampler(lambda: cluster.status(timeout_s=0.3), run.now)
                sampler.start()
            users = [f"user{i}" for i in range(args.clients)]
            tls = cluster.credentials
            nodes = Membership(cluster).client_addresses()  # the members, from Members
            async with Sender(nodes, retry_pause_s=RETRY_PAUSE_S, tls=tls) as setup:
                for u in users:
                    await setup.register(u, PASSWORD, timeout_s=SETUP_TIMEOUT_S)
            until = run.now() + args.duration
            tasks = [
                asyncio.create_task(sender(run, nodes, tls, u, users, until, seed + i))
                for i, u in enumerate(users)
            ]
            faulted: dict[str, str] = {}
            while run.now() < until:
                await asyncio.sleep(args.interval)
                if run.now() < until:
                    await nemesis_step(cluster, run, rng, kinds, faulted)
            if faulted or cluster.groups is not None:
                await nemesis_step(cluster, run, rng, kinds, faulted)  # undo the last fault
            run.event(f"faults over; leader {cluster.wait_leader(30)}")
            await asyncio.gather(*tasks)
            run.event("senders done; draining every inbox")
            nodes = await asyncio.to_thread(Membership(cluster).client_addresses)
            for u in users:
                await drain(run, nodes, tls, u)
            digests_equal = await _digests_agree(cluster, run)
            if sampler is not None:
                sampler.stop()  # while the cluster still answers
    finally:
        if sampler is not None:
            sampler.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    verdict = check(run.sends, run.deliveries, run.reads)
    if not digests_equal:
        verdict.violations.append("the nodes' state digests differ at the same applied index")
    for failed in run.failed_changes:  # not a lost write, but the cluster did not heal
        verdict.violations.append(f"a membership change did not complete: {failed}")
    print("\ntimeline:")
    print("\n".join(f"  {line}" for line in run.timeline))
    print()
    print(render(verdict))
    if args.report is not None and sampler is not None:
        params = {
            "seed": f"{seed} (repeat with --seed {seed})",
            "nemesis": f"{','.join(kinds)} every {args.interval:g} s",
            "duration": f"{args.duration:g} s",
            "clients": f"{args.clients}, each sending numbered messages one at a time",
            "operations": "send: one message, resent with its request id until answered; "
            "read: History with a partner, every tenth send; drain: an inbox read to its end "
            f"after the faults (quiet for {DRAIN_IDLE_S:g} s at its end)",
            "cluster": f"{config.path} ({len(config.nodes)} nodes: {', '.join(config.node_ids)})",
            "started": started.isoformat(timespec="seconds"),
        }
        try:
            path = write_report(
                args.report,
                f"chatbooth check: {'PASS' if verdict.ok else 'FAIL'}, seed {seed}",
                params,
                run.operations,
                run.faults.intervals(),
                sampler.samples,
                verdict=verdict,
                timeline=run.timeline,
            )
        except ReportError as exc:
            print(f"check: --report: {exc}", file=sys.stderr)
            return 1
        print(describe_written(path), flush=True)
    return 0 if verdict.ok else 1


async def _digests_agree(cluster: Cluster, run: Run, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = cluster.status(digest=True)
        applied = {s.applied_index for s in statuses}
        digests = {s.digest for s in statuses}
        if None not in applied and len(applied) == 1 and len(digests) == 1:
            run.event(f"every node at applied index {applied.pop()}, one digest")
            return True
        await asyncio.sleep(0.2)
    return False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="cluster.yaml (its data directory is not touched)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults and traffic")
    p.add_argument("--nemesis", default="kill,pause,partition", help="comma-separated faults")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--interval", type=float, default=3.0, help="seconds between fault steps")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write DIR/report.html: latency, throughput, roles and faults over time, the "
        "verdict (one self-contained file)",
    )
