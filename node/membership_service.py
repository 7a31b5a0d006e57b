"""The Membership service (protos/membership.proto) on the peer port: who the members are, and
one change at a time, for the supervisor and operators.

Members answers any caller the peer port lets in (a certificate of the cluster's CA; under
`tls: plaintext`, the cluster key). ChangeMembership is for the `tool` certificate only (or the
cluster key under plaintext): a member never changes the membership on its own. A change is
made on the leader and answered once its CONFIG entry is applied there (RaftDriver.
change_membership); a follower answers UNAVAILABLE naming the leader, as Chat does.

Errors, each with a message that says what to do:
- INVALID_ARGUMENT: no such operation, or not a node id;
- FAILED_PRECONDITION: an impossible change ("d is already a voter"), or one that may not be
  made yet (an earlier change is uncommitted; the leader has not committed in its term): the
  latter carries RETRY_AFTER_KEY;
- UNAVAILABLE: not the leader (LEADER_ID_KEY, LEADER_ADDRESS_KEY), no majority, or a leadership
  transfer under way;
- DEADLINE_EXCEEDED: proposed, but not applied in time: it may still take effect (ask Members).

Imports node.driver, node.peers, node.raft, node.transport's certificate helpers and protos.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from node.config import NODE_ID_PATTERN, TOOL_NAME, ClusterConfig, NodeAddress, certificate_name
from node.driver import NoQuorumError, OutcomeUnknownError, RaftDriver
from node.peers import PeerDirectory
from node.raft.errors import NotLeaderError, ProposalDroppedError
from node.raft.membership import ConfChangeBusyError, ConfChangeError
from node.raft.types import ConfChange, ConfChangeOp, NodeId, Role
from node.transport import certificate_names, presents_cluster_key
from protos import membership_pb2 as pb
from protos import membership_pb2_grpc
from protos.vocabulary import LEADER_ADDRESS_KEY, LEADER_ID_KEY, RETRY_AFTER_KEY

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_TIMEOUT_S = 10.0
BUSY_RETRY_S = 0.2  # an earlier change commits within a round trip or two
_OPS = {
    pb.ADD_LEARNER: ConfChangeOp.ADD_LEARNER,
    pb.PROMOTE: ConfChangeOp.PROMOTE,
    pb.REMOVE: ConfChangeOp.REMOVE,
}


class MembershipService(membership_pb2_grpc.MembershipServicer):
    def __init__(
        self,
        *,
        address: NodeAddress,
        driver: RaftDriver[Any],
        config: ClusterConfig,
        peers: PeerDirectory,
        cluster_key: bytes,
        certificates: bool,
    ) -> None:
        self._address = address
        self._driver = driver
        self._config = config
        self._peers = peers
        self._key = cluster_key
        self._certificates = certificates  # False: `tls: plaintext`, the key is the check

    async def Members(self, request: pb.MembersRequest, context: Context) -> pb.MembersReply:
        if not self._certificates and not presents_cluster_key(
            context.invocation_metadata(), self._key
        ):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "present the cluster key")
        return self.members()

    async def ChangeMembership(self, request: pb.ChangeRequest, context: Context) -> pb.ChangeReply:
        await self._require_tool(context)
        op = _OPS.get(request.op)
        if op is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"no membership change {request.op}"
            )
            raise AssertionError("unreachable")
        if not NODE_ID_PATTERN.fullmatch(request.node_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{request.node_id!r} is not a node id (1-32 of A-Z a-z 0-9 _ -)",
            )
        remaining = context.time_remaining()
        timeout_s = DEFAULT_TIMEOUT_S if remaining is None else max(0.0, remaining - 0.05)
        change = ConfChange(op, NodeId(request.node_id))
        try:
            await self._driver.change_membership(change, timeout_s)
        except NotLeaderError as exc:
            await self._not_leader(context, exc.leader_hint)
        except ConfChangeBusyError as exc:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(BUSY_RETRY_S)),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{exc}: retry shortly")
        except ConfChangeError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (NoQuorumError, ProposalDroppedError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except OutcomeUnknownError as exc:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{exc}: the change may still take effect; ask Members before retrying",
            )
        return pb.ChangeReply(members=self.members())

    def members(self) -> pb.MembersReply:
        """This node's view of the membership (with each member's progress on the leader)."""
        driver = self._driver
        core = driver.core
        conf = core.conf
        last = core.log.last_index()
        leading = core.role is Role.LEADER
        reply = pb.MembersReply(
            node_id=driver.id,
            leader_id=core.leader or "",
            pending_change_index=core.pending_conf_index(),
            last_index=last,
            commit_index=core.log.committed,
        )
        for node in conf.members():
            member = reply.members.add(
                id=node,
                role=pb.VOTER if node in conf.voters else pb.LEARNER,
                incarnation=conf.incarnation(node),
                client_address=self._client_address(node),
            )
            if leading:
                progress = core.progress(node)
                match = last if node == driver.id else (progress.match if progress else 0)
                member.has_progress = True
                member.match_index = match
                member.lag = max(0, last - match)
        return reply

    def _client_address(self, node: str) -> str:
        if node == self._driver.id:
            return self._address.address
        return self._peers.client_address(node) or ""

    async def _require_tool(self, context: Context) -> None:
        if not self._certificates:
            if presents_cluster_key(context.invocation_metadata(), self._key):
                return
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "present the cluster key")
        tool = certificate_name(TOOL_NAME, self._config.cluster)
        if tool not in certificate_names(context):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"membership changes need the `{TOOL_NAME}` certificate ({tool}); a member's "
                "or a client's certificate may not change the membership",
            )

    async def _not_leader(self, context: Context, leader: str | None) -> NoReturn:
        if leader:
            context.set_trailing_metadata(
                ((LEADER_ID_KEY, leader), (LEADER_ADDRESS_KEY, self._client_address(leader)))
            )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"{self._driver.id} is not the leader (leader: {leader or 'unknown'}): "
            "membership changes are made on the leader",
        )
        raise AssertionError("unreachable")
