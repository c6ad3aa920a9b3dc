"""The outbox: mails leave with their transaction, survive an SMTP outage, are sent once."""
from __future__ import annotations

import threading
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa

from tests.conftest import body_text


def _queue(app, recipient="nathalie.petit@esante-test.fr", text="Votre demande a été prise en compte.",
           by_a_request=False):
    """Commit one message; `by_a_request`: as a view does, so the process's delivery thread
    sends it (otherwise the committing code delivers it itself)."""
    from portal.db import db
    from portal.mail import queue_mail

    with app.test_request_context("/") if by_a_request else app.app_context():
        queue_mail(db.session, recipient, "Nous étudions votre demande", "test_message", text=text)
        db.session.commit()


def _outbox(app):
    from portal.db import db
    from portal.mail import OutboxMessage

    with app.app_context():
        return db.session.scalars(sa.select(OutboxMessage).order_by(OutboxMessage.id)).all()


def test_mail_is_delivered_by_smtp_right_after_commit(app, mailbox):
    _queue(app)
    message = mailbox.last("nathalie.petit@esante-test.fr")
    assert message["Subject"] == "Nous étudions votre demande"
    assert message["From"] == "eSanté Test <ne-pas-repondre@esante-test.fr>"
    assert "Votre demande a été prise en compte." in body_text(message)
    html = message.get_body(preferencelist=("html",)).get_content()
    assert "<p>Votre demande a été prise en compte.</p>" in html
    [row] = _outbox(app)
    assert row.status == "sent" and row.attempts == 1 and row.message_id == message["Message-ID"]


def test_rolled_back_transaction_sends_nothing(app, mailbox):
    from portal.db import db
    from portal.mail import queue_mail

    with app.app_context():
        queue_mail(db.session, "a.b@esante-test.fr", "Sujet", "test_message", text="x")
        db.session.rollback()
        db.session.commit()
    assert mailbox.messages == []
    assert _outbox(app) == []


def test_no_mail_is_lost_when_smtp_is_down_then_delivered_later(app, smtp_server, mailbox, clock):
    from portal.mail import deliver

    smtp_server.stop()
    _queue(app, text="Message pendant la panne")
    [row] = _outbox(app)
    assert row.status == "pending" and row.attempts == 1 and row.last_error

    smtp_server.start()
    with app.app_context():
        assert deliver().sent == 0  # not due yet: backoff
        clock.advance(seconds=31)
        report = deliver()
    assert report.sent == 1
    assert "Message pendant la panne" in body_text(mailbox.last())
    [row] = _outbox(app)
    assert row.status == "sent" and row.attempts == 2


def test_a_burst_of_emails_goes_out_on_one_smtp_connection_closed_once_idle(app, mailbox, monkeypatch):
    """Monday morning's login codes: the delivery thread keeps its connection to the relay
    between messages (one connect, EHLO and QUIT for the burst, on both sides), and says
    QUIT once nothing came for SMTP_KEEP_SECONDS."""
    from portal import mail

    monkeypatch.setattr(mail, "SMTP_KEEP_SECONDS", 2)
    thread = app.extensions["enrs.mail.thread"]
    for n in range(3):
        _queue(app, recipient=f"pro{n}@esante-test.fr", text=f"Message {n}", by_a_request=True)
        assert thread.drain(30)
    assert len(mailbox.messages) == 3
    [peer] = set(mailbox.peers)
    assert peer not in mailbox.quits, "kept open between the messages"
    assert mailbox.wait_for_quit(peer), "closed with QUIT once idle"
    _queue(app, recipient="pro3@esante-test.fr", by_a_request=True)
    assert thread.drain(30)
    assert mailbox.peers[-1] != peer, "a new connection after the idle close"
    assert [m.status for m in _outbox(app)] == ["sent"] * 4


def test_a_kept_connection_the_relay_dropped_is_replaced_and_the_message_goes_at_once(app, smtp_server, mailbox):
    """The relay restarted (or timed out our idle connection) between two messages: the
    NOOP that checks a kept connection fails, before any message went out on it, so the
    next one goes on a new connection right away, not minutes later (a login code would
    be too late)."""
    thread = app.extensions["enrs.mail.thread"]
    _queue(app, recipient="first@esante-test.fr", by_a_request=True)
    assert thread.drain(30) and thread.transport.is_open()
    [first_peer] = mailbox.peers
    smtp_server.stop()
    smtp_server.start()
    _queue(app, recipient="second@esante-test.fr", by_a_request=True)
    assert thread.drain(30)
    assert len(mailbox.to("second@esante-test.fr")) == 1 and mailbox.peers[-1] != first_peer
    assert [(m.recipient, m.status, m.attempts) for m in _outbox(app)] == [
        ("first@esante-test.fr", "sent", 1), ("second@esante-test.fr", "sent", 1)]


def test_a_relay_shutting_down_with_421_gets_the_message_on_a_new_connection(app, mailbox):
    thread = app.extensions["enrs.mail.thread"]
    _queue(app, recipient="first@esante-test.fr", by_a_request=True)
    assert thread.drain(30)
    mailbox.noop_reply = "421 4.3.2 Service shutting down"
    _queue(app, recipient="second@esante-test.fr", by_a_request=True)
    assert thread.drain(30)
    assert [(m.status, m.attempts) for m in _outbox(app)] == [("sent", 1), ("sent", 1)]
    assert len(mailbox.to("second@esante-test.fr")) == 1 and len(set(mailbox.peers)) == 2


def test_a_message_the_relay_may_have_accepted_is_not_sent_again_at_once(app, mailbox, monkeypatch):
    """No answer after the final dot: the relay may have taken the message. It is not
    resent on a new connection there and then (a second copy for sure if it had), but
    retried after the usual delay, with the same Message-ID; the next message starts on a
    new connection."""
    from portal import mail

    monkeypatch.setattr(mail, "SMTP_TIMEOUT_SECONDS", 0.3)
    thread = app.extensions["enrs.mail.thread"]
    _queue(app, recipient="first@esante-test.fr", by_a_request=True)
    assert thread.drain(30) and thread.transport.is_open()
    mailbox.data_reply_delay = 1.0
    _queue(app, recipient="slow@esante-test.fr", by_a_request=True)
    assert thread.drain(30)
    first, slow = _outbox(app)
    assert (slow.status, slow.attempts) == ("pending", 1) and "timed out" in slow.last_error
    assert len(mailbox.to("slow@esante-test.fr")) == 1 and not thread.transport.is_open()


def test_backoff_grows_and_is_capped():
    from portal.mail import backoff

    assert [backoff(n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert backoff(50).total_seconds() == 3600


def test_a_message_is_sent_once_even_with_concurrent_deliverers(app, smtp_server, mailbox, clock):
    from portal.mail import deliver

    smtp_server.stop()
    for i in range(5):
        _queue(app, recipient=f"user{i}@esante-test.fr")
    smtp_server.start()
    clock.advance(seconds=60)
    reports = []

    def run():
        with app.app_context():
            reports.append(deliver())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.sent for r in reports) == 5
    assert sorted(m["To"] for m in mailbox.messages) == [f"user{i}@esante-test.fr" for i in range(5)]


def test_stale_claim_of_a_crashed_sender_is_taken_over(app, mailbox, clock):
    from portal.db import db
    from portal.mail import OutboxMessage, deliver

    with app.app_context():
        from portal.mail import queue_mail

        queue_mail(db.session, "x.y@esante-test.fr", "Sujet", "test_message", text="x")
        db.session.info.pop("enrs_outbox")  # as if the process died right after commit
        db.session.commit()
        db.session.execute(sa.update(OutboxMessage).values(status="sending", claimed_until=clock() + __import__("datetime").timedelta(seconds=120)))
        db.session.commit()
        assert deliver().sent == 0
        clock.advance(seconds=121)
        assert deliver().sent == 1
    assert len(mailbox.to("x.y@esante-test.fr")) == 1


def test_header_injection_in_recipient_is_refused(app):
    from portal.db import db
    from portal.mail import queue_mail

    with app.app_context(), pytest.raises(ValueError):
        queue_mail(db.session, "a@b.fr\r\nBcc: victim@x.fr", "Sujet", "test_message", text="x")


def test_development_writes_one_eml_file_per_message(app_env, tmp_path, clock):
    from portal.app import create_app

    folder = tmp_path / "mails"
    app = create_app({**app_env, "ENRS_MAIL_URL": f"file://{folder}"}, clock=clock)
    _queue(app, recipient="dev@esante-test.fr", text="Bonjour le développeur")
    [path] = list(folder.glob("*.eml"))
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"] == "dev@esante-test.fr"
    assert "Bonjour le développeur" in body_text(message)
    assert not list(folder.glob(".tmp-*"))


def test_enrs_mail_deliver_retries_the_outbox(app_env, smtp_server, mailbox, clock, monkeypatch):
    from click.testing import CliRunner

    import portal.cli
    from portal.app import create_app

    smtp_server.stop()
    app = create_app(app_env, clock=clock)
    _queue(app, recipient="cli@esante-test.fr")
    smtp_server.start()
    clock.advance(seconds=3600)
    monkeypatch.setattr(portal.cli, "_app", app)
    result = CliRunner().invoke(portal.cli.main, ["mail", "deliver"])
    assert result.exit_code == 0, result.output
    assert "1 envoyé(s), 0 en échec" in result.output
    assert mailbox.to("cli@esante-test.fr")


def test_a_message_sent_while_the_database_blinks_is_recorded_once_it_is_back(app, mailbox, monkeypatch):
    """The SMTP server took the message, then the database went away for a moment:
    recording it as sent is retried, so it will not go out a second time."""
    from sqlalchemy.orm import Session

    import portal.mail as mail
    from portal.db import db
    from portal.mail import OutboxMessage, deliver, queue_mail

    with app.app_context():
        queue_mail(db.session, "blink@esante-test.fr", "Essai", "test_message", portal_name="Test")
        db.session.info.pop("enrs_outbox")
        db.session.commit()
        original = Session.commit
        failures = {"left": 2}

        def flaky_commit(self):
            if failures["left"] and self.info.get("marking"):
                failures["left"] -= 1
                raise sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
            return original(self)

        real_mark = mail._mark_sent

        def marking(session, message):
            session.info["marking"] = True
            try:
                real_mark(session, message)
            finally:
                session.info.pop("marking", None)

        monkeypatch.setattr(Session, "commit", flaky_commit)
        monkeypatch.setattr(mail, "_mark_sent", marking)
        monkeypatch.setattr(mail.time, "sleep", lambda seconds: None)
        assert deliver().sent == 1
        monkeypatch.setattr(Session, "commit", original)
        assert failures["left"] == 0
        status = db.session.scalar(sa.select(OutboxMessage.status).where(
            OutboxMessage.recipient == "blink@esante-test.fr"))
        assert status == "sent"
    assert len(mailbox.to("blink@esante-test.fr")) == 1


class _StoppingWorker:
    """What gunicorn hands its worker_exit hook: the worker with its app, the arbiter's log."""

    def __init__(self, app) -> None:
        self.wsgi, self.pid, self.warnings = app, 4242, []
        self.log = self

    def warning(self, message, *args) -> None:
        self.warnings.append(message % args)


@pytest.fixture()
def gunicorn_conf(monkeypatch, tmp_path):
    # Importing the settings would otherwise point this process's metrics at a new folder.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    import portal.gunicorn_conf

    return portal.gunicorn_conf


def test_a_stopping_gunicorn_worker_lets_the_delivery_in_hand_finish_and_claims_no_more(
        app, gunicorn_conf, monkeypatch, mailbox):
    """SIGTERM or max_requests recycling: the email being handed over is finished and
    recorded rather than cut off (which would send it again once its claim expired);
    what is still queued stays in the outbox for `enrs worker`."""
    from portal.mail import deliver

    thread = app.extensions["enrs.mail.thread"]
    started, go, done = threading.Event(), threading.Event(), []
    thread.submit_job(lambda: (started.set(), go.wait(30), done.append("in hand")))
    assert started.wait(30)
    worker = _StoppingWorker(app)

    monkeypatch.setattr(gunicorn_conf, "MAIL_DRAIN_SECONDS", 0)
    gunicorn_conf.worker_exit(worker, worker)
    assert worker.warnings == ["worker 4242 stopped with mail still being delivered: the outbox keeps it"]
    assert done == []

    from portal.db import db
    from portal.mail import queue_mail

    with app.test_request_context("/"):  # committed by a request as the worker stops
        queue_mail(db.session, "nathalie.petit@esante-test.fr", "Code", "test_message", text="123456")
        db.session.commit()
    # handed to the delivery thread, which claims it no more
    go.set()
    monkeypatch.setattr(gunicorn_conf, "MAIL_DRAIN_SECONDS", 30)
    gunicorn_conf.worker_exit(worker, worker)
    assert done == ["in hand"] and len(worker.warnings) == 1
    thread.submit_job(lambda: done.append("queued after the stop"))
    assert thread.drain(30)
    assert done == ["in hand"], "nothing new runs once stopping"
    assert [m.status for m in _outbox(app)] == ["pending"] and mailbox.messages == []
    with app.app_context():
        assert deliver().sent == 1  # `enrs worker`'s round
    assert len(mailbox.messages) == 1


def test_a_stopping_worker_says_quit_to_the_relay(app, gunicorn_conf, mailbox):
    _queue(app, by_a_request=True)
    thread = app.extensions["enrs.mail.thread"]
    assert thread.drain(30)
    [peer] = mailbox.peers
    worker = _StoppingWorker(app)
    gunicorn_conf.worker_exit(worker, worker)
    assert peer in mailbox.quits and not thread.transport.is_open() and worker.warnings == []


def test_enrs_serve_prod_runs_gunicorn_with_every_setting_and_hook_of_its_config(gunicorn_conf):
    from portal.cli import gunicorn_application

    cfg = gunicorn_application("127.0.0.1", 8123, 3, 5).cfg
    assert (cfg.bind, cfg.workers, cfg.threads) == (["127.0.0.1:8123"], 3, 5)
    assert cfg.settings["worker_exit"].get() is gunicorn_conf.worker_exit
    assert cfg.settings["child_exit"].get() is gunicorn_conf.child_exit
    for name in ("worker_class", "timeout", "graceful_timeout", "keepalive", "max_requests", "errorlog"):
        assert cfg.settings[name].get() == getattr(gunicorn_conf, name), name
