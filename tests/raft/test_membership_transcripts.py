"""The membership rules as transcripts (tests/raft/testdata/membership/*.txt), in the manner
of etcd's raft/testdata: each file quotes the rule it shows, and every command's output is
part of the test. CHATBOOTH_REWRITE=1 rewrites the files from what the commands print."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.simulator.interaction import run_file

DATA = Path(__file__).parent / "testdata" / "membership"
FILES = sorted(DATA.glob("*.txt"))


def test_there_are_transcripts() -> None:
    assert len(FILES) >= 6


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript(path: Path) -> None:
    expected, actual = run_file(path)
    assert actual == expected
