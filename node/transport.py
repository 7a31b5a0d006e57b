"""Node-to-node Raft traffic over gRPC: one ordered stream per directed link, snapshots in
chunks, and the cluster-key and cluster-id checks.

Each peer gets a PeerLink: a task that keeps one client stream (`Raft.Stream`) open and writes
message batches into it, bounded in bytes; a broken stream is reopened with backoff and the
core is told the peer is unreachable. InstallSnapshot streams the snapshot file in chunks, read
one at a time off the event loop, so a snapshot is never in memory whole. The server side
(RaftService) hands every valid message to the driver, and writes an incoming snapshot's chunks
into a file in the driver's spool directory (off the event loop too) before handing it over.

With TLS the links dial the peers' peer ports (mutual TLS) through the proxies on 127.0.0.1, so
each channel checks the peer's certificate against its member name
(`grpc.ssl_target_name_override`), and RaftService accepts a message only if the caller's
certificate names its sender (TRAPS: an address says nothing about who is on the other end).

Imports grpc, asyncio, node.wire, node.raft.types and protos; nothing of the chat layers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from node.config import certificate_name
from node.raft.types import ConfState, Message, MessageType, NodeId
from node.seams import (
    SNAPSHOT_CHUNK_BYTES,
    SnapshotInvalidError,
    SnapshotSource,
    SpoolFile,
    TransportEvents,
)
from node.wire import WireError, message_from_pb, message_to_pb
from protos import raft_pb2, raft_pb2_grpc
from protos.vocabulary import (
    CLUSTER_ID_KEY,
    CLUSTER_KEY_KEY,
    PEER_CHANNEL_OPTIONS,
    metadata_value,
)

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

logger = logging.getLogger(__name__)

MAX_BATCH_BYTES = 2 << 20  # far under gRPC's 4 MiB message limit
MAX_QUEUED_MESSAGES = 10_000  # per peer; beyond it the oldest are dropped (Raft retries)
MAX_SNAPSHOT_BYTES = 64 << 30  # a disk bound: a received snapshot is spooled, never in memory
STREAM_LIFETIME_S = 600.0  # a stream is reopened at least this often
SNAPSHOT_DEADLINE_S = 120.0

SAN_PROPERTY = "x509_subject_alternative_name"


def certificate_names(context: Context) -> frozenset[str]:
    """The subject alternative names of the caller's certificate (empty without one: a
    plaintext call, or a call on the client port, which never asks for one)."""
    values = context.auth_context().get(SAN_PROPERTY, ())
    return frozenset(v.decode("ascii", "replace") if isinstance(v, bytes) else v for v in values)


def certified_member(context: Context, cluster: str, members: Collection[NodeId]) -> NodeId | None:
    """The member of the current configuration that the caller's certificate names, if one."""
    names = certificate_names(context)
    for member in members:
        if certificate_name(member, cluster) in names:
            return member
    return None


def peer_channel(
    address: str,
    peer: str,
    cluster: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] = PEER_CHANNEL_OPTIONS,
) -> grpc.aio.Channel:
    """A channel to a peer's peer port: mutual TLS checked against the peer's member name
    (it is dialled at a proxy's 127.0.0.1 port), or plaintext when credentials is None."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    name = ("grpc.ssl_target_name_override", certificate_name(peer, cluster))
    return grpc.aio.secure_channel(address, credentials, options=[*options, name])


def presents_cluster_key(metadata: Iterable[tuple[str, Any]] | None, key: bytes) -> bool:
    """Whether a call's invocation metadata carries the cluster key (compared in constant
    time): what Raft's callers, and members forwarding under `tls: plaintext`, present."""
    presented = metadata_value(metadata, CLUSTER_KEY_KEY) or ""
    return hmac.compare_digest(presented.encode(), key)


class ClusterKeyInterceptor(grpc.aio.ServerInterceptor):
    """Only cluster members may call the Raft service: they present the cluster key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if not details.method.startswith("/chatbooth.raft.Raft/"):
            return await continuation(details)
        if presents_cluster_key(details.invocation_metadata, self._key):
            return await continuation(details)

        async def deny(request_iterator: Any, context: Context) -> None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "the Raft service is for cluster members only"
            )

        return grpc.stream_unary_rpc_method_handler(deny)


class PeerAddresses(Protocol):
    """Where the peers are (node.peers.PeerDirectory)."""

    def known(self) -> Iterable[str]: ...

    def peer_address(self, node: str) -> str | None: ...


class GrpcTransport:
    """The Transport of node.seams over gRPC: one PeerLink per peer of the configuration in
    force (every known node while there is none: a joining member answers whoever calls).
    sync_links() matches the links to the configuration and the addresses again: the driver
    calls it at every configuration change, after the addresses are read again."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        peers: PeerAddresses,
        cluster: str,
        key: bytes,
        credentials: grpc.ChannelCredentials | None,
        cluster_id: str,
    ) -> None:
        self._node_id = node_id
        self._peers = peers
        self._cluster = cluster
        self._cluster_id = cluster_id
        self._key = key
        self._credentials = credentials  # None: plaintext (`tls: plaintext`)
        self._events: TransportEvents | None = None
        self._links: dict[NodeId, PeerLink] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def start(self, events: TransportEvents) -> None:
        self._events = events
        self.sync_links()

    def linked(self) -> dict[NodeId, str]:
        """Each peer with a link, and the address it dials."""
        return {peer: link.address for peer, link in self._links.items()}

    def sync_links(self) -> None:
        """Open a link to every peer of the current configuration that has an address, and
        close the others (a removed member's; one whose address changed is opened anew)."""
        events = self._events
        if events is None:
            return
        members = {m for conf in events.peer_confs() for m in conf.members()}
        wanted = {NodeId(n) for n in (members or self._peers.known())} - {self._node_id}
        for peer in sorted(wanted):
            address = self._peers.peer_address(peer)
            link = self._links.get(peer)
            if link is not None and link.address == address:
                continue
            if link is not None:
                self._retire(peer)
            if address is None:
                logger.warning(
                    "%s has no address for member %s: it is in no cluster.yaml `nodes` and "
                    "not in %s's peers file",
                    self._node_id,
                    peer,
                    self._node_id,
                )
                continue
            link = PeerLink(
                node_id=self._node_id,
                peer=peer,
                address=address,
                cluster=self._cluster,
                key=self._key,
                events=events,
                credentials=self._credentials,
                cluster_id=self._cluster_id,
            )
            self._links[peer] = link
            link.start()
        for peer in sorted(set(self._links) - wanted):
            self._retire(peer)

    def _retire(self, peer: NodeId) -> None:
        link = self._links.pop(peer)
        task = asyncio.create_task(link.close(), name=f"close-link-{peer}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def send(self, m: Message) -> None:
        link = self._links.get(m.to)
        if link is not None:
            link.send(m)

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
        await asyncio.gather(*self._closing, return_exceptions=True)


class PeerLink:
    """The outbound half of one directed link: this node -> `peer`."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        peer: NodeId,
        address: str,
        cluster: str,
        key: bytes,
        events: TransportEvents,
        credentials: grpc.ChannelCredentials | None,
        cluster_id: str,
    ) -> None:
        self.node_id = node_id
        self.peer = peer
        self.address = address
        self._cluster = cluster
        self._metadata = ((CLUSTER_KEY_KEY, key.decode()), (CLUSTER_ID_KEY, cluster_id))
        self._events = events
        self._queue: deque[Message] = deque()
        self._ready = asyncio.Event()
        self._channel = peer_channel(address, peer, cluster, credentials)
        self._stub = raft_pb2_grpc.RaftStub(self._channel)
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_refusal = ""
        self.connected = False

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name=f"link-{self.peer}"))

    def send(self, m: Message) -> None:
        if m.type is MessageType.SNAPSHOT:
            if self._snapshot_task is None or self._snapshot_task.done():
                self._snapshot_task = asyncio.create_task(self._send_snapshot(m))
            return
        if len(self._queue) >= MAX_QUEUED_MESSAGES:
            self._queue.popleft()
        self._queue.append(m)
        self._ready.set()

    async def close(self) -> None:
        self._closed = True
        tasks = [*self._tasks, *([self._snapshot_task] if self._snapshot_task else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._channel.close(grace=None)

    async def _batches(self) -> AsyncIterator[raft_pb2.MessageBatch]:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            batch = raft_pb2.MessageBatch(cluster=self._cluster)
            batch.incarnations.CopyFrom(self._incarnations())
            size = 0
            while self._queue and size < MAX_BATCH_BYTES:
                pb = message_to_pb(self._queue.popleft())
                size += pb.ByteSize()
                batch.messages.append(pb)
            self.connected = True
            yield batch

    def _incarnations(self) -> raft_pb2.Incarnations:
        """Ours and the peer's, as this node knows them now (RaftService checks them)."""
        stamp = raft_pb2.Incarnations(sender=self._events.own_incarnation())
        for conf in self._events.peer_confs():
            if self.peer in conf:
                stamp.receiver = conf.incarnation(self.peer)
                break
        return stamp

    async def _run(self) -> None:
        backoff_s = 0.05
        while not self._closed:
            try:
                await self._channel.channel_ready()
                self._events.on_connected(self.peer)
                # wait_for_ready: a peer that is starting (or back from a partition) gets
                # the stream as soon as its channel connects, not after our next retry.
                await self._stub.Stream(
                    self._batches(),
                    metadata=self._metadata,
                    timeout=STREAM_LIFETIME_S,
                    wait_for_ready=True,
                )
                backoff_s = 0.05
                self._last_refusal = ""  # a later refusal is news again
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if self.connected:
                    logger.info(
                        "%s lost its stream to %s: %s", self.node_id, self.peer, exc.code().name
                    )
                self.connected = False
                self._queue.clear()  # stale by the time we reconnect; Raft resends
                self._events.on_unreachable(self.peer)
                if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
                    logger.error("%s: %s refused our cluster key", self.node_id, self.peer)
                elif exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                    refusal = exc.details() or ""
                    if refusal != self._last_refusal:  # once, not at every retry
                        logger.error("%s: %s refused us: %s", self.node_id, self.peer, refusal)
                    self._last_refusal = refusal
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 0.2)

    async def _send_snapshot(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None:
            return
        ok = False
        try:
            source = await self._events.open_snapshot(meta)
            try:
                logger.info(
                    "%s streaming snapshot %d (%d bytes) to %s",
                    self.node_id,
                    meta.index,
                    source.size,
                    self.peer,
                )
                await self._stream_snapshot(m, source)
            finally:
                await asyncio.to_thread(source.close)
            ok = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: the core falls back to probing
            logger.info("%s: snapshot to %s failed: %s", self.node_id, self.peer, exc)
        self._events.on_snapshot_sent(self.peer, ok)

    async def _stream_snapshot(self, m: Message, source: SnapshotSource) -> None:
        """One InstallSnapshot call. gRPC answers a request stream that raises (a read that
        failed, a checksum that did not hold) by cancelling the call, which surfaces here as
        CancelledError: that is turned back into the failure, so that the core hears of it;
        only this task's own cancellation propagates."""
        failures: list[Exception] = []

        async def chunks() -> AsyncIterator[raft_pb2.SnapshotChunk]:
            try:
                async for chunk in snapshot_chunks(m, source, self._incarnations()):
                    yield chunk
            except Exception as exc:
                failures.append(exc)
                raise

        try:
            await self._stub.InstallSnapshot(
                chunks(), metadata=self._metadata, timeout=SNAPSHOT_DEADLINE_S
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            if failures:
                raise SnapshotSourceError(f"reading the snapshot failed: {failures[0]}") from None
            raise SnapshotSourceError("the call was cancelled") from None


class SnapshotSourceError(Exception):
    """Sending a snapshot failed on the sending side: its source gave other than `size`
    bytes, or could not be read."""


async def snapshot_chunks(
    m: Message, source: SnapshotSource, incarnations: raft_pb2.Incarnations
) -> AsyncIterator[raft_pb2.SnapshotChunk]:
    """The InstallSnapshot stream of `m`'s snapshot: the first chunk carries the message, the
    last says so. Each chunk is read (in a thread) only when gRPC asks for it, so at most one
    is in memory beyond what gRPC buffers; a source that raises (a snapshot whose checksum
    fails at its end) ends the stream before its last chunk, which the receiver refuses."""
    size = source.size
    offset = 0
    first = True
    while True:
        piece = await asyncio.to_thread(source.read, SNAPSHOT_CHUNK_BYTES)
        if offset + len(piece) > size or (not piece and offset < size):
            raise SnapshotSourceError(
                f"the snapshot source said {size} bytes but gave {offset + len(piece)}"
                + ("" if piece else " and then ended")
            )
        last = offset + len(piece) == size
        chunk = raft_pb2.SnapshotChunk(offset=offset, data=piece, last=last)
        if first:
            chunk.message.CopyFrom(message_to_pb(m))
            chunk.incarnations.CopyFrom(incarnations)
            first = False
        yield chunk
        offset += len(piece)
        if last:
            return


class RaftService(raft_pb2_grpc.RaftServicer):
    """The inbound half: every valid message goes to `deliver`, every complete snapshot to
    `deliver_snapshot` (which may refuse it with SnapshotInvalidError).

    A stream carries the messages of one sender: the first message names it, it must be a
    member other than this node, and every later message on that stream must name it too.
    With `certificates`, the caller's certificate must name the sender as well. `confs` gives
    the configuration in force and the committed one (TransportEvents.peer_confs): a member
    of either, learners included, is a peer. Both are empty on a node that has not learnt one
    yet (a member being added), which hears any sender the certificate (or the cluster key)
    vouches for. Every call must come from the same cluster: its metadata carries the caller's
    cluster id, which must be `cluster_id` (a data directory of another cluster that shares
    the name, CA and key is refused).

    And every batch must be between the incarnations each side knows (ConfState): one meant
    for another incarnation of this node (`incarnation`: ours) is refused, as is one that does
    not say which incarnation of the sender it is from, or from another one than the
    configuration's. So a member replaced after it lost its disk, and the machine that comes
    back with the old disk, never exchange a vote or an entry under the one name.
    """

    def __init__(
        self,
        node_id: NodeId,
        cluster: str,
        deliver: Callable[[Message], None],
        deliver_snapshot: Callable[[Message, Path], Awaitable[None]],
        confs: Callable[[], tuple[ConfState, ...]],
        *,
        spool: Callable[[], Path],
        certificates: bool,
        cluster_id: str,
        incarnation: Callable[[], int],
    ) -> None:
        self._certificates = certificates
        self._id = node_id
        self._cluster = cluster
        self._cluster_id = cluster_id
        self._deliver = deliver
        self._deliver_snapshot = deliver_snapshot
        self._confs = confs
        self._incarnation = incarnation
        self._spool = spool  # asked per snapshot: the directory incoming ones are written in

    async def Stream(
        self,
        request_iterator: AsyncIterator[raft_pb2.MessageBatch],
        context: Context,
    ) -> raft_pb2.StreamSummary:
        await self._check_cluster_id(context)
        received = 0
        sender: NodeId | None = None
        async for batch in request_iterator:
            if batch.cluster != self._cluster:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"this node belongs to cluster {self._cluster!r}, not {batch.cluster!r}",
                )
            confs = self._confs()  # once per batch, not per message
            messages = []
            for pb in batch.messages:
                m = await self._decode(pb, confs, context)
                if sender is None:
                    sender = m.sender
                elif m.sender != sender:
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"a message from {m.sender!r} on the stream of {sender!r}",
                    )
                messages.append(m)
            if sender is not None and messages:
                await self._check_incarnations(sender, batch.incarnations, confs, context)
            for m in messages:
                self._deliver(m)
                received += 1
        return raft_pb2.StreamSummary(received=received)

    async def InstallSnapshot(
        self,
        request_iterator: AsyncIterator[raft_pb2.SnapshotChunk],
        context: Context,
    ) -> raft_pb2.SnapshotReceipt:
        await self._check_cluster_id(context)
        message: Message | None = None
        spooled: SpoolFile | None = None
        complete = False
        try:
            async for chunk in request_iterator:
                if message is None:
                    if not chunk.HasField("message"):
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "the first chunk must carry the message",
                        )
                    confs = self._confs()
                    message = await self._decode(chunk.message, confs, context)
                    if message.type is not MessageType.SNAPSHOT:
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "InstallSnapshot needs a snapshot message",
                        )
                    await self._check_incarnations(
                        message.sender, chunk.incarnations, confs, context
                    )
                    spooled = await asyncio.to_thread(SpoolFile, self._spool())
                if spooled is None:
                    raise AssertionError("unreachable: the first chunk made the spool file")
                if chunk.offset != spooled.size and chunk.data:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"snapshot chunk at offset {chunk.offset}, expected {spooled.size}",
                    )
                if spooled.size + len(chunk.data) > MAX_SNAPSHOT_BYTES:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"snapshot larger than {MAX_SNAPSHOT_BYTES} bytes",
                    )
                if chunk.data:
                    await asyncio.to_thread(spooled.write, chunk.data)
                if chunk.last:
                    complete = True
                    break
            if message is None or spooled is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an empty snapshot stream")
                raise AssertionError("unreachable")
            if not complete:
                # A stream cut short (the sender died, a partition) ends like a finished one.
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the snapshot stream ended after {spooled.size} bytes, before its last chunk",
                )
            await asyncio.to_thread(spooled.finish)
            try:
                await self._deliver_snapshot(message, spooled.path)
            except SnapshotInvalidError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"snapshot refused: {exc}")
            return raft_pb2.SnapshotReceipt(bytes=spooled.size)
        finally:
            # Inline, not in a thread: this also runs when the call is cancelled. What the
            # receiver kept it renamed away; anything else here is a partial or refused file.
            if spooled is not None:
                spooled.discard()

    async def _check_cluster_id(self, context: Context) -> None:
        theirs = metadata_value(context.invocation_metadata(), CLUSTER_ID_KEY) or ""
        if theirs != self._cluster_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self._id} belongs to the cluster with id {self._cluster_id!r}, the caller to "
                f"{theirs!r}: they are different clusters (a data directory of an earlier "
                "`up --fresh`, or a node started with another --bootstrap or --join id)",
            )

    async def _check_incarnations(
        self,
        sender: NodeId,
        stamp: raft_pb2.Incarnations,
        confs: tuple[ConfState, ...],
        context: Context,
    ) -> None:
        mine = self._incarnation()
        if stamp.HasField("receiver") and stamp.receiver != mine:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{sender}'s configuration has incarnation {stamp.receiver} of {self._id}, but "
                f"this is its incarnation {mine}: one of the two is the data of a replaced "
                "member, and they share no Raft state",
            )
        if not stamp.HasField("sender"):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"a batch from {sender} that does not say which incarnation of {sender} it is "
                "from (every member stamps its own)",
            )
        conf = next((c for c in confs if sender in c), None)
        if conf is not None and stamp.sender != conf.incarnation(sender):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"a message from incarnation {stamp.sender} of {sender}, but {self._id}'s "
                f"configuration has its incarnation {conf.incarnation(sender)}: one of the two "
                "is the data of a replaced member",
            )

    async def _decode(
        self, pb: raft_pb2.RaftMessage, confs: tuple[ConfState, ...], context: Context
    ) -> Message:
        try:
            m = message_from_pb(pb)
        except WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad raft message: {exc}")
            raise
        if m.to != self._id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"message for {m.to} delivered to {self._id}: check the --peer addresses",
            )
        # No member at all: not yet told the configuration (a member being added).
        known = any(conf.members() for conf in confs)
        if m.sender == self._id or (known and not any(m.sender in conf for conf in confs)):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"a message from {m.sender!r}, which is not a peer of {self._id}",
            )
        if self._certificates:
            names = certificate_names(context)
            if certificate_name(m.sender, self._cluster) not in names:
                shown = ", ".join(sorted(names)) or "no name"
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"a message from {m.sender!r} over a certificate for {shown}",
                )
        return m
