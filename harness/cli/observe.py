"""`simpersona observe URL`: print a page exactly as the agent reads it.

    simpersona observe http://127.0.0.1:8000/c/kitchen
    simpersona observe http://127.0.0.1:8000/ --driver http --budget 400
"""

from __future__ import annotations

import asyncio

import typer

from harness.cli.app import app
from harness.drivers import Driver, open_pool
from harness.drivers.observation import DEFAULT_SETTLE_MS, DEFAULT_TOKEN_BUDGET
from harness.drivers.safety import DEFAULT_RATE_LIMIT_PER_S, SiteGuard


@app.command("observe")
def observe(
    url: str = typer.Argument(..., help="The page to read, e.g. http://127.0.0.1:8000/c/kitchen"),
    driver: Driver = typer.Option(Driver.browser, "--driver", help="browser (headless Chromium) or http (no JavaScript)"),
    budget: int = typer.Option(DEFAULT_TOKEN_BUDGET, "--budget", min=1, help="token budget of the element list"),
    settle_ms: int = typer.Option(DEFAULT_SETTLE_MS, "--settle-ms", min=0, help="browser: wait after load and network idle"),
    respect_robots: bool = typer.Option(True, "--robots/--ignore-robots", help="honour the site's robots.txt"),
    buyer_tag: str = typer.Option("observe", "--buyer-tag", help="value of the X-SimPersona-Buyer header"),
) -> None:
    """Print the observation text of URL, as the agent sees it."""
    guard = SiteGuard.for_url(url, respect_robots=respect_robots, rate_limit_per_s=DEFAULT_RATE_LIMIT_PER_S)
    text, error = asyncio.run(_observe(url, driver, budget, settle_ms, guard, buyer_tag))
    typer.echo(text)
    if error:
        raise typer.Exit(code=1)


async def _observe(url: str, driver: Driver, budget: int, settle_ms: int, guard: SiteGuard,
                   buyer_tag: str) -> tuple[str, str | None]:
    pool = open_pool(driver, 1, token_budget=budget, settle_ms=settle_ms)
    async with pool:
        async with pool.session(buyer_tag, guard) as session:
            outcome = await session.goto(url)
            observation = await session.observe()
    return observation.text, outcome.error
