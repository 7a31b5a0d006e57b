"""The page itself, in headless Chromium, against the web view of a stand-in cluster: it shows
the leader and each node, pushes an event to the screen within 250 ms, runs a click as the
REPL command it names, refuses a browser without the secret, and says "supervisor gone" when
the stream ends. (tests/web/test_live_cluster.py does the same against real nodes.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.events import EventKind
from supervisor.processes import ProcessState
from supervisor.web.server import WebView
from tests.chromium import chromium
from tests.web.fakes import FakeCluster, RecordingRunner

SCREEN_LAG_LIMIT_MS = 250.0


def until(condition: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.02)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FakeCluster, RecordingRunner, WebView, Any]]:
    cluster = FakeCluster()
    runner = RecordingRunner()
    view = WebView(cluster, port=0)  # type: ignore[arg-type]
    view.start()
    view.serve_commands(runner)
    try:
        with chromium(tmp_path) as browser:
            yield cluster, runner, view, browser
    finally:
        view.close()


def text(browser: Any, element_id: str) -> str:
    return str(browser.find_element("id", element_id).text)


def test_the_page_shows_the_nodes_and_an_event_reaches_the_screen_in_time(
    served: tuple[FakeCluster, RecordingRunner, WebView, Any], tmp_path: Path
) -> None:
    cluster, _, view, browser = served
    browser.get(view.new_url())
    until(lambda: text(browser, "leader") == "a")
    card = browser.find_element("id", "node-b")
    assert card.get_attribute("data-role") == "follower"
    assert "12 ms ago" in card.text  # b's last contact with its leader
    cluster.events.publish(EventKind.FAULT, "killed b (pid 1098)", "b")
    cluster.set("b", process=ProcessState.DOWN, role=None, term=None, error="not running")
    until(lambda: "killed b (pid 1098)" in text(browser, "events"))
    until(lambda: browser.find_element("id", "node-b").get_attribute("data-process") == "down")
    time.sleep(0.3)  # a few more rounds of nodes
    lags = browser.execute_script("return window.chatbooth.latencies")
    event_lags = [x["lag"] for x in lags if x["kind"] == "event:fault"]
    node_lags = [x["lag"] for x in lags if x["kind"] == "nodes"]
    assert event_lags and node_lags
    assert max(event_lags) <= SCREEN_LAG_LIMIT_MS, event_lags
    assert max(node_lags) <= SCREEN_LAG_LIMIT_MS, max(node_lags)
    browser.save_screenshot(str(tmp_path / "page.png"))


def test_a_click_runs_the_command_it_names_and_shows_its_text_and_answer(
    served: tuple[FakeCluster, RecordingRunner, WebView, Any],
) -> None:
    _, runner, view, browser = served
    browser.get(view.new_url())
    until(lambda: text(browser, "leader") == "a")
    browser.find_element("css selector", 'button[data-command="kill"][data-node="c"]').click()
    until(lambda: "did kill c" in text(browser, "last-command"))
    assert text(browser, "last-command").splitlines()[0] == "kill c"
    group_of_c = browser.find_element("css selector", 'select[data-group-of="c"]')
    group_of_c.find_element("css selector", 'option[value="3"]').click()
    browser.find_element("id", "partition-button").click()
    until(lambda: len(runner.lines) == 2)
    assert runner.lines == ["kill c", "partition a,b | c"]


def test_a_browser_without_the_secret_is_refused_and_gone_is_shown_when_it_stops(
    served: tuple[FakeCluster, RecordingRunner, WebView, Any],
) -> None:
    _, runner, view, browser = served
    browser.get(f"http://127.0.0.1:{view.port}/")
    assert "no session" in browser.find_element("tag name", "body").text
    browser.get(f"http://127.0.0.1:{view.port}/?secret=guessed")
    assert "used already or is not this run's" in browser.find_element("tag name", "body").text
    browser.get(view.new_url())
    until(lambda: text(browser, "connection") == "live")
    view.close()
    until(lambda: "supervisor gone" in text(browser, "connection"))
    assert runner.lines == []
