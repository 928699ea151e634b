"""Fault injection for the mock store: slow responses, server errors and dropped connections.

Off by default. A harness that must survive a flaky real store is tested against these. The
choice of which request fails comes from a seeded generator, so a run that sends the same
requests in the same order sees the same failures.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0  # share of requests answered with HTTP 500
    delay_ms: int = 0  # added to a slow request before it is handled
    drop_rate: float = 0.0  # share of requests whose connection is closed mid-response
    seed: int = 0
    slow_rate: float = 1.0  # share of requests that are slow (get delay_ms); 1.0: every request
    # What the store injected so far (requests, errors, drops, slow), for the caller to read.
    injected: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "slow_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be between 0 and 1, got {value}")
        if self.error_rate + self.drop_rate > 1.0:
            raise ValueError(f"Faults.error_rate + drop_rate must be at most 1, got {self.error_rate + self.drop_rate}")
        if self.delay_ms < 0:
            raise ValueError(f"Faults.delay_ms must be >= 0, got {self.delay_ms}")

    @property
    def active(self) -> bool:
        return self.error_rate > 0 or (self.delay_ms > 0 and self.slow_rate > 0) or self.drop_rate > 0


ERROR_PAGE = b"<!doctype html><title>Server error</title><h1>Server error</h1><p>Please try again.</p>"
DROP_MESSAGE = "ASGI callable returned without completing response."


class FaultInjection:
    """ASGI middleware applying Faults to every HTTP request before the store sees it."""

    def __init__(self, app: ASGIApp, faults: Faults):
        self.app = app
        self.faults = faults
        self._random = random.Random(faults.seed)
        # Its own stream, so asking for slow requests does not change which requests fail.
        self._slow_random = random.Random(f"slow-{faults.seed}")
        self._lock = threading.Lock()
        self.counts = faults.injected
        for key in ("requests", "errors", "drops", "slow"):
            self.counts.setdefault(key, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._lock:
            draw = self._random.random()
            slow = self.faults.delay_ms > 0 and self._slow_random.random() < self.faults.slow_rate
            self.counts["requests"] += 1
            self.counts["slow"] += slow
            self.counts["errors"] += draw < self.faults.error_rate
            self.counts["drops"] += self.faults.error_rate <= draw < self.faults.error_rate + self.faults.drop_rate
        if slow:
            await asyncio.sleep(self.faults.delay_ms / 1000)
        if draw < self.faults.error_rate:
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                    (b"content-length", str(len(ERROR_PAGE)).encode())]})
            await send({"type": "http.response.body", "body": ERROR_PAGE})
        elif draw < self.faults.error_rate + self.faults.drop_rate:
            # Promise a body and never send it: the server then closes the connection, which
            # the client sees as a truncated response, as when a real server crashes mid-way.
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"1024")]})
        else:
            await self.app(scope, receive, send)


class HideDropMessages(logging.Filter):
    """Keeps uvicorn from logging every deliberately dropped connection as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != DROP_MESSAGE
