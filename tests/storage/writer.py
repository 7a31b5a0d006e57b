"""A process that writes to a data directory until it is killed (for test_sigkill.py).

    python -m tests.storage.writer DATA_DIR

It appends batches of entries after whatever the directory holds, sets the hard state's commit
to the last one, syncs, and only then prints "synced N": a promise that entries up to N and that
hard state are durable. Every 200 entries it also saves a snapshot 50 entries back, from a file
it writes in the spool directory (a kill may leave it there: the next open removes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from node.raft.types import ConfState, Entry, HardState, LogIndex, NodeId, SnapshotMeta, Term
from node.storage import Storage

BATCH = 5
SEGMENT_BYTES = 256 * 1024  # small, so kills land around segment cuts too
VOTERS = ConfState((NodeId("w"),))


def payload(index: int) -> bytes:
    # Kilobytes per entry: a batch is one large write(), which a SIGKILL can cut short.
    return f"entry {index};".encode() * (1 + index % 7 * 200)


def snapshot_payload(index: int) -> bytes:
    return f"snapshot through {index}".encode()


def main() -> None:
    storage = Storage.open(Path(sys.argv[1]), segment_bytes=SEGMENT_BYTES)
    index = int(storage.last_index())
    while True:
        batch = [
            Entry(Term(1), LogIndex(i), data=payload(i))
            for i in range(index + 1, index + 1 + BATCH)
        ]
        storage.append(batch)
        index += BATCH
        storage.set_hard_state(HardState(Term(1), NodeId("w"), LogIndex(index)))
        storage.sync()
        print(f"synced {index}", flush=True)
        at = LogIndex(index - 50)
        # A crossing, not index % 200: after a kill the log may end inside a batch.
        if index // 200 > (index - BATCH) // 200 and at >= storage.first_index():
            # As the driver will: the data is a file made in the spool, deleted once stored.
            source = storage.spool_dir / "snapshot.db"
            source.write_bytes(snapshot_payload(at))
            storage.save_snapshot(SnapshotMeta(at, Term(1), VOTERS), source)
            source.unlink()


if __name__ == "__main__":
    main()
