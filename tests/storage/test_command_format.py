"""The command format in the WAL's segment headers (issue 13, "Format versions").

"The WAL header holds the log's command-encoding version, which the speed issue will change. A
data dir in an older format is refused with a message that names it." The storage never decodes
a command: the caller names the format it reads at open, every segment it cuts records that
format, and a log whose segments record another one is refused before any entry is handed out.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from node.storage import (
    CommandFormatError,
    Storage,
    StorageCorruptedError,
    StorageFormatError,
    StorageMisuseError,
)
from node.storage.records import (
    FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    segment_command_format,
)
from tests.storage.workload import entry, hard

WAY_OUT = "python -m supervisor up --fresh"


def segment_paths(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "wal").glob("*.wal"))


def fill(data_dir: Path, command_format: int, *, entries: int = 40) -> None:
    """A log of `entries` entries over several segments, written with `command_format`."""
    with Storage.open(data_dir, segment_bytes=512, command_format=command_format) as storage:
        for i in range(1, entries + 1):
            storage.append([entry(1, i)])  # one at a time: a segment is cut after an append
        storage.set_hard_state(hard(1, "a", entries))
        storage.sync()


def rewrite_header(path: Path, *, command_format: int) -> None:
    """Give a segment another command format, with a header checksum that holds (as a build
    writing that format would have)."""
    buf = path.read_bytes()
    head = bytearray(buf[: SEGMENT_HEADER_SIZE - 4])
    head[12:16] = command_format.to_bytes(4, "little")
    path.write_bytes(
        bytes(head) + zlib.crc32(head).to_bytes(4, "little") + buf[SEGMENT_HEADER_SIZE:]
    )


def as_version_3(path: Path) -> None:
    """Rewrite a segment as version 3 wrote it: the same records, under a header without the
    command format (magic | version u32 | seq u64 | first_index u64 | crc32)."""
    buf = path.read_bytes()
    seq, first_index = struct.unpack_from("<QQ", buf, 16)
    head = struct.pack("<8sIQQ", SEGMENT_MAGIC, 3, seq, first_index)
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + buf[SEGMENT_HEADER_SIZE:])


def wal_bytes(data_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in segment_paths(data_dir)}


def test_a_log_reopens_in_the_command_format_it_was_written_in(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    written = len(segment_paths(tmp_path))
    assert written > 2, "the test wants several segments"
    with Storage.open(tmp_path, segment_bytes=512, command_format=3) as storage:
        state = storage.initial_state()
        assert storage.first_index() == 1
        assert state.entries == [entry(1, i) for i in range(1, 41)]
        assert state.hard_state == hard(1, "a", 40)
        for i in range(41, 61):
            storage.append([entry(2, i)])
        storage.sync()
    assert len(segment_paths(tmp_path)) > written, "the reopened log cut segments of its own"
    for path in segment_paths(tmp_path):
        assert segment_command_format(path.read_bytes()) == 3, path.name
    with Storage.open(tmp_path, command_format=3) as storage:
        assert storage.last_index() == 60


def test_a_log_of_an_older_command_format_is_refused_naming_both_and_the_way_out(
    tmp_path: Path,
) -> None:
    fill(tmp_path, 3)
    before = wal_bytes(tmp_path)
    with pytest.raises(CommandFormatError) as err:
        Storage.open(tmp_path, command_format=4)
    assert isinstance(err.value, StorageFormatError)
    assert err.value.path == segment_paths(tmp_path)[0]
    assert (err.value.found, err.value.supported) == (3, 4)
    message = str(err.value)
    assert message.startswith(f"{segment_paths(tmp_path)[0]}: ")
    assert "the log's entries are in command format 3" in message
    assert "this node reads only command format 4" in message
    assert "older chatbooth" in message
    assert WAY_OUT in message
    # Refused, not converted: nothing was written, and the lock was released.
    assert wal_bytes(tmp_path) == before
    with Storage.open(tmp_path, command_format=3) as storage:
        assert storage.last_index() == 40


def test_a_log_of_a_newer_command_format_is_refused(tmp_path: Path) -> None:
    fill(tmp_path, 5)
    with pytest.raises(CommandFormatError, match="command format 5") as err:
        Storage.open(tmp_path, command_format=4)
    assert "newer chatbooth" in str(err.value)
    assert WAY_OUT in str(err.value)


def test_the_default_command_format_is_0_and_is_checked_too(tmp_path: Path) -> None:
    fill(tmp_path, 0)
    with Storage.open(tmp_path) as storage:
        assert storage.last_index() == 40
    with pytest.raises(CommandFormatError, match="command format 0"):
        Storage.open(tmp_path, command_format=3)


def test_every_segment_is_checked_not_only_the_first(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    newest = segment_paths(tmp_path)[-1]
    rewrite_header(newest, command_format=4)
    with pytest.raises(CommandFormatError, match="command format 4") as err:
        Storage.open(tmp_path, command_format=3)
    assert err.value.path == newest


def test_a_version_3_segment_is_still_refused_as_an_older_on_disk_format(tmp_path: Path) -> None:
    """Version 3's header had no command format; its own layout is recognised, so the refusal
    names the version rather than calling the segment damaged."""
    assert FORMAT_VERSION == 4
    fill(tmp_path, 3)
    oldest = segment_paths(tmp_path)[0]
    as_version_3(oldest)
    with pytest.raises(StorageFormatError, match="on-disk format version 3") as err:
        Storage.open(tmp_path, command_format=3)
    assert not isinstance(err.value, CommandFormatError)
    assert err.value.path == oldest
    assert (err.value.found, err.value.supported) == (3, 4)
    message = str(err.value)
    assert "this build reads only version 4" in message
    assert "older chatbooth" in message
    assert "does not record which command format" in message
    assert "plaintext" not in message  # version 3 already kept sessions as hashes
    assert WAY_OUT in message


def test_a_version_2_segment_is_refused_with_the_plaintext_token_warning(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    oldest = segment_paths(tmp_path)[0]
    as_version_3(oldest)
    buf = bytearray(oldest.read_bytes())
    buf[8:12] = (2).to_bytes(4, "little")
    buf[28:32] = zlib.crc32(buf[:28]).to_bytes(4, "little")
    oldest.write_bytes(bytes(buf))
    with pytest.raises(StorageFormatError, match="on-disk format version 2") as err:
        Storage.open(tmp_path, command_format=3)
    assert "plaintext session tokens" in str(err.value)


def test_a_flipped_bit_in_the_command_format_is_corruption(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    path = segment_paths(tmp_path)[0]
    buf = bytearray(path.read_bytes())
    buf[12] ^= 1
    path.write_bytes(bytes(buf))
    with pytest.raises(StorageCorruptedError, match="header checksum") as err:
        Storage.open(tmp_path, command_format=3)
    assert err.value.path == path


@pytest.mark.parametrize("command_format", [-1, 1 << 32])
def test_a_command_format_outside_u32_is_misuse(tmp_path: Path, command_format: int) -> None:
    with pytest.raises(StorageMisuseError, match="command_format"):
        Storage.open(tmp_path, command_format=command_format)
    Storage.open(tmp_path).close()  # the lock was released
