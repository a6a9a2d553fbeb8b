"""``fitbit-stream dashboard --serve``: the KPI page over HTTP, refreshed while the pipeline runs.

The standard library's ``ThreadingHTTPServer`` is enough for a page and a JSON endpoint read by a
handful of browsers, and adds no dependency to the wheel. Routes:

- ``GET /``: the same page ``dashboard`` writes, with the current data embedded and the address of
  the endpoint, which makes its script poll;
- ``GET /api/kpis``: the page's data as JSON (:func:`.html.page_payload`) with the tables' version
  as its ETag; ``If-None-Match`` with the current version gets ``304 Not Modified`` and no body.

It binds to 127.0.0.1 by default. A request whose ``Host`` is not the address it is bound to (or
``localhost``) is refused while it is bound to a loopback address: otherwise any web page the user
opens could read the dashboard through a DNS name rebound to 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fitbit_stream.config import Config
from fitbit_stream.dashboard.html import LIVE_CONTENT_SECURITY_POLICY, Live, page_payload, render_html, source_of
from fitbit_stream.dashboard.live import LiveDashboard, Snapshot, live_dashboard

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["API_PATH", "DEFAULT_HOST", "DEFAULT_PORT", "DashboardServer", "payload_json", "serve"]

log = logging.getLogger(__name__)

API_PATH = "/api/kpis"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    # "127.0.0.1:8050", "[::1]:8050", "localhost": the name without the port, brackets kept off.
    return (urlsplit(f"//{header}").hostname or "").lower()


def _etag_matches(header: str | None, version: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in header.split(",")}
    return version in tags or "*" in tags


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server of one :class:`LiveDashboard`; ``port=0`` takes a free port."""

    daemon_threads = True  # a browser's open keep-alive connection must not hold up a stop

    def __init__(
        self,
        live: LiveDashboard,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        title: str = "fitbit_stream KPIs",
        source: str = "",
        poll_ms: int = 2000,
    ) -> None:
        if ":" in host:  # an IPv6 address ("::1")
            self.address_family = socket.AF_INET6
        self.live = live
        self.title = title
        self.source = source
        self.poll_ms = poll_ms
        self.loopback_only = _is_loopback(host)
        self._page_lock = threading.Lock()
        self._page: tuple[str, bytes] | None = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        name = f"[{text}]" if ":" in text else text
        return f"http://{name}:{port}/"

    def host_allowed(self, header: str | None) -> bool:
        if not self.loopback_only:
            return True
        name = _host_name(header or "")
        return name == "localhost" or _is_loopback(name)

    def page(self, snap: Snapshot) -> bytes:
        """The HTML page at ``snap``, rendered once per version."""
        with self._page_lock:
            if self._page is None or self._page[0] != snap.version:
                text = render_html(
                    snap.data,
                    title=self.title,
                    source=self.source,
                    generated_at=snap.generated_at,
                    health=snap.health,
                    live=Live(API_PATH, self.poll_ms),
                    version=snap.version,
                    missing=snap.missing,
                )
                self._page = (snap.version, text.encode("utf-8"))
            return self._page[1]


def payload_json(snap: Snapshot) -> bytes:
    """The endpoint's body: the page's data at ``snap``."""
    payload: dict[str, Any] = page_payload(
        snap.data, generated_at=snap.generated_at, health=snap.health, version=snap.version, missing=snap.missing
    )
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"  # keep-alive: a polling page reuses one connection
    server_version = "fitbit-stream-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        # Each poll would otherwise print a line to stderr; the log keeps them for --debug.
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("X-Content-Type-Options", "nosniff")
        if status != HTTPStatus.NOT_MODIFIED:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: HTTPStatus, message: str) -> None:
        self._send(status, message.encode(), {"Content-Type": "text/plain; charset=utf-8"})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self.server.host_allowed(self.headers.get("Host")):
            self._text(HTTPStatus.FORBIDDEN, "unexpected Host header: open the dashboard by its address\n")
            return
        path = urlsplit(self.path).path
        if path not in ("/", "/index.html", API_PATH):
            self._text(HTTPStatus.NOT_FOUND, "not found\n")
            return
        try:
            snap = self.server.live.snapshot()
        except Exception as exc:  # the first read failed: say so instead of dropping the connection
            log.warning("dashboard: could not read the tables", exc_info=True)
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, f"could not read the tables: {exc}\n")
            return
        etag = f'"{snap.version}"'
        if path == API_PATH:
            headers = {"ETag": etag, "Cache-Control": "no-cache"}
            if _etag_matches(self.headers.get("If-None-Match"), snap.version):
                self._send(HTTPStatus.NOT_MODIFIED, headers=headers)
                return
            self._send(HTTPStatus.OK, payload_json(snap), {**headers, "Content-Type": "application/json"})
            return
        self._send(
            HTTPStatus.OK,
            self.server.page(snap),
            {
                "Content-Type": "text/html; charset=utf-8",
                "Content-Security-Policy": LIVE_CONTENT_SECURITY_POLICY,
                "Cache-Control": "no-store",
            },
        )


def serve(
    spark: SparkSession,
    config: Config,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    say: Callable[[str], None] = print,
    ready: Callable[[DashboardServer], None] | None = None,
) -> None:
    """Serve the live dashboard until interrupted (Ctrl-C) or ``shutdown()`` from another thread.

    The tables are read once before the server answers, so a broken configuration fails here.
    ``ready`` is called with the listening server (tests use it to learn the port and stop it).
    """
    live = live_dashboard(spark, config)
    snap = live.snapshot()
    server = DashboardServer(live, host, port, source=source_of(config))
    try:
        waiting = f" (waiting for {len(snap.missing)} table(s))" if snap.missing else ""
        say(f"dashboard: {server.url} refreshes while the pipeline runs{waiting}; Ctrl-C stops")
        if ready is not None:
            ready(server)
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        say("dashboard: stopped")
    finally:
        server.server_close()
