"""Fixtures shared by the browser tests."""

import pytest

from harness.drivers.browser import BrowserPool
from harness.drivers.http_driver import HttpPool


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
async def pools(anyio_backend):
    """One browser and one http pool per test module, as a run would have."""
    async with BrowserPool(settle_ms=100) as browser_pool, HttpPool() as http_pool:
        yield {"browser": browser_pool, "http": http_pool}
