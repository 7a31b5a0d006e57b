"""`python -m supervisor member ...`: the Membership service from the command line, for members
this machine's supervisor does not run (a cluster grown to other machines; README, "Growing to
another machine").

    python -m supervisor member list [--config cluster.yaml] [--node ID=HOST:PEERPORT ...]
    python -m supervisor member add-learner ID [...]   a new member, which receives the log
    python -m supervisor member promote ID [...]       a learner that caught up now votes
    python -m supervisor member remove ID [...]        a voter or a learner leaves

It dials the peer ports of cluster.yaml's nodes, and of each `--node` (members added since),
with the `tool` certificate of the cluster's tls directory (under `tls: plaintext`, with the
cluster key), asks the first that answers, and sends a change to the leader it names. A
change is answered once it is applied on the leader, with the membership then. Exit codes: 0
done, 1 refused or not done (the message says why and what to do), 2 bad arguments.

Imports node.config, protos and the supervisor's certs and membership view; never node
internals and never a Cluster (nothing is started here).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, cast

import grpc

from node.config import (
    NODE_ID_PATTERN,
    ClusterConfig,
    ConfigError,
    certificate_name,
    load_config,
    read_cluster_key,
)
from protos import membership_pb2 as pb
from protos import membership_pb2_grpc
from protos.vocabulary import (
    CLIENT_CHANNEL_OPTIONS,
    CLUSTER_KEY_KEY,
    LEADER_ID_KEY,
    RETRY_AFTER_KEY,
    metadata_value,
)
from supervisor.certs import read_credentials, secure_channel
from supervisor.errors import SupervisorError
from supervisor.membership import MembersView, format_members, members_view

CALL_TIMEOUT_S: Final = 10.0
RETRIES: Final = 20  # an earlier change still uncommitted: retry after the time it names
OPS: Final = {"add-learner": pb.ADD_LEARNER, "promote": pb.PROMOTE, "remove": pb.REMOVE}


class MemberCommandError(SupervisorError):
    """What went wrong, in words for the operator."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", *OPS], help="list, or the change to make")
    p.add_argument("id", nargs="?", help="the member a change is about")
    p.add_argument(
        "--config", type=Path, default=Path("cluster.yaml"), help="default ./cluster.yaml"
    )
    p.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="ID=HOST:PEERPORT",
        help="the peer port of a member added since the cluster formed (repeatable)",
    )


def parse_nodes(config: ClusterConfig, extra: Sequence[str]) -> dict[str, str]:
    """Member id -> peer address: cluster.yaml's nodes, then each ID=HOST:PORT."""
    nodes = {n.id: n.peer_address for n in config.nodes}
    for item in extra:
        node_id, sep, address = item.partition("=")
        host, colon, port = address.rpartition(":")
        if not sep or not NODE_ID_PATTERN.fullmatch(node_id) or not colon or not host:
            raise MemberCommandError(f"--node {item!r}: expected ID=HOST:PORT, as d=10.0.0.4:9004")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise MemberCommandError(f"--node {item!r}: {port!r} is not a port")
        nodes[node_id] = address
    return nodes


class MemberClient:
    """Blocking calls to the Membership service of a cluster's members."""

    def __init__(self, config: ClusterConfig, nodes: dict[str, str]) -> None:
        self._config = config
        self._nodes = nodes
        self._credentials = read_credentials(config, "tool")
        key = read_cluster_key(config) if self._credentials is None else None
        self._metadata = ((CLUSTER_KEY_KEY, key.decode()),) if key is not None else ()
        self._channels: dict[str, grpc.Channel] = {}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _stub(self, node_id: str) -> membership_pb2_grpc.MembershipStub:
        channel = self._channels.get(node_id)
        if channel is None:
            channel = secure_channel(
                self._nodes[node_id],
                self._credentials,
                CLIENT_CHANNEL_OPTIONS,
                target_name=certificate_name(node_id, self._config.cluster),
            )
            self._channels[node_id] = channel
        return membership_pb2_grpc.MembershipStub(channel)

    def members(self) -> MembersView:
        """The membership as the leader sees it (asked again there when another node answered
        first and names a leader this command can reach)."""
        errors = []
        for node_id in self._nodes:
            try:
                reply = self._stub(node_id).Members(
                    pb.MembersRequest(), timeout=CALL_TIMEOUT_S, metadata=self._metadata
                )
            except grpc.RpcError as error:
                errors.append(f"{node_id}: {_describe(error)}")
                continue
            view = members_view(reply)
            if view.leader and view.leader != node_id and view.leader in self._nodes:
                try:
                    reply = self._stub(view.leader).Members(
                        pb.MembersRequest(), timeout=CALL_TIMEOUT_S, metadata=self._metadata
                    )
                    return members_view(reply)
                except grpc.RpcError:
                    pass  # this node's view will do
            return view
        raise MemberCommandError("no member answered: " + "; ".join(errors))

    def change(self, action: str, node_id: str) -> MembersView:
        """One change through the leader; the membership once it is applied there."""
        target = self.members().leader
        if target is None:
            raise MemberCommandError("no leader is known: the cluster cannot change now")
        for _ in range(RETRIES):
            if target not in self._nodes:
                raise MemberCommandError(
                    f"the leader is {target}, whose peer port this command does not know: "
                    f"give --node {target}=HOST:PORT"
                )
            try:
                reply = self._stub(target).ChangeMembership(
                    pb.ChangeRequest(op=OPS[action], node_id=node_id),
                    timeout=CALL_TIMEOUT_S,
                    metadata=self._metadata,
                )
                return members_view(reply.members)
            except grpc.RpcError as error:
                call = cast(grpc.Call, error)
                trailing = cast("Iterable[tuple[str, Any]]", call.trailing_metadata() or ())
                hinted = metadata_value(trailing, LEADER_ID_KEY)
                retry = metadata_value(trailing, RETRY_AFTER_KEY)
                if call.code() is grpc.StatusCode.UNAVAILABLE and hinted and hinted != target:
                    target = hinted
                elif call.code() is grpc.StatusCode.FAILED_PRECONDITION and retry is not None:
                    time.sleep(float(retry))
                else:
                    raise MemberCommandError(f"{action} {node_id}: {_describe(error)}") from None
        raise MemberCommandError(f"{action} {node_id}: not done after {RETRIES} tries")


def _describe(error: grpc.RpcError) -> str:
    call = cast(grpc.Call, error)
    return f"{call.code().name}: {call.details() or ''}".rstrip(": ")


def run(args: argparse.Namespace) -> int:
    """The command; its exit code (module doc). Messages go to stdout, errors to stderr."""
    if args.action == "list" and args.id is not None:
        print("member list takes no ID", file=sys.stderr)
        return 2
    if args.action != "list" and (args.id is None or not NODE_ID_PATTERN.fullmatch(args.id)):
        print(f"member {args.action} needs a node id (1-32 of A-Za-z0-9_-)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        nodes = parse_nodes(config, args.node)
        client = MemberClient(config, nodes)
    except (ConfigError, SupervisorError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        view = client.members() if args.action == "list" else client.change(args.action, args.id)
    except SupervisorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(format_members(view))
    return 0
