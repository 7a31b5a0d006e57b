"""The router's decisions (client/router.py), as tables: pure functions of an answer's status
code, the `Reason` in its trailing metadata and the leader that metadata names. No channel, no
server, no event loop: grpc appears for its StatusCode enum, and at the end for answers made
by hand (an AioRpcError built here) that the Router records.

The rule they keep (STYLE, "One wire vocabulary"): reasons are machine-readable, never English
prefixes matched by the other side. A node's message is for people; it is shown, and never
decides anything.
"""

from __future__ import annotations

import grpc
import pytest

from client.errors import (
    AlreadyExistsError,
    ClientExpiredError,
    InvalidArgumentError,
    NoMajorityError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
)
from client.router import (
    LeaderHint,
    Node,
    NodeCondition,
    Round,
    Router,
    Verdict,
    judge,
    offers_no_leader,
    summarize,
)
from protos import chat_pb2
from protos.vocabulary import LEADER_ADDRESS_KEY, LEADER_ID_KEY, REASON_KEY, Reason

Code = grpc.StatusCode
HINT = LeaderHint("127.0.0.1:8001", "a")

# --- the verdict on one answer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "reason", "leader", "verdict"),
    [
        pytest.param(
            Code.UNAVAILABLE,
            "no majority reachable (node b)",
            Reason.NO_MAJORITY,
            None,
            Verdict(NodeCondition.NO_MAJORITY, "no majority reachable (node b)", None),
            id="no-majority",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "keine Mehrheit",
            Reason.NO_MAJORITY,
            None,
            Verdict(NodeCondition.NO_MAJORITY, "keine Mehrheit", None),
            id="no-majority-reworded",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "no majority reachable (node b)",
            Reason.NO_MAJORITY,
            HINT,
            Verdict(NodeCondition.NO_MAJORITY, "no majority reachable (node b)", HINT),
            id="no-majority-naming-a-leader-is-followed",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "not the leader: b (leader: a)",
            Reason.NOT_LEADER,
            HINT,
            Verdict(NodeCondition.NOT_LEADER, "not the leader: b (leader: a)", HINT),
            id="not-leader-follow-the-hint",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "not the leader: b (leader: unknown)",
            Reason.NOT_LEADER,
            None,
            Verdict(NodeCondition.NOT_LEADER, "not the leader: b (leader: unknown)", None),
            id="not-leader-without-a-hint",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "no address for leader a",
            None,
            HINT,
            Verdict(NodeCondition.NOT_LEADER, "no address for leader a", HINT),
            id="no-reason-but-a-leader-named",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "no majority reachable",
            None,
            None,
            Verdict(NodeCondition.UNREACHABLE, "no majority reachable", None),
            id="no-reason-the-words-alone-decide-nothing",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "not the leader",
            None,
            None,
            Verdict(NodeCondition.UNREACHABLE, "not the leader", None),
            id="no-reason-not-leader-words",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "failed to connect to all addresses",
            None,
            None,
            Verdict(NodeCondition.UNREACHABLE, "failed to connect to all addresses", None),
            id="unreachable",
        ),
        pytest.param(
            Code.UNAVAILABLE,
            "b: outcome unknown; retry with the same request id",
            Reason.OUTCOME_UNKNOWN,
            None,
            Verdict(
                NodeCondition.UNREACHABLE,
                "b: outcome unknown; retry with the same request id",
                None,
            ),
            id="outcome-unknown-is-tried-elsewhere",
        ),
        pytest.param(
            Code.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            None,
            None,
            Verdict(NodeCondition.TIMED_OUT, "Deadline Exceeded", None),
            id="timed-out",
        ),
        pytest.param(
            Code.INTERNAL,
            "stream reset",
            None,
            None,
            Verdict(NodeCondition.BROKEN, "INTERNAL", None),
            id="internal-is-a-broken-connection",
        ),
        pytest.param(
            Code.UNKNOWN,
            "",
            None,
            None,
            Verdict(NodeCondition.BROKEN, "UNKNOWN", None),
            id="unknown-is-a-broken-connection",
        ),
        pytest.param(
            Code.CANCELLED,
            "",
            None,
            HINT,
            Verdict(NodeCondition.BROKEN, "CANCELLED", HINT),
            id="cancelled-with-a-hint",
        ),
    ],
)
def test_an_answer_that_did_not_serve_is_judged_by_code_reason_and_leader(
    code: grpc.StatusCode,
    details: str,
    reason: Reason | None,
    leader: LeaderHint | None,
    verdict: Verdict,
) -> None:
    """UNAVAILABLE means "no majority" or "not the leader" only when the node says so by its
    reason (or names a leader); a message's words never decide."""
    assert judge(code, details, reason, leader) == verdict


@pytest.mark.parametrize(
    ("code", "reason", "error_type"),
    [
        (Code.INVALID_ARGUMENT, None, InvalidArgumentError),
        (Code.ALREADY_EXISTS, None, AlreadyExistsError),
        (Code.UNAUTHENTICATED, None, UnauthenticatedError),
        (Code.NOT_FOUND, None, NotFoundError),
        (Code.RESOURCE_EXHAUSTED, None, ResourceExhaustedError),
        (Code.RESOURCE_EXHAUSTED, Reason.TOO_MANY_LOGINS, ResourceExhaustedError),
        (Code.PERMISSION_DENIED, None, PermissionDeniedError),
        (Code.FAILED_PRECONDITION, Reason.CLIENT_EXPIRED, ClientExpiredError),
        (Code.FAILED_PRECONDITION, None, ServerError),
        (Code.OUT_OF_RANGE, None, ServerError),
        (Code.UNIMPLEMENTED, None, ServerError),
    ],
)
def test_a_definite_refusal_raises_its_error(
    code: grpc.StatusCode, reason: Reason | None, error_type: type[ServerError]
) -> None:
    """A definite code settles the request: the node looked at it and would answer the same
    again, so it raises the ServerError for it (never a verdict to retry elsewhere), with the
    reason beside the node's message, even when the answer names a leader."""
    with pytest.raises(ServerError) as caught:
        judge(code, "the node's words", reason, HINT)
    assert type(caught.value) is error_type
    assert (caught.value.code, caught.value.message, caught.value.reason) == (
        code,
        "the node's words",
        reason,
    )


def test_client_expired_is_known_by_its_reason_not_its_words() -> None:
    """FAILED_PRECONDITION is "client-expired" only with that reason."""
    worded = judge_refusal(Code.FAILED_PRECONDITION, "client-expired: register again", None)
    assert type(worded) is ServerError
    reasoned = judge_refusal(Code.FAILED_PRECONDITION, "abgelaufen", Reason.CLIENT_EXPIRED)
    assert isinstance(reasoned, ClientExpiredError)


def judge_refusal(code: grpc.StatusCode, details: str, reason: Reason | None) -> ServerError:
    with pytest.raises(ServerError) as caught:
        judge(code, details, reason, None)
    return caught.value


@pytest.mark.parametrize(
    ("metadata", "hint"),
    [
        (((LEADER_ADDRESS_KEY, "127.0.0.1:8001"), (LEADER_ID_KEY, "a")), HINT),
        (((LEADER_ID_KEY, b"a"),), LeaderHint(None, "a")),
        (((LEADER_ADDRESS_KEY, "127.0.0.1:8001"),), LeaderHint("127.0.0.1:8001", None)),
        (((LEADER_ADDRESS_KEY, ""), (LEADER_ID_KEY, "")), None),
        ((("x-other", "1"),), None),
        ((), None),
        (None, None),
    ],
)
def test_the_leader_is_read_from_trailing_metadata(
    metadata: tuple[tuple[str, str | bytes], ...] | None, hint: LeaderHint | None
) -> None:
    assert LeaderHint.from_metadata(metadata) == hint


# --- what the nodes' answers add up to -----------------------------------------------------


def node(
    name: str,
    condition: NodeCondition | None,
    detail: str = "",
    hint: Node | None = None,
    address: str | None = None,
) -> Node:
    result = Node(name, address or f"127.0.0.1:800{ord(name[0]) - ord('a') + 1}")
    result.condition = condition
    result.detail = detail
    result.hint = hint
    return result


LEADER = node("a", NodeCondition.SERVING)


@pytest.mark.parametrize(
    ("condition", "hint", "leaderless"),
    [
        (NodeCondition.SERVING, None, False),
        (NodeCondition.NOT_LEADER, LEADER, False),
        (NodeCondition.NOT_LEADER, None, True),
        (NodeCondition.NO_MAJORITY, None, True),
        (NodeCondition.UNREACHABLE, None, True),
        (NodeCondition.TIMED_OUT, None, True),
        (NodeCondition.BROKEN, None, True),
        (None, None, False),
    ],
)
def test_a_node_offers_a_way_to_a_leader_unless_it_knows_none(
    condition: NodeCondition | None, hint: Node | None, leaderless: bool
) -> None:
    assert offers_no_leader(node("b", condition, hint=hint)) is leaderless


@pytest.mark.parametrize(
    ("nodes", "pinned", "text", "leaderless"),
    [
        pytest.param(
            [
                node("a", NodeCondition.NO_MAJORITY, "no majority reachable"),
                node("b", NodeCondition.NO_MAJORITY, "no majority reachable"),
                node("c", NodeCondition.UNREACHABLE, "failed to connect to all addresses"),
            ],
            False,
            "no leader: a, b answer 'no majority reachable'; c unreachable",
            True,
            id="no-majority",
        ),
        pytest.param(
            [node("b", NodeCondition.UNREACHABLE)],
            True,
            "no leader: b unreachable (pinned to b: no failover)",
            True,
            id="pinned-and-unreachable",
        ),
        pytest.param(
            [node("b", NodeCondition.NOT_LEADER, "not the leader", hint=LEADER)],
            True,
            "cannot reach the leader: b answers 'not the leader' (leader: a at 127.0.0.1:8001) "
            "(pinned to b: no failover)",
            False,
            id="pinned-to-a-follower",
        ),
        pytest.param(
            [
                node("a", NodeCondition.TIMED_OUT, "Deadline Exceeded"),
                node("b", NodeCondition.BROKEN, "INTERNAL"),
                node("c", NodeCondition.BROKEN, "INTERNAL"),
            ],
            False,
            "no leader: a did not answer in time; b, c broke the connection (INTERNAL)",
            True,
            id="timed-out-and-broken",
        ),
        pytest.param(
            [
                node("a", NodeCondition.NOT_LEADER, "not the leader", hint=LEADER),
                node("b", NodeCondition.NOT_LEADER, "not the leader", hint=node("c", None)),
                node("c", None),
            ],
            False,
            "cannot reach the leader: a answers 'not the leader' (leader: a at 127.0.0.1:8001); "
            "b answers 'not the leader' (leader: c at 127.0.0.1:8003); c not asked yet",
            False,
            id="grouped-by-the-leader-they-name",
        ),
        pytest.param(
            [node("a", NodeCondition.SERVING), node("b", NodeCondition.NOT_LEADER)],
            False,
            "cannot reach the leader: a served the last call; b answers 'not the leader'",
            False,
            id="a-node-that-served",
        ),
        pytest.param(
            [node("a", NodeCondition.NOT_LEADER, "x" * 100)],
            False,
            "no leader: a answers '" + "x" * 79 + "…'",
            True,
            id="a-long-answer-is-cut",
        ),
        pytest.param(
            [node("127.0.0.1:9", NodeCondition.UNREACHABLE, address="127.0.0.1:9")],
            False,
            "no leader: 127.0.0.1:9 unreachable",
            True,
            id="a-node-named-by-its-address",
        ),
    ],
)
def test_the_summary_says_what_each_node_answered(
    nodes: list[Node], pinned: bool, text: str, leaderless: bool
) -> None:
    summary = summarize(nodes, pinned=pinned)
    assert (summary.text, summary.leaderless) == (text, leaderless)
    assert summary.error_type is (NoMajorityError if leaderless else UnavailableError)


# --- rounds ----------------------------------------------------------------------------------


def test_a_round_tries_every_node_once_and_a_named_leader_next() -> None:
    a, b, c = (node(name, None) for name in "abc")
    attempt = Round([b, c, a])
    assert attempt.next_node() is b
    attempt.redirect(a)  # b named a
    assert attempt.next_node() is a
    attempt.redirect(b)  # a named b: already tried this round
    assert attempt.next_node() is c
    assert attempt.next_node() is None
    assert attempt.tried == [b, a, c]


def test_a_node_already_failed_is_tried_last() -> None:
    a, b = node("a", None), node("b", None)
    attempt = Round([a, b])
    attempt.mark_tried(a)
    assert attempt.next_node() is b
    assert attempt.next_node() is None


# --- the router's state, from answers made by hand (no channel is opened) ------------------


def _router(*names: str, pinned: bool = False) -> tuple[Router, list[Node]]:
    nodes = [node(name, None) for name in names]
    router = Router(
        nodes,
        pinned=pinned,
        ca=None,
        call_timeout_s=1.0,
        overall_timeout_s=1.0,
        no_majority_grace_s=1.0,
    )
    return router, nodes


def _refusal(
    code: grpc.StatusCode, details: str, *trailing: tuple[str, str]
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


NOT_LEADER = (REASON_KEY, Reason.NOT_LEADER.value)


def test_a_named_leader_is_followed_and_remembered() -> None:
    router, (a, b, _) = _router("a", "b", "c")
    error = _refusal(Code.UNAVAILABLE, "not the leader", NOT_LEADER, (LEADER_ID_KEY, "c"))
    hint = router.observe_failure(a, error, "send")
    assert hint is not None and hint.name == "c"
    assert router.leader is hint
    assert (a.condition, a.detail, a.hint) == (NodeCondition.NOT_LEADER, "not the leader", hint)
    assert b.condition is None


def test_a_leader_at_a_new_address_becomes_a_candidate() -> None:
    router, _ = _router("a", "b", "c")
    error = _refusal(
        Code.UNAVAILABLE,
        "not the leader",
        NOT_LEADER,
        (LEADER_ADDRESS_KEY, "127.0.0.1:8004"),
        (LEADER_ID_KEY, "d"),
    )
    hint = router.observe_failure(router.nodes[0], error, "send")
    assert hint is not None and (hint.name, hint.address) == ("d", "127.0.0.1:8004")
    assert [n.name for n in router.nodes] == ["a", "b", "c", "d"]


def test_an_id_alone_that_names_no_known_node_is_no_hint() -> None:
    """Nothing to try: without a reason the answer is an unreachable node's."""
    router, (a, *_) = _router("a", "b")
    error = _refusal(Code.UNAVAILABLE, "somewhere else", (LEADER_ID_KEY, "z"))
    assert router.observe_failure(a, error, "send") is None
    assert a.condition is NodeCondition.UNREACHABLE and router.leader is None


def test_a_node_that_names_itself_but_did_not_serve_gives_no_hint() -> None:
    router, (a, _) = _router("a", "b")
    error = _refusal(Code.UNAVAILABLE, "not the leader", NOT_LEADER, (LEADER_ID_KEY, "a"))
    assert router.observe_failure(a, error, "send") is None
    assert (a.condition, a.hint, router.leader) == (NodeCondition.NOT_LEADER, None, None)


def test_a_pinned_router_learns_the_leader_but_never_follows_it() -> None:
    router, (b,) = _router("b", pinned=True)
    error = _refusal(
        Code.UNAVAILABLE,
        "not the leader",
        NOT_LEADER,
        (LEADER_ADDRESS_KEY, "127.0.0.1:8001"),
        (LEADER_ID_KEY, "a"),
    )
    assert router.observe_failure(b, error, "send") is None
    assert router.leader is not None and router.leader.name == "a"  # shown, not used
    assert [n.name for n in router.nodes] == ["b"]
    assert router.new_round().next_node() is b


def _members_status(answered_by: str, leader: str, *members: str) -> chat_pb2.StatusReply:
    """A Status reply whose committed membership is `members` ("d" at 127.0.0.1:8004, ...)."""
    return chat_pb2.StatusReply(
        node_id=answered_by,
        leader_id=leader,
        members=[
            chat_pb2.ClusterMember(
                node_id=m, address=f"127.0.0.1:800{ord(m) - ord('a') + 1}", voter=True
            )
            for m in members
        ],
    )


def test_the_candidates_follow_the_committed_membership() -> None:
    """A client started from cluster.yaml's a, b, c learns of d and e from a Status, in
    the membership's order after the configured ones, and stops asking a, b and c once they
    have left: its rounds then go to d and e only."""
    router, (a, *_) = _router("a", "b", "c")
    router.observe_status(a, _members_status("a", "a", "a", "b", "c", "d", "e"))
    assert [n.name for n in router.nodes] == ["a", "b", "c", "d", "e"]
    assert [n.address for n in router.nodes[3:]] == ["127.0.0.1:8004", "127.0.0.1:8005"]
    d = router.nodes[3]
    router.observe_status(d, _members_status("d", "d", "d", "e"))
    assert [n.name for n in router.nodes] == ["d", "e"]
    assert router.leader is d
    round_ = router.new_round()
    assert [round_.next_node(), round_.next_node(), round_.next_node()] == [
        d,
        router.nodes[1],
        None,
    ]


def test_a_node_not_yet_named_is_matched_by_address_and_never_dropped_unnamed() -> None:
    first, second = (Node(address, address) for address in ("127.0.0.1:8001", "127.0.0.1:8002"))
    router = Router(
        [first, second],
        pinned=False,
        ca=None,
        call_timeout_s=1.0,
        overall_timeout_s=1.0,
        no_majority_grace_s=1.0,
    )
    router.observe_status(first, _members_status("a", "", "a", "c"))
    assert [n.name for n in router.nodes] == ["a", "127.0.0.1:8002", "c"]  # unnamed: kept
    assert router.nodes[:2] == [first, second]


def test_a_membership_that_leaves_no_candidate_is_not_followed_and_pinned_never() -> None:
    router, _ = _router("a", "b")
    reply = _members_status("a", "")
    reply.members.add(node_id="z")  # a member whose address this node does not know
    router.observe_status(router.nodes[0], reply)
    assert [n.name for n in router.nodes] == ["a", "b"]
    pinned, _ = _router("b", pinned=True)
    pinned.observe_status(pinned.nodes[0], _members_status("b", "d", "d", "e"))
    assert [n.name for n in pinned.nodes] == ["b"]
