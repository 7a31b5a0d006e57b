"""The wire vocabulary that both sides of the protos share, defined once (as etcd's
api/v3rpc/rpctypes): metadata keys, the machine-readable reasons a refusal carries, the
channel and server options, the role, and what a field's value must look like where the
proto's types cannot say.

A client classifies an answer by its status code, its `Reason` and its metadata, never by
the wording of its message: messages are for people and may change.

Imports grpc, protos.chat_pb2 and the standard library only.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from typing import Any, Final

import grpc
import grpc.aio

from protos import chat_pb2

# --- metadata keys -----------------------------------------------------------------------------

# Trailing metadata of an answer: where the leader is, when the answering node knows.
LEADER_ADDRESS_KEY: Final = "x-chatbooth-leader"  # host:port of its client port
LEADER_ID_KEY: Final = "x-chatbooth-leader-id"
# Trailing metadata of a refusal the client must act on: a Reason's value.
REASON_KEY: Final = "x-chatbooth-reason"
# Trailing metadata of a RESOURCE_EXHAUSTED login refusal: whole seconds to wait.
RETRY_AFTER_KEY: Final = "x-chatbooth-retry-after-s"
# Invocation metadata of a call a member forwards to the leader's peer port.
FORWARDED_KEY: Final = "x-chatbooth-forwarded"
CLIENT_PEER_KEY: Final = "x-chatbooth-client-peer"  # the client's host, as the member saw it
# Invocation metadata of a member's call: the cluster key (a second check beside mutual TLS).
CLUSTER_KEY_KEY: Final = "x-chatbooth-cluster-key"
# Invocation metadata of a Raft call: the caller's cluster id (data_dir/cluster.id, recorded in
# every member's data directory), so that members of different clusters never exchange Raft
# messages even when they share a name, a CA and a key.
CLUSTER_ID_KEY: Final = "x-chatbooth-cluster-id"


class Reason(enum.Enum):
    """What a refusal means beyond its code, in REASON_KEY."""

    NOT_LEADER = "not-leader"  # UNAVAILABLE: ask the leader (its address may be in metadata)
    NO_MAJORITY = "no-majority"  # UNAVAILABLE: the node reaches no majority (or no leader)
    OUTCOME_UNKNOWN = "outcome-unknown"  # UNAVAILABLE: may have been applied; retry, same id
    CLIENT_EXPIRED = "client-expired"  # FAILED_PRECONDITION: register again; outcomes unknown
    SLOW_CONSUMER = "slow-consumer"  # RESOURCE_EXHAUSTED: a stream fell behind; resume
    TOO_MANY_LOGINS = "too-many-failed-logins"  # RESOURCE_EXHAUSTED: wait RETRY_AFTER_KEY


def metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    """The first value of `key` in gRPC metadata, as text; None if absent or empty."""
    for k, v in metadata or ():
        if k == key:
            text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            return text or None
    return None


def reason_of(metadata: Iterable[tuple[str, Any]] | None) -> Reason | None:
    """The Reason in trailing metadata; None for none, or for one this build does not know."""
    value = metadata_value(metadata, REASON_KEY)
    try:
        return None if value is None else Reason(value)
    except ValueError:
        return None


def describe_rpc_error(error: grpc.RpcError) -> str:
    """A failed call as a person reads it: "did not answer in time", "unreachable" (UNAVAILABLE
    with no reason: nothing on the other side served it), else the node's own message (or
    the code's name). Judged by code and reason, never by the message's wording."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return "error"
    code = error.code()
    details = error.details() or ""
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "did not answer in time"
    if code is grpc.StatusCode.UNAVAILABLE and reason_of(error.trailing_metadata()) is None:
        return "unreachable"
    return details or code.name.lower().replace("_", " ")


# --- the role ----------------------------------------------------------------------------------

Role = chat_pb2.Role  # StatusReply.role: FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER

ROLE_NAMES: Final[dict[int, str]] = {
    chat_pb2.ROLE_UNSPECIFIED: "unknown",
    chat_pb2.FOLLOWER: "follower",
    chat_pb2.PRE_CANDIDATE: "pre-candidate",
    chat_pb2.CANDIDATE: "candidate",
    chat_pb2.LEADER: "leader",
}


def role_name(role: int) -> str:
    """How a role reads for a person ("leader"), as node.raft.types.Role spells it."""
    return ROLE_NAMES.get(role, "unknown")


# --- channel and server options ------------------------------------------------------------

# Clients and tools (the chat client, the supervisor, bench, check). TRAPS ("gRPC"): reconnect
# within a second after a node comes back (the default backoff reaches ~20 s); never through
# an HTTP proxy; no retries by grpc itself (a retry here always carries the first attempt's
# request id). A quiet connection is pinged, so a frozen node is noticed on long Subscribe
# streams; servers allow pings this often (SERVER_OPTIONS).
KEEPALIVE_TIME_MS: Final = 5_000
CLIENT_CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_http_proxy", 0),
    ("grpc.enable_retries", 0),
)
# Node to node (Raft, forwarded writes): a peer that is starting, or back from a partition, is
# heard within a fraction of the minimum election timeout; a dead one is noticed by keepalive.
MAX_MESSAGE_BYTES: Final = 8 << 20
PEER_CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_http_proxy", 0),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
# A node's servers: accept those pings; SO_REUSEPORT off, so a second node cannot share a port.
SERVER_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

# --- field values ------------------------------------------------------------------------------

# A session token: 32 random bytes the client draws at Login, as 64 lowercase hex digits. The
# cluster keeps only its SHA-256 and never sends it back.
TOKEN_BYTES: Final = 32


def new_session_token() -> str:
    """A fresh session token for a LoginRequest."""
    return secrets.token_hex(TOKEN_BYTES)
