"""Membership changes under load (issue 14, "Tests and figures"): `python -m benchmarks.membership
[--messages N] [--quick] --json` prints one JSON object.

What it does. A 3-node cluster (the repository's cluster.yaml moved to free ports and a temporary
directory; TLS and fsync on; node-to-node links through the supervisor's proxies, as `up` runs
them) is filled with N 100-character messages (default 100,000) exactly as benchmarks.scale
fills it. Then 64 sends stay in flight (64 workers, raw gRPC through supervisor/sender.py, never
client/) while, after BASELINE_S seconds:

1. `add d`: a new member gets ports, a certificate and peers files, is added as a learner,
   started empty, catches up (by snapshot: the log is compacted) and is promoted;
2. SETTLE_S seconds later, `replace b`: follower b is killed, wiped, removed, added again as a
   new incarnation, catches up and is promoted;
3. the load runs SETTLE_S seconds more and stops.

The changes run on the main thread's event loop through supervisor.membership (its blocking
steps in threads, the new process spawned here: TRAPS, PR_SET_PDEATHSIG).

Figures:
- add_learner_s: from the start of `add d` until the leader applied its ADD_LEARNER entry (ports,
  certificate, peers files, the change itself); add_s: until d is a voter. Target: add_s <= 5 s
  at 100,000 messages;
- replace_s: `replace b` end to end (kill, wipe, remove, add, catch up, promote);
- sends_per_s: sends answered in each whole second of the load, from its start (the timeline:
  add_at_s, replace_at_s and their ends place the changes on it); baseline_sends_per_s: the
  median second before the add; during_add and during_replace: sends per second over each
  change, the lowest whole second inside it, and that as a fraction of the baseline;
- checks: every send of the load answered with a distinct id; d's and b's databases (read-only)
  hold every message sent; the nodes' state digests agree at one applied index; leader_changes
  (term increases seen through Status) over the whole run.

--quick: N = 2,000, a snapshot every 500 entries, shorter phases (tests/test_membership_bench.py
runs it).

Imports node.config, benchmarks.scale (the fill and its checks), benchmarks.cluster and the
supervisor's library; never client, never node internals.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from benchmarks.cluster import bench_cluster
from benchmarks.scale import (
    GIVE_UP_S,
    INFLIGHT,
    QUICK_MESSAGES,
    QUICK_SNAPSHOT_ENTRIES,
    SEND_TIMEOUT_S,
    Plan,
    Sampler,
    fill,
    new_plan,
    set_up,
    stored_messages,
    text_of,
    wait_idle,
)
from node.config import ClusterConfig
from supervisor.bench import BenchError
from supervisor.cluster import Cluster
from supervisor.membership import Membership
from supervisor.sender import Sender

DEFAULT_MESSAGES: Final = 100_000
BASELINE_S: Final = 5.0
SETTLE_S: Final = 8.0
QUICK_BASELINE_S: Final = 2.0
QUICK_SETTLE_S: Final = 3.0
ADDED: Final = "d"

T = TypeVar("T")


@dataclass(slots=True)
class Load:
    """The sends of the load phase: when each was answered (monotonic), and the ids."""

    started: float = 0.0
    answered_at: list[float] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def per_second(self, until: float) -> list[int]:
        seconds = [0] * max(1, int(until - self.started))
        for at in self.answered_at:
            slot = int(at - self.started)
            if 0 <= slot < len(seconds):
                seconds[slot] += 1
        return seconds

    def rate(self, start: float, end: float) -> float:
        """Sends per second answered in [start, end) (monotonic times)."""
        count = sum(1 for at in self.answered_at if start <= at < end)
        return count / max(end - start, 1e-9)


async def steady_load(plan: Plan, addresses: dict[str, str], cluster: Cluster, load: Load) -> None:
    """INFLIGHT workers, each with one send in flight, until load.stop is set. Each sends as
    its two ordinary senders in turn (the scale plan's pairs); nobody subscribes meanwhile (the
    messages wait in their queues, which are checked as stored)."""
    tls = cluster.credentials
    leader = cluster.wait_leader(15)
    first = plan.sent

    async def worker(k: int) -> None:
        async with Sender(
            addresses, leader=leader, call_timeout_s=SEND_TIMEOUT_S, ids=plan.ids[k], tls=tls
        ) as sender:
            j = 0
            while not load.stop.is_set():
                pair = 2 * k + j % 2
                token = plan.sender_tokens[plan.senders[pair]]
                reply = await sender.send(
                    token,
                    plan.recipients[pair].name,
                    text_of(first + j * INFLIGHT + k),
                    timeout_s=GIVE_UP_S,
                )
                load.answered_at.append(time.monotonic())
                load.ids.add(reply.message_id)
                j += 1

    load.started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(INFLIGHT)))
    plan.sent += len(load.ids)


@dataclass(frozen=True, slots=True)
class Change:
    started: float
    learner_at: float  # the learner's entry applied on the leader
    ended: float


async def timed_join(membership: Membership, node: str, prepare: Callable[[str], None]) -> Change:
    """membership.join_from_loop's steps, each timed: prepare (the ADD_LEARNER change
    included) in a thread, the spawn here, the catch-up and promotion in a thread."""
    started = time.monotonic()
    await asyncio.to_thread(prepare, node)
    learner_at = time.monotonic()
    membership.cluster.start_node(node, wait=False)
    await asyncio.to_thread(membership.finish_join, node)
    return Change(started, learner_at, time.monotonic())


async def load_with_changes(
    plan: Plan,
    cluster: Cluster,
    baseline_s: float,
    settle_s: float,
    replaced: str,
) -> tuple[Load, Change, Change]:
    membership = Membership(cluster)
    addresses = await asyncio.to_thread(membership.client_addresses)
    load = Load()
    sending = asyncio.create_task(steady_load(plan, addresses, cluster, load))
    try:
        await _while_sending(sending, asyncio.sleep(baseline_s))
        add = await _while_sending(sending, timed_join(membership, ADDED, membership.prepare_add))
        await _while_sending(sending, asyncio.sleep(settle_s))
        replace = await _while_sending(
            sending, timed_join(membership, replaced, membership.prepare_replace)
        )
        await _while_sending(sending, asyncio.sleep(settle_s))
    finally:
        load.stop.set()
    await sending
    return load, add, replace


async def _while_sending(sending: asyncio.Task[None], step: Awaitable[T]) -> T:
    """step's result; the load's error instead if the load fails first."""
    task = asyncio.ensure_future(step)
    await asyncio.wait({task, sending}, return_when=asyncio.FIRST_COMPLETED)
    if sending.done() and not task.done():
        task.cancel()
        sending.result()  # raises what stopped the load
        raise BenchError("the load stopped before the membership changes were done")
    return await task


def _during(load: Load, change: Change, baseline: float) -> dict[str, Any]:
    seconds = load.per_second(change.ended)
    first = int(change.started - load.started) + 1  # whole seconds inside the change
    last = int(change.ended - load.started)
    inside = seconds[first:last]
    lowest = min(inside) if inside else None
    return {
        "sends_per_s": round(load.rate(change.started, change.ended), 1),
        "lowest_whole_second": lowest,
        "lowest_vs_baseline": None if lowest is None else round(lowest / baseline, 2),
    }


def run(config: ClusterConfig, messages: int, *, quick: bool) -> dict[str, Any]:
    """Fill, then change the membership under load; the result document. BenchError if a
    check fails. Main thread only (nodes are spawned here)."""
    if quick:
        policy = dataclasses.replace(config.snapshot, entries=QUICK_SNAPSHOT_ENTRIES)
        config = dataclasses.replace(config, snapshot=policy)
    baseline_s, settle_s = (QUICK_BASELINE_S, QUICK_SETTLE_S) if quick else (BASELINE_S, SETTLE_S)
    result: dict[str, Any] = {
        "benchmark": "membership",
        "messages": messages,
        "quick": quick,
        "inflight": INFLIGHT,
        "text_chars": 100,
        "snapshot_policy": dataclasses.asdict(config.snapshot),
        "tls": "plaintext" if config.plaintext else "on",
        "links": "proxies",
    }
    plan = new_plan()
    with tempfile.TemporaryDirectory(prefix="chatbooth-membership-") as tmp:
        config = dataclasses.replace(config, data_dir=Path(tmp) / "data", cluster_key_file=None)
        with Cluster(config, fresh=True) as cluster:
            sampler = Sampler(cluster)
            leader = cluster.wait_leader()
            sampler.sample()
            first_term = min(sampler.terms)
            sampler.start()
            addresses = {x: cluster.address(x) for x in cluster.node_ids}
            replaced = next(x for x in cluster.node_ids if x != leader)
            asyncio.run(set_up(plan, addresses, leader, cluster))
            filled = asyncio.run(fill(plan, addresses, leader, cluster, messages, 0))
            if len(filled.message_ids) != messages:
                raise BenchError(f"{messages} sent, {len(filled.message_ids)} distinct ids")
            wait_idle(cluster, sampler)
            result["fill_sends_per_s"] = round(messages / filled.seconds, 1)

            load, add, replace = asyncio.run(
                load_with_changes(plan, cluster, baseline_s, settle_s, replaced)
            )
            ended = load.answered_at[-1] if load.answered_at else time.monotonic()
            sent = len(load.answered_at)
            if len(load.ids) != sent:
                raise BenchError(f"{sent} sends of the load answered, {len(load.ids)} ids")
            wait_idle(cluster, sampler)
            total = messages + sent
            for node in (ADDED, replaced):
                stored = stored_messages(cluster, node)
                if stored != total:
                    raise BenchError(f"{node} holds {stored} messages, not {total}")
            digests = {s.digest for s in cluster.status(digest=True)}
            if len(digests) != 1 or None in digests:
                raise BenchError(f"the nodes' digests differ: {sorted(map(str, digests))}")
            seconds = load.per_second(ended)
            before = seconds[: int(add.started - load.started)]
            baseline = statistics.median(before) if before else 1.0
            result |= {
                "load_sends": sent,
                "add_node": ADDED,
                "add_learner_s": round(add.learner_at - add.started, 3),
                "add_s": round(add.ended - add.started, 3),
                "replace_node": replaced,
                "replace_s": round(replace.ended - replace.started, 3),
                "baseline_sends_per_s": baseline,
                "during_add": _during(load, add, baseline),
                "during_replace": _during(load, replace, baseline),
                "add_at_s": round(add.started - load.started, 2),
                "add_end_s": round(add.ended - load.started, 2),
                "replace_at_s": round(replace.started - load.started, 2),
                "replace_end_s": round(replace.ended - load.started, 2),
                "sends_per_s": seconds,
                "stored_check": f"SELECT count(*) FROM messages in {ADDED}'s and {replaced}'s "
                "databases (read-only) = every message sent; one digest on every node",
                "members": list(cluster.node_ids),
            }
            sampler.stop.set()
            sampler.join()
            sampler.sample()
            result["leader_changes"] = max(sampler.terms) - first_term
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.membership",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--messages", type=int, help=f"N, the fill (default {DEFAULT_MESSAGES:,})")
    p.add_argument("--quick", action="store_true", help=f"N = {QUICK_MESSAGES:,}, short phases")
    p.add_argument("--json", action="store_true", help="one JSON object (the only output form)")
    p.add_argument("--config", type=Path, help="a cluster.yaml (default: the repository's)")
    args = p.parse_args(argv)
    messages = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    if messages < 2 * INFLIGHT:
        p.error(f"--messages must be at least {2 * INFLIGHT}")
    with tempfile.TemporaryDirectory(prefix="chatbooth-membership-config-") as tmp:
        config = bench_cluster(Path(tmp), source=args.config)
        try:
            result = run(config, messages, quick=args.quick)
        except BenchError as error:
            print(f"membership: failed: {error}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
