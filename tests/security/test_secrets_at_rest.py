"""No secret is readable on disk (issue 11, "Login entries and snapshots hold live session
tokens in plaintext: a local unprivileged user read 38 tokens from one node's data dir").

The test run's every secret, its session tokens and passwords, is searched for in every byte
of every file under the data dir (WAL segments, snapshots, node logs, the TLS directory) in
every encoding the node uses: as text, as raw bytes, as hex and as base64. A positive control
shows the search reads the right bytes: each session's hash and each message text are found.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
from pathlib import Path

import grpc
import pytest

from protos import chat_pb2 as pb
from protos.vocabulary import new_session_token
from tests.node.conftest import NodeProcesses
from tests.node.test_node_process import Session

pytestmark = pytest.mark.cluster


def _encodings(secret: str) -> set[bytes]:
    """The forms a secret could take in a file: UTF-8 text, and for a hex token its raw bytes;
    each of those as hex and as base64 (standard and URL-safe, padding dropped)."""
    raw = [secret.encode()]
    with contextlib.suppress(ValueError):
        raw.append(bytes.fromhex(secret))
    forms: set[bytes] = set()
    for b in raw:
        forms.add(b)
        forms.add(b.hex().encode())
        forms.add(base64.b64encode(b).rstrip(b"="))
        forms.add(base64.urlsafe_b64encode(b).rstrip(b"="))
    return forms


def _files(data: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def _found(files: dict[Path, bytes], needle: bytes) -> list[Path]:
    return [p for p, content in files.items() if needle in content]


def test_no_session_token_or_password_rests_on_disk(tmp_path: Path) -> None:
    # Snapshots every 20 entries, so the state (sessions, dedup table) lands in snapshot files.
    nodes = NodeProcesses(tmp_path, extra_yaml="snapshot: {entries: 20}\n")
    tokens: list[str] = []
    passwords = {f"pw-{name}-{secrets.token_hex(8)}": name for name in ("ann", "ben", "cy")}
    texts: list[str] = []
    try:
        nodes.start_all()

        async def scenario() -> None:
            leader = await nodes.wait_leader()
            follower = next(n for n in nodes.ids if n != leader)
            for i, (password, name) in enumerate(passwords.items()):
                # Alternate leader and follower, so that forwarded Logins are covered too.
                s = await Session.open(nodes.channel(leader if i % 2 else follower))
                await s.stub.Register(
                    pb.RegisterRequest(request=s.rid(anon=True), username=name, password=password),
                    timeout=10,
                )
                for _ in range(2):  # two sessions each; the first Login is sent twice
                    token = new_session_token()
                    login = pb.LoginRequest(
                        request=s.rid(anon=True), username=name, password=password, token=token
                    )
                    await s.stub.Login(login, timeout=10)
                    await s.stub.Login(login, timeout=10)  # a retry, answered from the table
                    tokens.append(token)
                    await s.bind(token)
                    for j in range(8):
                        text = f"text-{name}-{j}-{secrets.token_hex(4)}"
                        texts.append(text)
                        await s.send(name, text)
                    await s.stub.History(pb.HistoryRequest(token=token, other=name), timeout=10)
                if name == "cy":  # a password also travels with DeleteAccount
                    await s.stub.DeleteAccount(
                        pb.DeleteAccountRequest(request=s.rid(), token=s.token, password=password),
                        timeout=10,
                    )
                else:
                    await s.stub.Logout(
                        pb.LogoutRequest(request=s.rid(), token=s.token), timeout=10
                    )
                # A wrong token and a wrong password are secrets of a kind as well.
                with pytest.raises(grpc.aio.AioRpcError):
                    await s.stub.Login(
                        pb.LoginRequest(
                            request=s.rid(anon=True),
                            username=name,
                            password=password + "-typo",
                            token=new_session_token(),
                        ),
                        timeout=10,
                    )
                await s.close()
            for n in nodes.ids:  # every node made a snapshot of the state holding the sessions
                status = await nodes.status(n)
                assert status is not None and status.snapshot_index > 0, (n, status)

        asyncio.run(scenario())
    finally:
        nodes.close()  # the nodes exit and flush their logs before the files are read

    files = _files(tmp_path / "data")
    assert {".wal", ".snap", ".log", ".key"} <= {p.suffix for p in files}, sorted(files)
    # Positive control: the search sees the log and the snapshots.
    for token in tokens:
        assert _found(files, hashlib.sha256(token.encode()).hexdigest().encode()), token
    for text in texts:
        assert _found(files, text.encode()), text
    secrets_used = [*tokens, *passwords, *(p + "-typo" for p in passwords)]
    for secret in secrets_used:
        for form in _encodings(secret):
            where = _found(files, form)
            assert not where, f"a secret ({form[:12]!r}…) rests in {[str(p) for p in where]}"
