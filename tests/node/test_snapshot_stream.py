"""A snapshot streamed, never held whole: from the sender's Storage through PeerLink and a real
grpc.aio RaftService into a file in the receiver's spool directory (and the same through the
memory transport). The sender reads a chunk only when gRPC asks for the next one, stalls when
the receiver does, and a stream that ends early leaves no file behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from random import Random

import grpc
import pytest

from node import seams, transport
from node.memory_transport import MemoryNetwork
from node.raft.types import ConfState, LogIndex, Message, MessageType, NodeId, SnapshotMeta, Term
from node.seams import SNAPSHOT_CHUNK_BYTES, SnapshotSource
from node.storage import Storage, StorageCorruptedError
from node.transport import PeerLink, RaftService, SnapshotSourceError, snapshot_chunks
from protos import raft_pb2
from tests.node.test_transport_service import serve_raft

CLUSTER = "stream-test"
ME, LEADER = NodeId("a"), NodeId("b")
MEMBERS = (ME, LEADER)
META = SnapshotMeta(LogIndex(10), Term(1), ConfState(MEMBERS))
DEADLINE_S = 20.0


def snapshot_message(to: NodeId = ME) -> Message:
    return Message(MessageType.SNAPSHOT, LEADER, to, Term(1), snapshot=META)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(SNAPSHOT_CHUNK_BYTES):
            digest.update(piece)
    return digest.hexdigest()


def stored_snapshot(data_dir: Path, data: bytes) -> Storage:
    """A storage whose current snapshot holds `data` (reopened: select() has verified it)."""
    with Storage.open(data_dir) as storage:
        source = storage.spool_dir / "snapshot.db"
        source.write_bytes(data)
        storage.install_snapshot(META, source)
        source.unlink()
    return Storage.open(data_dir)


class RecordingSource:
    """A SnapshotSource around another that records every read, and how many chunks gRPC had
    taken from the stream when it came (`taken` is counted by the chunk generator's wrapper)."""

    def __init__(self, inner: SnapshotSource) -> None:
        self.inner = inner
        self.reads: list[tuple[int, int]] = []  # (n asked, chunks taken by gRPC before it)
        self.taken = 0
        self.closed = False

    @property
    def size(self) -> int:
        return self.inner.size

    def read(self, n: int) -> bytes:
        self.reads.append((n, self.taken))
        return self.inner.read(n)

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class Events:
    """The sending driver's side of PeerLink."""

    def __init__(self, source: RecordingSource) -> None:
        self.source = source
        self.sent: list[bool] = []
        self.done = asyncio.Event()

    def on_unreachable(self, peer: NodeId) -> None:
        pass

    def on_connected(self, peer: NodeId) -> None:
        pass

    def on_snapshot_sent(self, peer: NodeId, ok: bool) -> None:
        self.sent.append(ok)
        self.done.set()

    def peer_confs(self) -> tuple[ConfState, ...]:
        return (ConfState(MEMBERS),)

    def own_incarnation(self) -> int:
        return 0

    async def open_snapshot(self, meta: SnapshotMeta) -> SnapshotSource:
        assert meta == META
        return self.source


class Receiver:
    """A RaftService on a real server whose driver records what arrived."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.delivered: list[tuple[Path, str]] = []  # (spool file, sha256 of its contents)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def deliver_snapshot(self, m: Message, path: Path) -> None:
        assert m.snapshot == META and path.parent == self.spool
        self.delivered.append((path, file_sha(path)))

    async def __aenter__(self) -> Receiver:
        service = RaftService(
            ME,
            CLUSTER,
            lambda m: None,
            self.deliver_snapshot,
            lambda: (ConfState(MEMBERS),),
            spool=lambda: self.spool,
            certificates=False,
            cluster_id="",
            incarnation=lambda: 0,
        )
        server, port = await serve_raft(service)
        self.server, self.port = server, port
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.stop(None)

    def link(self, events: Events) -> PeerLink:
        return PeerLink(
            node_id=LEADER,
            peer=ME,
            address=f"127.0.0.1:{self.port}",
            cluster=CLUSTER,
            key=b"unused without the interceptor",
            events=events,
            credentials=None,
            cluster_id="",
        )


def spooled(spool: Path) -> list[Path]:
    return sorted(spool.iterdir())


async def poll(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def counted_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """PeerLink's chunk stream, wrapped to count the chunks gRPC takes from it into the
    RecordingSource it reads (so a read can say how far ahead of gRPC it is)."""

    async def counting(
        m: Message, source: SnapshotSource, incarnations: raft_pb2.Incarnations
    ) -> AsyncIterator[raft_pb2.SnapshotChunk]:
        assert isinstance(source, RecordingSource)
        async for chunk in snapshot_chunks(m, source, incarnations):
            yield chunk
            source.taken += 1  # gRPC came back for the next one: it took this one

    monkeypatch.setattr(transport, "snapshot_chunks", counting)


@pytest.mark.usefixtures("counted_chunks")
async def test_a_snapshot_of_many_chunks_arrives_whole_in_a_spool_file(tmp_path: Path) -> None:
    data = os.urandom(SNAPSHOT_CHUNK_BYTES * 11 // 2)  # 5.5 chunks: six, the last one short
    spool = tmp_path / "spool"
    spool.mkdir()
    with stored_snapshot(tmp_path / "leader", data) as storage:
        reader = storage.open_snapshot()
        assert reader is not None and reader.size == len(data)
        source = RecordingSource(reader)
        events = Events(source)
        async with Receiver(spool) as receiver:
            link = receiver.link(events)
            link.start()
            try:
                link.send(snapshot_message())
                await asyncio.wait_for(events.done.wait(), DEADLINE_S)
            finally:
                await link.close()
    assert events.sent == [True]
    ((path, digest),) = receiver.delivered
    assert path.name.endswith(".part")
    assert digest == sha(data)  # identical bytes, in a file
    assert spooled(spool) == []  # removed once the driver returned
    assert source.closed
    # One chunk per read, and each read only once gRPC had taken every chunk before it:
    # never more than the one chunk being read is held ahead of the stream.
    assert [n for n, _ in source.reads] == [SNAPSHOT_CHUNK_BYTES] * 6
    assert [taken for _, taken in source.reads] == list(range(6))


async def test_a_stuck_receiver_stalls_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back-pressure: with the receiver stuck on its first write, the sender stops reading
    after what gRPC's flow-control windows hold (a few chunks here), far short of the whole."""
    chunks = 32
    data = os.urandom(SNAPSHOT_CHUNK_BYTES * chunks)
    gate = threading.Event()
    write = seams.SpoolFile.write

    def stuck_write(self: seams.SpoolFile, piece: bytes) -> None:
        gate.wait(DEADLINE_S)
        write(self, piece)

    monkeypatch.setattr(seams.SpoolFile, "write", stuck_write)
    spool = tmp_path / "spool"
    spool.mkdir()
    with stored_snapshot(tmp_path / "leader", data) as storage:
        reader = storage.open_snapshot()
        assert reader is not None
        source = RecordingSource(reader)
        events = Events(source)
        async with Receiver(spool) as receiver:
            link = receiver.link(events)
            link.start()
            try:
                link.send(snapshot_message())
                await poll(lambda: len(source.reads) > 0, "the sender starts")
                stalled_at = await settled(lambda: len(source.reads))
                assert stalled_at <= 10, f"the sender read {stalled_at} of {chunks} chunks"
                gate.set()
                await asyncio.wait_for(events.done.wait(), DEADLINE_S)
            finally:
                gate.set()
                await link.close()
    assert events.sent == [True]
    assert [digest for _, digest in receiver.delivered] == [sha(data)]
    assert len(source.reads) == chunks
    assert spooled(spool) == []


async def settled(value: Callable[[], int], quiet_s: float = 0.5) -> int:
    """`value()` once it has not changed for `quiet_s` (within the deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    last, since = value(), loop.time()
    while loop.time() - since < quiet_s:
        if loop.time() > deadline:
            raise AssertionError(f"still changing after {DEADLINE_S} s: {value()}")
        await asyncio.sleep(0.02)
        if value() != last:
            last, since = value(), loop.time()
    return last


async def test_a_damaged_snapshot_is_never_streamed_to_its_end(tmp_path: Path) -> None:
    """The sender's storage verifies the checksum at the last read, which raises before the
    last chunk goes: the stream is cut short, the receiver refuses it and keeps no file."""
    data = os.urandom(SNAPSHOT_CHUNK_BYTES * 3)
    spool = tmp_path / "spool"
    spool.mkdir()
    with stored_snapshot(tmp_path / "leader", data) as storage:
        (snap_file,) = (tmp_path / "leader" / "snap").iterdir()
        with open(snap_file, "r+b") as f:  # rot after the open verified it
            f.seek(-SNAPSHOT_CHUNK_BYTES // 2, os.SEEK_END)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x40]))
        reader = storage.open_snapshot()
        assert reader is not None
        source = RecordingSource(reader)
        events = Events(source)
        async with Receiver(spool) as receiver:
            link = receiver.link(events)
            link.start()
            try:
                link.send(snapshot_message())
                await asyncio.wait_for(events.done.wait(), DEADLINE_S)
                await poll(lambda: spooled(spool) == [], "the partial file is removed")
            finally:
                await link.close()
    assert events.sent == [False]
    assert receiver.delivered == []
    assert source.closed
    with pytest.raises(StorageCorruptedError, match="checksum mismatch"):
        reader.read(1)  # and it keeps saying so


async def test_a_sender_that_goes_away_mid_stream_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's link closes (it stepped down, or died) while the receiver is writing."""
    gate = threading.Event()
    write = seams.SpoolFile.write
    writes = 0

    def slow_write(self: seams.SpoolFile, piece: bytes) -> None:
        nonlocal writes
        writes += 1
        gate.wait(DEADLINE_S)
        write(self, piece)

    monkeypatch.setattr(seams.SpoolFile, "write", slow_write)
    spool = tmp_path / "spool"
    spool.mkdir()
    with stored_snapshot(tmp_path / "leader", os.urandom(SNAPSHOT_CHUNK_BYTES * 8)) as storage:
        reader = storage.open_snapshot()
        assert reader is not None
        source = RecordingSource(reader)
        async with Receiver(spool) as receiver:
            link = receiver.link(Events(source))
            link.start()
            try:
                link.send(snapshot_message())
                await poll(lambda: writes > 0 and len(spooled(spool)) == 1, "a chunk arrives")
            finally:
                await link.close()  # cancels the call mid-stream
            gate.set()
            await poll(lambda: spooled(spool) == [], "the partial file is removed")
    assert receiver.delivered == []
    assert source.closed


class ListSource:
    def __init__(self, pieces: list[bytes], size: int) -> None:
        self.pieces = pieces
        self.size = size

    def read(self, n: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def close(self) -> None:
        pass


async def test_a_source_that_disagrees_with_its_size_ends_the_stream() -> None:
    chunks = snapshot_chunks(
        snapshot_message(), ListSource([b"abc"], size=5), raft_pb2.Incarnations(sender=0)
    )
    first = await chunks.__anext__()
    assert (first.HasField("message"), first.data, first.last) == (True, b"abc", False)
    with pytest.raises(SnapshotSourceError, match="said 5 bytes but gave 3 and then ended"):
        await chunks.__anext__()
    chunks = snapshot_chunks(
        snapshot_message(), ListSource([b"abc", b"def"], size=4), raft_pb2.Incarnations(sender=0)
    )
    await chunks.__anext__()
    with pytest.raises(SnapshotSourceError, match="said 4 bytes but gave 6"):
        await chunks.__anext__()


# -- the memory transport -------------------------------------------------------------------


class MemoryReceiver:
    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.delivered: list[tuple[str, str]] = []  # (file name, sha256 of its contents)

    @property
    def snapshot_spool(self) -> Path:
        return self.spool

    def step(self, m: Message) -> None:
        pass

    async def receive_snapshot(self, m: Message, path: Path) -> None:
        assert path.parent == self.spool and path.suffix == ".part"
        self.delivered.append((path.name, file_sha(path)))


async def test_the_memory_transport_spools_a_snapshot_for_its_receiver(tmp_path: Path) -> None:
    data = os.urandom(SNAPSHOT_CHUNK_BYTES * 5 // 2)
    spool = tmp_path / "spool"
    spool.mkdir()
    network = MemoryNetwork(Random(1))
    receiver = MemoryReceiver(spool)
    network.attach(ME, receiver)
    sender = network.transport(LEADER)
    network.transport(ME)
    with stored_snapshot(tmp_path / "leader", data) as storage:
        reader = storage.open_snapshot()
        assert reader is not None
        source = RecordingSource(reader)
        events = Events(source)
        sender.start(events)
        sender.send(snapshot_message())
        await asyncio.wait_for(events.done.wait(), DEADLINE_S)
        await sender.close()
    assert events.sent == [True]
    assert [digest for _, digest in receiver.delivered] == [sha(data)]
    assert [n for n, _ in source.reads] == [SNAPSHOT_CHUNK_BYTES] * 4  # 3 chunks, then b""
    assert source.closed
    assert spooled(spool) == []
