"""The chat state at scale (issue 13, "Speed and scale"): `python -m benchmarks.scale --messages N
[--quick] [--json]` prints one JSON object; `python -m supervisor bench cluster.yaml --scale N`
runs this module on a given cluster.yaml.

Why: the state used to live in Python objects and every cost (memory, snapshots, restarts, the
digest) grew with the stored history, until leaders lost their leases. With the state in SQLite
those costs should stay flat, and this measures whether they do, on a real cluster.

What it does. A 3-node cluster (the repository's cluster.yaml, or --config, moved to free ports
and a temporary directory; TLS and fsync on; the file's snapshot policy unless
--snapshot-entries) is filled through raw gRPC (supervisor/sender.py, never client/) with N
100-character messages: 64 sends in flight (64 workers, one Sender each), over 128 ordinary
sender/recipient pairs plus one hot pair that gets at least 1,000 of them (for History with
limit 1,000). Every recipient holds a raw Subscribe stream on the leader and acks cumulatively
(every ACK_EVERY messages or ACK_INTERVAL_S seconds, and at the end). It then checks that N
messages are stored: every send was answered with a distinct message id, the subscribers were
handed exactly N, and a follower's database, opened read-only with sqlite3, has
`SELECT count(*) FROM messages` = N.

Then, on the idle cluster, with the client on the leader, over TLS (reads pass the read
barrier), it reports:

- fill_sends_per_s: N over the fill's wall time, 64 in flight;
- rss_mb: each node's RSS after the fill (psutil);
- data_dir_mb: each node's directory after the fill (and its state/wal/snap parts);
  largest_db_wal_mb and largest_raft_wal_mb: the largest database `-wal` file and Raft WAL
  directory seen on any node, sampled every second during the fill; snapshot_mb: the leader's
  database after the fill (what a copy for a follower holds: a compaction copies nothing, its
  snapshot file records the metadata only);
- restart_*: one follower stopped by SIGTERM, then by SIGKILL, then started again: seconds from
  spawning the process to its applied index reaching the leader's commit index (Status). The
  same is measured on the empty cluster first, in the same run, and *_minus_empty_s is the
  difference (the issue's target). SIGKILL keeps the page cache, so the database keeps its
  un-checkpointed WAL and little is replayed; restart_sigkill_entries_since_snapshot says how
  much log lay past the last snapshot at the kill. Then the fill goes on until that follower
  holds 90% of a checkpoint interval (snapshot.entries) past its snapshot, and it is killed
  again: restart_sigkill_full_interval_* (the target's "full checkpoint interval to replay");
- history_1000_p50_ms / p99: History of the hot pair with limit 1,000;
- status_digest_p50_ms / max: Status(with_digest) on the leader (peer port, tool certificate);
- catchup_*: another follower is stopped, the fill goes on until the leader's snapshot index
  is past that follower's last index, then it is started and timed until caught up (from the
  spawn, so it includes the process's start and the leader's copy of its state);
  catchup_snapshot_mb is the size the leader's log line "streaming snapshot" gives, and
  catchup_snapshot_mb_per_s that over the catch-up's time, catchup_transfer_* the same from
  that line to the follower's "installed snapshot" (the transfer and the install, without the
  start or the copy), and catchup_by_snapshot says whether its log shows an install. The
  caught-up follower's database must then hold every message sent;
- leader_changes: term increases seen through Status (each second and around every step) after
  the first election, over the whole run. The target is 0.

--quick: N = 2,000 and a snapshot every 500 entries, so that snapshots and the catch-up by
snapshot happen within about a minute (the test tests/test_scale_bench.py runs it).

Imports node.config, protos, grpc, psutil, benchmarks.cluster and the supervisor's library and
bench figures; never client, never node internals (the database is read as a file).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import random
import re
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
import psutil

from benchmarks.cluster import bench_cluster
from node.config import ClusterConfig, certificate_name
from protos import chat_pb2 as pb
from protos import chat_pb2_grpc as pbg
from protos.vocabulary import CLIENT_CHANNEL_OPTIONS
from supervisor.bench import BenchError, percentile
from supervisor.certs import secure_channel
from supervisor.cluster import Cluster, NodeStatus
from supervisor.sender import RequestIds, Sender, client_channel

if TYPE_CHECKING:
    from supervisor.sender import Stub

QUICK_MESSAGES: Final = 2_000
QUICK_SNAPSHOT_ENTRIES: Final = 500
INFLIGHT: Final = 64
PAIRS: Final = 2 * INFLIGHT  # ordinary pairs: worker k sends for pairs 2k and 2k+1
HISTORY_LIMIT: Final = 1_000
ACK_EVERY: Final = 100  # messages handed out before a cumulative ack
ACK_INTERVAL_S: Final = 1.0  # or this long after the last ack, if anything is unacked
ACK_SENDERS: Final = 8
SEND_TIMEOUT_S: Final = 2.0  # one attempt
GIVE_UP_S: Final = 60.0  # a write resent this long without an answer fails the run
CATCH_UP_TIMEOUT_S: Final = 300.0
FULL_INTERVAL: Final = 0.9  # of snapshot.entries past the snapshot at the "full interval" kill
POLL_S: Final = 0.02
PASSWORD: Final = "pw"
HOT: Final = -1  # the hot pair, in a worker's list of targets
MB: Final = 2**20


def text_of(j: int) -> str:
    """Message j: 100 characters, different for each message."""
    return f"{j:012d}".ljust(100, "x")


# -- the plan: who sends what to whom ----------------------------------------------------------


@dataclass(slots=True)
class Recipient:
    """One recipient's subscription state, kept across fills (the stream resumes after `last`)."""

    name: str
    token: str = ""
    expected: int = 0  # messages sent to it so far, all fills together
    received: int = 0  # distinct messages its streams handed out
    last: int = 0  # the highest id handed out
    acked: int = 0
    acked_at: float = 0.0


@dataclass(slots=True)
class Plan:
    """The accounts and sessions of the run. Worker k sends as senders[2k] and senders[2k+1]
    (to recipients[2k] and [2k+1]) and as the hot sender's k-th session (to the hot
    recipient); its RequestIds outlive each fill's Senders."""

    senders: list[str]
    recipients: list[Recipient]
    hot_recipient: Recipient
    sender_tokens: dict[str, str] = field(default_factory=dict)
    hot_tokens: list[str] = field(default_factory=list)  # one per worker
    ids: list[RequestIds] = field(default_factory=lambda: [RequestIds() for _ in range(INFLIGHT)])
    ack_ids: list[RequestIds] = field(
        default_factory=lambda: [RequestIds() for _ in range(ACK_SENDERS)]
    )
    sent: int = 0  # messages sent in all fills

    @property
    def hot_sender(self) -> str:
        return "hotsender"

    def all_recipients(self) -> list[Recipient]:
        return [*self.recipients, self.hot_recipient]


def new_plan() -> Plan:
    return Plan(
        senders=[f"s{i:03d}" for i in range(PAIRS)],
        recipients=[Recipient(f"r{i:03d}") for i in range(PAIRS)],
        hot_recipient=Recipient("hotrecipient"),
    )


def targets(count: int, hot: int, seed: int) -> list[list[int]]:
    """Each worker's sends, as pair numbers (HOT for the hot pair): count in all, hot of them
    to the hot pair, spread evenly over the workers and shuffled within each."""
    work: list[list[int]] = []
    for k in range(INFLIGHT):
        n_k = count // INFLIGHT + (k < count % INFLIGHT)
        h_k = min(n_k, hot // INFLIGHT + (k < hot % INFLIGHT))
        mine = [HOT] * h_k + [2 * k + (i % 2) for i in range(n_k - h_k)]
        random.Random(seed * 1000 + k).shuffle(mine)
        work.append(mine)
    return work


# -- talking to the cluster (async) --------------------------------------------------------------


async def set_up(plan: Plan, addresses: dict[str, str], leader: str, cluster: Cluster) -> None:
    """Register every account and log every session in, INFLIGHT at a time."""
    tls = cluster.credentials
    names = [*plan.senders, *(r.name for r in plan.all_recipients()), plan.hot_sender]

    async def each(jobs: Sequence[str], login: bool) -> list[str]:
        queue = list(enumerate(jobs))
        out = [""] * len(jobs)

        async def worker() -> None:
            async with Sender(addresses, leader=leader, tls=tls) as s:
                while queue:
                    i, name = queue.pop()
                    if login:
                        out[i] = await s.login(name, PASSWORD, timeout_s=GIVE_UP_S)
                    else:
                        await s.register(name, PASSWORD, timeout_s=GIVE_UP_S)

        await asyncio.gather(*(worker() for _ in range(INFLIGHT)))
        return out

    await each(names, login=False)
    logins = [*plan.senders, *(r.name for r in plan.all_recipients())]
    logins += [plan.hot_sender] * INFLIGHT
    tokens = await each(logins, login=True)
    plan.sender_tokens = dict(zip(plan.senders, tokens[: len(plan.senders)], strict=True))
    for r, token in zip(plan.all_recipients(), tokens[len(plan.senders) :], strict=False):
        r.token = token
    plan.hot_tokens = tokens[-INFLIGHT:]


async def _ack(sender: Sender, r: Recipient) -> None:
    up_to = r.last

    async def call(stub: Stub, rid: pb.RequestId, timeout: float) -> None:
        await stub.Ack(pb.AckRequest(request=rid, token=r.token, up_to_id=up_to), timeout=timeout)

    await sender.write(f"ack for {r.name}", call, timeout_s=GIVE_UP_S, session=r.token)
    r.acked = up_to
    r.acked_at = time.monotonic()


async def receive(r: Recipient, stub: Stub, deadline: float) -> None:
    """r's messages from a raw Subscribe stream on the leader until it has all it is owed;
    a broken stream is reopened after the last id handed out."""
    while r.received < r.expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{r.name} received {r.received} of {r.expected} messages in time")
        call = stub.Subscribe(
            pb.SubscribeRequest(token=r.token, after_id=r.last), timeout=remaining
        )
        try:
            async for message in call:
                if message.id > r.last:
                    r.last = message.id
                    r.received += 1
                if r.received >= r.expected:
                    break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)  # slow-consumer or a lost stream: resume after r.last
        finally:
            call.cancel()


async def acknowledge(r: Recipient, sender: Sender) -> None:
    """Cumulative acks for r every ACK_EVERY messages or ACK_INTERVAL_S, and a last one once
    everything owed has arrived."""
    while True:
        done = r.received >= r.expected
        due = r.last - r.acked >= ACK_EVERY or time.monotonic() - r.acked_at >= ACK_INTERVAL_S
        if r.last > r.acked and (done or due):
            await _ack(sender, r)
        if done and r.acked >= r.last:
            return
        await asyncio.sleep(0.1)


@dataclass(frozen=True, slots=True)
class FillResult:
    seconds: float
    message_ids: frozenset[int]


async def fill(
    plan: Plan, addresses: dict[str, str], leader: str, cluster: Cluster, count: int, hot: int
) -> FillResult:
    """count sends (hot of them on the hot pair), INFLIGHT in flight, every recipient
    subscribed and acking; returns once every message was handed out and acked."""
    tls = cluster.credentials
    work = targets(count, hot, seed=plan.sent)
    recipients = plan.all_recipients()
    for mine in work:
        for pair in mine:
            (plan.hot_recipient if pair == HOT else plan.recipients[pair]).expected += 1
    deadline = time.monotonic() + GIVE_UP_S + count / 50
    channels = [client_channel(addresses[leader], tls) for _ in range(4)]
    ackers = [
        Sender(addresses, leader=leader, ids=plan.ack_ids[i], tls=tls) for i in range(ACK_SENDERS)
    ]
    streams = [
        asyncio.create_task(receive(r, pbg.ChatStub(channels[i % 4]), deadline))
        for i, r in enumerate(recipients)
    ]
    acks = [
        asyncio.create_task(acknowledge(r, ackers[i % ACK_SENDERS]))
        for i, r in enumerate(recipients)
    ]
    ids: set[int] = set()
    first = plan.sent

    async def worker(k: int, mine: list[int]) -> None:
        async with Sender(
            addresses, leader=leader, call_timeout_s=SEND_TIMEOUT_S, ids=plan.ids[k], tls=tls
        ) as sender:
            for j, pair in enumerate(mine):
                if pair == HOT:
                    token, to = plan.hot_tokens[k], plan.hot_recipient.name
                else:
                    token, to = plan.sender_tokens[plan.senders[pair]], plan.recipients[pair].name
                reply = await sender.send(
                    token, to, text_of(first + j * INFLIGHT + k), timeout_s=GIVE_UP_S
                )
                ids.add(reply.message_id)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(k, mine) for k, mine in enumerate(work)))
        seconds = time.perf_counter() - started
        plan.sent += count
        await asyncio.gather(*streams, *acks)
    finally:
        for task in [*streams, *acks]:
            task.cancel()
        await asyncio.gather(*streams, *acks, return_exceptions=True)
        for a in ackers:
            await a.close()
        for c in channels:
            await c.close()
    return FillResult(seconds, frozenset(ids))


async def history_figures(
    plan: Plan, addresses: dict[str, str], leader: str, cluster: Cluster, rounds: int
) -> dict[str, Any]:
    """History of the hot pair, limit 1,000, one call at a time on the leader."""
    async with client_channel(addresses[leader], cluster.credentials) as channel:
        stub = pbg.ChatStub(channel)
        request = pb.HistoryRequest(
            token=plan.hot_recipient.token, other=plan.hot_sender, limit=HISTORY_LIMIT
        )
        times: list[float] = []
        returned = 0
        for i in range(rounds + 3):  # 3 to warm up
            started = time.perf_counter()
            reply = await stub.History(request, timeout=10)
            if i >= 3:
                times.append((time.perf_counter() - started) * 1000)
            returned = len(reply.messages)
    return {
        "history_1000_messages_returned": returned,
        "history_1000_calls": rounds,
        "history_1000_p50_ms": round(percentile(times, 0.5), 2),
        "history_1000_p99_ms": round(percentile(times, 0.99), 2),
    }


# -- the cluster, from the main thread -----------------------------------------------------------


class Sampler(threading.Thread):
    """Every second: each node's term (to count leader changes), and, while `filling` is set,
    the largest database -wal file and Raft WAL directory."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True, name="scale-sampler")
        self.cluster = cluster
        self.filling = threading.Event()
        self.stop = threading.Event()
        self.terms: set[int] = set()
        self.largest_db_wal = 0
        self.largest_raft_wal = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()

    def observe(self, statuses: Sequence[NodeStatus]) -> None:
        with self._lock:
            self.terms.update(s.term for s in statuses if s.term)

    def sample(self) -> None:
        self.observe(self.cluster.status(timeout_s=0.5))
        if self.filling.is_set():
            for node in self.cluster.node_ids:
                node_dir = self.cluster.config.node_dir(node)
                db_wal = max((_size(p) for p in (node_dir / "state").glob("*.db-wal")), default=0)
                raft_wal = _tree_bytes(node_dir / "wal")
                with self._lock:
                    self.largest_db_wal = max(self.largest_db_wal, db_wal)
                    self.largest_raft_wal = max(self.largest_raft_wal, raft_wal)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed between the listing and the stat
        return 0


def _tree_bytes(path: Path) -> int:
    return sum(_size(p) for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _mb(n: int) -> float:
    return round(n / MB, 2)


def _by_id(cluster: Cluster, sampler: Sampler) -> dict[str, NodeStatus]:
    statuses = cluster.status(timeout_s=0.5)
    sampler.observe(statuses)
    return {s.id: s for s in statuses}


def wait_caught_up(
    cluster: Cluster, sampler: Sampler, node: str, leader: str, timeout_s: float
) -> None:
    """Until node answers Status with an applied index at the leader's commit index."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = _by_id(cluster, sampler)
        mine, theirs = st[node].applied_index, st[leader].commit_index
        if mine is not None and theirs is not None and mine >= theirs:
            return
        time.sleep(POLL_S)
    raise BenchError(f"node {node} did not catch up with {leader} within {timeout_s:g} s")


def wait_idle(cluster: Cluster, sampler: Sampler, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
    """Until every node answers at one applied index."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = _by_id(cluster, sampler).values()
        if all(s.answered for s in st) and len({s.applied_index for s in st}) == 1:
            return
        time.sleep(0.05)
    raise BenchError(f"the cluster did not settle at one applied index within {timeout_s:g} s")


def restart_s(cluster: Cluster, sampler: Sampler, node: str, leader: str, signal: str) -> float:
    """Stop node with SIGTERM (signal "term") or SIGKILL ("kill"); then seconds from spawning
    it again to its applied index reaching the leader's commit index."""
    if signal == "term":
        cluster.stop(node)
    else:
        cluster.kill(node)
    started = time.perf_counter()
    cluster.start_node(node, wait=False)
    wait_caught_up(cluster, sampler, node, leader, CATCH_UP_TIMEOUT_S)
    return time.perf_counter() - started


def stored_messages(cluster: Cluster, node: str) -> int:
    """`SELECT count(*) FROM messages` in node's newest database, opened read-only (one short
    read transaction: it must not hold the node's checkpoints back)."""
    newest = sorted((cluster.config.node_dir(node) / "state").glob("chat-*.db"))[-1]
    connection = sqlite3.connect(f"file:{newest}?mode=ro", uri=True, isolation_level=None)
    try:
        return int(connection.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        connection.close()


def database_bytes(cluster: Cluster, node: str) -> int:
    """The node's database file (its WAL aside): what a copy of the state holds."""
    return sum(_size(p) for p in (cluster.config.node_dir(node) / "state").glob("chat-*.db"))


def streamed_snapshot_bytes(cluster: Cluster, node: str, peer: str) -> int:
    """The size in the last "streaming snapshot N (B bytes) to peer" line of node's log."""
    found = _last_match(
        cluster, node, rf"streaming snapshot \d+ \((\d+) bytes\) to {re.escape(peer)}$"
    )
    return 0 if found is None else int(found[1])


def status_digest_ms(cluster: Cluster, leader: str, rounds: int) -> list[float]:
    """Status(with_digest) on the leader's peer port with the tool certificate, one at a time."""
    node = cluster.config.node(leader)
    channel = secure_channel(
        node.peer_address,
        cluster.tool_credentials,
        CLIENT_CHANNEL_OPTIONS,
        target_name=certificate_name(leader, cluster.config.cluster),
    )
    try:
        stub = pbg.ChatStub(channel)
        times = []
        for i in range(rounds + 1):  # one to connect
            started = time.perf_counter()
            reply = stub.Status(pb.StatusRequest(with_digest=True), timeout=30)
            if not reply.state_digest:
                raise BenchError(f"{leader} answered Status(with_digest) without a digest")
            if i:
                times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        channel.close()


def _last_match(cluster: Cluster, node: str, pattern: str) -> re.Match[str] | None:
    """The match of `pattern` (re.search) in the last line of node's log it matches."""
    try:
        lines = cluster.log_path(node).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        found = re.search(pattern, line)
        if found:
            return found
    return None


def _last_logged_at(cluster: Cluster, node: str, needle: str) -> float | None:
    """The wall time (epoch seconds) of the last line of node's log that contains `needle`
    (the node's log lines start with asctime, to the millisecond)."""
    found = _last_match(cluster, node, re.escape(needle))
    if found is None:
        return None
    stamp = datetime.datetime.strptime(found.string[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def fill_past_snapshot(
    plan: Plan,
    addresses: dict[str, str],
    leader: str,
    cluster: Cluster,
    sampler: Sampler,
    node: str,
    entries: int,
) -> int:
    """Send more until `node` holds at least `entries` applied entries past its snapshot (a
    checkpoint interval's worth of log to replay); returns the messages sent."""
    sent = 0
    while True:
        st = _by_id(cluster, sampler)[node]
        since = (st.applied_index or 0) - (st.snapshot_index or 0)
        if since >= entries:
            return sent
        if sent > 20 * entries:
            raise BenchError(f"{node} never held {entries} entries past its snapshot")
        # a Send is one entry, and acks add more: a third of the gap at a time
        chunk = max(20, (entries - since) // 3)
        sampler.filling.set()
        more = asyncio.run(fill(plan, addresses, leader, cluster, chunk, 0))
        sampler.filling.clear()
        sent += len(more.message_ids)
        wait_idle(cluster, sampler)


def _installs(cluster: Cluster, node: str) -> int:
    try:
        return cluster.log_path(node).read_text(errors="replace").count("installed snapshot")
    except FileNotFoundError:
        return 0


@dataclass(frozen=True, slots=True)
class ScaleSettings:
    messages: int
    quick: bool = False
    snapshot_entries: int | None = None  # None: the config's policy
    history_rounds: int = 200
    digest_rounds: int = 20
    fill_only: bool = False  # the fill, memory and sizes only (for a main without SQLite)


def run(config: ClusterConfig, settings: ScaleSettings) -> dict[str, Any]:
    """Fill the cluster of config (its data in a temporary directory) and measure it; the
    result document. BenchError if a check fails. Call it from the main thread (nodes are
    spawned here: TRAPS, PR_SET_PDEATHSIG)."""
    n = settings.messages
    if settings.snapshot_entries is not None:
        policy = dataclasses.replace(config.snapshot, entries=settings.snapshot_entries)
        config = dataclasses.replace(config, snapshot=policy)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "messages": n,
        "quick": settings.quick,
        "inflight": INFLIGHT,
        "pairs": PAIRS + 1,
        "text_chars": 100,
        "snapshot_policy": dataclasses.asdict(config.snapshot),
        "tls": "plaintext" if config.plaintext else "on",
    }
    plan = new_plan()
    hot = min(n // 2, max(HISTORY_LIMIT, n // 10))
    with tempfile.TemporaryDirectory(prefix="chatbooth-scale-") as tmp:
        config = dataclasses.replace(config, data_dir=Path(tmp) / "data", cluster_key_file=None)
        with Cluster(config, fresh=True, links=False) as cluster:
            sampler = Sampler(cluster)
            leader = cluster.wait_leader()
            sampler.sample()
            first_term = min(sampler.terms)
            sampler.start()
            follower, other = [x for x in cluster.node_ids if x != leader][:2]
            addresses = {x: cluster.address(x) for x in cluster.node_ids}

            # Restarts of the empty cluster, the baseline.
            if not settings.fill_only:
                empty_term = restart_s(cluster, sampler, follower, leader, "term")
                empty_kill = restart_s(cluster, sampler, follower, leader, "kill")

            # The fill.
            asyncio.run(set_up(plan, addresses, leader, cluster))
            sampler.filling.set()
            filled = asyncio.run(fill(plan, addresses, leader, cluster, n, hot))
            sampler.sample()
            sampler.filling.clear()
            wait_idle(cluster, sampler)
            delivered = sum(r.received for r in plan.all_recipients())
            stored = n if settings.fill_only else stored_messages(cluster, follower)
            if not (len(filled.message_ids) == delivered == stored == n):
                raise BenchError(
                    f"{n} sent, but {len(filled.message_ids)} distinct ids answered, "
                    f"{delivered} handed to subscribers, {stored} in {follower}'s database"
                )
            result |= {
                "messages_stored": stored,
                "stored_check": f"SELECT count(*) FROM messages in follower {follower}'s "
                "database (read-only), and as many distinct ids answered and handed out",
                "delivered_to_subscribers": delivered,
                "hot_pair_messages": hot,
                "fill_s": round(filled.seconds, 2),
                "fill_sends_per_s": round(n / filled.seconds, 1),
            }

            # Sizes and memory after the fill.
            pids = cluster.pids()
            result["rss_mb"] = {
                x: _mb(psutil.Process(p).memory_info().rss) for x, p in pids.items()
            }
            result["data_dir_mb"] = {
                x: {
                    "total": _mb(_tree_bytes(cluster.config.node_dir(x))),
                    **{
                        part: _mb(_tree_bytes(cluster.config.node_dir(x) / part))
                        for part in ("state", "wal", "snap")
                    },
                }
                for x in cluster.node_ids
            }
            result["largest_db_wal_mb"] = _mb(sampler.largest_db_wal)
            result["largest_raft_wal_mb"] = _mb(sampler.largest_raft_wal)
            result["snapshot_mb"] = _mb(database_bytes(cluster, leader))
            if settings.fill_only:
                del result["messages_stored"], result["stored_check"]
                result["leader_changes"] = _leader_changes(sampler, first_term)
                return result

            # Reads on the leader.
            result |= asyncio.run(
                history_figures(plan, addresses, leader, cluster, settings.history_rounds)
            )
            digest = status_digest_ms(cluster, leader, settings.digest_rounds)
            result["status_digest_p50_ms"] = round(percentile(digest, 0.5), 2)
            result["status_digest_max_ms"] = round(max(digest), 2)

            # Restarts of the filled cluster.
            term_s = restart_s(cluster, sampler, follower, leader, "term")
            st = _by_id(cluster, sampler)[follower]
            since = (st.applied_index or 0) - (st.snapshot_index or 0)
            kill_s = restart_s(cluster, sampler, follower, leader, "kill")
            # Again with (nearly) a whole checkpoint interval past the snapshot to replay.
            full = int(config.snapshot.entries * FULL_INTERVAL)
            extra = fill_past_snapshot(plan, addresses, leader, cluster, sampler, follower, full)
            st = _by_id(cluster, sampler)[follower]
            since_full = (st.applied_index or 0) - (st.snapshot_index or 0)
            kill_full_s = restart_s(cluster, sampler, follower, leader, "kill")
            result |= {
                "restart_empty_sigterm_s": round(empty_term, 3),
                "restart_empty_sigkill_s": round(empty_kill, 3),
                "restart_sigterm_s": round(term_s, 3),
                "restart_sigkill_s": round(kill_s, 3),
                "restart_sigterm_minus_empty_s": round(term_s - empty_term, 3),
                "restart_sigkill_minus_empty_s": round(kill_s - empty_kill, 3),
                "restart_sigkill_entries_since_snapshot": since,
                "restart_sigkill_full_interval_s": round(kill_full_s, 3),
                "restart_sigkill_full_interval_minus_empty_s": round(kill_full_s - empty_kill, 3),
                "restart_sigkill_full_interval_entries_since_snapshot": since_full,
            }

            # A follower behind the compacted log catches up by snapshot.
            behind = _by_id(cluster, sampler)[other].last_index or 0
            cluster.stop(other)
            chunk = max(200, config.snapshot.entries // 2)
            while (_by_id(cluster, sampler)[leader].snapshot_index or 0) <= behind:
                if extra > 20 * config.snapshot.entries + n:
                    raise BenchError(f"{leader} never compacted its log past index {behind}")
                sampler.filling.set()
                more = asyncio.run(fill(plan, addresses, leader, cluster, chunk, 0))
                sampler.filling.clear()
                extra += len(more.message_ids)
                time.sleep(0.5)  # a snapshot runs in the background
            installs = _installs(cluster, other)
            streamed_before = _last_logged_at(cluster, leader, f" bytes) to {other}") or 0.0
            started = time.perf_counter()
            cluster.start_node(other, wait=False)
            wait_caught_up(cluster, sampler, other, leader, CATCH_UP_TIMEOUT_S)
            catchup = time.perf_counter() - started
            streamed = _last_logged_at(cluster, leader, f" bytes) to {other}")
            installed = _last_logged_at(cluster, other, "installed snapshot")
            snapshot_bytes = streamed_snapshot_bytes(cluster, leader, other)
            transfer = None
            if streamed is not None and installed is not None and streamed > streamed_before:
                transfer = installed - streamed
            wait_idle(cluster, sampler)
            stored_after = stored_messages(cluster, other)
            if stored_after != n + extra:
                raise BenchError(
                    f"{other} caught up holding {stored_after} messages, not {n + extra}"
                )
            result |= {
                "catchup_snapshot_mb": _mb(snapshot_bytes),
                "catchup_s": round(catchup, 3),
                "catchup_snapshot_mb_per_s": round(snapshot_bytes / MB / catchup, 2),
                # the leader's "streaming snapshot" line to the follower's "installed": the
                # transfer and the install, without the process's start
                "catchup_transfer_s": None if transfer is None else round(transfer, 3),
                "catchup_transfer_mb_per_s": (
                    None if not transfer else round(snapshot_bytes / MB / transfer, 2)
                ),
                "catchup_by_snapshot": _installs(cluster, other) > installs,
                "catchup_extra_messages": extra,
                "catchup_messages_stored": stored_after,
            }
            result["leader_changes"] = _leader_changes(sampler, first_term)
            result["terms_seen"] = sorted(sampler.terms)
    return result


def _leader_changes(sampler: Sampler, first_term: int) -> int:
    """Stops the sampler; the term increases it saw after first_term."""
    sampler.stop.set()
    sampler.join()
    sampler.sample()
    return max(sampler.terms) - first_term


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--messages", type=int, help="N, the messages of the fill (default 200,000)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"N = {QUICK_MESSAGES:,} and a snapshot every {QUICK_SNAPSHOT_ENTRIES} entries "
        "(explicit options still win)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object (the only output form)")
    p.add_argument("--config", type=Path, help="a cluster.yaml (default: the repository's)")
    p.add_argument("--snapshot-entries", type=int, help="default: the config's snapshot policy")
    p.add_argument(
        "--fill-only",
        action="store_true",
        help="the fill, RSS, sizes and leader changes only, with no database read: the same "
        "client run against a main from before the state was in SQLite",
    )
    args = p.parse_args(argv)
    messages = args.messages or (QUICK_MESSAGES if args.quick else 200_000)
    entries = args.snapshot_entries or (QUICK_SNAPSHOT_ENTRIES if args.quick else None)
    if messages < 2 * INFLIGHT or (entries is not None and entries < 1):
        p.error(f"--messages must be at least {2 * INFLIGHT}, --snapshot-entries at least 1")
    settings = ScaleSettings(
        messages,
        quick=args.quick,
        snapshot_entries=entries,
        history_rounds=30 if args.quick else 200,
        digest_rounds=5 if args.quick else 20,
        fill_only=args.fill_only,
    )
    with tempfile.TemporaryDirectory(prefix="chatbooth-scale-config-") as tmp:
        config = bench_cluster(Path(tmp), source=args.config)
        try:
            result = run(config, settings)
        except BenchError as error:
            print(f"scale: failed: {error}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
