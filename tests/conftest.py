"""Shared fixtures: an app per test on SQLite (and PostgreSQL when configured), a real
SMTP server on loopback, and an injectable clock."""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from flask import Flask
from flask.testing import FlaskClient

from portal.db import make_engine, upgrade

PG_URL = os.environ.get("ENRS_TEST_DATABASE_URL")


class ServerLikeClient(FlaskClient):
    """A test client that reads the whole response and closes it as a WSGI server does,
    then waits for the mail the request handed to the delivery thread, so that a test
    can look at the mailbox right after a request."""

    def open(self, *args, **kwargs):
        from portal.mail import drain

        kwargs.setdefault("buffered", True)
        response = super().open(*args, **kwargs)
        drain(self.application)
        return response


Flask.test_client_class = ServerLikeClient
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def pytest_report_header(config):
    left_out = []
    if not PG_URL:
        left_out.append("PostgreSQL (set ENRS_TEST_DATABASE_URL)")
    if not os.environ.get("ENRS_TEST_REDIS_URL"):
        left_out.append("Redis-backed limits (set ENRS_TEST_REDIS_URL)")
    if left_out:
        return "suites left out: " + "; ".join(left_out)
    return "databases: sqlite, postgresql; redis: " + os.environ["ENRS_TEST_REDIS_URL"]


# -- clock ------------------------------------------------------------------------------


class FrozenClock:
    """Time that only moves when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 11, 2, 8, 30, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float = 0, **kwargs: float) -> None:
        self.current += timedelta(seconds=seconds, **kwargs)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


# -- SMTP -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_outside_ephemeral_range() -> int:
    """A free port for a server that starts (or starts again) a while after its port was
    chosen: free_port's come from the ephemeral range, where any outgoing connection of
    the machine may take it as its source port meanwhile (even one aimed at that very
    port while nothing listens yet: TCP's self-connect)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


@dataclass
class Mailbox:
    """What a real SMTP server on loopback received."""

    messages: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The client's (address, port) of each message, and of each connection ended by QUIT.
    peers: list[tuple[str, int]] = field(default_factory=list)
    quits: list[tuple[str, int]] = field(default_factory=list)
    quit_seen: threading.Condition = field(default_factory=threading.Condition)
    # A relay's moods, for the tests that need them: its answer to NOOP ("421 …" when it
    # is shutting down), and how long it takes to answer the message's final dot.
    noop_reply: str = "250 OK"
    data_reply_delay: float = 0.0

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler API
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            self.messages.append(message)
            self.peers.append(session.peer)
        if self.data_reply_delay:
            await asyncio.sleep(self.data_reply_delay)
        return "250 Message accepted for delivery"

    async def handle_NOOP(self, server, session, envelope, arg):  # aiosmtpd handler API
        return self.noop_reply

    async def handle_QUIT(self, server, session, envelope):  # aiosmtpd handler API
        with self.quit_seen:
            self.quits.append(session.peer)
            self.quit_seen.notify_all()
        return "221 Bye"

    def wait_for_quit(self, peer: tuple[str, int], timeout: float = 30) -> bool:
        with self.quit_seen:
            return self.quit_seen.wait_for(lambda: peer in self.quits, timeout)

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]

    def last(self, address: str | None = None) -> EmailMessage:
        found = self.to(address) if address else list(self.messages)
        assert found, f"no email received{' for ' + address if address else ''}"
        return found[-1]

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
            self.peers.clear()
        with self.quit_seen:
            self.quits.clear()
        self.noop_reply, self.data_reply_delay = "250 OK", 0.0


def body_text(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


class SMTPServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.mailbox = Mailbox()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mailbox(smtp_server: SMTPServer) -> Iterator[Mailbox]:
    if smtp_server.controller is None:  # a test stopped it to simulate an outage
        smtp_server.start()
    smtp_server.mailbox.clear()
    yield smtp_server.mailbox


# -- databases --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """One migrated SQLite file, copied for each test (migrating costs more than copying)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A schema of its own in the test database, migrated once; dropped at the end."""
    assert PG_URL, "ENRS_TEST_DATABASE_URL is not set"
    schema = f"enrs_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as connection:  # fails (not skips) when PostgreSQL is unreachable
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.begin() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.dispose()


def _truncate_all(url: str) -> None:
    from portal.models import load_all_models

    tables = ", ".join(f'"{t.name}"' for t in load_all_models().sorted_tables)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "enrs.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        yield url
        _truncate_all(url)


# -- the app ----------------------------------------------------------------------------


@pytest.fixture
def app_env(tmp_path, database_url, smtp_server) -> dict[str, str]:
    """The ENRS_* environment of the app under test; tests may change it before `app`."""
    if smtp_server.controller is None:
        smtp_server.start()
    return {
        "ENRS_ENV": "development",
        "ENRS_INSTANCE_DIR": str(tmp_path / "instance"),
        "ENRS_SECRET_KEY": "test-secret-key-" + "x" * 32,
        "ENRS_BASE_URL": "http://localhost",
        "ENRS_DATABASE_URL": database_url,
        "ENRS_MAIL_URL": smtp_server.url,
        "ENRS_MAIL_FROM": "ne-pas-repondre@esante-test.fr",
        "ENRS_PORTAL_NAME": "eSanté Test",
        "ENRS_STORAGE_URL": f"file://{tmp_path / 'attestations'}",
    }


@pytest.fixture
def app(app_env, clock):
    from portal.app import create_app

    app = create_app(app_env, clock=clock)
    app.config.update(TESTING=True)
    yield app
    app.extensions["enrs.db"]["engine"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def session(app):
    """The ORM session of an app context, for arranging data and checking results."""
    from portal.db import db

    with app.app_context():
        yield db.session


# -- S3 on loopback (moto's server) -----------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Dummy credentials, and no profile or config file of the machine's user."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
