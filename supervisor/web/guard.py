"""`Guard`: who may use the web view. The page can kill nodes, so every request is checked:

- Host must be this server as the browser reached it: 127.0.0.1:PORT or localhost:PORT (or
  the --web-host given): a DNS-rebinding page on another name is refused.
- Every request (the page, its script, the event stream, an action) needs this run's session
  cookie (HttpOnly, SameSite=Strict). The only way to get one is the printed URL's one-time
  secret: `/?secret=S` spends S and sets the cookie, then redirects to `/`, so the secret
  leaves the address bar and the history. `web` in the REPL prints a URL with a new one.
- An action must be a POST with the X-Chatbooth header (which no cross-origin page can send
  without a CORS preflight, and no CORS header is ever sent) and an Origin of this server.
- Every response forbids framing, sniffing, caching and referrers, and its scripts come from
  this server only (Content-Security-Policy).

Standard library and aiohttp only.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

# Browsers scope cookies by host, not port: the name carries the port, so that two
# supervisors on one machine (or any other local server) never see each other's session.
SESSION_COOKIE: Final = "chatbooth_session"
ACTION_HEADER: Final = "X-Chatbooth"
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cookie_name(port: int) -> str:
    return f"{SESSION_COOKIE}_{port}"


def host_header(host: str, port: int) -> str:
    """host:port as a browser sends it in Host (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Guard:
    def __init__(self, host: str, port: int) -> None:
        names = {"127.0.0.1", "localhost"}
        names.add(host)
        self.cookie = cookie_name(port)
        self.allowed_hosts = frozenset(host_header(name, port) for name in names)
        self.allowed_origins = frozenset(f"http://{h}" for h in self.allowed_hosts)
        self._lock = threading.Lock()  # secrets are minted from the REPL's thread too
        self._secrets: set[str] = set()  # one-time secrets not yet spent
        self._sessions: set[str] = set()

    def new_secret(self) -> str:
        secret = secrets.token_urlsafe(24)
        with self._lock:
            self._secrets.add(secret)
        return secret

    def _spend(self, secret: str) -> bool:
        given = secret.encode("utf-8", "replace")  # compare_digest refuses non-ASCII str
        with self._lock:
            for known in self._secrets:
                if hmac.compare_digest(known.encode(), given):
                    self._secrets.discard(known)
                    return True
        return False

    def _has_session(self, request: web.Request) -> bool:
        token = request.cookies.get(self.cookie, "").encode("utf-8", "replace")
        with self._lock:
            return bool(token) and any(
                hmac.compare_digest(t.encode(), token) for t in self._sessions
            )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if host not in self.allowed_hosts:
            return _refuse(
                421, f"wrong Host {host!r}: this server answers to {_names(self.allowed_hosts)}"
            )
        if request.method == "GET" and request.path == "/" and "secret" in request.query:
            return self._exchange(request.query["secret"])
        if not self._has_session(request):
            return _refuse(
                401,
                "no session: open the URL that `supervisor up` printed (each works once; "
                "`web` in the REPL prints a new one)",
            )
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin not in self.allowed_origins:
                return _refuse(403, f"cross-origin request refused (Origin {origin!r})")
            if request.headers.get(ACTION_HEADER) != "1":
                return _refuse(403, f"an action needs the header {ACTION_HEADER}: 1")
        return await handler(request)

    def _exchange(self, secret: str) -> web.StreamResponse:
        if not self._spend(secret):
            return _refuse(
                403,
                "this link was used already or is not this run's: `web` in the REPL prints a "
                "new one",
            )
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions.add(token)
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(self.cookie, token, httponly=True, samesite="Strict", path="/")
        return response

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


def _names(hosts: frozenset[str]) -> str:
    return " or ".join(sorted(hosts))


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"ok": False, "error": reason}, status=status)
