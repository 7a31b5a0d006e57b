"""A stand-in for `python -m node` that starts in a fraction of the time, for the supervisor's
fast tests: same command line, same exit codes, gRPC Health and a Chat.Status on the
configured address (server TLS with the cluster's certificates, as a node), Health on the peer
port (mutual TLS), the node's server and peer channel options (protos/vocabulary.py),
PR_SET_PDEATHSIG with --exit-with-parent, exit 0 on SIGTERM.

Its "Raft" is a toy that still needs the network: every 50 ms it checks each peer's health
at the address --peer gives (through the supervisor's proxies), and a node that reaches a
majority (itself included) follows the configured leader if that one is reachable, else the
smallest reachable id (its "term" is that leader's place in the file, so that followers and
leader agree). So partitions, pauses and kills change roles as the tests expect.

Creating data_dir/ID/CRASH makes it print a few lines and exit with code 3, as a node that
finds its storage corrupt would: a node that exits on its own.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node.config import ConfigError, certificate_name, load_config, read_cluster_key
from protos import chat_pb2, chat_pb2_grpc
from protos.vocabulary import PEER_CHANNEL_OPTIONS, SERVER_OPTIONS

PR_SET_PDEATHSIG = 1


def log(node_id: str, text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} fake {node_id}: {text}", file=sys.stderr, flush=True)


class State:
    def __init__(self, node_id: str, ids: list[str], hint: str | None) -> None:
        self.node_id = node_id
        self.ids = ids
        self.hint = hint
        self.reachable: set[str] = set()
        self.term = 0
        self.leader = ""
        self.lock = threading.Lock()

    def update(self, reachable: set[str]) -> None:
        with self.lock:
            self.reachable = reachable
            component = reachable | {self.node_id}
            leader = ""
            if len(component) > len(self.ids) // 2:
                hint = self.hint if self.hint in component else None
                leader = hint or min(component)
            if leader != self.leader:
                # Every node that follows a leader must report the same term; a toy term that
                # all agree on without talking: the leader's place in the file.
                self.term = self.ids.index(leader) + 1 if leader else self.term
                self.leader = leader
                log(self.node_id, f"leader is now {leader or 'none'} at term {self.term}")


class Chat(chat_pb2_grpc.ChatServicer):
    def __init__(self, state: State) -> None:
        self.state = state

    def Status(self, request: Any, context: Any) -> chat_pb2.StatusReply:
        with self.state.lock:
            leader = self.state.leader
            role = chat_pb2.LEADER if leader == self.state.node_id else chat_pb2.FOLLOWER
            if not leader:
                role = chat_pb2.CANDIDATE
            return chat_pb2.StatusReply(
                node_id=self.state.node_id,
                role=role,
                term=self.state.term,
                leader_id=leader,
                commit_index=self.state.term,
                applied_index=self.state.term,
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--bootstrap")
    parser.add_argument("--join")
    parser.add_argument("--log-file")
    parser.add_argument("--exit-with-parent", action="store_true")
    args = parser.parse_args()
    if args.exit_with_parent:
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent or parent == 1:
            return 1
    try:
        config = load_config(args.config)
        me = config.node(args.id)
        read_cluster_key(config)
    except ConfigError as error:
        log(args.id, str(error))
        return 2
    peers = {n.id: n.peer_address for n in config.nodes if n.id != me.id}
    files = config.tls
    client_creds = peer_creds = channel_creds = None
    if files is not None:
        ca, cert, key = (p.read_bytes() for p in (files.ca, files.cert(me.id), files.key(me.id)))
        client_creds = grpc.ssl_server_credentials([(key, cert)])
        peer_creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        channel_creds = grpc.ssl_channel_credentials(ca, key, cert)
    for spec in args.peer:
        peer, _, address = spec.partition("=")
        peers[peer] = address
    state = State(me.id, list(config.node_ids), config.leader)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = grpc.server(futures.ThreadPoolExecutor(4), options=SERVER_OPTIONS)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    chat_pb2_grpc.add_ChatServicer_to_server(Chat(state), server)
    peer_server = grpc.server(futures.ThreadPoolExecutor(4), options=SERVER_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, peer_server)
    try:
        if client_creds is None or peer_creds is None:
            port = server.add_insecure_port(me.address)
            port = port and peer_server.add_insecure_port(me.peer_address)
        else:
            port = server.add_secure_port(me.address, client_creds)
            port = port and peer_server.add_secure_port(me.peer_address, peer_creds)
    except RuntimeError:
        port = 0
    if port == 0:
        log(me.id, f"cannot listen on {me.address}: address in use")
        return 4
    server.start()
    peer_server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log(me.id, f"serving on {me.address} (pid {os.getpid()})")

    def channel(peer: str, address: str) -> grpc.Channel:
        if channel_creds is None:
            return grpc.insecure_channel(address, options=PEER_CHANNEL_OPTIONS)
        name = ("grpc.ssl_target_name_override", certificate_name(peer, config.cluster))
        return grpc.secure_channel(address, channel_creds, options=[*PEER_CHANNEL_OPTIONS, name])

    stubs = {
        peer: health_pb2_grpc.HealthStub(channel(peer, address)) for peer, address in peers.items()
    }
    crash_file = config.node_dir(me.id) / "CRASH"
    while not stop.wait(0.05):
        if crash_file.exists():
            log(me.id, "storage error: record 7 of wal-000001 fails its checksum")
            log(me.id, "refusing to continue with a corrupt log")
            os._exit(3)
        calls = {
            peer: stub.Check.future(health_pb2.HealthCheckRequest(), timeout=0.25)
            for peer, stub in stubs.items()
        }
        reachable = set()
        for peer, call in calls.items():
            try:
                call.result()
                reachable.add(peer)
            except grpc.RpcError:
                pass
        state.update(reachable)
    log(me.id, "SIGTERM: stopping")
    server.stop(0.2).wait()
    peer_server.stop(0.2).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
