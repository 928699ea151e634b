"""Live-store safety end to end, against a real server that records every request it receives.

tests/test_safety.py covers the allow-list on a clicked link, robots.txt on a page, the token
bucket with a fake clock and the interception of pay controls. This module adds what a run on a
store that is not ours also relies on: the rate limit as the server sees it, card details that
a page script posts by itself, robots.txt asked of allowed hosts only, and a simulation run
whose manifest records the safety settings and whose trajectories show the refused steps.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from agent.policy import BuyerTurn
from harness.sim.population import SyntheticBuyer
from harness.drivers.safety import DEFAULT_RATE_LIMIT_PER_S, SiteGuard
from harness.sim.simulate import SimulationConfig, build_manifest, make_guard, run_simulation
from hostile_site import offsite_requests, posts, serve_hostile

DRIVERS = ("browser", "http")
JITTER_S = 0.25   # how much later than its send a request may reach the server on a busy machine
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def site():
    with serve_hostile() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_log(site):
    site.seen.clear()


async def visit_together(pool, guard: SiteGuard, urls: list[str]) -> None:
    """Buyers of one run share one guard; here each opens one page, all at once."""
    async def visit(index: int, url: str) -> None:
        async with pool.session(f"rate-{index}", guard) as buyer:
            await buyer.goto(url)

    await asyncio.gather(*(visit(index, url) for index, url in enumerate(urls)))


@pytest.mark.parametrize("driver", DRIVERS)
async def test_page_requests_to_one_host_are_spaced_by_the_rate_limit(pools, site, driver):
    rate = 2.0   # one page per 0.5 s, no burst
    urls = [f"{site.url}page-{i}" for i in range(5)]
    await visit_together(pools[driver], SiteGuard(rate_limit_per_s=rate, burst=1, respect_robots=False), urls)
    arrivals = sorted(r["t"] for r in site.seen if r["path"].startswith("/page-"))
    assert len(arrivals) == len(urls)
    # The bucket spaces the sends; arrivals add the trip to the server (JITTER_S) on either end.
    # The first request of a fresh session also pays for connecting (up to ~0.7 s on a busy
    # machine), so its arrival says little about when it was sent: the spacing is checked after it.
    spaced = arrivals[1:]
    for i, earlier in enumerate(spaced):
        for j in range(i + 1, len(spaced)):
            assert spaced[j] - earlier >= (j - i) / rate - JITTER_S, arrivals
    # Without a limit the same visits arrive together (so the check above can fail).
    site.seen.clear()
    await visit_together(pools[driver], SiteGuard(rate_limit_per_s=None, respect_robots=False), urls)
    together = sorted(r["t"] for r in site.seen if r["path"].startswith("/page-"))
    assert together[-1] - together[1] < (len(spaced) - 1) / rate - JITTER_S, together


async def test_card_details_posted_by_a_page_script_never_reach_a_live_store(pools, site):
    guard = SiteGuard(rate_limit_per_s=None)
    async with pools["browser"].session("auto-pay", guard) as buyer:
        await buyer.goto(site.url + "autopay.html")   # the page submits a card form by itself after 100 ms
        await asyncio.sleep(0.6)
    assert not posts(site), posts(site)
    assert any(b.reason == "payment details are never sent to a live store" for b in guard.blocked)
    # On our own store the same page does post (so the check above can fail).
    async with pools["browser"].session("auto-pay-ours", SiteGuard(rate_limit_per_s=None, our_store=True)) as buyer:
        await buyer.goto(site.url + "autopay.html")
        await asyncio.sleep(0.6)
    assert [p["path"] for p in posts(site)] == ["/pay"]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_typing_a_card_number_or_pressing_continue_sends_nothing(pools, site, driver):
    for action in ('type [1] "4242424242424242"', "click [3]"):
        guard = SiteGuard(rate_limit_per_s=None)
        async with pools[driver].session(f"card-{driver}", guard) as buyer:
            await buyer.goto(site.url + "pay.html")
            text = (await buyer.observe()).text
            assert '[1] textbox "Card number"' in text and '[3] button "Continue"' in text, text
            outcome = await buyer.act(action)
        assert outcome.converted and outcome.done and outcome.detail["intercepted"], (action, outcome)
        assert outcome.detail["price"] == "€59.90"
        assert len(guard.intercepted) == 1
    assert not posts(site)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_robots_txt_is_asked_of_allowed_hosts_only(pools, site, driver):
    async with pools[driver].session(f"robots-once-{driver}", SiteGuard(rate_limit_per_s=None)) as buyer:
        for page in ("product.html", "modal.html", "page-x"):
            await buyer.goto(site.url + page)
    robots = [r for r in site.seen if r["path"] == "/robots.txt"]
    assert [r["host"] for r in robots] == [urlsplit(site.url).netloc]   # once, from the allowed host
    assert not offsite_requests(site)


# -- a simulation run ---------------------------------------------------------------------------

@dataclass
class LeaveThenStop:
    """A scripted policy: follow the link to the partner site, then stop."""

    name: str = "leave-then-stop"

    def act(self, turns: list[BuyerTurn]) -> list[str]:
        return [self.one(turn.observation) for turn in turns]

    @staticmethod
    def one(observation: str) -> str:
        if "Error:" in observation:
            return "stop"
        for line in observation.splitlines():
            if 'link "More shoes on a partner site' in line:
                return "click " + line.split(" ", 1)[0]
        return "stop"


def test_manifest_records_the_safety_settings(tmp_path):
    config = SimulationConfig(store_url="https://shop.example/", shop="s1", codebook_dir=tmp_path, buyers=1,
                              out_dir=tmp_path, run_id="r", allow_hosts=("cdn.shop.example",),
                              rate_limit_per_s=1.5, respect_robots=False)
    recorded = build_manifest(config, [SyntheticBuyer(0, 0, 1)])["config"]
    assert recorded["allow_hosts"] == ["cdn.shop.example"]
    assert recorded["rate_limit_per_s"] == 1.5 and recorded["respect_robots"] is False
    assert recorded["our_store"] is False
    guard = make_guard(config)   # the guard a run builds from the same config
    assert guard.allow_hosts == {"shop.example", "cdn.shop.example"}
    assert guard.rate_limit_per_s == 1.5 and guard.respect_robots is False and guard.intercepts_payments
    # rate_limit_per_s=None is recorded as None; on a live store it means the guard's default.
    default = SimulationConfig(store_url="https://shop.example/", shop="s1", codebook_dir=tmp_path, buyers=1)
    assert build_manifest(default, [])["config"]["rate_limit_per_s"] is None
    assert make_guard(default).rate_limit_per_s == DEFAULT_RATE_LIMIT_PER_S
    # The manifest's "safety" block has the defaults resolved: what the guard actually enforced.
    effective = build_manifest(default, [])["safety"]
    assert effective["rate_limit_per_s"] == DEFAULT_RATE_LIMIT_PER_S and effective["allow_hosts"] == ["shop.example"]
    assert effective["respect_robots"] is True and effective["payment_submits_intercepted"] is True
    ours = SimulationConfig(store_url="http://127.0.0.1:8000/", shop="s1", codebook_dir=tmp_path, buyers=1, our_store=True)
    assert build_manifest(ours, [])["safety"]["rate_limit_per_s"] is None


async def test_a_run_on_a_live_store_refuses_the_partner_link_and_says_so(site, tmp_path):
    config = SimulationConfig(store_url=site.url + "product.html", shop="s1", codebook_dir=tmp_path, buyers=1,
                              concurrency=1, driver="http", max_steps=4, out_dir=tmp_path, run_id="live",
                              rate_limit_per_s=20.0, progress=False, handle_signals=False)
    result = await run_simulation(config, LeaveThenStop(), population=[SyntheticBuyer(0, 0, 1)])
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["config"]["rate_limit_per_s"] == 20.0 and manifest["config"]["respect_robots"] is True
    assert manifest["config"]["our_store"] is False and manifest["config"]["allow_hosts"] == []
    (trajectory,) = result.trajectories
    port = urlsplit(site.url).port
    assert trajectory["steps"][0]["action"].startswith("click [")
    assert trajectory["steps"][0]["error"] == f"not visited: host localhost:{port} is not on the allow-list"
    assert trajectory["steps"][-1]["action"] == "stop"
    assert not offsite_requests(site)
