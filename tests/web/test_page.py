"""The page itself, in headless Chromium, against the web view of a stand-in cluster: it shows
the leader and each node, pushes an event to the screen within 250 ms, runs a click as the
REPL command it names, refuses a browser without the secret, and says "supervisor gone" when
the stream ends. (tests/supervisor/test_web_live.py does the same against real nodes.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.events import EventKind
from supervisor.processes import ProcessState
from supervisor.web.server import WebView
from tests.chromium import chromium, until
from tests.web.fakes import FakeCluster, RecordingRunner

SCREEN_LAG_LIMIT_MS = 250.0


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


# Resolves with Date.now() at the first animation frame where node `arguments[0]` shows process
# state `arguments[1]`: when the change is on the screen.
SHOWN_AT = """
const [node, wanted, done] = arguments;
function look() {
  const card = document.getElementById(`node-${node}`);
  if (card && card.dataset.process === wanted) done(Date.now());
  else requestAnimationFrame(look);
}
look();
"""


def test_the_page_shows_the_nodes_and_a_change_reaches_the_screen_in_time(
    served: tuple[FakeCluster, RecordingRunner, WebView, Any], tmp_path: Path
) -> None:
    cluster, _, view, browser = served
    browser.get(view.new_url())
    until(lambda: text(browser, "leader") == "a")
    card = browser.find_element("id", "node-b")
    assert card.get_attribute("data-role") == "follower"
    assert "12 ms ago" in card.text  # b's last contact with its leader
    time.sleep(0.5)  # past the page's start
    browser.execute_script("window.chatbooth.latencies.length = 0")
    for attempt in range(3):  # three changes, each timed from the moment it is made
        node = "bc"[attempt % 2]
        state = "down" if attempt < 2 else "up"
        changed_ms = time.time() * 1000
        cluster.events.publish(EventKind.FAULT, f"change {attempt} on {node}", node)
        if state == "down":
            cluster.set(node, process=ProcessState.DOWN, role=None, term=None, error="down")
        else:
            cluster.set(node, process=ProcessState.UP, role="follower", term=3, error=None)
        shown_ms = browser.execute_async_script(SHOWN_AT, node, state)
        assert shown_ms - changed_ms <= SCREEN_LAG_LIMIT_MS, (attempt, shown_ms - changed_ms)
        until(lambda a=attempt: f"change {a} on" in text(browser, "events"))  # type: ignore[misc]
    lags = browser.execute_script("return window.chatbooth.latencies")
    event_lags = [x["lag"] for x in lags if x["kind"] == "event:fault"]
    node_lags = [x["lag"] for x in lags if x["kind"] == "nodes"]
    assert len(event_lags) == 3 and node_lags
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
