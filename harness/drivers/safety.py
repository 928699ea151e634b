"""Keeping synthetic buyers polite and harmless on real sites.

A SiteGuard is consulted by both drivers before every request:
- only allow-listed hosts are visited (default: the host of the first URL a session opens);
  everything else is blocked and logged, page sub-resources included (Playwright `context.route`);
- a redirect is checked like a link before anyone follows it (`check_redirect`; both drivers
  check every hop of a chain);
- requests per host are rate-limited by a token bucket (pages, form posts, XHR/fetch);
- robots.txt is fetched once per host and honoured: a disallowed page is an error, not a visit;
- on a store that is not ours, nothing that pays is ever sent: a click on a place-order/pay
  control, or a submit of a form with card fields, is intercepted by the driver and reported as
  a conversion; as a second line of defence a POST carrying card fields is blocked at the network.
  The one exception is `place_orders=True`, which an operator asks for explicitly on a staging
  shop they own (allow-listed hosts only): checkouts are submitted and the store counts them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.robotparser
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx

log = logging.getLogger("simpersona.safety")

DEFAULT_RATE_LIMIT_PER_S = 2.0   # requests per second per host on a live site
ROBOTS_USER_AGENT = "SimPersona"
ROBOTS_TIMEOUT_S = 5.0
ALWAYS_ALLOWED_SCHEMES = ("data", "blob", "about")
CARD_BODY_PATTERN = re.compile(
    r"(^|[&_\[-])(cc[-_]?number|card[-_]?number|cardnumber|cvc|cvv2?|csc|card[-_]?cvc|security[-_]?code)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BlockedRequest:
    url: str
    reason: str
    ts: float


@dataclass
class _Bucket:
    tokens: float
    updated: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SiteGuard:
    """Allow-list, per-host rate limit, robots.txt and payment interception for one run."""

    def __init__(self, allow_hosts: Iterable[str] | None = None,
                 rate_limit_per_s: float | None = DEFAULT_RATE_LIMIT_PER_S,
                 respect_robots: bool = True, our_store: bool = False,
                 burst: int | None = None, user_agent: str = ROBOTS_USER_AGENT, place_orders: bool = False):
        self.allow_hosts: set[str] | None = {h.lower() for h in allow_hosts} if allow_hosts is not None else None
        self.rate_limit_per_s = rate_limit_per_s
        self.burst = burst if burst is not None else max(1, int(rate_limit_per_s or 1))
        self.respect_robots = respect_robots
        self.our_store = our_store
        self.place_orders = place_orders
        self.user_agent = user_agent
        self.blocked: list[BlockedRequest] = []
        self.intercepted: list[dict] = []
        self._buckets: dict[str, _Bucket] = {}
        self._robots: dict[str, urllib.robotparser.RobotFileParser] = {}
        self._robots_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def for_url(cls, start_url: str, **options) -> "SiteGuard":
        """A guard that allows the start URL's host only."""
        return cls(allow_hosts=[urlsplit(start_url).netloc], **options)

    @property
    def intercepts_payments(self) -> bool:
        return not (self.our_store or self.place_orders)

    def adopt_start_url(self, url: str) -> None:
        """With no allow-list given, the first URL opened decides the one allowed host."""
        if self.allow_hosts is None and urlsplit(url).scheme in ("http", "https"):
            self.allow_hosts = {urlsplit(url).netloc.lower()}

    def host_allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ALWAYS_ALLOWED_SCHEMES:
            return True
        if parts.scheme not in ("http", "https"):
            return False
        if self.allow_hosts is None:
            return False
        netloc = parts.netloc.lower()
        return netloc in self.allow_hosts or (parts.hostname or "") in self.allow_hosts

    def settings(self) -> dict:
        """The effective safety settings, as a run's manifest records them (defaults resolved)."""
        return {
            "allow_hosts": sorted(self.allow_hosts) if self.allow_hosts is not None else None,
            "rate_limit_per_s": self.rate_limit_per_s,
            "burst": self.burst,
            "respect_robots": self.respect_robots,
            "payment_submits_intercepted": self.intercepts_payments,
            "place_orders": self.place_orders,
            "user_agent": self.user_agent,
        }

    async def check(self, url: str, *, is_page: bool, rate_limited: bool = True) -> str | None:
        """The reason to block this request, or None; waits for the host's rate limit.

        `is_page`: a page visit (robots.txt applies); `rate_limited`: counts against the host's
        budget (pages, form posts, XHR; not images and stylesheets).
        """
        if urlsplit(url).scheme in ALWAYS_ALLOWED_SCHEMES:
            return None
        if not self.host_allowed(url):
            return self.block(url, f"host {urlsplit(url).netloc or url} is not on the allow-list")
        if is_page and self.respect_robots and not await self.robots_allows(url):
            return self.block(url, f"robots.txt of {urlsplit(url).netloc} disallows {urlsplit(url).path or '/'}")
        if rate_limited:
            await self.wait_turn(url)
        return None

    async def check_redirect(self, from_url: str, status: int, location: str | None, *, is_page: bool,
                             rate_limited: bool = True) -> str | None:
        """The reason to refuse a redirect response, or None (also None when it is no redirect).

        A browser follows a redirect without asking again (Playwright routes only the first
        request of a chain), so the drivers fetch without following and ask here first.
        `rate_limited`: the hop counts against its host's budget now (False where the hop will be
        requested, and counted, as a request of its own).
        """
        if not (300 <= status < 400 and location):
            return None
        return await self.check(urljoin(from_url, location), is_page=is_page, rate_limited=rate_limited)

    def block(self, url: str, reason: str) -> str:
        self.blocked.append(BlockedRequest(url, reason, time.time()))
        log.warning("blocked %s: %s", url, reason)
        return reason

    def card_post_reason(self, method: str, body: str | bytes | None) -> str | None:
        """A POST that carries card fields, on a store that is not ours: never sent."""
        if not self.intercepts_payments or method.upper() != "POST" or not body:
            return None
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        names = [name for name, _ in parse_qsl(text, keep_blank_values=True)] or [text[:2000]]
        if any(CARD_BODY_PATTERN.search(name) for name in names):
            return "payment details are never sent to a live store"
        return None

    def blocked_by_host(self) -> dict[str, int]:
        """How many requests were refused per host (summary.json's audit)."""
        counts: dict[str, int] = {}
        for request in self.blocked:
            host = urlsplit(request.url).netloc or request.url
            counts[host] = counts.get(host, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))

    def record_interception(self, detail: dict) -> None:
        self.intercepted.append(detail)
        log.info("payment intercepted: %s", detail)

    async def wait_turn(self, url: str) -> None:
        """Token bucket per host: at most `rate_limit_per_s` requests a second, bursts of `burst`."""
        if not self.rate_limit_per_s:
            return
        host = urlsplit(url).netloc.lower()
        bucket = self._buckets.setdefault(host, _Bucket(tokens=float(self.burst), updated=time.monotonic()))
        async with bucket.lock:
            while True:
                now = time.monotonic()
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_limit_per_s)
                bucket.updated = now
                if bucket.tokens >= 1:
                    bucket.tokens -= 1
                    return
                await asyncio.sleep((1 - bucket.tokens) / self.rate_limit_per_s)

    async def robots_allows(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        lock = self._robots_locks.setdefault(origin, asyncio.Lock())
        async with lock:
            if origin not in self._robots:
                self._robots[origin] = await self._fetch_robots(origin)
        return self._robots[origin].can_fetch(self.user_agent, url)

    async def _fetch_robots(self, origin: str) -> urllib.robotparser.RobotFileParser:
        """Fetch once per host, with the standard library's reading of status codes."""
        parser = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        try:
            await self.wait_turn(origin + "/robots.txt")
            async with httpx.AsyncClient(timeout=ROBOTS_TIMEOUT_S, follow_redirects=True) as client:
                response = await client.get(origin + "/robots.txt")
        except httpx.HTTPError as error:
            log.warning("robots.txt of %s unreachable (%s); treating as allow-all", origin, error)
            parser.allow_all = True
            return parser
        if response.status_code in (401, 403):
            parser.disallow_all = True
        elif response.status_code >= 400:
            parser.allow_all = True
        else:
            parser.parse(response.text.splitlines())
        return parser
