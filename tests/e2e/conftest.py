"""Browser suite fixtures: real processes (SMTP server, `enrs serve`), Debian's Chromium
through Playwright, and a page factory that screenshots failures.

The portal runs in its own process on SQLite: nothing here uses tests/conftest.py's
`app` fixture (which is parametrised over databases for the in-process suite).

Reusable by later journeys:
- `portal` / `pow_portal`: a served portal (image / proof-of-work captcha) with the demo
  data; `.base_url`, `.admin_login`, `.demo_password`, `.captcha_code(id)`,
  `.create_professional(...)`, `.cli(...)`.
- mail, through the portal that sends it: `since = portal.mark()`, the action, then
  `portal.receive(to, subject, since)` (the message as received by the SMTP server).
- `open_page(portal, javascript=True, name=...)`: a fresh browser context (one person,
  one browser) and its page; closed after the test, screenshotted when the test failed.
- `shots(page, "step")`: a full-page PNG under tests/e2e/artifacts/<test>/.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.support import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    MailServer,
    Portal,
    Screenshots,
    start_portal,
)

# Auto-waiting assertions: generous enough for a loaded CI machine, never a sleep.
expect.set_options(timeout=10_000)
ACTION_TIMEOUT_MS = 15_000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# -- processes ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mail_server() -> Iterator[MailServer]:
    server = MailServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def portal_root() -> Iterator[Path]:
    # Not pytest's tmp_path_factory: it prunes old /tmp/pytest-of-<user>/pytest-N folders,
    # so another pytest run on the same machine could delete a live portal's database.
    with tempfile.TemporaryDirectory(prefix="enrs-e2e-") as root:
        yield Path(root)


def _served(name: str, root: Path, mail_server: MailServer, **settings: str) -> Iterator[Portal]:
    portal = start_portal(name, root, mail_server, **settings)
    try:
        yield portal
    finally:
        portal.stop()


@pytest.fixture(scope="session")
def portal(portal_root, mail_server) -> Iterator[Portal]:
    """The portal with the image captcha (the default), demo data loaded."""
    yield from _served("image", portal_root, mail_server, captcha="image")


@pytest.fixture(scope="session")
def pow_portal(portal_root, mail_server) -> Iterator[Portal]:
    """The portal with the ALTCHA proof of work. Its difficulty is the default one: the
    server reads it from Flask config (CAPTCHA_POW_MAX_NUMBER), which no ENRS_* variable
    sets, so a separate process cannot lower it."""
    yield from _served("pow", portal_root, mail_server, captcha="pow")


# -- browser -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); "
                    "the suite never downloads a browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(request) -> Screenshots:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    return Screenshots(ARTIFACTS / name)


class PageErrors:
    """JavaScript exceptions and Content-Security-Policy refusals seen by a page: a form
    that "works" while its script crashes or is blocked is a failure."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def watch(self, page: Page, name: str) -> None:
        page.on("pageerror", lambda exc: self.seen.append(f"{name}: uncaught {exc}"))
        page.on("console", lambda msg: self._console(name, msg))

    def _console(self, name: str, msg) -> None:
        text = msg.text
        # "Failed to load resource: … 401/422" is the browser noting a status the portal
        # chose on purpose (wrong password, refused form): not an error of the page.
        if msg.type == "error" and not text.startswith("Failed to load resource"):
            self.seen.append(f"{name}: console: {text}")


@pytest.fixture
def open_page(browser: Browser, shots: Screenshots, request) -> Iterator[Callable[..., Page]]:
    opened: list[tuple[str, Page]] = []
    errors = PageErrors()

    def open_page(portal: Portal, *, javascript: bool = True, name: str = "page") -> Page:
        context = browser.new_context(
            base_url=portal.base_url, locale="fr-FR", java_script_enabled=javascript,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        page = context.new_page()
        errors.watch(page, name)
        opened.append((name, page))
        return page

    yield open_page

    failed = any(getattr(request.node, f"rep_{when}", None) is not None
                 and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
    for name, page in opened:
        if failed and not page.is_closed():
            try:
                shots(page, f"failure-{name}")
            except Exception:  # a crashed page must not hide the test's own failure
                pass
        page.context.close()
    if not failed:
        assert not errors.seen, "errors in the pages:\n" + "\n".join(errors.seen)
