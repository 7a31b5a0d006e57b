"""protos/vocabulary.py: the one place the wire's words are defined, and read."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from node.chat.errors import Reason as ChatReason
from node.raft.types import Role
from node.server import ROLE_TO_PB
from protos import chat_pb2, vocabulary
from protos.vocabulary import REASON_KEY, Reason, describe_rpc_error, reason_of, role_name


def _error(
    code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


def test_a_reason_is_read_from_its_value_and_an_unknown_one_is_none() -> None:
    assert reason_of(((REASON_KEY, "no-majority"),)) is Reason.NO_MAJORITY
    assert reason_of(((REASON_KEY, b"not-leader"),)) is Reason.NOT_LEADER
    assert reason_of(((REASON_KEY, "from-a-newer-build"),)) is None
    assert reason_of(()) is None and reason_of(None) is None


def test_the_state_machines_reasons_are_words_of_the_wire() -> None:
    """node/chat may not import protos; its reasons travel as these values."""
    assert {r.value for r in ChatReason} <= {r.value for r in Reason}


def test_every_role_has_its_enum_value_and_reads_as_the_core_spells_it() -> None:
    assert set(ROLE_TO_PB) == set(Role)
    for role, value in ROLE_TO_PB.items():
        assert role_name(value) == role.value
    assert role_name(chat_pb2.ROLE_UNSPECIFIED) == "unknown"


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "did not answer in time"),
        (_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), "unreachable"),
        # The wording does not decide: a reworded node message keeps its reason ...
        (
            _error(grpc.StatusCode.UNAVAILABLE, "keine Mehrheit", ((REASON_KEY, "no-majority"),)),
            "keine Mehrheit",
        ),
        # ... and the old words without a reason are just an unreachable node's.
        (_error(grpc.StatusCode.UNAVAILABLE, "no majority reachable"), "unreachable"),
        (_error(grpc.StatusCode.NOT_FOUND, ""), "not found"),
    ],
)
def test_a_failed_call_is_described_by_code_and_reason(
    error: grpc.aio.AioRpcError, shown: str
) -> None:
    assert describe_rpc_error(error) == shown


def test_tokens_are_32_random_bytes_in_hex() -> None:
    token = vocabulary.new_session_token()
    assert len(bytes.fromhex(token)) == vocabulary.TOKEN_BYTES == 32
    assert token == token.lower() and token != vocabulary.new_session_token()
