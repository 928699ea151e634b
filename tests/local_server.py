"""A real HTTP server on 127.0.0.1 over the hand-made edge-case pages, for the browser tests."""

from __future__ import annotations

import functools
import http.server
import threading
from contextlib import contextmanager
from pathlib import Path

EDGE = Path(__file__).resolve().parent / "fixtures" / "edge"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve_pages(handler: type[http.server.SimpleHTTPRequestHandler] = QuietHandler, directory: Path = EDGE):
    """Serve `directory` with `handler` (a subclass may record requests in its `seen` list)."""
    seen: list[dict] = []
    bound = type("Handler", (handler,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(bound, directory=str(directory)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.seen = seen
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
