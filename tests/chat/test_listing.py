"""ListAccounts: shell-style wildcards, ignoring case, sorted ignoring case, in pages."""

from __future__ import annotations

import pytest

from node.chat.errors import ChatError, ErrorCode
from node.chat.state import ChatState
from node.config import ChatLimits

from .conftest import Node

NAMES = ["alice", "Albert", "bob", "Bobby", "rob", "al", "carol", "Alf.x", "a-b", "ZED", "_u"]


@pytest.fixture
def state() -> ChatState:
    node = Node(ChatLimits(page_size=3, max_page_size=4))
    for name in NAMES:
        assert node.register(name).ok
    return node.state


def everything(state: ChatState, pattern: str, page_size: int = 0) -> list[tuple[str, ...]]:
    pages = []
    names, token = state.list_accounts(pattern, "", page_size)
    pages.append(names)
    while token:
        names, token = state.list_accounts(pattern, token, page_size)
        pages.append(names)
    return pages


def test_names_are_sorted_ignoring_case_and_keep_their_spelling(state: ChatState) -> None:
    names = [n for page in everything(state, "*") for n in page]
    assert names == sorted(NAMES, key=str.lower)
    assert names[:4] == ["_u", "a-b", "al", "Albert"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("al*", ["al", "Albert", "Alf.x", "alice"]),
        ("AL*", ["al", "Albert", "Alf.x", "alice"]),
        ("?ob", ["bob", "rob"]),
        ("[ab]*", ["a-b", "al", "Albert", "Alf.x", "alice", "bob", "Bobby"]),
        ("[!ab]*", ["_u", "carol", "rob", "ZED"]),
        ("*o*", ["bob", "Bobby", "carol", "rob"]),
        ("alf.x", ["Alf.x"]),
        ("alf?x", ["Alf.x"]),
        ("bob", ["bob"]),
        ("b", []),
        ("nobody*", []),
        ("", sorted(NAMES, key=str.lower)),
    ],
)
def test_wildcards_match_ignoring_case(state: ChatState, pattern: str, expected: list[str]) -> None:
    assert [n for page in everything(state, pattern, 10) for n in page] == expected


def test_paging_walks_every_match_once(state: ChatState) -> None:
    pages = everything(state, "[ab]*", 2)
    assert pages == [("a-b", "al"), ("Albert", "Alf.x"), ("alice", "bob"), ("Bobby",)]


def test_a_full_last_page_has_no_next_token(state: ChatState) -> None:
    names, token = state.list_accounts("al*", "", 4)
    assert len(names) == 4 and token == ""


def test_default_page_size_and_the_maximum(state: ChatState) -> None:
    names, token = state.list_accounts()
    assert len(names) == 3 and token
    names, token = state.list_accounts("*", "", 1000)
    assert len(names) == 4 and token


def test_paging_survives_changes_between_pages() -> None:
    node = Node()
    for name in ["a1", "a2", "a3", "a4"]:
        node.register(name)
    names, token = node.state.list_accounts("a*", "", 2)
    assert names == ("a1", "a2")
    node.register("a0")  # before the cursor: not seen on later pages
    node.register("a25")  # after it: seen
    names, later = node.state.list_accounts("a*", token, 2)
    assert names == ("a25", "a3") and later
    node.delete(node.login("a4"))
    assert node.state.list_accounts("a*", token, 2) == (("a25", "a3"), "")
    assert node.state.list_accounts("a*", later, 2) == ((), "")


@pytest.mark.parametrize(
    ("pattern", "page_token", "page_size"),
    [("*", "not a token!", 0), ("*", "Zm9v!", 0), ("*", "", -1), ("*" * 200, "", 0)],
)
def test_bad_arguments_are_invalid(
    state: ChatState, pattern: str, page_token: str, page_size: int
) -> None:
    with pytest.raises(ChatError) as info:
        state.list_accounts(pattern, page_token, page_size)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_pattern_with_many_stars_stays_fast(state: ChatState) -> None:
    """fnmatch's translation does not backtrack exponentially."""
    assert state.list_accounts("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", "", 10) == ((), "")
