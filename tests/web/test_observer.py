"""What the page is told, from rounds of Status: fields, staleness, lag, links, the commit
rate, and the events a change between two rounds means (never a node's log)."""

from __future__ import annotations

from supervisor.events import EventFeed, EventKind
from supervisor.links import LinkState
from supervisor.processes import ProcessState
from supervisor.web.observer import RATE_WINDOW_S, Observer
from tests.web.fakes import node_status


def kinds(feed: EventFeed) -> list[tuple[EventKind, str]]:
    return [(e.kind, e.text) for e in feed.recent()]


def test_what_is_already_so_when_the_page_connects_is_not_news() -> None:
    feed = EventFeed()
    observer = Observer(feed)
    observer.observe([node_status("a", "leader"), node_status("b")], [], None, 100.0)
    assert feed.recent() == []


def test_a_new_leader_a_step_down_a_campaign_and_a_snapshot_are_events() -> None:
    feed = EventFeed()
    observer = Observer(feed)
    observer.observe([node_status("a", "leader"), node_status("b")], [], None, 100.0)
    observer.observe(
        [node_status("a", "follower", term=4), node_status("b", "candidate", term=4)],
        [],
        None,
        100.1,
    )
    observer.observe(
        [
            node_status("a", "follower", term=4, snapshot_index=50),
            node_status("b", "leader", term=4),
        ],
        [],
        None,
        100.2,
    )
    assert kinds(feed) == [
        (EventKind.STEP_DOWN, "a stepped down at term 4: now follower"),
        (EventKind.ELECTION, "b campaigns at term 4"),
        (EventKind.SNAPSHOT, "a's log now starts from a snapshot at index 50"),
        (EventKind.ELECTION, "b is leader at term 4"),
    ]


def test_a_node_first_heard_in_a_later_round_is_not_news_either() -> None:
    feed = EventFeed()
    observer = Observer(feed)
    silent = node_status("a", None, error="deadline exceeded")
    observer.observe([silent, node_status("b")], [], None, 1.0)
    observer.observe([node_status("a", "leader"), node_status("b")], [], None, 1.1)
    assert feed.recent() == []
    observer.observe([node_status("a", "follower", term=4), node_status("b")], [], None, 1.2)
    assert kinds(feed) == [(EventKind.STEP_DOWN, "a stepped down at term 4: now follower")]


def test_a_killed_leader_that_comes_back_as_follower_did_not_step_down() -> None:
    feed = EventFeed()
    observer = Observer(feed)
    observer.observe([node_status("a", "leader")], [], None, 1.0)
    observer.observe([node_status("a", None, process=ProcessState.DOWN)], [], None, 1.1)
    observer.observe([node_status("a", "follower", term=5)], [], None, 1.2)
    assert feed.recent() == []


def test_a_node_that_stops_answering_shows_its_last_answer_and_its_age() -> None:
    observer = Observer(EventFeed())
    observer.observe([node_status("a", "leader"), node_status("b", commit_index=7)], [], None, 1)
    paused = node_status("b", None, process=ProcessState.PAUSED, last_contact_s=3.26)
    message = observer.observe([node_status("a", "leader"), paused], [], None, 2)
    b = message["nodes"][1]
    assert (b["stale"], b["age_s"], b["role"], b["commit"]) == (True, 3.3, "follower", 7)
    assert b["process"] == "paused" and b["lag"] is None
    a = message["nodes"][0]
    assert (a["stale"], a["role"], a["leader_contact_ms"], a["member"]) == (
        False,
        "leader",
        0,
        "voter",
    )


def test_lag_is_entries_behind_the_leader_known_to_a_majority() -> None:
    observer = Observer(EventFeed())
    statuses = [
        node_status("a", "leader", last_index=120),
        node_status("b", last_index=100),
        node_status("c", last_index=125),
    ]
    message = observer.observe(statuses, [], None, 1)
    assert message["leader"] == "a"
    assert [n["lag"] for n in message["nodes"]] == [0, 20, 0]


def test_links_and_the_partition() -> None:
    links = [
        LinkState("a", "b", "127.0.0.1:1", True, 0.0, 0),
        LinkState("b", "a", "127.0.0.1:2", False, 150.0, 1),
    ]
    message = Observer(EventFeed()).observe(
        [node_status("a", "leader"), node_status("b")], links, (("a",), ("b",)), 1
    )
    assert message["links"] == [
        {"source": "a", "target": "b", "blocked": True, "delay_ms": 0.0},
        {"source": "b", "target": "a", "blocked": False, "delay_ms": 150.0},
    ]
    assert message["partition"] == "a | b"


def test_the_commit_rate_counts_each_whole_second_of_the_last_minute() -> None:
    observer = Observer(EventFeed())
    commit = 0
    message: dict[str, object] = {}
    for tenth in range(0, 31):  # 3 s: 10 entries per tenth in the first, none after
        t = 1000.0 + tenth / 10
        if tenth <= 10:
            commit = tenth * 10
        message = observer.observe([node_status("a", "leader", commit_index=commit)], [], None, t)
    rate = message["rate"]
    assert isinstance(rate, list) and len(rate) == RATE_WINDOW_S
    assert rate[-3:] == [100, 0, 0]
    assert sum(rate) == 100
