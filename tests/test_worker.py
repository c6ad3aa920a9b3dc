"""`enrs worker`: the outbox delivered, the periodic jobs run, the purges forget what is
no longer needed (and only that), and the loop stops cleanly."""
from __future__ import annotations

import threading

import sqlalchemy as sa

from tests.journeys import submit_registration

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"


def test_a_round_delivers_the_outbox(app, mailbox):
    from portal.db import db
    from portal.mail import queue_mail
    from portal.worker import run_once

    with app.app_context():
        queue_mail(db.session, "someone@esante-test.fr", "Essai", "test_message", portal_name="Test")
        db.session.info.pop("enrs_outbox")  # as if the process died right after the commit
        db.session.commit()
    assert mailbox.to("someone@esante-test.fr") == []
    assert run_once(app)["mail_sent"] == 1
    assert len(mailbox.to("someone@esante-test.fr")) == 1
    assert run_once(app)["mail_sent"] == 0, "sent once"


def test_purges_forget_expired_things_and_keep_the_rest(app, mailbox, clock):
    from idp.models import User
    from onboarding.accounts import create_professional
    from onboarding.finess import load_demo_establishments
    from onboarding.models import CaptchaChallenge
    from portal.audit import AuditEntry
    from portal.db import db

    with app.app_context():
        load_demo_establishments(db.session)
        create_professional(db.session, email=EMAIL, password=PASSWORD, first_name="Nathalie", last_name="Dupont",
                            profession="10", finess="280503848")
        db.session.commit()
    client = app.test_client()
    assert submit_registration(app, client, email="oubli@esante-test.fr",
                               email_confirm="oubli@esante-test.fr").status_code == 303
    purge = [job for job in app.extensions["enrs.periodic"] if job.__name__ == "purge_all"][0]
    with app.app_context():
        purge()
        assert db.session.scalar(sa.select(User.id).where(User.email == "oubli@esante-test.fr")) is not None
    clock.advance(days=31)
    with app.app_context():
        from idp import maintenance as idp_maintenance
        from onboarding import maintenance as onboarding_maintenance
        from portal.audit import purge_older_than

        counts = onboarding_maintenance.purge(db.session)
        idp_maintenance.purge(db.session)
        db.session.commit()
        assert counts["unverified_registrations"] == 1 and counts["captcha_challenges"] >= 1
        assert db.session.scalar(sa.select(User.id).where(User.email == "oubli@esante-test.fr")) is None
        assert db.session.scalar(sa.select(User.id).where(User.email == EMAIL)) is not None, "active accounts stay"
        assert db.session.scalar(sa.select(sa.func.count()).select_from(CaptchaChallenge)) == 0
        before = db.session.scalar(sa.select(sa.func.count()).select_from(AuditEntry))
        assert purge_older_than(db.session, 365) == 0
        clock.advance(days=400)
        assert purge_older_than(db.session, 365) == before
        db.session.commit()


def test_the_loop_stops_when_asked(app):
    from portal.worker import run

    stop = threading.Event()
    thread = threading.Thread(target=run, args=(app,), kwargs={"interval": 0.01, "stop": stop})
    thread.start()
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_stop_asked_mid_round_ends_it_after_the_message_in_hand(app, mailbox, monkeypatch):
    """SIGTERM while the round sends: the message in hand is sent and recorded, no other is
    claimed (they stay in the outbox for the next process), no periodic job starts."""
    from portal.db import db
    from portal.mail import OutboxMessage, queue_mail
    from portal.worker import run_once

    with app.app_context():
        for n in range(3):
            queue_mail(db.session, f"personne{n}@esante-test.fr", "Essai", "test_message", portal_name="Test")
        db.session.info.pop("enrs_outbox")  # left to the worker
        db.session.commit()
    stop = threading.Event()
    accept = mailbox.handle_DATA

    async def accept_then_stop(server, session, envelope):  # SIGTERM arrives during the first delivery
        stop.set()
        return await accept(server, session, envelope)

    monkeypatch.setattr(mailbox, "handle_DATA", accept_then_stop)
    jobs_run = []
    monkeypatch.setitem(app.extensions, "enrs.periodic", [lambda: jobs_run.append(1)])

    assert run_once(app, stop) == {"mail_sent": 1, "mail_failed": 0, "job_failures": 0}
    assert len(mailbox.messages) == 1 and jobs_run == []
    with app.app_context():
        statuses = sorted(db.session.scalars(sa.select(OutboxMessage.status)))
    assert statuses == ["pending", "pending", "sent"]
    assert run_once(app)["mail_sent"] == 2 and jobs_run == [1]
    assert len(mailbox.messages) == 3
