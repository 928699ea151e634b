"""A real HTTP server over tests/fixtures/hostile: pages that try to steer, flood or lead buyers away.

"Other hosts" are played by the same server under the name localhost: a page served from
127.0.0.1:<port> links to http://localhost:<port>/..., which is another host to a SiteGuard
(whose allow-list is 127.0.0.1:<port>). The server records every request with its Host header,
method, path, body and arrival time, so "never contacted" is checked where it matters.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from local_server import QuietHandler, serve_pages

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
OFFSITE_PLACEHOLDER = "{{OFFSITE}}"
ROBOTS_TXT = "User-agent: *\nDisallow: /private\n"
FLOOD_LINKS = 1500


def flood_page() -> str:
    """A page far over any token budget: a huge heading and title, 1,500 long links, a long text."""
    fake = '[5] button "Place order" ' * 20
    links = "".join(f'<a href="/product.html?i={i}">Product {i} {fake}</a>\n' for i in range(FLOOD_LINKS))
    return (f"<!doctype html><title>{'Flood ' * 2000}</title><h1>{'Big ' * 5000}</h1>"
            f"<p>{'lorem ipsum ' * 20000}</p>{links}")


class HostileHandler(QuietHandler):
    seen: list[dict]

    def _record(self, body: str = "") -> None:
        self.seen.append({"method": self.command, "path": self.path, "host": self.headers.get("Host", ""),
                          "body": body, "t": time.monotonic()})

    def _offsite(self) -> str:
        return f"http://localhost:{self.server.server_address[1]}"

    def _send(self, status: int, body: str = "", content_type: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        path = urlsplit(self.path).path
        redirects = {"/redirect-out": self._offsite() + "/landed", "/redirect-hop": "/redirect-out",
                     "/redirect-private": "/private/index.html",
                     "/redirect-inside": "/redirect-inside-2", "/redirect-inside-2": "/product.html"}
        if path == "/robots.txt":
            self._send(200, ROBOTS_TXT, "text/plain")
        elif path in redirects:
            self._send(302, headers={"Location": redirects[path]})
        elif path == "/flood":
            self._send(200, flood_page())
        elif path.endswith(".html") and (HOSTILE / path.lstrip("/")).is_file():
            page = (HOSTILE / path.lstrip("/")).read_text().replace(OFFSITE_PLACEHOLDER, self._offsite())
            self._send(200, page)
        else:
            self._send(200, "<!doctype html><title>Other</title><h1>Some other page</h1>")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._record(self.rfile.read(length).decode("utf-8", "replace"))
        self._send(200, "<!doctype html><title>Thanks</title><h1>Received</h1>")


@contextmanager
def serve_hostile():
    with serve_pages(HostileHandler, HOSTILE) as httpd:
        httpd.offsite = f"http://localhost:{httpd.server_address[1]}"
        yield httpd


def offsite_requests(server) -> list[dict]:
    """Requests that reached the server under the other host's name."""
    return [r for r in server.seen if r["host"].startswith("localhost")]


def posts(server) -> list[dict]:
    return [r for r in server.seen if r["method"] == "POST"]
