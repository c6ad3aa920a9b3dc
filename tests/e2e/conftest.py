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
- `shots(page, "step")`: a full-page PNG under tests/e2e/artifacts/<test>/, and the
  page's accessibility audit (`audit(page, "step")`, accessibility.py): axe-core's WCAG
  2.1 A/AA rules, every result in tests/e2e/artifacts/axe-report.json, a serious or
  critical violation (or, on a phone, a page that scrolls sideways) fails the test.
- `device`: "desktop" (1280×900) unless a test parametrizes it with "phone" (390×844).
- `https_portal`: the portal behind nginx with docs/deploy.md's block, over HTTPS.
- `sso`: a portal with the demo ROR app served beside it (registered by `enrs demo` at its
  real loopback address) and the Pro Santé Connect sandbox configured (ENRS_PSC_*).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import free_port, port_outside_ephemeral_range
from tests.e2e.accessibility import Auditor, AxeReport, install_axe
from tests.e2e.support import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    MailServer,
    Portal,
    RorApp,
    Screenshots,
    start_portal,
)
from tests.proxy import Nginx
from tests.psc_sandbox.sandbox import Sandbox, running_sandbox

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


@pytest.fixture(scope="session")
def https_portal(portal_root, mail_server) -> Iterator[Portal]:
    """The portal behind Debian's nginx configured with docs/deploy.md's block
    (tests/proxy.py), at https://127.0.0.1:<port>: Secure `__Host-` cookies, HSTS, forms
    checked against their origin, X-Forwarded-For and -Proto from one trusted proxy."""
    proxy_port, port = port_outside_ephemeral_range(), free_port()
    portal = start_portal("https", portal_root, mail_server, port=port, public_url=f"https://127.0.0.1:{proxy_port}",
                          captcha="image", trusted_proxies="1")
    proxy = Nginx(portal_root / "nginx", [port], port=proxy_port)
    try:
        proxy.start()
        yield portal
    finally:
        proxy.stop(keep_logs_in=ARTIFACTS / "nginx")
        portal.stop()


@dataclass
class SSO:
    """The portal, the demo ROR app it opens from the "Mes applications" tile, and the
    Pro Santé Connect sandbox it trusts; every address the loopback one the browser uses."""

    portal: Portal
    ror: RorApp
    psc: Sandbox


@pytest.fixture(scope="session")
def sso(portal_root, mail_server) -> Iterator[SSO]:
    port, ror_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{port}"
    with running_sandbox(redirect_uri=f"{base_url}/psc/callback",
                         post_logout_uri=f"{base_url}/psc/logged-out") as psc:
        # `enrs demo` registers "ror-demo" with ROR_APP_BASE_URL's callback, initiate-login
        # and backchannel-logout addresses, and writes its configuration for the app.
        portal = start_portal("sso", portal_root, mail_server, port=port, captcha="image",
                              extra_env={"ROR_APP_BASE_URL": f"http://127.0.0.1:{ror_port}", **psc.portal_env()})
        ror = RorApp(base_url=f"http://127.0.0.1:{ror_port}",
                     config_file=portal_root / "sso" / "ror_app_client.json",
                     instance_dir=portal_root / "ror", log_path=ARTIFACTS / "ror-app.log")
        try:
            ror.start()
            yield SSO(portal, ror, psc)
        finally:
            ror.stop()
            portal.stop()


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


# -- accessibility audit -------------------------------------------------------------------


@pytest.fixture(scope="session")
def axe_report() -> Iterator[AxeReport]:
    install_axe()
    report = AxeReport()
    yield report
    report.write()


@pytest.fixture
def audit(axe_report, request) -> Auditor:
    """`audit(page, "step")`: axe on the page as shown; `shots` calls it at every step."""
    return Auditor(axe_report, request.node.nodeid.split("::", 1)[-1])


@pytest.fixture
def shots(request, audit) -> Screenshots:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    return Screenshots(ARTIFACTS / name, audit=audit)


DEVICES = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    # A phone (390×844 CSS pixels, as an iPhone 13/14): touch, mobile meta viewport.
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
              "device_scale_factor": 2},
}


@pytest.fixture
def device() -> str:
    """Overridden by `@pytest.mark.parametrize("device", ["desktop", "phone"])`."""
    return "desktop"


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
def open_page(browser: Browser, shots: Screenshots, audit: Auditor, device: str,
              request) -> Iterator[Callable[..., Page]]:
    opened: list[tuple[str, Page]] = []
    errors = PageErrors()

    def open_page(portal: Portal, *, javascript: bool = True, name: str = "page") -> Page:
        context = browser.new_context(
            base_url=portal.base_url, locale="fr-FR", java_script_enabled=javascript, **DEVICES[device],
            # The proxy's certificate is the test's own (tests/proxy.py).
            ignore_https_errors=portal.base_url.startswith("https://"),
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        page = context.new_page()
        if not javascript:
            audit.without_javascript(page)
        errors.watch(page, name)
        opened.append((name, page))
        return page

    yield open_page

    failed = any(getattr(request.node, f"rep_{when}", None) is not None
                 and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
    for name, page in opened:
        if failed and not page.is_closed():
            try:
                shots(page, f"failure-{name}", audit=False)
            except Exception:  # a crashed page must not hide the test's own failure
                pass
        page.context.close()
    if not failed:
        assert not errors.seen, "errors in the pages:\n" + "\n".join(errors.seen)
        assert not audit.problems, ("accessibility (tests/e2e/artifacts/axe-report.json):\n"
                                    + "\n".join(audit.problems))
