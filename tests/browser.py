"""A real browser for the tests: Playwright for Python driving Debian's Chromium.

Playwright's own browser download needs the network, so the tests launch the system
executable (`make test` installs Debian's `chromium` through apt-get when it is missing).
Without one the browser tests are skipped with the command that installs it.
Screenshots go to `ARTIFACTS` (`$TEST_ARTIFACTS`, default `test-artifacts/` in the checkout).
"""

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.environ.get('TEST_ARTIFACTS', os.path.join(ROOT, 'test-artifacts'))
NAMES = ('chromium', 'chromium-browser')


def executable() -> str:
    """The system Chromium (`$CHROMIUM`, else the first of `NAMES` on PATH), or skip."""
    found = os.environ.get('CHROMIUM') or next(filter(None, map(shutil.which, NAMES)), None)
    if not found:
        pytest.skip('no Chromium: `make test` installs it (apt-get install chromium)')
    return found


@contextlib.contextmanager
def browser() -> Iterator:
    """A headless Chromium under Playwright (closed afterwards)."""
    sync_api = pytest.importorskip('playwright.sync_api')
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium refuses its sandbox.
        chromium = playwright.chromium.launch(executable_path=executable(), args=['--no-sandbox'])
        try:
            yield chromium
        finally:
            chromium.close()


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def screenshot(page, name: str) -> str:
    """Saves a full-page PNG of `page` as `ARTIFACTS/name`; returns its path."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path, full_page=True)
    return path


def broken_images(page) -> list[str]:
    """The `src` (cut to 80 characters) of every <img> on `page` that did not load."""
    return page.evaluate(
        """() => [...document.images]
            .filter((img) => !img.complete || img.naturalWidth === 0)
            .map((img) => img.src.slice(0, 80))"""
    )
