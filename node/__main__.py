"""`python -m node --config cluster.yaml --id a [--bootstrap ID | --join ID --incarnation N]
[--peer b=HOST:PORT]`: run one node.

A data directory belongs to one cluster and one member (node.storage.identity). On first start
the node is told which: `--bootstrap ID` for a member that forms cluster ID with cluster.yaml's
`nodes`; `--join ID --incarnation N` for one that was added to it (as a learner) by the CONFIG
entry at index N, which Membership.ChangeMembership answered with. Once its directory records
that, the flags are optional. A node whose directory is empty and which is given neither lost
its data (or never had any): it exits with code 5 rather than come back as the member it was,
since the cluster may remember votes and entries that its empty disk does not; it is replaced
(`replace N`). `--bootstrap` on an empty directory is trusted to mean a new cluster: the
supervisor passes it only until the cluster formed, and a person who passes it later brings
an empty member back under its old incarnation (a known limit: etcd asks its peers first).

Two gRPC servers: the client port (`port`: Chat, Health, reflection; server TLS) and the peer
port (`peer_port`: Raft, forwarded Chat calls, digests, Membership; mutual TLS with the
cluster's CA). grpcio cannot ask for an optional client certificate, hence two ports. The
node reads its certificate from the `tls` directory of cluster.yaml (data_dir/tls by default).

Exit codes: 0 after SIGTERM (or SIGINT), 2 bad usage or configuration (missing credentials
included), 3 storage error (corrupt, locked or failing data directory), 4 address in use,
5 not a member (an empty data directory and neither --bootstrap nor --join), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node.chat.commands import COMMAND_FORMAT_VERSION
from node.chat.replies import ApplyResult
from node.chat.state import ChatState, DatabaseError
from node.config import (
    NODE_ID_PATTERN,
    PEERS_FILE,
    ClusterConfig,
    ConfigError,
    NodeAddress,
    PeersFileError,
    load_config,
    read_cluster_key,
)
from node.driver import FatalNodeError, RaftDriver
from node.loop_lag import LoopLag
from node.membership_service import MembershipService
from node.peers import PeerDirectory
from node.raft.types import ConfState, NodeId
from node.request_guard import UndecodableRequestGuard
from node.server import ChatService
from node.storage import MemberRecord, Storage
from node.storage.errors import StorageError
from node.transport import ClusterKeyInterceptor, GrpcTransport, RaftService
from protos import chat_pb2, chat_pb2_grpc, membership_pb2_grpc, raft_pb2_grpc
from protos.vocabulary import SERVER_OPTIONS

logger = logging.getLogger("node")

EXIT_USAGE, EXIT_STORAGE, EXIT_ADDRESS, EXIT_NOT_MEMBER = 2, 3, 4, 5
STATE_DIR = "state"  # the chat state's database, under the node's data dir
LOG_FILE_BYTES = 10 << 20
LOG_FILE_BACKUPS = 3
PR_SET_PDEATHSIG = 1


class StartupError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m node", description="Run one chatbooth node.")
    p.add_argument("--config", required=True, help="the cluster's cluster.yaml")
    p.add_argument("--id", required=True, help="this node's id in cluster.yaml")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="dial peer ID at HOST:PORT instead of its configured address (link proxies)",
    )
    first = p.add_mutually_exclusive_group()
    first.add_argument(
        "--bootstrap",
        metavar="CLUSTER_ID",
        help="on first start: form cluster CLUSTER_ID with cluster.yaml's nodes as its members",
    )
    first.add_argument(
        "--join",
        metavar="CLUSTER_ID",
        help="on first start: join the running cluster CLUSTER_ID, empty, as the member its "
        "add made (needs --incarnation)",
    )
    p.add_argument(
        "--incarnation",
        type=int,
        metavar="N",
        help="with --join: the index of the CONFIG entry that added this member",
    )
    p.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="a member added after the cluster formed (not in cluster.yaml's nodes): its "
        "client port; needs --peer-address and --join on first start",
    )
    p.add_argument("--peer-address", metavar="HOST:PORT", help="with --address: its peer port")
    p.add_argument("--log-file", help="also log to this file (size-rotated)")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="die with the parent process (PR_SET_PDEATHSIG): the supervisor sets this",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _exit_with_parent() -> None:
    """TRAPS: no orphans even if the supervisor is SIGKILLed."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise StartupError(1, f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
    if os.getppid() != parent or parent == 1:
        raise StartupError(1, "the parent process is already gone")


class NodeLogContext(logging.Filter):
    """Starts every log line with the node id and its current term (STYLE)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self.term: Callable[[], int | str] = lambda: "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        record.term = self.term()
        return True


LOG_CONTEXT = NodeLogContext("-")


def _setup_logging(node_id: str, level: str, log_file: str | None) -> None:
    LOG_CONTEXT.node_id = node_id
    fmt = logging.Formatter("%(asctime)s %(node)s t%(term)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level.upper())
    # With a log file the node writes its log itself, rotated by size, so that nothing a
    # client sends can fill the disk; stderr is left for what Python prints as it dies.
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if log_file:
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS
        )
    handlers = [handler]
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(LOG_CONTEXT)
        root.addHandler(handler)


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """This node's TLS credentials: for its client port, its peer port and its peer channels."""

    client_port: grpc.ServerCredentials
    peer_port: grpc.ServerCredentials
    channels: grpc.ChannelCredentials


def _read_credentials(config: ClusterConfig, node_id: str) -> NodeCredentials | None:
    """None with `tls: plaintext`; StartupError naming a file that cannot be read."""
    files = config.tls
    if files is None:
        return None
    pem: list[bytes] = []
    for path in (files.ca, files.cert(node_id), files.key(node_id)):
        try:
            pem.append(path.read_bytes())
        except OSError as error:
            problem = error.strerror or str(error)
            raise StartupError(
                EXIT_USAGE,
                f"{node_id}: cannot read {path}: {problem} (`python -m supervisor up` makes "
                "the cluster's certificates; `python -m supervisor cert` issues one)",
            ) from None
    ca, cert, key = pem
    return NodeCredentials(
        client_port=grpc.ssl_server_credentials([(key, cert)], require_client_auth=False),
        peer_port=grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        ),
        channels=grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        ),
    )


def _peer_overrides(config: ClusterConfig, me: str, overrides: list[str]) -> dict[str, str]:
    """The --peer ID=HOST:PORT arguments, checked: ID is another node of cluster.yaml."""
    others = [n.id for n in config.nodes if n.id != me]
    out: dict[str, str] = {}
    for spec in overrides:
        peer, sep, address = spec.partition("=")
        if not sep or ":" not in address:
            raise StartupError(EXIT_USAGE, f"--peer {spec!r}: expected ID=HOST:PORT")
        if peer not in others:
            known = ", ".join(sorted(others)) or "none"
            raise StartupError(EXIT_USAGE, f"--peer {spec!r}: {peer!r} is not a peer ({known})")
        out[peer] = address
    return out


def _split(flag: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StartupError(EXIT_USAGE, f"{flag} {value!r}: expected HOST:PORT, port 1-65535")
    return host, int(port)


def _whoami(config: ClusterConfig, args: argparse.Namespace) -> NodeAddress:
    """Where this node serves: its entry in cluster.yaml's nodes (an initial member), or
    --address and --peer-address (a member added later)."""
    if args.id in config.node_ids:
        if args.address or args.peer_address:
            raise StartupError(
                EXIT_USAGE,
                f"--address/--peer-address: {args.id} is in {config.path}'s nodes, which "
                "say where it serves",
            )
        return config.node(args.id)
    if not NODE_ID_PATTERN.fullmatch(args.id):
        raise StartupError(EXIT_USAGE, f"--id {args.id!r}: not a node id (1-32 of A-Za-z0-9_-)")
    if not (args.address and args.peer_address):
        raise StartupError(
            EXIT_USAGE,
            f"--id {args.id}: not in {config.path}'s nodes ({', '.join(config.node_ids)}); a "
            "member added later says where it serves with --address and --peer-address",
        )
    host, port = _split("--address", args.address)
    peer_host, peer_port = _split("--peer-address", args.peer_address)
    if peer_host != host:
        raise StartupError(EXIT_USAGE, "--address and --peer-address must name the same host")
    return NodeAddress(args.id, host, port, peer_port)


async def serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        key = read_cluster_key(config)
    except ConfigError as exc:
        raise StartupError(EXIT_USAGE, str(exc)) from None
    me = _whoami(config, args)
    overrides = _peer_overrides(config, me.id, args.peer)
    for warning in config.warnings:
        logger.warning("%s", warning)
    credentials = _read_credentials(config, me.id)
    try:
        storage = Storage.open(Path(config.node_dir(me.id)), command_format=COMMAND_FORMAT_VERSION)
    except StorageError as exc:
        raise StartupError(EXIT_STORAGE, f"{me.id}: {exc}") from None
    try:
        peers = PeerDirectory(config, me.id, overrides, storage.data_dir / PEERS_FILE)
    except PeersFileError as exc:
        storage.close()
        raise StartupError(EXIT_USAGE, f"{me.id}: {exc}") from None
    try:
        member = _establish_member(
            storage, config, me.id, args.bootstrap, args.join, args.incarnation
        )
        return await _run(config, me, peers, key, credentials, storage, member)
    finally:
        storage.close()


def _establish_member(
    storage: Storage,
    config: ClusterConfig,
    node_id: str,
    bootstrap: str | None,
    join: str | None,
    incarnation: int | None,
) -> MemberRecord:
    """The data directory's member record, written first if --bootstrap or --join says what it
    is; StartupError if it has none and may not get one, or belongs to another cluster."""
    given = bootstrap if bootstrap is not None else join
    where = storage.data_dir
    record = storage.member
    if (join is None) != (incarnation is None):
        raise StartupError(
            EXIT_USAGE,
            f"{node_id}: --join and --incarnation go together: a member joins as the "
            "incarnation its add made (the index Membership.ChangeMembership answered)",
        )
    if incarnation is not None and incarnation < 1:
        raise StartupError(EXIT_USAGE, f"{node_id}: --incarnation {incarnation}: must be >= 1")
    if record is not None and incarnation is not None and incarnation != record.incarnation:
        raise StartupError(
            EXIT_USAGE,
            f"{node_id}: {where} is incarnation {record.incarnation} of {node_id}, not "
            f"{incarnation}: the data of an earlier incarnation (replace it with an empty one)",
        )
    if record is not None:
        if given is not None and given != record.cluster_id:
            flag = "--bootstrap" if bootstrap is not None else "--join"
            raise StartupError(
                EXIT_USAGE,
                f"{node_id}: {where} belongs to the cluster with id {record.cluster_id!r}, not "
                f"{given!r} ({flag}): it is another cluster's data directory",
            )
        return record
    if bootstrap is not None and node_id not in config.node_ids:
        raise StartupError(
            EXIT_USAGE,
            f"{node_id}: --bootstrap is for the members in {config.path}'s nodes; a member "
            "added later joins (--join)",
        )
    if bootstrap is not None:
        # A directory of an older chatbooth (Raft data, no record) is adopted here as well.
        record = MemberRecord(bootstrap, 0, tuple(config.node_ids))
    elif join is not None:
        if not storage.holds_nothing():
            raise StartupError(
                EXIT_USAGE,
                f"{node_id}: --join: {where} already holds Raft data; a member joins with an "
                "empty data directory",
            )
        assert incarnation is not None  # checked above
        record = MemberRecord(join, incarnation)
    elif storage.holds_nothing():
        raise StartupError(
            EXIT_NOT_MEMBER,
            f"{node_id}: {where} is empty: this node lost its data (or never had any), and it "
            f"will not come back as member {node_id}, whose votes and entries the cluster may "
            f"still count on. Replace it: `replace {node_id}` in the supervisor's REPL (or "
            f"remove {node_id}, add it, and start it with --join CLUSTER_ID --incarnation N). "
            "A new cluster's "
            "members start with --bootstrap CLUSTER_ID (`python -m supervisor up` does that).",
        )
    else:
        raise StartupError(
            EXIT_USAGE,
            f"{node_id}: {where} holds Raft data but no member record (an older chatbooth wrote "
            "it): start it once with --bootstrap CLUSTER_ID to adopt it into that cluster",
        )
    storage.record_member(record)
    how = "formed" if bootstrap is not None else "joining"
    logger.info(
        "%s: member of cluster %s (%s), recorded in %s", node_id, record.cluster_id, how, where
    )
    return record


def _listen(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> None:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(EXIT_ADDRESS, f"cannot listen on {address}: in use?")


async def _run(
    config: ClusterConfig,
    me: NodeAddress,
    peers: PeerDirectory,
    key: bytes,
    credentials: NodeCredentials | None,
    storage: Storage,
    member: MemberRecord,
) -> int:
    node_id = me.id
    initial = ConfState(tuple(NodeId(n) for n in member.initial_voters))
    transport = GrpcTransport(
        node_id=NodeId(node_id),
        peers=peers,
        cluster=config.cluster,
        key=key,
        credentials=credentials.channels if credentials is not None else None,
        cluster_id=member.cluster_id,
    )
    try:
        state = ChatState(config.chat, storage.data_dir / STATE_DIR, voters=initial.voters)
        driver = RaftDriver(
            node_id=NodeId(node_id),
            config=config,
            storage=storage,
            state=state,
            transport=transport,
            conf=initial,
        )
    except (DatabaseError, FatalNodeError, StorageError) as exc:
        raise StartupError(EXIT_STORAGE, f"{node_id}: {exc}") from None

    def on_conf(conf: ConfState) -> None:
        # The supervisor wrote the peers file before it proposed the change (node.peers).
        peers.reload()
        transport.sync_links()
        logger.info(
            "%s: configuration voters %s, learners %s; links to %s",
            node_id,
            ",".join(conf.voters) or "-",
            ",".join(conf.learners) or "-",
            ",".join(sorted(transport.linked())) or "-",
        )

    driver.add_conf_listener(on_conf)
    try:
        return await _serve_with(
            config, me, peers, key, credentials, driver, state, member.cluster_id
        )
    finally:
        state.close()


async def _serve_with(
    config: ClusterConfig,
    me: NodeAddress,
    peers: PeerDirectory,
    key: bytes,
    credentials: NodeCredentials | None,
    driver: RaftDriver[ApplyResult],
    state: ChatState,
    cluster_id: str,
) -> int:
    node_id = me.id
    channel_credentials = credentials.channels if credentials is not None else None
    LOG_CONTEXT.term = lambda: driver.core.term
    # The client port: Chat, Health and reflection, server TLS.
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[UndecodableRequestGuard()])
    # The peer port: Raft and forwarded Chat calls, a client certificate of the cluster's CA
    # required; the cluster key is a second check on Raft.
    peer_server = grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=[UndecodableRequestGuard(), ClusterKeyInterceptor(key)],
    )
    loop_lag = LoopLag()
    chat = ChatService(
        address=me,
        driver=driver,
        state=state,
        config=config,
        peers=peers,
        peer_credentials=channel_credentials,
        cluster_key=key,
        loop_lag=loop_lag,
    )
    chat_pb2_grpc.add_ChatServicer_to_server(chat, server)
    chat_pb2_grpc.add_ChatServicer_to_server(chat, peer_server)
    raft_pb2_grpc.add_RaftServicer_to_server(
        RaftService(
            NodeId(node_id),
            config.cluster,
            driver.step,
            driver.receive_snapshot,
            confs=driver.peer_confs,  # learners are peers too
            incarnation=driver.own_incarnation,
            spool=lambda: driver.snapshot_spool,
            certificates=credentials is not None,
            cluster_id=cluster_id,
        ),
        peer_server,
    )
    membership_pb2_grpc.add_MembershipServicer_to_server(
        MembershipService(
            address=me,
            driver=driver,
            config=config,
            peers=peers,
            cluster_key=key,
            certificates=credentials is not None,
        ),
        peer_server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, peer_server)
    reflection.enable_server_reflection(
        (
            chat_pb2.DESCRIPTOR.services_by_name["Chat"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    _listen(server, me.address, credentials.client_port if credentials else None)
    _listen(peer_server, me.peer_address, credentials.peer_port if credentials else None)
    await server.start()
    await peer_server.start()
    driver.start()
    chat.start()
    loop_lag.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    security = "TLS" if credentials is not None else "PLAINTEXT (tls: plaintext)"
    logger.info(
        "%s serving clients on %s and peers on %s, %s (pid %d)",
        node_id,
        me.address,
        me.peer_address,
        security,
        os.getpid(),
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_wait = asyncio.create_task(stop.wait())
    fatal_wait = asyncio.create_task(driver.stopped.wait())
    await asyncio.wait({stop_wait, fatal_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    fatal_wait.cancel()

    logger.info("%s shutting down", node_id)
    await health_servicer.enter_graceful_shutdown()
    await loop_lag.stop()
    await chat.close()
    await asyncio.gather(server.stop(grace=1.0), peer_server.stop(grace=1.0))
    await driver.stop()
    if driver.fatal is not None:
        disk = (StorageError, DatabaseError)
        return EXIT_STORAGE if isinstance(driver.fatal, disk) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    # Nothing a node writes (log, snapshots, WAL, its own log file) is for other users: files
    # 0600 and directories 0700 from the first one on, with no chmod race (issue 11).
    os.umask(0o077)
    args = _parse_args(argv)
    _setup_logging(args.id, args.log_level, args.log_file)
    try:
        if args.exit_with_parent:
            _exit_with_parent()
        return asyncio.run(serve(args))
    except StartupError as exc:
        logger.error("%s", exc)
        return exc.code
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
