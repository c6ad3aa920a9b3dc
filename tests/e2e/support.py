"""Real processes for the browser suite: the portal served by `enrs serve`, an SMTP server
on loopback that tests can wait on, and screenshots. No Flask test client here: the
browser talks HTTP to a separate process, exactly as a person's browser would."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from tests.conftest import Mailbox, SMTPServer, free_port
from tests.processes import end_process, log_tail

E2E_DIR = Path(__file__).resolve().parent
ARTIFACTS = E2E_DIR / "artifacts"
REPO = E2E_DIR.parent.parent

# Debian's Chromium, driven through Playwright's `executable_path`: never a browser download.
CHROMIUM = os.environ.get("ENRS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

SECRET_KEY = "e2e-secret-key-" + "k" * 40
# `enrs demo` prints logins, not addresses: the regional admin's mailbox (portal/demo.py).
DEMO_REGIONAL_ADMIN_EMAIL = "admin.centre@esante-demo.fr"
READY_TIMEOUT = 30.0
MAIL_TIMEOUT = 10.0

LINK_RE = re.compile(r"https?://\S+")


# -- mail -------------------------------------------------------------------------------


@dataclass
class WaitingMailbox(Mailbox):
    """The SMTP server's mailbox, which a test can wait on: mail is delivered after the
    HTTP response, by the portal's request teardown, so it may arrive a moment later."""

    arrived: threading.Condition = field(init=False)
    # When each message of `messages` was accepted (time.time()), in the same order.
    accepted_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler API
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.arrived:
            self.messages.append(message)
            self.accepted_at.append(time.time())
            self.arrived.notify_all()
        return "250 Message accepted for delivery"

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
            self.accepted_at.clear()

    def mark(self) -> int:
        """A position to wait from: take it before the action that sends the mail."""
        with self.lock:
            return len(self.messages)

    def wait_for(self, to: str, subject: str, since: int = 0, timeout: float = MAIL_TIMEOUT,
                 portal: "Portal | None" = None) -> EmailMessage:
        """The first message to `to` whose subject contains `subject`, received after
        the mark `since`; fails after `timeout` seconds, saying what `portal`'s outbox
        holds for `to` (queued but never sent, or not even queued)."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for message in self.messages[since:]:
                    if message["To"] == to and subject in str(message["Subject"]):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(str(m["To"]), str(m["Subject"])) for m in self.messages[since:]]
                    outbox = f"; the portal's outbox for {to}: {portal.outbox(to)}" if portal else ""
                    raise AssertionError(
                        f"no email {subject!r} for {to} within {timeout:.0f} s; received: {seen}{outbox}")
                self.arrived.wait(left)


class MailServer(SMTPServer):
    """tests/conftest.py's aiosmtpd server on a free loopback port, with a waiting mailbox."""

    def __init__(self) -> None:
        super().__init__()
        self.mailbox = WaitingMailbox()


def text_of(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def html_of(message: EmailMessage) -> str | None:
    body = message.get_body(preferencelist=("html",))
    return body.get_content() if body is not None else None


def link_in(message: EmailMessage, path_part: str) -> str:
    for link in LINK_RE.findall(text_of(message)):
        if path_part in link:
            return link
    raise AssertionError(f"no link containing {path_part!r} in {message['Subject']!r}")


def login_code_in(message: EmailMessage) -> str:
    match = re.search(r"Votre code d'authentification unique est : (\d{6})\b", text_of(message))
    assert match, f"no 6-digit code in {message['Subject']!r}"
    return match.group(1)


# -- the portal process ---------------------------------------------------------------------


def _enrs_command() -> list[str]:
    script = Path(sys.executable).with_name("enrs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "portal.cli"]


@dataclass
class Portal:
    """One portal served by `enrs serve` in a process of its own, on SQLite."""

    name: str
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen | None = None
    inbox: WaitingMailbox | None = None  # where its mail arrives
    ready_url: str | None = None  # where the process itself answers, when a proxy is in front
    admin_login: str = ""  # the demo regional admin, as `enrs demo` prints it
    admin_email: str = DEMO_REGIONAL_ADMIN_EMAIL
    demo_password: str = ""
    _app: object | None = None

    @property
    def base_url(self) -> str:
        return self.env["ENRS_BASE_URL"]

    @property
    def captcha(self) -> str:
        return self.env.get("ENRS_CAPTCHA", "image")

    def process_env(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("ENRS_")}
        return {**inherited, **self.env, "PYTHONUNBUFFERED": "1"}

    def cli(self, *args: str) -> str:
        """Run an `enrs …` command against this portal's instance; its stdout."""
        result = subprocess.run(
            [*_enrs_command(), *args], env=self.process_env(), cwd=REPO,
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(f"enrs {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        self.cli("db", "upgrade")
        demo = self.cli("demo")
        # `enrs demo` prints the password and each account's login: read them as a person would.
        password = re.search(r"mot de passe : (\S+)\)", demo)
        regional = re.search(r"administrateur régional\s+(\S+)", demo)
        assert password and regional, f"unexpected `enrs demo` output:\n{demo}"
        self.demo_password, self.admin_login = password.group(1), regional.group(1)

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [*_enrs_command(), "serve", "--port", str(self.port)],
            env=self.process_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own descriptor
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"`enrs serve` exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url or self.base_url + "/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last_error = exc
            try:  # a bounded wait that also notices the process dying
                self.process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        self.stop()
        raise AssertionError(f"portal not ready after {READY_TIMEOUT:.0f} s ({last_error}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        if self.process is None:
            return
        end_process(self.process)
        self.process = None
        if self._app is not None:
            self._app.extensions["enrs.db"]["engine"].dispose()
            self._app = None

    # -- what a person would read on screen, computed the way the server does ------------

    def app(self):
        """A Flask app in the test process with the same ENRS_* settings (same SECRET_KEY),
        to derive what the server derives (the captcha's code)."""
        if self._app is None:
            from portal.app import create_app

            self._app = create_app(dict(self.env))
        return self._app

    def mark(self) -> int:
        """Take it before the action that sends the mail to wait for (see `receive`)."""
        return self.inbox.mark()

    def receive(self, to: str, subject: str, since: int, timeout: float = MAIL_TIMEOUT) -> EmailMessage:
        """The email `subject` sent to `to` after the mark `since`, as it arrived by SMTP."""
        return self.inbox.wait_for(to, subject, since=since, timeout=timeout, portal=self)

    def outbox(self, recipient: str) -> list[dict]:
        """The portal's outbox rows for `recipient`, to explain a missing email."""
        import sqlalchemy as sa

        from portal.db import db
        from portal.mail import OutboxMessage

        with self.app().app_context():
            rows = db.session.scalars(sa.select(OutboxMessage).where(OutboxMessage.recipient == recipient)
                                      .order_by(OutboxMessage.id)).all()
            return [{"subject": r.subject, "status": r.status, "attempts": r.attempts, "last_error": r.last_error}
                    for r in rows]

    def captcha_code(self, challenge_id: str) -> str:
        """The characters the image of `challenge_id` shows."""
        from onboarding.captcha import code_for

        with self.app().app_context():
            return code_for(challenge_id)

    def create_professional(self, *, email: str, password: str, first_name: str, last_name: str,
                            finess: str = "280071135") -> str:
        """An active professional through `enrs user create`; returns the login identifier."""
        return self.cli("user", "create", "--email", email, "--password", password, "--first-name", first_name,
                        "--last-name", last_name, "--finess", finess).strip().splitlines()[-1]

    def grant_role(self, email: str, role: str, finess: str) -> None:
        """A role for one establishment, as an accepted access request leaves it. No command
        grants a role outside a request: written to the served portal's database, as
        tests/test_ror_app.py's demo data and tests/interop/conftest.py do."""
        import sqlalchemy as sa

        from idp.models import User, UserRole
        from portal.clock import now
        from portal.db import db

        with self.app().app_context():
            user = db.session.scalar(sa.select(User).where(User.email == email))
            assert user is not None, f"no account for {email}"
            db.session.add(UserRole(user_id=user.id, role=role, finess=finess, granted_at=now()))
            db.session.commit()


def start_portal(name: str, root: Path, mail: MailServer, *, port: int | None = None, public_url: str | None = None,
                 extra_env: dict[str, str] | None = None, **settings: str) -> Portal:
    """`settings` become ENRS_<NAME> variables; `extra_env` is given as is (ROR_APP_BASE_URL
    for `enrs demo`, the ENRS_PSC_* of a sandbox); `port` when another process must know
    the portal's address before it starts (a PSC sandbox's redirect URI); `public_url` when
    a proxy in front serves it there (ENRS_BASE_URL), the process listening on `port`."""
    port = port or free_port()
    env = {
        "ENRS_ENV": "development",
        "ENRS_INSTANCE_DIR": str(root / name),
        "ENRS_BASE_URL": public_url or f"http://127.0.0.1:{port}",
        "ENRS_MAIL_URL": mail.url,
        "ENRS_MAIL_FROM": "ne-pas-repondre@esante-e2e.fr",
        "ENRS_SECRET_KEY": SECRET_KEY,
        "ENRS_PORTAL_NAME": "eSanté Centre-Val de Loire",
        **{f"ENRS_{key.upper()}": value for key, value in settings.items()},
        **(extra_env or {}),
    }
    portal = Portal(name=name, env=env, port=port, log_path=ARTIFACTS / f"portal-{name}.log", inbox=mail.mailbox,
                    ready_url=f"http://127.0.0.1:{port}/" if public_url else None)
    portal.start()
    return portal


# -- the demo ROR application (examples/ror_app) ---------------------------------------------


@dataclass
class RorApp:
    """`python -m examples.ror_app` in a process of its own, reading the client configuration
    `enrs demo` wrote into the portal's instance folder (issuer, client id and secret)."""

    base_url: str
    config_file: Path
    instance_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def start(self) -> None:
        # The developer's own ROR_APP_* must not point this one at another portal.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROR_APP_", "ENRS_"))}
        env.update({"ROR_APP_BASE_URL": self.base_url, "ROR_APP_CONFIG_FILE": str(self.config_file),
                    "ROR_APP_INSTANCE_DIR": str(self.instance_dir),
                    "ROR_APP_SECRET_KEY": "e2e-ror-key-" + "r" * 32, "PYTHONUNBUFFERED": "1"})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "examples.ror_app", "--port", str(self.port)],
                                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the ROR app exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the ROR app is not ready after {READY_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        end_process(self.process)
        self.process = None


# -- screenshots ----------------------------------------------------------------------------


class Screenshots:
    """Full-page PNGs of each step, numbered, under tests/e2e/artifacts/<test>/; each
    step's page is also audited when an `audit(page, step)` is given (accessibility.py)."""

    def __init__(self, folder: Path, audit=None) -> None:
        self.folder = folder
        self.audit = audit
        self.count = 0
        if folder.exists():
            for old in folder.glob("*.png"):
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, page, step: str, *, audit: bool = True) -> Path:
        self.count += 1
        slug = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")
        path = self.folder / f"{self.count:02d}-{slug}.png"
        page.screenshot(path=str(path), full_page=True)
        if audit and self.audit is not None:
            self.audit(page, step)
        return path
