"""The web view's server without a browser: who may use it (the one-time secret and the
session cookie, Host, Origin, the action header, no CORS), what the page may run, and the
event stream (events pushed at once, nodes polled only while a page is connected)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.events import EventKind
from supervisor.web.guard import cookie_name
from supervisor.web.server import WebError, WebView
from tests.web.fakes import FakeCluster, RecordingRunner


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def web(cluster: FakeCluster, runner: RecordingRunner) -> Iterator[WebView]:
    view = WebView(cluster, port=0, poll_interval_s=0.05)  # type: ignore[arg-type]
    view.start()
    view.serve_commands(runner)
    try:
        yield view
    finally:
        view.close()


def request(
    web: WebView,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    sent = {"Host": f"127.0.0.1:{web.port}", **(headers or {})}
    if cookie is not None:
        sent["Cookie"] = f"{cookie_name(web.port)}={cookie}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    connection.request(method, path, body=data, headers=sent)
    return connection.getresponse()


def login(web: WebView) -> str:
    """Spend a one-time secret as the printed URL does; the session cookie it sets."""
    secret = web.new_url().split("secret=", 1)[1]
    response = request(web, "GET", f"/?secret={secret}")
    assert response.status == 303 and response.getheader("Location") == "/"
    set_cookie = response.getheader("Set-Cookie") or ""
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    return set_cookie.split(";")[0].split("=", 1)[1]


def action(web: WebView, cookie: str, command: str, **headers: str) -> http.client.HTTPResponse:
    sent = {"Origin": f"http://127.0.0.1:{web.port}", "X-Chatbooth": "1", **headers}
    return request(
        web, "POST", "/api/command", cookie=cookie, headers=sent, body={"command": command}
    )


def test_the_printed_url_binds_127_0_0_1_and_names_its_port(web: WebView) -> None:
    url = web.new_url()
    assert url.startswith(f"http://127.0.0.1:{web.port}/?secret=")
    assert web._sock.getsockname()[0] == "127.0.0.1"


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/events"])
def test_without_the_secret_every_request_is_refused(web: WebView, path: str) -> None:
    for cookie in (None, "made-up"):
        response = request(web, "GET", path, cookie=cookie)
        assert response.status == 401
        assert "open the URL" in json.loads(response.read())["error"]
    response = request(
        web,
        "POST",
        "/api/command",
        body={"command": "kill b"},
        headers={"Origin": f"http://127.0.0.1:{web.port}", "X-Chatbooth": "1"},
    )
    assert response.status == 401


def test_a_secret_works_once_and_the_cookie_opens_the_page(web: WebView) -> None:
    secret = web.new_url().split("secret=", 1)[1]
    assert request(web, "GET", f"/?secret={secret}").status == 303
    again = request(web, "GET", f"/?secret={secret}")
    assert again.status == 403 and "used already" in json.loads(again.read())["error"]
    cookie = login(web)
    page = request(web, "GET", "/", cookie=cookie)
    assert page.status == 200 and b"chatbooth" in page.read()
    csp = page.getheader("Content-Security-Policy") or ""
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.getheader("Referrer-Policy") == "no-referrer"


def test_odd_secrets_and_cookies_are_refused_not_errors(web: WebView) -> None:
    for secret in ("%C3%A9", "%00", "x" * 5000):
        response = request(web, "GET", f"/?secret={secret}")
        assert response.status == 403, secret
    response = request(web, "GET", "/", cookie="\u00e9t\u00e9".encode().decode("latin-1"))
    assert response.status == 401


def test_the_session_cookie_is_this_port_s_alone(web: WebView) -> None:
    cookie = login(web)
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    connection.request(
        "GET",
        "/",
        headers={"Host": f"127.0.0.1:{web.port}", "Cookie": f"chatbooth_session={cookie}"},
    )
    assert connection.getresponse().status == 401  # another port's name: not a session here


def test_a_wildcard_web_host_is_refused(cluster: FakeCluster) -> None:
    for host in ("0.0.0.0", "::"):
        with pytest.raises(WebError, match="not a wildcard"):
            WebView(cluster, host=host)  # type: ignore[arg-type]


def test_a_wrong_host_is_refused_even_with_a_session(web: WebView) -> None:
    cookie = login(web)
    for host in (f"evil.example:{web.port}", "127.0.0.1:1", ""):
        response = request(web, "GET", "/", cookie=cookie, headers={"Host": host})
        assert response.status == 421, host
        assert "wrong Host" in json.loads(response.read())["error"]
    ok = request(web, "GET", "/", cookie=cookie, headers={"Host": f"localhost:{web.port}"})
    assert ok.status == 200


def test_a_cross_origin_action_is_refused_and_no_cors_header_is_sent(
    web: WebView, runner: RecordingRunner
) -> None:
    cookie = login(web)
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{web.port + 1}"):
        response = action(web, cookie, "kill b", Origin=origin)
        assert response.status == 403 and "cross-origin" in json.loads(response.read())["error"]
        assert not [h for h, _ in response.getheaders() if h.lower().startswith("access-control")]
    no_header = request(
        web,
        "POST",
        "/api/command",
        cookie=cookie,
        body={"command": "kill b"},
        headers={"Origin": f"http://127.0.0.1:{web.port}"},
    )
    assert no_header.status == 403 and "X-Chatbooth" in json.loads(no_header.read())["error"]
    preflight = request(
        web, "OPTIONS", "/api/command", cookie=cookie, headers={"Origin": "http://evil.example"}
    )
    assert preflight.status in (403, 405)
    assert not [h for h, _ in preflight.getheaders() if h.lower().startswith("access-control")]
    assert runner.lines == []


def test_the_page_runs_only_the_faults_and_says_what_ran(
    web: WebView, runner: RecordingRunner
) -> None:
    cookie = login(web)
    done = action(web, cookie, "kill b")
    assert done.status == 200
    assert json.loads(done.read()) == {"command": "kill b", "ok": True, "output": "did kill b"}
    for line in ("quit", "chaos start", "add d", "", "kill b\x1b[2J", "kill\x0bquit"):
        refused = action(web, cookie, line)
        assert refused.status == 400, line
    assert runner.lines == ["kill b"]


def events(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    while True:
        line = response.fp.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


def test_events_are_pushed_at_once_and_nodes_polled_only_while_a_page_is_connected(
    web: WebView, cluster: FakeCluster
) -> None:
    cookie = login(web)
    time.sleep(0.3)
    assert cluster.status_calls == 0  # no page: no polling
    stream = request(web, "GET", "/events", cookie=cookie)
    assert stream.getheader("Content-Type", "").startswith("text/event-stream")
    messages = events(stream)
    hello = next(messages)
    assert hello["type"] == "hello" and hello["nodes"] == ["a", "b", "c"]
    assert hello["actions"] is True
    first = next(m for m in messages if m["type"] == "nodes")
    assert first["leader"] == "a" and first["nodes"][0]["role"] == "leader"
    published = cluster.events.publish(EventKind.FAULT, "killed b (pid 7)", "b")
    pushed = next(m for m in messages if m["type"] == "event")
    assert (pushed["text"], pushed["kind"]) == ("killed b (pid 7)", "fault")
    assert time.time() - published.at < 0.5
    stream.close()
    time.sleep(0.5)
    calls = cluster.status_calls
    time.sleep(0.5)
    assert cluster.status_calls - calls <= 1  # the page left: polling stopped


def test_closing_ends_every_stream_with_bye(cluster: FakeCluster) -> None:
    view = WebView(cluster, port=0)  # type: ignore[arg-type]
    view.start()
    try:
        cookie = login(view)
        messages = events(request(view, "GET", "/events", cookie=cookie))
        assert next(messages)["type"] == "hello"
    finally:
        view.close()
    assert [m["type"] for m in messages if m["type"] != "nodes"] == ["bye"]


def test_port_zero_keeps_the_socket_it_bound_and_a_taken_port_is_a_clear_error(
    cluster: FakeCluster,
) -> None:
    view = WebView(cluster, port=0)  # type: ignore[arg-type]
    try:
        # the port stays ours from the moment it is chosen
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", view.port))
        with pytest.raises(WebError, match=rf"127.0.0.1:{view.port} is in use.*--web 0"):
            WebView(cluster, port=view.port)  # type: ignore[arg-type]
    finally:
        view.close()
