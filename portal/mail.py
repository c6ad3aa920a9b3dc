"""Outgoing email through an outbox table: never lose a message.

`queue_mail()` adds the message to the caller's transaction, so it exists exactly when
the event that causes it was committed. Right after that commit the portal tries to
deliver it; a message that could not be delivered stays in the outbox with a growing
delay and is retried by `enrs mail deliver` (or the worker). Each attempt first claims
the row with a conditional UPDATE, so two processes never send the same message at once.
"""
from __future__ import annotations

import logging
import os
import queue
import smtplib
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from flask import (
    Flask,
    current_app,
    g,
    has_app_context,
    has_request_context,
    render_template,
)
from sqlalchemy import event
from sqlalchemy.orm import Mapped, Session, mapped_column

from portal.clock import now
from portal.config import current_settings
from portal.db import Base, db
from portal.observability import MAILS

log = logging.getLogger("enrs.mail")

CLAIM_SECONDS = 120
MAX_BACKOFF_SECONDS = 3600
SMTP_TIMEOUT_SECONDS = 10
# The delivery thread keeps its SMTP connection this long after its last message: a burst
# of login codes (Monday morning) then costs one connection, not one each (connect, EHLO,
# QUIT on both sides). Far below the 5 minutes a relay waits for a client (RFC 5321).
SMTP_KEEP_SECONDS = 10
SMTP_QUIT_TIMEOUT_SECONDS = 1


class OutboxMessage(Base):
    __tablename__ = "mail_outbox"
    __table_args__ = (sa.Index("ix_mail_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime]
    recipient: Mapped[str] = mapped_column(sa.String(320))
    subject: Mapped[str] = mapped_column(sa.String(255))
    text_body: Mapped[str] = mapped_column(sa.Text)
    html_body: Mapped[str | None] = mapped_column(sa.Text)
    # Fixed when queued, so that a retry after a crash mid-send carries the same id
    # and the receiving side can recognise the duplicate.
    message_id: Mapped[str] = mapped_column(sa.String(255), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")  # pending | sending | sent
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(500))


def queue_mail(
    session: Session,
    recipient: str,
    subject: str,
    template: str,
    **context: object,
) -> OutboxMessage:
    """Render mail/<template>.txt (and .html when it exists) into the outbox of this transaction."""
    settings = current_settings()
    if any(c in recipient + subject for c in "\r\n"):
        raise ValueError("header injection attempt in recipient or subject")
    context.setdefault("portal_name", settings.portal_name)
    context.setdefault("base_url", settings.base_url)
    text_body = render_template(f"mail/{template}.txt", **context)
    html_body = None
    if _template_exists(f"mail/{template}.html"):
        html_body = render_template(f"mail/{template}.html", **context)
    created = now()
    domain = settings.mail_from.rpartition("@")[2] or "enrs.localhost"
    message = OutboxMessage(
        created_at=created,
        recipient=recipient,
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        message_id=make_msgid(domain=domain),
        status="pending",
        attempts=0,
        next_attempt_at=created,
    )
    session.add(message)
    session.info.setdefault("enrs_outbox", []).append(message)
    return message


def _template_exists(name: str) -> bool:
    try:
        current_app.jinja_env.get_template(name)
    except Exception:  # jinja2.TemplateNotFound and friends
        return False
    return True


@event.listens_for(Session, "after_commit")
def _deliver_after_commit(session: Session) -> None:
    queued = session.info.pop("enrs_outbox", None)
    if not queued or not has_app_context():
        return
    ids = [m.id for m in queued if m.id is not None]
    if not ids:
        return
    if has_request_context():
        # The committing session still holds its connection here; delivering now would
        # take a second one, and under a full pool every request would wait for another.
        # The request hands them to the delivery thread when it ends (see init_app).
        g.setdefault("enrs_outbox_ids", []).extend(ids)
    else:
        _deliver_quietly(ids)


def _run_periodic(app: Flask) -> None:
    """Other packages' periodic jobs (e.g. the admins' digest), registered in
    app.extensions["enrs.periodic"], run by the sweep of `enrs serve`."""
    for job in app.extensions.get("enrs.periodic", []):
        run_job(job)


def _deliver_quietly(ids: list[int] | None, stopping: threading.Event | None = None,
                     transport: Transport | None = None) -> None:
    try:
        deliver(ids=ids, stopping=stopping, transport=transport)
    except Exception:  # the outbox keeps them; never fail the user's committed action
        log.exception("immediate delivery failed; messages stay in the outbox")


def run_job(job: Callable[[], object]) -> bool:
    """Run one background job in the current app context; a failure is logged, not raised
    (the next round retries). Returns whether it succeeded."""
    try:
        job()
        return True
    except Exception:
        log.exception("background job %s failed", getattr(job, "__name__", job))
        return False
    finally:
        db.session.rollback()


class DeliveryThread:
    """One background thread per process that delivers what requests committed.

    The user does not wait for the SMTP server, and delivery does not depend on how the
    WSGI server closes responses (Werkzeug's development server skips that when the
    browser drops the connection). If the process dies first, the outbox keeps the
    messages and `enrs mail deliver` sends them.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.queue: queue.Queue[list[int] | Callable[[], object] | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        # `enrs serve` sets it: when idle, the thread also retries what is due in the
        # outbox, so a single-process portal needs no separate worker.
        self.sweep_seconds: float | None = None
        # Held while the thread handles an item; `stop()` waits for it.
        self.busy = threading.Lock()
        self.stopping = threading.Event()
        # Made on the first message, kept open between messages (SMTP_KEEP_SECONDS after
        # the last one, on the monotonic clock).
        self.transport: Transport | None = None
        self.transport_used_at = 0.0

    def start(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="enrs-mail", daemon=True)
                self.thread.start()

    def submit(self, ids: list[int]) -> None:
        self.start()
        self.queue.put(ids)

    def submit_job(self, job: Callable[[], object]) -> None:
        """Other after-commit work of the same kind (e.g. back-channel logout notices),
        run on this thread inside an app context; failures are logged, never raised."""
        self.start()
        self.queue.put(job)

    def _next(self) -> list[int] | Callable[[], object] | None:
        """The next submitted item, or None when the queue stayed empty for
        `sweep_seconds` (time for the sweep). Meanwhile, an SMTP connection left unused
        for SMTP_KEEP_SECONDS is closed."""
        quiet_since = time.monotonic()
        while True:
            current = time.monotonic()
            waits = [] if self.sweep_seconds is None else [quiet_since + self.sweep_seconds - current]
            if self._transport_open():
                waits.append(self.transport_used_at + SMTP_KEEP_SECONDS - current)
            try:
                return self.queue.get(timeout=max(0.0, min(waits)) if waits else None)
            except queue.Empty:
                pass
            current = time.monotonic()
            if self._transport_open() and current - self.transport_used_at >= SMTP_KEEP_SECONDS:
                with self.busy:
                    self._close_transport()
            if self.sweep_seconds is not None and current - quiet_since >= self.sweep_seconds:
                return None

    def _transport_open(self) -> bool:
        return self.transport is not None and self.transport.is_open()

    def _close_transport(self) -> None:
        try:
            if self.transport is not None:
                self.transport.close()
        except Exception:  # the thread must outlive a relay's oddity
            log.exception("closing the SMTP connection failed")

    def _run(self) -> None:
        while True:
            item = self._next()  # outbox ids, a job, or None: the sweep
            try:
                # Once stopping, nothing new is claimed: what is queued is committed work
                # (outbox rows, logout notices) that `enrs worker` or another process sends.
                # Checked under `busy`, so that a stop() that found the thread idle stays true.
                with self.busy:
                    if not self.stopping.is_set():
                        with self.app.app_context():
                            if callable(item):
                                run_job(item)
                            else:
                                if self.transport is None:
                                    self.transport = make_transport(current_settings().mail_url)
                                _deliver_quietly(item, self.stopping, self.transport)
                                self.transport_used_at = time.monotonic()
                            if item is None and not self.stopping.is_set():
                                _run_periodic(self.app)
            finally:
                if item is not None:
                    self.queue.task_done()

    def stop(self, timeout: float) -> bool:
        """For a process about to exit: claim nothing more, and let the message in hand be
        sent and recorded (a process that dies between the relay's 250 and that record
        leaves the message to be sent again). Waits at most `timeout` seconds; whether the
        thread was left idle."""
        self.stopping.set()
        if threading.current_thread() is self.thread:
            return False  # from one of its own jobs: the item in hand is the caller's
        if not self.busy.acquire(timeout=timeout):
            return False
        try:
            self._close_transport()  # QUIT: the relay sees a client leaving, not a lost one
        finally:
            self.busy.release()
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far was handled (tests), at
        most `timeout` seconds; whether it was."""
        done = self.queue.all_tasks_done
        with done:
            return done.wait_for(lambda: not self.queue.unfinished_tasks, timeout)


def init_app(app: Flask) -> None:
    app.extensions["enrs.mail.thread"] = DeliveryThread(app)

    @app.teardown_request
    def _hand_over(_exc: BaseException | None) -> None:
        ids = g.pop("enrs_outbox_ids", None)
        if ids:
            app.extensions["enrs.mail.thread"].submit(ids)


def drain(app: Flask, timeout: float | None = None) -> bool:
    return app.extensions["enrs.mail.thread"].drain(timeout)


def stop_delivery(app: Flask, timeout: float) -> bool:
    return app.extensions["enrs.mail.thread"].stop(timeout)


def sweep_outbox_every(app: Flask, seconds: float) -> None:
    thread: DeliveryThread = app.extensions["enrs.mail.thread"]
    thread.sweep_seconds = seconds
    thread.start()


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, _previous_transaction: object) -> None:
    session.info.pop("enrs_outbox", None)


# -- delivery ---------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0

    def __str__(self) -> str:
        return f"{self.sent} envoyé(s), {self.failed} en échec"


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF_SECONDS, 30 * 2 ** max(0, attempts - 1)))


def deliver(ids: Iterable[int] | None = None, limit: int = 200,
            stopping: threading.Event | None = None, transport: Transport | None = None) -> DeliveryReport:
    """Deliver the given messages, or every message that is due; returns what happened.
    Once `stopping` is set, the messages not yet claimed are left in the outbox. With a
    `transport`, its connection is the caller's to keep or close; without, one is made
    for this call and closed at its end."""
    report = DeliveryReport()
    session = db.new_session()
    try:
        current = now()
        if ids is None:
            ids = session.scalars(
                sa.select(OutboxMessage.id)
                .where(
                    sa.or_(
                        sa.and_(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= current),
                        sa.and_(OutboxMessage.status == "sending", OutboxMessage.claimed_until < current),
                    )
                )
                .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
                .limit(limit)
            ).all()
        own_transport = transport is None
        if transport is None:
            transport = make_transport(current_settings().mail_url)
        try:
            for message_id in ids:
                if stopping is not None and stopping.is_set():
                    break
                message = _claim(session, message_id)
                if message is None:
                    continue
                try:
                    transport.send(build_email(message, current_settings().mail_from))
                except Exception as exc:  # SMTP, network, disk: all retried later
                    _release(session, message, exc)
                    report.failed += 1
                    MAILS.labels("failed").inc()
                else:
                    report.sent += 1
                    MAILS.labels("sent").inc()
                    _mark_sent(session, message)
        finally:
            if own_transport:
                transport.close()
    finally:
        session.close()
    return report


def _claim(session: Session, message_id: int) -> OutboxMessage | None:
    """The message, now claimed by this process, or None when another one holds it or it
    was sent. The conditional UPDATE is the claim; RETURNING reads the row in the same
    round trip."""
    current = now()
    message = session.scalars(
        sa.update(OutboxMessage)
        .where(OutboxMessage.id == message_id)
        .where(
            sa.or_(
                OutboxMessage.status == "pending",
                sa.and_(OutboxMessage.status == "sending", OutboxMessage.claimed_until < current),
            )
        )
        .values(status="sending", claimed_until=current + timedelta(seconds=CLAIM_SECONDS),
                attempts=OutboxMessage.attempts + 1)
        .returning(OutboxMessage),
        execution_options={"synchronize_session": False, "populate_existing": True},
    ).one_or_none()
    session.commit()
    return message


# After the SMTP server accepted a message, recording it as sent is retried this long:
# a database restart of a few seconds must not make the message go out twice.
MARK_SENT_RETRY_SECONDS = 60


def _mark_sent(session: Session, message: OutboxMessage) -> None:
    message_id, sent_at = message.id, now()
    deadline = time.monotonic() + MARK_SENT_RETRY_SECONDS
    delay = 0.5
    while True:
        try:
            session.execute(sa.update(OutboxMessage).where(OutboxMessage.id == message_id)
                            .values(status="sent", sent_at=sent_at, claimed_until=None, last_error=None))
            session.commit()
            return
        except sa.exc.OperationalError:
            session.rollback()
            if time.monotonic() > deadline:
                # Its claim will expire and it will be sent again, with the same Message-ID.
                log.error("mail %s was sent but could not be recorded as sent", message_id)
                raise
            log.warning("mail %s sent; the database is away, recording it again in %.1f s", message_id, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5)


def _release(session: Session, message: OutboxMessage, exc: Exception) -> None:
    log.warning("mail %s to %s not delivered (attempt %s): %s", message.id, message.recipient, message.attempts, exc)
    message.status = "pending"
    message.claimed_until = None
    message.next_attempt_at = now() + backoff(message.attempts)
    message.last_error = f"{type(exc).__name__}: {exc}"[:500]
    session.commit()


# Headers are not folded: Python 3.11 drops the space between two RFC 2047 encoded words
# when it folds a long non-ASCII subject (CPython gh-144156). Our headers stay far below
# the 998-character line limit of RFC 5322.
UNFOLDED = email_policy.SMTP.clone(max_line_length=998)


def build_email(message: OutboxMessage, sender: str) -> EmailMessage:
    email = EmailMessage(policy=UNFOLDED)
    email["From"] = f"{current_settings().portal_name} <{sender}>"
    email["To"] = message.recipient
    email["Subject"] = message.subject
    email["Date"] = format_datetime(message.created_at)
    email["Message-ID"] = message.message_id
    email["Auto-Submitted"] = "auto-generated"
    email.set_content(message.text_body)
    if message.html_body:
        email.add_alternative(message.html_body, subtype="html")
    return email


# -- transports -------------------------------------------------------------------------


class FolderTransport:
    """Development: one RFC 5322 .eml file per message, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def send(self, email: EmailMessage) -> None:
        stamp = now().strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{email['Message-ID'].strip('<>').split('@')[0]}.eml"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(email.as_bytes())
        os.replace(tmp, self.folder / name)

    def close(self) -> None:
        pass

    def is_open(self) -> bool:
        return False


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Loading the system's CA bundle costs tens of milliseconds: do it once per process."""
    return ssl.create_default_context()


class SMTPTransport:
    """A connection opened on the first message and kept until close(): one per delivery
    batch, or kept between batches by the delivery thread."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        self.port = parts.port or {"smtps": 465, "smtp+starttls": 587}.get(parts.scheme, 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self._connection: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self.scheme == "smtps":
            connection: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=SMTP_TIMEOUT_SECONDS, context=_tls_context())
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_SECONDS)
            if self.scheme == "smtp+starttls":
                connection.starttls(context=_tls_context())
        if self.username:
            connection.login(self.username, self.password or "")
        return connection

    def is_open(self) -> bool:
        return self._connection is not None and self._connection.sock is not None

    def send(self, email: EmailMessage) -> None:
        if self._connection is not None and not self._still_there(self._connection):
            self.close(say_quit=False)
        if self._connection is None:
            self._connection = self._connect()
        try:
            self._connection.send_message(email)
        except Exception:
            # Whatever state the session is in (a refused recipient, an error at DATA, no
            # answer after the final dot), the next message starts on a new connection.
            # This one is not sent again here: the relay may have accepted it.
            self.close(say_quit=False)
            raise

    @staticmethod
    def _still_there(connection: smtplib.SMTP) -> bool:
        """Whether a kept connection still answers. A relay that closed it meanwhile (its
        idle timeout, a restart, 421 when shutting down) fails this NOOP, before any
        message went out on it: the message then goes on a new connection at once. A relay
        that does not answer at all is not reconnected to: the timeout is raised."""
        try:
            code, _reply = connection.noop()
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):
                raise
            return False
        except OSError:
            return False
        return code == 250

    def close(self, say_quit: bool = True) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if say_quit and connection.sock is not None:
                connection.sock.settimeout(SMTP_QUIT_TIMEOUT_SECONDS)  # a stopping worker waits little
                connection.quit()
            else:
                connection.close()
        except (smtplib.SMTPException, OSError):
            connection.close()


Transport = FolderTransport | SMTPTransport


def make_transport(url: str) -> Transport:
    if url.startswith("file://"):
        return FolderTransport(Path(unquote(urlsplit(url).path)))
    return SMTPTransport(url)


def outbox_backlog(session: Session) -> tuple[int, datetime | None]:
    """How many messages wait, and since when (for operators and /metrics)."""
    count, oldest = session.execute(
        sa.select(sa.func.count(OutboxMessage.id), sa.func.min(OutboxMessage.created_at))
        .where(OutboxMessage.status != "sent")
    ).one()
    return count, oldest
