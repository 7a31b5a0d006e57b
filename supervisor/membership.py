"""Membership changes on a running Cluster: members, add, remove and replace.

Every change is one single-server change (node/raft/membership.py), made through the leader's
Membership service with the `tool` certificate, following the leader when a follower names
another and retrying while an earlier change is still uncommitted:

    add N       a new member: ports, a certificate from the cluster CA, links through proxies,
                every peers file, the add as a learner (its index is the member's
                incarnation), then the node started empty with --join ID --incarnation N, and
                promoted to voter once its log has caught up with the leader's
    remove N    the member leaves the configuration, then its process is stopped
    replace N   a member that lost its disk (or is about to): stopped, wiped, removed, then
                added again under its name: another incarnation (ConfState), so the old disk
                could never count again

Main thread only: add and replace start a process (PR_SET_PDEATHSIG, supervisor.processes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import grpc

from node.config import NODE_ID_PATTERN, NodeAddress
from protos import membership_pb2 as pb
from protos import membership_pb2_grpc
from protos.vocabulary import LEADER_ID_KEY, RETRY_AFTER_KEY, metadata_value
from supervisor.certs import issue
from supervisor.cluster import Cluster, ClusterError
from supervisor.events import EventKind
from supervisor.ports import free_port

logger = logging.getLogger(__name__)

CHANGE_TIMEOUT_S = 10.0
CATCH_UP_TIMEOUT_S = 60.0
CATCH_UP_LAG = 0  # promote once the learner's log holds everything the leader has


class MembershipError(ClusterError):
    """A membership change that could not be made (the message says why and what to do)."""


@dataclass(frozen=True, slots=True)
class MemberView:
    id: str
    role: str  # "voter" or "learner"
    incarnation: int
    match_index: int | None  # None: the answering node is not the leader
    lag: int | None
    client_address: str = ""  # host:port of its client port, as the answering node knows it


@dataclass(frozen=True, slots=True)
class MembersView:
    answered_by: str
    leader: str | None
    members: tuple[MemberView, ...]
    pending_change_index: int
    commit_index: int

    def voters(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.members if m.role == "voter")

    def member(self, node_id: str) -> MemberView | None:
        return next((m for m in self.members if m.id == node_id), None)


def members_view(reply: pb.MembersReply) -> MembersView:
    """A Members (or ChangeMembership) reply as a MembersView."""
    return MembersView(
        answered_by=reply.node_id,
        leader=reply.leader_id or None,
        members=tuple(
            MemberView(
                m.id,
                "voter" if m.role == pb.VOTER else "learner",
                m.incarnation,
                m.match_index if m.has_progress else None,
                m.lag if m.has_progress else None,
                m.client_address,
            )
            for m in reply.members
        ),
        pending_change_index=reply.pending_change_index,
        commit_index=reply.commit_index,
    )


def _describe_change(op: pb.ChangeOp.ValueType, node_id: str, view: MembersView) -> str:
    """A committed change, for the event feed: `d joined as a learner (incarnation 41)`."""
    member = view.member(node_id)
    if op == pb.ADD_LEARNER:
        born = f" (incarnation {member.incarnation})" if member is not None else ""
        return f"{node_id} joined the configuration as a learner{born}"
    if op == pb.PROMOTE:
        return f"{node_id} was promoted to voter: voters {', '.join(view.voters())}"
    return f"{node_id} left the configuration: voters {', '.join(view.voters())}"


def format_members(view: MembersView) -> str:
    """The REPL's `members` table (and `supervisor member`'s)."""
    lines = [f"members (as {view.answered_by} sees them; leader {view.leader or 'unknown'}):"]
    for m in view.members:
        progress = f"  match {m.match_index}, lag {m.lag}" if m.match_index is not None else ""
        born = "initial" if m.incarnation == 0 else f"incarnation {m.incarnation}"
        lines.append(f"  {m.id:<6} {m.role:<8} {born}{progress}")
    if view.pending_change_index:
        lines.append(f"  a change at index {view.pending_change_index} is not yet committed")
    return "\n".join(lines)


class Membership:
    """The membership operations of one Cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def _stub(self, node_id: str) -> membership_pb2_grpc.MembershipStub:
        return membership_pb2_grpc.MembershipStub(self.cluster.peer_channel(node_id))

    def members(self, timeout_s: float = 2.0) -> MembersView:
        """The membership as the leader sees it (with each member's lag), or as the first node
        that answers sees it when no leader is known."""
        leader = self.cluster.leader(timeout_s=timeout_s)
        order = [leader] if leader else []
        order += [n for n in self.cluster.node_ids if n != leader]
        errors = []
        for node_id in order:
            if self.cluster.pid(node_id) is None:
                continue
            try:
                return members_view(
                    self._stub(node_id).Members(pb.MembersRequest(), timeout=timeout_s)
                )
            except grpc.RpcError as error:
                errors.append(f"{node_id}: {cast(grpc.Call, error).code().name}")
        raise MembershipError("no node answered Members: " + ("; ".join(errors) or "none up"))

    def client_addresses(self, timeout_s: float = 2.0) -> dict[str, str]:
        """Member id -> client address, from Members (not cluster.yaml's `nodes:`): what a
        tool's clients connect to, members added since the cluster formed included."""
        view = self.members(timeout_s)
        found = {m.id: m.client_address for m in view.members if m.client_address}
        if not found:
            raise MembershipError(f"{view.answered_by} knows no member's client address")
        return found

    def change(
        self, op: pb.ChangeOp.ValueType, node_id: str, timeout_s: float = CHANGE_TIMEOUT_S
    ) -> MembersView:
        """One change through the leader; its membership once applied there."""
        deadline = time.monotonic() + timeout_s
        target = self.cluster.leader(timeout_s=1.0) or self.cluster.node_ids[0]
        what = f"{pb.ChangeOp.Name(op).lower().replace('_', '-')} {node_id}"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MembershipError(f"{what}: not done within {timeout_s:g} s")
            try:
                reply = self._stub(target).ChangeMembership(
                    pb.ChangeRequest(op=op, node_id=node_id), timeout=remaining
                )
                logger.info("membership: %s done", what)
                view = members_view(reply.members)
                self.cluster.events.publish(EventKind.MEMBER, _describe_change(op, node_id, view))
                return view
            except grpc.RpcError as error:
                call = cast(grpc.Call, error)
                code = call.code()
                details = call.details() or code.name
                trailing = cast("Iterable[tuple[str, Any]]", call.trailing_metadata())
                if code is grpc.StatusCode.UNAVAILABLE:
                    hinted = metadata_value(trailing, LEADER_ID_KEY)
                    if hinted and hinted in self.cluster.node_ids:
                        target = hinted
                    else:
                        time.sleep(0.1)
                        target = self.cluster.leader(timeout_s=1.0) or target
                    continue
                retry = metadata_value(trailing, RETRY_AFTER_KEY)
                if code is grpc.StatusCode.FAILED_PRECONDITION and retry is not None:
                    time.sleep(float(retry))
                    continue
                raise MembershipError(f"{what}: {details}") from None

    def wait_caught_up(self, node_id: str, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        lag: int | None = None
        while time.monotonic() < deadline:
            member = self.members().member(node_id)
            lag = member.lag if member is not None else None
            caught_up = lag is not None and lag <= CATCH_UP_LAG
            if member is not None and member.match_index and caught_up:
                return
            time.sleep(0.1)
        raise MembershipError(
            f"{node_id} did not catch up within {timeout_s:g} s (lag {lag}): it stays a "
            f"learner; `members` shows its progress, `promote` is not done for it"
        )

    def add(self, node_id: str) -> MembersView:
        """A new member (module doc): returns the membership with it a voter. Main thread."""
        self.prepare_add(node_id)
        self.cluster.start_node(node_id, wait=False)  # empty, with --join
        return self.finish_join(node_id)

    def replace(self, node_id: str) -> MembersView:
        """Stop and wipe the member, remove it, and add it again empty (module doc)."""
        self.prepare_replace(node_id)
        self.cluster.start_node(node_id, wait=False)
        return self.finish_join(node_id)

    async def join_from_loop(self, node_id: str, prepare: Callable[[str], None]) -> MembersView:
        """add or replace from an event loop on the main thread: `prepare` (prepare_add or
        prepare_replace) and the wait in threads, the node started here (the main thread
        spawns: the node's parent-death signal)."""
        await asyncio.to_thread(prepare, node_id)
        self.cluster.start_node(node_id, wait=False)
        return await asyncio.to_thread(self.finish_join, node_id)

    def remove(self, node_id: str) -> MembersView:
        """Take the member out of the configuration, then stop its process."""
        self.cluster.node_address(node_id)  # UnknownNodeError for a node it never had
        view = self.change(pb.REMOVE, node_id)
        if self.cluster.pid(node_id) is not None:
            self.cluster.stop(node_id)
        self.cluster.mark_removed(node_id)  # `up` starts it no more; `add` brings it back
        return view

    # The steps, for a caller (the REPL) that must start the process on the main thread but
    # wait everywhere else: prepare_*, then cluster.start_node(N, wait=False), then finish_join.

    def prepare_add(self, node_id: str) -> None:
        """Ports, a certificate, links, peers files, then the add itself (as a learner): the
        member's incarnation is the index of that entry, and it starts as that."""
        if not NODE_ID_PATTERN.fullmatch(node_id):
            raise MembershipError(f"{node_id!r} is not a node id (1-32 of A-Za-z0-9_-)")
        if node_id in self.cluster.node_ids:
            raise MembershipError(
                f"{node_id} is already a node of this cluster: `replace {node_id}` gives it "
                "a new disk, `remove` takes it out"
            )
        taken = {
            p
            for n in self.cluster.node_ids
            for p in (self.cluster.node_address(n).port, self.cluster.node_address(n).peer_port)
        }
        config = self.cluster.config
        again = node_id in self.cluster.removed()  # removed before: a new, empty incarnation
        if node_id in config.node_ids:  # so removed before: cluster.node_ids did not have it
            address = config.node(node_id)
        else:
            port = free_port(taken)
            address = NodeAddress(node_id, "127.0.0.1", port, free_port(taken | {port}))
        if config.tls is not None and not config.tls.cert(node_id).exists():
            issue(config, node_id, [address.host], config.tls.directory)
        self.cluster.register_member(address)  # the peers files before the add (node.peers)
        if again:
            self.cluster.wipe_node(node_id)  # its old incarnation's data
        self._add_learner(node_id)

    def prepare_replace(self, node_id: str) -> None:
        """Kill and wipe the member, take it out of the configuration and add it again."""
        self.cluster.node_address(node_id)  # UnknownNodeError for a node it never had
        if self.cluster.pid(node_id) is not None:
            self.cluster.kill(node_id)
        self.cluster.wipe_node(node_id)
        if self.members().member(node_id) is not None:
            self.change(pb.REMOVE, node_id)
        self.cluster.mark_rejoining(node_id)
        self._add_learner(node_id)

    def _add_learner(self, node_id: str) -> None:
        try:
            view = self.change(pb.ADD_LEARNER, node_id)
        except MembershipError as error:
            raise MembershipError(
                f"{error}; {node_id} is known to the supervisor but not a member: "
                f"`replace {node_id}` tries again"
            ) from None
        member = view.member(node_id)
        if member is None or member.incarnation < 1:
            raise MembershipError(f"the add of {node_id} is not in the leader's membership")
        self.cluster.set_incarnation(node_id, member.incarnation)

    def finish_join(self, node_id: str) -> MembersView:
        """The started member, once it serves and has caught up, promoted to voter."""
        self.cluster.wait_serving(node_id)
        self.cluster.mark_joined(node_id)
        self.wait_caught_up(node_id)
        return self.change(pb.PROMOTE, node_id)
