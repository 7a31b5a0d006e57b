"""The failure matrix (DESIGN.md, "How we know it works", 3 and 4): one fault per scenario on
real node processes, with three senders running across it.

Each scenario asserts availability as Raft promises it (with a majority connected a leader is
elected within 5x the maximum election timeout and sends keep committing; without one, a client
pinned to the minority side gets NoMajorityError within its deadline and nothing is acknowledged
there) and, after everything is healed and restarted, safety: no acknowledged message lost or
doubled, each sender's order kept, every node's digest equal at the same applied index.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from client.errors import UnavailableError
from supervisor.history import Outcome
from tests.matrix.harness import (
    PINNED_USER,
    Workload,
    assert_minority_refuses,
    assert_safe,
    followers,
    logged_in,
    open_cluster,
    pinned_client,
    pinned_sends,
    start_nodes,
    wait_leader,
    wait_leaderless,
    wait_serving,
)

pytestmark = pytest.mark.cluster


# --- the original project's six --------------------------------------------------------------


async def test_three_nodes_one_cut_off(cluster_dir: Path) -> None:
    """A follower cut off by a partition: the majority keeps committing; the cut-off node
    refuses a pinned client clearly; after the heal it catches up."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            await work.wait_acked_more(10)
            cut = followers(cluster, leader)[0]
            cluster.partition([cut], followers(cluster, cut))
            await wait_leaderless(cluster, [cut])
            await assert_minority_refuses(cluster, cut)
            await work.wait_acked_more(20)
            cluster.heal()
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


async def test_three_nodes_two_cut_off(cluster_dir: Path) -> None:
    """Every node cut off from the others: no majority anywhere, so no node acknowledges
    anything and each refuses a pinned client clearly; after the heal, sends commit again."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            await wait_leader(cluster)
            await work.wait_acked_more(10)
            cluster.partition(*([n] for n in cluster.node_ids))
            await wait_leaderless(cluster, cluster.node_ids)
            acked_while_cut = work.acked
            for node_id in cluster.node_ids:
                await assert_minority_refuses(cluster, node_id)
            # At most the sends already in flight at the cut may have been acknowledged.
            assert work.acked - acked_while_cut <= len(work.senders)
            cluster.heal()
            await wait_leader(cluster)
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


async def test_three_nodes_one_crashed(cluster_dir: Path) -> None:
    """The leader SIGKILLed: a new leader within the bound, sends keep committing; restarted,
    the old leader catches up."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            await work.wait_acked_more(10)
            cluster.kill(leader)
            await wait_leader(cluster, other_than=leader)
            await work.wait_acked_more(20)
            start_nodes(cluster, [leader])
            await wait_serving(cluster)
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


async def test_three_nodes_two_crashed(cluster_dir: Path) -> None:
    """The leader and a follower SIGKILLed: the survivor refuses clearly and acknowledges
    nothing; one restarted node brings back a majority, then the other catches up."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            await work.wait_acked_more(10)
            survivor, other = followers(cluster, leader)
            cluster.kill(leader)
            cluster.kill(other)
            await wait_leaderless(cluster, [survivor])
            acked_while_down = work.acked
            await assert_minority_refuses(cluster, survivor)
            assert work.acked - acked_while_down <= len(work.senders)
            start_nodes(cluster, [other])
            await wait_serving(cluster, [other])
            await wait_leader(cluster)
            await work.wait_acked_more(10)
            start_nodes(cluster, [leader])
            await wait_serving(cluster)
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


async def test_five_nodes_two_crashed(cluster_dir: Path) -> None:
    """The leader and a follower of five SIGKILLed: three remain, a majority; a new leader
    within the bound, sends keep committing; both restarted catch up."""
    with open_cluster(cluster_dir, "abcde") as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            await work.wait_acked_more(10)
            crashed = [leader, followers(cluster, leader)[0]]
            for node_id in crashed:
                cluster.kill(node_id)
            await wait_leader(cluster, other_than=leader)
            await work.wait_acked_more(20)
            start_nodes(cluster, crashed)
            await wait_serving(cluster)
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


@pytest.mark.slow
async def test_five_nodes_four_crashed(cluster_dir: Path) -> None:
    """Four of five SIGKILLed, the leader among them: the survivor refuses clearly and
    acknowledges nothing; restarting two brings back a majority, then all catch up."""
    with open_cluster(cluster_dir, "abcde") as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            await work.wait_acked_more(10)
            survivor, *crashed = followers(cluster, leader)
            crashed.append(leader)
            for node_id in crashed:
                cluster.kill(node_id)
            await wait_leaderless(cluster, [survivor])
            acked_while_down = work.acked
            await assert_minority_refuses(cluster, survivor)
            assert work.acked - acked_while_down <= len(work.senders)
            start_nodes(cluster, crashed[:2])
            await wait_serving(cluster, crashed[:2])
            await wait_leader(cluster)
            await work.wait_acked_more(10)
            start_nodes(cluster, crashed[2:])
            await wait_serving(cluster)
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


# --- leaders, pauses and restarts ------------------------------------------------------------


async def test_leader_partitioned_into_a_minority(cluster_dir: Path) -> None:
    """The leader cut off with no one: the majority elects a new leader within the bound and
    keeps committing; the old leader steps down, and a client pinned to it (logged in before
    the cut) gets NoMajorityError and no acknowledgement; after the heal nothing it took in is
    lost or doubled."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            pinned = await logged_in(
                pinned_client(cluster, leader, overall_timeout_s=4.0), PINNED_USER
            )
            try:
                await work.wait_acked_more(10)
                cluster.partition([leader], followers(cluster, leader))
                # Sent at once: the old leader may still think it leads, and must not ack.
                stale = asyncio.create_task(
                    pinned_sends(pinned, PINNED_USER, "r1", 1, prefix="stale")
                )
                await wait_leader(cluster, other_than=leader)
                await wait_leaderless(cluster, [leader])
                await work.wait_acked_more(20)
                work.add(await stale)
                work.add(await pinned_sends(pinned, PINNED_USER, "r2", 2))
            finally:
                await pinned.close()
            cluster.heal()
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


async def test_leader_paused_then_resumed(cluster_dir: Path) -> None:
    """The leader SIGSTOPped past an election timeout: the others elect a new leader; once
    resumed, the old leader must not acknowledge anything it no longer leads: a write it took
    in while frozen is acknowledged only once committed (it forwards it to the new leader, and
    the history check proves it was committed once), and a read from it sees every send the
    new leader acknowledged before the read began."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            writer = await logged_in(
                pinned_client(cluster, leader, overall_timeout_s=4.0), PINNED_USER
            )
            reader = await logged_in(pinned_client(cluster, leader, overall_timeout_s=4.0), "r1")
            try:
                await work.wait_acked_more(10)
                cluster.pause(leader)
                # Reaches the frozen leader's socket; it reads it only once resumed.
                stale = asyncio.create_task(
                    pinned_sends(writer, PINNED_USER, "r1", 1, prefix="stale", may_ack=True)
                )
                await wait_leader(cluster, other_than=leader)
                await work.wait_acked_more(20)
                cluster.resume(leader)
                acked = {
                    r.text
                    for r in work.records
                    if r.outcome is Outcome.OK and (r.sender, r.recipient) == ("s1", "r1")
                }
                try:
                    shown = {m.text for m in await reader.history("s1", 10_000)}
                except UnavailableError:
                    pass  # no answer is not a stale answer
                else:
                    assert acked <= shown, f"stale read: missing {sorted(acked - shown)[:5]}"
                work.add(await stale)
            finally:
                await writer.close()
                await reader.close()
            await wait_serving(cluster)
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


async def test_follower_paused_then_resumed(cluster_dir: Path) -> None:
    """A follower SIGSTOPped: the leader keeps committing with the other; resumed, the follower
    catches up."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            await work.wait_acked_more(10)
            paused = followers(cluster, leader)[0]
            cluster.pause(paused)
            await work.wait_acked_more(20)
            assert await wait_leader(cluster) == leader
            cluster.resume(paused)
            await wait_serving(cluster)
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)


async def test_all_nodes_killed_at_once_and_restarted(cluster_dir: Path) -> None:
    """Every node SIGKILLed at once (a power cut), then restarted: everything acknowledged
    before the cut survives, and sends commit again."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            await wait_leader(cluster)
            await work.wait_acked_more(20)
            for node_id in cluster.node_ids:
                cluster.kill(node_id)
            start_nodes(cluster, cluster.node_ids)
            await wait_serving(cluster)
            await wait_leader(cluster)
            await work.wait_acked_more(20)
        await assert_safe(cluster, work.records)


@pytest.mark.slow
async def test_rolling_restart_of_every_node(cluster_dir: Path) -> None:
    """Each node in turn stopped (SIGTERM) and started again, each back before the next goes:
    a majority is always up, so sends keep committing throughout."""
    with open_cluster(cluster_dir, "abc") as cluster:
        async with Workload(cluster) as work:
            await wait_leader(cluster)
            await work.wait_acked_more(10)
            for node_id in cluster.node_ids:
                cluster.stop(node_id)
                await wait_leader(cluster, other_than=node_id)
                await work.wait_acked_more(5)
                start_nodes(cluster, [node_id])
                await wait_serving(cluster)
                await work.wait_acked_more(5)
        await assert_safe(cluster, work.records)


@pytest.mark.slow
async def test_follower_behind_a_snapshot_catches_up_by_install_snapshot(
    cluster_dir: Path,
) -> None:
    """A follower down while the leader commits well past a snapshot (every 50 entries) and
    compacts its log: restarted, it can only catch up by InstallSnapshot, and does."""
    with open_cluster(cluster_dir, "abc", snapshot_entries=50) as cluster:
        async with Workload(cluster) as work:
            leader = await wait_leader(cluster)
            await work.wait_acked_more(10)
            behind = followers(cluster, leader)[0]
            last_before = {s.id: s for s in cluster.status()}[behind].last_index or 0
            cluster.kill(behind)
            await work.wait_acked_more(150)
            status = {s.id: s for s in cluster.status()}
            compacted = status[leader].snapshot_index or 0
            assert compacted > last_before, "the leader never compacted past the follower"
            start_nodes(cluster, [behind])
            await wait_serving(cluster)
            await work.wait_acked_more(10)
        await assert_safe(cluster, work.records)
        caught_up = {s.id: s for s in cluster.status()}[behind]
        assert (caught_up.snapshot_index or 0) >= compacted, (
            f"{behind} caught up without a snapshot: {caught_up}"
        )
