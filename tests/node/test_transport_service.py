"""RaftService, the inbound half of node.transport, on a real grpc.aio server on 127.0.0.1:
what it refuses, with which status, and that a refused message or snapshot never reaches the
driver, nor leaves a file behind in the spool directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from node.raft.types import ConfState, LogIndex, Message, MessageType, NodeId, SnapshotMeta, Term
from node.seams import SnapshotInvalidError
from node.transport import RaftService
from node.wire import message_to_pb
from protos import raft_pb2, raft_pb2_grpc
from protos.vocabulary import SERVER_OPTIONS
from supervisor.ports import free_port

CLUSTER = "svc-test"
ME = NodeId("a")
MEMBERS = (NodeId("a"), NodeId("b"), NodeId("c"))


async def serve_raft(service: RaftService) -> tuple[grpc.aio.Server, int]:
    """A started server of `service` on a free 127.0.0.1 port: (server, port)."""
    for _ in range(20):  # free_port races with other binders: retry a failed bind
        server = grpc.aio.server(options=SERVER_OPTIONS)
        raft_pb2_grpc.add_RaftServicer_to_server(service, server)
        port = free_port()
        try:
            bound = server.add_insecure_port(f"127.0.0.1:{port}")
        except RuntimeError:
            bound = 0
        if bound:
            await server.start()
            return server, port
        await server.stop(None)
    raise RuntimeError("no port to bind")


@dataclass
class Inbox:
    """The driver's side: what was delivered. A snapshot arrives as a file in the spool; this
    one reads it (the tests' snapshots are small) and, with `keep`, takes the file away as
    the driver does when it installs one."""

    spool: Path
    messages: list[Message] = field(default_factory=list)
    snapshots: list[tuple[Message, bytes]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    keep: Path | None = None
    refuse: bool = False

    def deliver(self, m: Message) -> None:
        self.messages.append(m)

    async def deliver_snapshot(self, m: Message, path: Path) -> None:
        assert path.parent == self.spool and path.suffix == ".part", path
        self.paths.append(path)
        if self.refuse:
            raise SnapshotInvalidError("not a database")
        self.snapshots.append((m, path.read_bytes()))
        if self.keep is not None:
            path.rename(self.keep)


class Server:
    def __init__(
        self,
        spool: Path,
        members: tuple[NodeId, ...] = MEMBERS,
        *,
        incarnations: tuple[tuple[NodeId, int], ...] = (),
        incarnation: int = 0,
        committed: tuple[NodeId, ...] | None = None,
    ) -> None:
        self.inbox = Inbox(spool)
        self.conf = ConfState(members, (), incarnations)
        self.confs = (self.conf,) if committed is None else (self.conf, ConfState(committed))
        self.incarnation = incarnation  # ours
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> raft_pb2_grpc.RaftAsyncStub:
        # No TLS here: these tests are about the stream's rules; the certificate check is
        # tested against real nodes (tests/security/test_tls.py).
        service = RaftService(
            ME,
            CLUSTER,
            self.inbox.deliver,
            self.inbox.deliver_snapshot,
            lambda: self.confs,
            spool=lambda: self.inbox.spool,
            certificates=False,
            cluster_id="",
            incarnation=lambda: self.incarnation,
        )
        server, port = await serve_raft(service)
        self.server = server
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return raft_pb2_grpc.RaftStub(self.channel)

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.server is not None:
            await self.server.stop(None)


def heartbeat(sender: str, to: str = ME) -> raft_pb2.RaftMessage:
    return message_to_pb(Message(MessageType.HEARTBEAT, NodeId(sender), NodeId(to), Term(1)))


def snapshot_message(sender: str = "b") -> raft_pb2.RaftMessage:
    meta = SnapshotMeta(LogIndex(10), Term(1), ConfState(MEMBERS))
    return message_to_pb(Message(MessageType.SNAPSHOT, NodeId(sender), ME, Term(1), snapshot=meta))


INITIAL = raft_pb2.Incarnations(sender=0)  # from an initial member, to a node it does not know


async def stream_of(
    batches: Iterable[list[raft_pb2.RaftMessage]],
    stamp: raft_pb2.Incarnations = INITIAL,
) -> AsyncIterator[raft_pb2.MessageBatch]:
    for messages in batches:
        yield raft_pb2.MessageBatch(cluster=CLUSTER, messages=messages, incarnations=stamp)


async def chunks_of(
    chunks: Iterable[raft_pb2.SnapshotChunk],
) -> AsyncIterator[raft_pb2.SnapshotChunk]:
    """The chunks; a first chunk that names no incarnations comes from an initial member."""
    for chunk in chunks:
        if chunk.HasField("message") and not chunk.HasField("incarnations"):
            chunk.incarnations.CopyFrom(INITIAL)
        yield chunk


async def call_stream(
    stub: raft_pb2_grpc.RaftAsyncStub,
    batches: Iterable[list[raft_pb2.RaftMessage]],
    stamp: raft_pb2.Incarnations = INITIAL,
) -> grpc.StatusCode:
    try:
        await stub.Stream(stream_of(batches, stamp), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def call_snapshot(
    stub: raft_pb2_grpc.RaftAsyncStub, chunks: Iterable[raft_pb2.SnapshotChunk]
) -> tuple[grpc.StatusCode, str]:
    try:
        await stub.InstallSnapshot(chunks_of(chunks), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def spooled(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir())


async def test_a_complete_snapshot_is_delivered_as_a_file_in_the_spool(tmp_path: Path) -> None:
    """The control for the refusals below: the same stream with its last chunk goes through,
    as a file in the spool directory, which is removed once the driver has returned."""
    spool = tmp_path / "spool"
    spool.mkdir()
    server = Server(spool)
    async with server as stub:
        chunks = [
            raft_pb2.SnapshotChunk(message=snapshot_message(), offset=0, data=b"abc"),
            raft_pb2.SnapshotChunk(offset=3, data=b"def", last=True),
        ]
        code, _ = await call_snapshot(stub, chunks)
        assert code is grpc.StatusCode.OK
        assert [(m.sender, d) for m, d in server.inbox.snapshots] == [("b", b"abcdef")]
        assert spooled(spool) == []
        # A driver that keeps the file renames it away: it stays where it was put.
        server.inbox.keep = tmp_path / "kept.db"
        code, _ = await call_snapshot(stub, chunks)
        assert code is grpc.StatusCode.OK
        assert server.inbox.keep.read_bytes() == b"abcdef"
        assert spooled(spool) == []
        # An empty snapshot is one chunk, carrying the message and `last`.
        server.inbox.keep = None
        empty = [raft_pb2.SnapshotChunk(message=snapshot_message(), offset=0, last=True)]
        code, _ = await call_snapshot(stub, empty)
        assert code is grpc.StatusCode.OK
        assert server.inbox.snapshots[-1][1] == b""
        assert len(set(server.inbox.paths)) == 3  # each transfer a file of its own


async def test_a_snapshot_stream_cut_before_its_last_chunk_is_refused(tmp_path: Path) -> None:
    server = Server(tmp_path)
    async with server as stub:
        chunks = [
            raft_pb2.SnapshotChunk(message=snapshot_message(), offset=0, data=b"abc"),
            raft_pb2.SnapshotChunk(offset=3, data=b"def"),  # no `last`: the sender died
        ]
        code, details = await call_snapshot(stub, chunks)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "before its last chunk" in details
        # the single-chunk case too: a first chunk without `last` and then nothing
        code, _ = await call_snapshot(
            stub, [raft_pb2.SnapshotChunk(message=snapshot_message(), offset=0, data=b"abc")]
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert server.inbox.snapshots == []
        assert spooled(tmp_path) == []  # the partial files went with the refusals


async def test_a_snapshot_chunk_at_the_wrong_offset_is_refused(tmp_path: Path) -> None:
    server = Server(tmp_path)
    async with server as stub:
        chunks = [
            raft_pb2.SnapshotChunk(message=snapshot_message(), offset=0, data=b"abc"),
            raft_pb2.SnapshotChunk(offset=4, data=b"def", last=True),  # a gap: a lost chunk
        ]
        code, details = await call_snapshot(stub, chunks)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "offset 4, expected 3" in details
        assert server.inbox.snapshots == []
        assert spooled(tmp_path) == []


async def test_a_snapshot_the_driver_refuses_leaves_no_file(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.inbox.refuse = True
    async with server as stub:
        chunks = [raft_pb2.SnapshotChunk(message=snapshot_message(), data=b"abc", last=True)]
        code, details = await call_snapshot(stub, chunks)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "snapshot refused: not a database" in details
        assert len(server.inbox.paths) == 1  # it was handed over, complete, and refused
        assert spooled(tmp_path) == []


async def test_a_snapshot_from_a_non_member_is_refused(tmp_path: Path) -> None:
    server = Server(tmp_path)
    async with server as stub:
        for sender in ("z", ME):
            chunks = [
                raft_pb2.SnapshotChunk(
                    message=snapshot_message(sender), offset=0, data=b"abc", last=True
                )
            ]
            code, _ = await call_snapshot(stub, chunks)
            assert code is grpc.StatusCode.PERMISSION_DENIED, sender
        assert server.inbox.snapshots == []
        assert spooled(tmp_path) == []  # refused before a spool file was made


async def test_a_stream_whose_sender_changes_is_refused(tmp_path: Path) -> None:
    server = Server(tmp_path)
    async with server as stub:
        code = await call_stream(stub, [[heartbeat("b")], [heartbeat("c")]])
        assert code is grpc.StatusCode.PERMISSION_DENIED
        # b's message came first and was delivered; c's, on b's stream, never was
        assert [m.sender for m in server.inbox.messages] == ["b"]

        server.inbox.messages.clear()
        code = await call_stream(stub, [[heartbeat("c"), heartbeat("b")]])  # within one batch
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert server.inbox.messages == []  # a batch is checked whole before any is delivered


async def test_a_stream_of_one_sender_is_delivered(tmp_path: Path) -> None:
    server = Server(tmp_path)
    async with server as stub:
        code = await call_stream(stub, [[heartbeat("b")], [heartbeat("b"), heartbeat("b")]])
        assert code is grpc.StatusCode.OK
        assert [m.sender for m in server.inbox.messages] == ["b", "b", "b"]


@pytest.mark.parametrize("sender", ["z", ME], ids=["non-member", "itself"])
async def test_a_stream_from_a_non_peer_is_refused(sender: str, tmp_path: Path) -> None:
    server = Server(tmp_path)
    async with server as stub:
        code = await call_stream(stub, [[heartbeat(sender)]])
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert server.inbox.messages == []


async def test_a_learner_is_a_peer(tmp_path: Path) -> None:
    """Peers are judged against the current configuration, learners included (the members
    the node passes in)."""
    server = Server(tmp_path, members=(*MEMBERS, NodeId("d")))
    async with server as stub:
        assert await call_stream(stub, [[heartbeat("d")]]) is grpc.StatusCode.OK
        assert [m.sender for m in server.inbox.messages] == ["d"]


async def test_a_node_without_a_configuration_hears_any_member(tmp_path: Path) -> None:
    """A node being added knows no configuration until the leader's log or snapshot brings
    it: it takes messages from any sender its certificate check (or the cluster key) lets
    through, and never from itself."""
    server = Server(tmp_path, members=())
    async with server as stub:
        assert await call_stream(stub, [[heartbeat("z")]]) is grpc.StatusCode.OK
        assert await call_stream(stub, [[heartbeat(ME)]]) is grpc.StatusCode.PERMISSION_DENIED
        assert [m.sender for m in server.inbox.messages] == ["z"]


# -- incarnations: a name removed and added again is another server ---------------------------


def stamp(sender: int | None = None, receiver: int | None = None) -> raft_pb2.Incarnations:
    out = raft_pb2.Incarnations()
    if sender is not None:
        out.sender = sender
    if receiver is not None:
        out.receiver = receiver
    return out


@pytest.mark.parametrize(
    ("ours", "theirs", "conf_b", "accepted"),
    [
        # (our incarnation, the batch's stamp, b's incarnation in our conf, accepted?)
        (0, stamp(0, 0), 0, True),  # initial members, both sides agree
        (0, stamp(0), 0, True),  # the sender does not know us (we are not in its conf)
        (12, stamp(0, 12), 0, True),  # we were added at 12, and the sender knows it
        (0, stamp(0, 12), 0, False),  # meant for incarnation 12 of us: we are the old one
        (12, stamp(0, 0), 0, False),  # meant for the initial member of our name: not us
        (0, stamp(30, 0), 30, True),  # b was added at 30, and it is that b
        (0, stamp(0, 0), 30, False),  # the old b, replaced at 30, with its old disk
        (0, stamp(None, 0), 30, False),  # a batch that does not say which b it is from
        (0, stamp(None, 0), 0, False),  # not even from an initial member's
        (0, stamp(31, 0), 30, False),  # another b than the one the conf added
    ],
)
async def test_messages_between_other_incarnations_are_refused(
    tmp_path: Path,
    ours: int,
    theirs: raft_pb2.Incarnations,
    conf_b: int,
    accepted: bool,
) -> None:
    """A member replaced after it lost its disk comes back as a new incarnation of its name
    (the index of the entry that added it); the machine with the old disk, should it return,
    must never exchange a vote or an entry with the cluster under that name."""
    incarnations = ((NodeId("b"), conf_b),) if conf_b else ()
    server = Server(tmp_path, incarnations=incarnations, incarnation=ours)
    async with server as stub:
        code = await call_stream(stub, [[heartbeat("b")]], theirs)
        if accepted:
            assert code is grpc.StatusCode.OK
            assert [m.sender for m in server.inbox.messages] == ["b"]
        else:
            assert code is grpc.StatusCode.FAILED_PRECONDITION
            assert server.inbox.messages == []


async def test_a_snapshot_from_a_replaced_incarnation_is_refused(tmp_path: Path) -> None:
    server = Server(tmp_path, incarnations=((NodeId("b"), 30),))
    async with server as stub:
        first = raft_pb2.SnapshotChunk(message=snapshot_message("b"), data=b"abc", last=True)
        first.incarnations.CopyFrom(stamp(0, 0))  # the old b
        code, details = await call_snapshot(stub, [first])
        assert code is grpc.StatusCode.FAILED_PRECONDITION and "replaced" in details
        first.incarnations.CopyFrom(stamp(30, 0))
        code, _ = await call_snapshot(stub, [first])
        assert code is grpc.StatusCode.OK
        assert len(server.inbox.snapshots) == 1


async def test_a_leader_removed_by_an_uncommitted_change_is_still_heard(tmp_path: Path) -> None:
    """Thesis §4.2.2: a leader that removes itself leads until the removal commits, and its
    followers put the removal in force as soon as it is in their logs: they must still take
    its messages (and answer them) while the committed configuration has it."""
    server = Server(tmp_path, members=(ME, NodeId("c")), committed=MEMBERS)
    async with server as stub:
        assert await call_stream(stub, [[heartbeat("b")]]) is grpc.StatusCode.OK
    server = Server(tmp_path, members=(ME, NodeId("c")))  # once the removal is committed
    async with server as stub:
        assert await call_stream(stub, [[heartbeat("b")]]) is grpc.StatusCode.PERMISSION_DENIED
