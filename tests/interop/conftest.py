"""Interop suite fixtures: the portal served by `enrs serve` (SQLite in a temporary
folder, a loopback SMTP server), panva's openid-client as the relying party, and a
browser played by `requests`. The portal process and its mail come from the browser
suite's helpers (tests/e2e/support.py, which needs no browser); nothing here uses
tests/conftest.py's in-process `app` fixture.

- `portal`: served, with `enrs demo`'s data, Nathalie (a professional with the ROR role
  and an RPPS number) and the `APPLICATIONS` registered with `enrs client add --json`;
  `portal.applications[name]` carries each one's secret.
- `rp`: the openid-client driver with each application discovered from the issuer.
- `browser`: Nathalie logged in once for the session; `new_browser()`: a fresh browser.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import free_port
from tests.e2e.support import SECRET_KEY, MailServer, Portal
from tests.interop.support import (
    APPLICATIONS,
    ARTIFACTS,
    CALLBACK,
    INTEROP,
    LOGGED_OUT,
    NATHALIE,
    PASSWORD,
    REPO,
    ROR_ROLE,
    Application,
    Browser,
    Person,
    RelyingParty,
    discover,
)


@pytest.fixture(scope="session")
def mail_server() -> Iterator[MailServer]:
    server = MailServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def portal(mail_server) -> Iterator[Portal]:
    # Not tmp_path_factory: it prunes old pytest-N folders another run may still use.
    with tempfile.TemporaryDirectory(prefix="enrs-interop-") as root:
        port = free_port()
        env = {
            "ENRS_ENV": "development",
            "ENRS_INSTANCE_DIR": str(Path(root) / "instance"),
            "ENRS_BASE_URL": f"http://127.0.0.1:{port}",
            "ENRS_MAIL_URL": mail_server.url,
            "ENRS_MAIL_FROM": "ne-pas-repondre@esante-interop.fr",
            "ENRS_SECRET_KEY": SECRET_KEY,
            "ENRS_PORTAL_NAME": "eSanté Centre-Val de Loire",
        }
        served = Portal(name="interop", env=env, port=port, log_path=ARTIFACTS / "portal.log",
                        inbox=mail_server.mailbox)
        served.start()  # enrs db upgrade, enrs demo, enrs serve
        try:
            served.applications = {name: _register(served, app) for name, app in APPLICATIONS.items()}
            served.create_professional(email=NATHALIE.email, password=PASSWORD, first_name=NATHALIE.first_name,
                                       last_name=NATHALIE.last_name, finess=NATHALIE.finess)
            _grant_ror_role(served, NATHALIE)
            yield served
        finally:
            served.stop()


def _register(portal: Portal, app: Application) -> Application:
    """The operator's command, as a deployment script would run it."""
    args = ["client", "add", "--json", "--client-id", app.client_id, "--name", f"Interop {app.client_id}",
            "--redirect-uri", CALLBACK, "--post-logout-uri", LOGGED_OUT, "--scope", app.scopes]
    if app.public:
        args.append("--public")
    else:
        args += ["--auth-method", app.auth, "--alg", app.alg]
    if app.role:
        args += ["--role", app.role]
    answer = json.loads(portal.cli(*args).strip().splitlines()[-1])
    assert answer["client_id"] == app.client_id and (answer["client_secret"] is None) == app.public, answer
    return Application(**{**app.__dict__, "secret": answer["client_secret"]})


# No command grants a role outside an access request: the role and the RPPS number are
# written to the served portal's database, as tests/test_oidc_provider.py's fixture does.
GRANT_ROLE = """
import sys
import sqlalchemy as sa
from idp.models import User, UserRole
from portal.app import create_app
from portal.clock import now
from portal.db import db

email, role, finess, national_id = sys.argv[1:5]
with create_app().app_context():
    user = db.session.scalar(sa.select(User).where(User.email == email))
    user.national_id, user.national_id_type = national_id, "rpps"
    db.session.add(UserRole(user_id=user.id, role=role, finess=finess, granted_at=now()))
    db.session.commit()
"""


def _grant_ror_role(portal: Portal, person: Person) -> None:
    result = subprocess.run([sys.executable, "-c", GRANT_ROLE, person.email, ROR_ROLE, person.finess,
                             person.national_id], env=portal.process_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"granting the role failed: {result.stderr.strip()}"


@pytest.fixture(scope="session")
def rp(portal) -> Iterator[RelyingParty]:
    node = RelyingParty.node()
    if node is None:
        pytest.fail("node is missing: the interop suite needs Node.js 20 or later")
    if not (INTEROP / "node_modules" / "openid-client").is_dir():
        pytest.fail("tests/interop/node_modules is missing: run `make interop` (it runs `npm ci` there)")
    driver = RelyingParty(node, ARTIFACTS / "rp.log")
    try:
        for name, app in portal.applications.items():
            discover(driver, portal, name, app)
        yield driver
    finally:
        driver.close()


@pytest.fixture(scope="session")
def new_browser(portal) -> Callable[[], Browser]:
    return lambda: Browser(portal, NATHALIE)


@pytest.fixture
def new_person(portal) -> Callable[[str, str], Browser]:
    """Another professional (no role), created with `enrs user create`; their browser."""

    def new_person(first_name: str, last_name: str) -> Browser:
        person = Person(email=f"{first_name}.{last_name}@esante-test.fr".lower(), first_name=first_name,
                        last_name=last_name, national_id="")
        portal.create_professional(email=person.email, password=PASSWORD, first_name=first_name,
                                   last_name=last_name, finess=person.finess)
        return Browser(portal, person)

    return new_person


@pytest.fixture(scope="session")
def browser(new_browser) -> Browser:
    """Nathalie, logged in to the portal once for the session (tests that end or renew
    a session use a browser of their own)."""
    person = new_browser()
    person.log_in()
    assert person.logged_in()
    return person


def pytest_report_header(config):
    node = RelyingParty.node()
    return f"interop: openid-client pinned in tests/interop/package-lock.json; node: {node or 'missing'}"
