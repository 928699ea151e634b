"""The interface between the simulation and the page drivers (docs: /tmp/harness_contract.md).

A DriverPool owns the expensive shared thing (one Chromium, or one set of http settings) and hands
out one isolated BuyerSession per synthetic buyer: its own cookies, its own history, its own
buyer tag header. Two pools implement it: harness.drivers.browser.BrowserPool (Playwright) and
harness.drivers.http_driver.HttpPool (httpx + BeautifulSoup, for stores that need no JavaScript). Both
produce the same observation text on the mock store.

    async with BrowserPool() as pool:
        async with pool.session("buyer-17", guard=SiteGuard.for_url(url, our_store=True)) as buyer:
            await buyer.goto(url)
            observation = await buyer.observe()
            outcome = await buyer.act(parse_action("click [3]"))
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from agent.actions import Action

if TYPE_CHECKING:
    from harness.drivers.safety import SiteGuard



@dataclass
class Observation:
    url: str
    title: str
    text: str                # what the agent reads (harness/drivers/observation.py)
    element_ids: list[int]   # the ids listed in `text`, in order


@dataclass
class StepOutcome:
    error: str | None = None   # shown to the agent in the next observation
    done: bool = False         # the episode is over (stop, order placed, payment intercepted)
    converted: bool = False    # an order confirmation was reached or a payment intercepted
    detail: dict = field(default_factory=dict)  # order_id / intercepted product, price, url


@runtime_checkable
class BuyerSession(Protocol):
    buyer_tag: str

    async def goto(self, url: str) -> StepOutcome: ...

    async def observe(self) -> Observation: ...

    async def act(self, action: Action) -> StepOutcome: ...


class DriverPool(Protocol):
    async def __aenter__(self) -> "DriverPool": ...

    async def __aexit__(self, *exc_info) -> None: ...

    def session(self, buyer_tag: str, guard: "SiteGuard | None" = None) -> AbstractAsyncContextManager[BuyerSession]: ...
