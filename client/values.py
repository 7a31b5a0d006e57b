"""The values a chat client hands out (messages, send results, a node's Status) and the
parsing of server addresses, as `--servers` and a cluster.yaml give them.

Plain data: nothing here talks to a node. Imports protos, node.config (the cluster.yaml loader,
for the CA a cluster's clients trust) and client.errors; nothing else from chatbooth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from client.errors import AddressError
from node.config import ClusterConfig, ConfigError
from protos import chat_pb2
from protos.vocabulary import role_name


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message. Ids increase in the order the cluster applied the sends."""

    id: int
    sender: str
    recipient: str
    text: str
    timestamp_ms: int  # the accepting node's clock, carried in the log

    @classmethod
    def from_proto(cls, message: chat_pb2.ChatMessage) -> Message:
        return cls(
            message.id, message.sender, message.recipient, message.text, message.timestamp_ms
        )


class SendResult(NamedTuple):
    message_id: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node's own Status answer."""

    node_id: str
    role: str
    term: int
    leader_id: str
    leader_address: str
    commit_index: int
    applied_index: int
    state_digest: str
    snapshot_index: int
    last_index: int

    @classmethod
    def from_proto(cls, reply: chat_pb2.StatusReply) -> NodeStatus:
        return cls(
            reply.node_id,
            role_name(reply.role),
            reply.term,
            reply.leader_id,
            reply.leader_address,
            reply.commit_index,
            reply.applied_index,
            reply.state_digest,
            reply.snapshot_index,
            reply.last_index,
        )


def parse_address(text: str) -> str:
    """`host:port` (or `[v6]:port`), checked; AddressError says what is wrong."""
    address = text.strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port:
        raise AddressError(f"{text!r} is not host:port")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise AddressError(f"{text!r}: write an IPv6 host in brackets, as [::1]:8001")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise AddressError(f"{text!r}: the port must be a number from 1 to 65535")
    return address


def parse_servers(text: str) -> list[str]:
    """A comma-separated list of `host:port`, as `--servers` takes it."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise AddressError("no server addresses given (expected host:port,host:port,...)")
    return [parse_address(part) for part in parts]


def cluster_ca(config: ClusterConfig) -> bytes | None:
    """The PEM of the CA a cluster's clients trust (its `tls` directory's ca.pem, by default
    data_dir/tls/ca.pem); None with `tls: plaintext`. ConfigError if it cannot be read."""
    files = config.tls
    if files is None:
        return None
    try:
        return files.ca.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{config.path}: tls: cannot read the cluster's CA {files.ca}: "
            f"{error.strerror or error} (`python -m supervisor up` makes it)"
        ) from None
