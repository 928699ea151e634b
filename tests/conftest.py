"""Shared test configuration.

pytest-playwright's `page`/`browser` fixtures launch the same Chromium the harness uses: the
system one where present (Debian's package), with the flags this sandbox needs.
"""

import pytest

from harness.browser import CHROMIUM_ARGS, find_chromium


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    executable = find_chromium()
    extra = {"executable_path": executable} if executable else {}
    return {**browser_type_launch_args, **extra, "args": list(CHROMIUM_ARGS)}
