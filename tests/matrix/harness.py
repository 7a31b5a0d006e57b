"""The scenario harness of the failure matrix, shared by every scenario.

- `open_cluster`: a fresh cluster of real nodes from a cluster.yaml on free ports.
- `Workload`: concurrent senders (one ChatClient each) sending numbered messages ("s1#17") to
  the recipients in a loop, one at a time, recording the start, end and outcome of every send.
- Availability as Raft promises it: `wait_leader` (a leader known to a majority, within a
  bound), `Workload.wait_acked_more` (sends keep committing), `wait_leaderless` and
  `assert_minority_refuses` (a client pinned to the minority side gets its NoMajorityError in
  time, and nothing is acknowledged there).
- Safety after healing: `assert_safe` drains every recipient's inbox (History and a
  subscription), judges the whole history with `supervisor.history.check`, and polls until
  every node's Status digest is identical at the same applied index.

Cluster control calls run on the event loop's thread, the main thread (TRAPS: spawning from
another thread breaks PR_SET_PDEATHSIG). Every wait polls with a deadline and awaits between
polls, so the senders keep running while a test waits.

Imports supervisor (Cluster, history) and client; nothing from node internals.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TypeVar

from client.api import ChatClient, PendingWrite, SendResult
from client.errors import ChatClientError, NoMajorityError, ServerError, UnavailableError
from supervisor.cluster import LEADER_ROLE, Cluster, NodeStatus, majority_leader
from supervisor.history import Delivery, Outcome, SendRecord, check, render
from tests.conftest import cluster_ca, write_cluster_yaml

T = TypeVar("T")

ELECTION_TIMEOUT_MS: Final = (200, 400)  # the default (node/config.py)
# Raft's availability promise, generously: a new leader within 5x the maximum election timeout.
ELECTION_BOUND_S: Final = 5 * ELECTION_TIMEOUT_MS[1] / 1000
COMMIT_BOUND_S: Final = 15.0  # sends keep committing: this many more within this long
RECOVERY_BOUND_S: Final = 30.0  # restarted nodes serve, digests agree, inboxes drain
POLL_INTERVAL_S: Final = 0.05
PASSWORD: Final = "pw"
SENDERS: Final = ("s1", "s2", "s3")
RECIPIENTS: Final = ("r1", "r2")
PINNED_USER: Final = "p1"  # registered too, for a client pinned to the minority side


# --- the cluster -----------------------------------------------------------------------------


def write_config(directory: Path, ids: str, *, snapshot_entries: int | None = None) -> Path:
    """A cluster.yaml in directory: nodes named by the letters of ids on free ports, data in
    directory/data, cheap scrypt, and (optionally) a small snapshot threshold."""
    low, high = ELECTION_TIMEOUT_MS
    extra = f"raft:\n  heartbeat_ms: 50\n  election_timeout_ms: [{low}, {high}]\n"
    if snapshot_entries is not None:
        extra += f"snapshot: {{entries: {snapshot_entries}}}\n"
    return write_cluster_yaml(directory, ids, name="matrix", leader=ids[0], extra=extra)


@contextmanager
def open_cluster(
    directory: Path, ids: str = "abc", *, snapshot_entries: int | None = None
) -> Iterator[Cluster]:
    """A fresh running cluster; every node stopped by PID at the end."""
    config = write_config(directory, ids, snapshot_entries=snapshot_entries)
    with Cluster(config, fresh=True) as cluster:
        yield cluster


async def poll(
    probe: Callable[[], T | None], timeout_s: float, what: str, *, describe: Callable[[], str]
) -> T:
    """probe() until it returns something other than None (or False); AssertionError naming
    what was awaited and describe() (the state seen) at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s; {describe()}")
        await asyncio.sleep(POLL_INTERVAL_S)


def describe(cluster: Cluster) -> str:
    parts = []
    for s in cluster.status(timeout_s=0.5):
        if s.role is None:
            parts.append(f"{s.id}: {s.error}")
        else:
            parts.append(
                f"{s.id}: {s.role} t{s.term} leader={s.leader or '-'} "
                f"commit={s.commit_index} applied={s.applied_index} last={s.last_index} "
                f"snap={s.snapshot_index}"
            )
    return "; ".join(parts)


async def wait_leader(
    cluster: Cluster, timeout_s: float = ELECTION_BOUND_S, *, other_than: str | None = None
) -> str:
    """The leader known to a majority (and not other_than), within timeout_s."""

    def probe() -> str | None:
        leader = majority_leader(cluster.status(timeout_s=0.5), cluster.size)
        return leader if leader != other_than else None

    what = "a leader known to a majority" + (f", other than {other_than}" if other_than else "")
    return await poll(probe, timeout_s, what, describe=lambda: describe(cluster))


async def wait_leaderless(cluster: Cluster, ids: Sequence[str]) -> None:
    """Every node of ids (a minority cut off) knows it has no leader, within the bound."""

    def probe() -> bool:
        statuses = {s.id: s for s in cluster.status(timeout_s=0.5)}
        return all(
            statuses[i].role not in (None, LEADER_ROLE) and not statuses[i].leader for i in ids
        )

    await poll(
        probe,
        ELECTION_BOUND_S,
        f"{', '.join(ids)} to know they have no leader",
        describe=lambda: describe(cluster),
    )


def start_nodes(cluster: Cluster, ids: Sequence[str]) -> None:
    """Start nodes that are down, without waiting (wait_serving does, without blocking)."""
    for node_id in ids:
        cluster.start_node(node_id, wait=False)


async def wait_serving(cluster: Cluster, ids: Sequence[str] | None = None) -> None:
    """Every node of ids (default: all) answers Status."""
    wanted = set(cluster.node_ids if ids is None else ids)

    def probe() -> bool:
        return all(s.answered for s in cluster.status(timeout_s=0.5) if s.id in wanted)

    await poll(
        probe, RECOVERY_BOUND_S, "restarted nodes to serve", describe=lambda: describe(cluster)
    )


def followers(cluster: Cluster, leader: str) -> list[str]:
    return [n for n in cluster.node_ids if n != leader]


# --- clients ---------------------------------------------------------------------------------


def make_client(cluster: Cluster, **options: float) -> ChatClient:
    """A client of the whole cluster, with deadlines short enough for tests."""
    settings: dict[str, float] = {
        "call_timeout_s": 1.0,
        "overall_timeout_s": 5.0,
        "no_majority_grace_s": 1.5,
        "watch_interval_s": 0.5,
    }
    settings.update(options)
    addresses = {n: cluster.address(n) for n in cluster.node_ids}
    return ChatClient(addresses, ca=cluster_ca(cluster.config), **settings)  # type: ignore[arg-type]


def pinned_client(cluster: Cluster, node_id: str, *, overall_timeout_s: float) -> ChatClient:
    """A client that only ever asks node_id (what a client on a minority sees)."""
    return ChatClient(
        [cluster.address(node_id)],
        pinned=True,
        call_timeout_s=0.5,
        overall_timeout_s=overall_timeout_s,
        no_majority_grace_s=1.0,
        ca=cluster_ca(cluster.config),
    )


async def logged_in(client: ChatClient, username: str) -> ChatClient:
    await client.login(username, PASSWORD)
    return client


async def assert_minority_refuses(
    cluster: Cluster, node_id: str, *, deadline_s: float = 4.0
) -> None:
    """A client pinned to node_id (on the minority side) gets NoMajorityError for a write
    within its deadline, and the write is not acknowledged."""
    client = pinned_client(cluster, node_id, overall_timeout_s=deadline_s)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        try:
            await client.register(f"ghost{uuid.uuid4().hex[:12]}", PASSWORD)
        except NoMajorityError as error:
            elapsed = loop.time() - started
            # The error comes at the deadline at the latest (plus one call's slack).
            assert elapsed <= deadline_s + 1.0, f"NoMajorityError after {elapsed:.2f} s"
            assert error.pending is not None and not error.pending.done()
        else:
            raise AssertionError(f"a write pinned to {node_id} (minority side) was acknowledged")
    finally:
        await client.close()


# --- the workload ----------------------------------------------------------------------------


class Workload:
    """Senders s1..s3, each its own ChatClient, sending numbered messages to r1, r2 in turn, one
    at a time (so each sender's sends are sequential), until stopped. Every send is recorded:
    OK with its message id, FAILED on a definite refusal, UNKNOWN if still unanswered when the
    workload gives up on it. Use `async with Workload(cluster) as work:`; leaving it stops the
    senders (each waits for its send in flight, then gives up) and closes their clients."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        senders: Sequence[str] = SENDERS,
        recipients: Sequence[str] = RECIPIENTS,
        pace_s: float = 0.02,
    ) -> None:
        self.cluster = cluster
        self.senders = tuple(senders)
        self.recipients = tuple(recipients)
        self.pace_s = pace_s
        self.records: list[SendRecord] = []
        self.acked = 0
        self._clients: list[ChatClient] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._give_up = asyncio.Event()

    async def __aenter__(self) -> Workload:
        setup = make_client(self.cluster)
        try:
            for user in (*self.senders, *self.recipients, PINNED_USER):
                await setup.register(user, PASSWORD)
        finally:
            await setup.close()
        for name in self.senders:
            client = await logged_in(make_client(self.cluster), name)
            self._clients.append(client)
            self._tasks.append(asyncio.create_task(self._send_loop(name, client)))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        # After a failure, give up on sends in flight at once rather than wait for a cluster
        # that may never answer again.
        await self.stop(RECOVERY_BOUND_S if exc_type is None else 0.0)

    async def stop(self, timeout_s: float = RECOVERY_BOUND_S) -> None:
        """Stop sending: each sender waits up to timeout_s for its send in flight."""
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)
            self._give_up.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        for client in self._clients:
            await client.close()
        self._clients.clear()

    async def wait_acked_more(self, count: int, timeout_s: float = COMMIT_BOUND_S) -> None:
        """Sends keep committing: count more acknowledged within timeout_s."""
        target = self.acked + count
        await poll(
            lambda: self.acked >= target,
            timeout_s,
            f"{count} more sends acknowledged (at {self.acked} of {target})",
            describe=lambda: describe(self.cluster),
        )

    def add(self, records: Sequence[SendRecord]) -> None:
        """Sends made outside the senders (a pinned client's), judged with the rest."""
        self.records.extend(records)

    async def _send_loop(self, name: str, client: ChatClient) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            recipient = self.recipients[number % len(self.recipients)]
            record = await send_recorded(client, name, recipient, f"{name}#{number}", self._give_up)
            self.records.append(record)
            if record.outcome is Outcome.OK:
                self.acked += 1
            await asyncio.sleep(self.pace_s)


async def send_recorded(
    client: ChatClient, sender: str, recipient: str, text: str, give_up: asyncio.Event
) -> SendRecord:
    """One send, waited for until answered or give_up is set; its record."""
    start = time.monotonic()
    ended: list[float] = []
    pending: PendingWrite[SendResult] = client.start_send(recipient, text)
    pending.add_done_callback(lambda _: ended.append(time.monotonic()))
    while not await pending.wait_done(0.1):
        if give_up.is_set():
            return SendRecord(sender, recipient, text, start, time.monotonic(), Outcome.UNKNOWN)
    end = ended[0] if ended else time.monotonic()
    try:
        result = pending.result()
    except ServerError:
        return SendRecord(sender, recipient, text, start, end, Outcome.FAILED)
    except ChatClientError:  # closed with the write pending: may or may not have happened
        return SendRecord(sender, recipient, text, start, end, Outcome.UNKNOWN)
    return SendRecord(sender, recipient, text, start, end, Outcome.OK, result.message_id)


async def pinned_sends(
    client: ChatClient,
    sender: str,
    recipient: str,
    count: int,
    *,
    prefix: str = "p",
    may_ack: bool = False,
) -> list[SendRecord]:
    """count sends from a client pinned to one node, each waited for until its answer or its
    UnavailableError (NoMajorityError included). Unless may_ack, none may be acknowledged (the
    node is on the minority side). Their records, for the history check to judge."""
    records = []
    for number in range(1, count + 1):
        text = f"{prefix}{sender}#{number}"
        start = time.monotonic()
        try:
            result = await client.send(recipient, text)
        except UnavailableError:
            records.append(
                SendRecord(sender, recipient, text, start, time.monotonic(), Outcome.UNKNOWN)
            )
            continue
        if not may_ack:
            raise AssertionError(f"{text!r} was acknowledged on the minority side as {result}")
        records.append(
            SendRecord(
                sender, recipient, text, start, time.monotonic(), Outcome.OK, result.message_id
            )
        )
    return records


# --- safety ----------------------------------------------------------------------------------


async def assert_safe(cluster: Cluster, records: Sequence[SendRecord]) -> None:
    """After healing: drain every inbox, check the history, and check that every node holds the
    same state at the same applied index."""
    await wait_leader(cluster, RECOVERY_BOUND_S)
    deliveries = await drain(cluster, records)
    verdict = check(records, deliveries)
    assert verdict.ok, render(verdict)
    assert verdict.counts["acknowledged"] > 0, render(verdict)
    await assert_digests_agree(cluster)


async def drain(cluster: Cluster, records: Sequence[SendRecord]) -> list[Delivery]:
    """Every message each recipient holds: its History with every sender, and its inbox read
    through a subscription until it has handed out every message History showed."""
    deliveries: list[Delivery] = []
    loop = asyncio.get_running_loop()
    for recipient in sorted({r.recipient for r in records}):
        client = await logged_in(make_client(cluster, overall_timeout_s=10.0), recipient)
        try:
            senders = sorted({r.sender for r in records if r.recipient == recipient})
            shown: dict[int, Delivery] = {}
            for sender in senders:
                for m in await client.history(sender, 10_000):
                    if m.recipient == recipient:
                        shown[m.id] = Delivery(recipient, m.id, m.sender, m.text)
            deliveries.extend(shown.values())
            inbox = client.subscribe(after_id=0)
            seen: set[int] = set()
            deadline = loop.time() + RECOVERY_BOUND_S
            while not set(shown) <= seen:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    missing = sorted(set(shown) - seen)[:10]
                    raise AssertionError(f"{recipient}'s inbox never handed out {missing}")
                m = await asyncio.wait_for(anext(inbox), remaining)
                seen.add(m.id)
                deliveries.append(Delivery(recipient, m.id, m.sender, m.text))
            await inbox.aclose(ack=True)
        finally:
            await client.close()
    return deliveries


async def assert_digests_agree(cluster: Cluster, timeout_s: float = RECOVERY_BOUND_S) -> None:
    """Every node answers, at the same applied index (= its commit index), with one digest."""

    def probe() -> list[NodeStatus] | None:
        statuses = cluster.status(timeout_s=1.0, digest=True)
        if not all(s.answered and s.digest for s in statuses):
            return None
        if len({(s.applied_index, s.digest) for s in statuses}) != 1:
            return None
        if any(s.applied_index != s.commit_index for s in statuses):
            return None
        return statuses

    def seen() -> str:
        return "; ".join(
            f"{s.id}: applied={s.applied_index} commit={s.commit_index} digest={s.digest}"
            for s in cluster.status(timeout_s=1.0, digest=True)
        )

    await poll(probe, timeout_s, "every node's digest equal at one applied index", describe=seen)


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """The result of awaitable and how long it took, in seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await awaitable
    return result, loop.time() - started
