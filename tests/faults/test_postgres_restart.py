"""(b) PostgreSQL restarted in the middle of the load: the shared server of this machine,
stopped and started again once (`pg_ctlcluster … stop`, DOWN_SECONDS, `… start`), and
started again in a `finally` whatever happens.

The stop is aimed: at a moment when an email is in the middle of its delivery (the
suite's SMTP server holds its 250 until PostgreSQL is down) and a worker is in the
middle of a logged-in person's 6 MiB upload, so that both lose the database half-way
(the common case in production: requests and deliveries in flight). That worker is
paused (SIGSTOP) until PostgreSQL has stopped: `pg_ctlcluster stop` takes longer than
what is left of the upload's request, which would otherwise often commit first.

People may see the portal's French error page while the database is away, never a
traceback nor another page; then the service resumes by itself (pool_pre_ping replaces
the dead pooled connections), and nothing acknowledged before, during or after is lost.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from tests.faults.support import (
    Load,
    Outcome,
    assert_none,
    iter_until,
    pg_ctl,
    pg_ensure_up,
    pg_ready,
    run_scenario,
    worker_handling_big_upload,
)

DOWN_SECONDS = 3.0
RESUME_WITHIN = 15.0  # seconds after PostgreSQL answers again


@pytest.fixture(scope="module")
def outcome(production_stack) -> Outcome:
    with production_stack("postgres-restart") as stack:
        load = Load(stack, professionals=3, registrants=1, big_uploaders=1)

        def fault(load: Load, notes: dict) -> None:
            mailbox = stack.mail.mailbox
            mailbox.hold_next()  # an email in the middle of its delivery when the database goes
            held = mailbox.holding.wait(8)
            mailbox.armed = False
            notes["email_held"] = mailbox.held_message_id if held else None
            aimed = notes["aimed_at_worker"] = worker_handling_big_upload(stack, timeout=5 if held else 10)
            if aimed is not None:
                os.kill(aimed, signal.SIGSTOP)
            notes["stopped_at"] = round(load.now(), 2)
            try:
                try:
                    stopped = pg_ctl("stop")
                finally:
                    if aimed is not None:
                        # gunicorn may have killed it meanwhile (no heartbeat for `timeout`).
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(aimed, signal.SIGCONT)
                notes["pg_stop"] = stopped.returncode, stopped.stderr.strip()[-200:]
                mailbox.release()  # the SMTP server accepts it now; its sender cannot record that
                notes["readyz_while_down"] = stack.readyz()
                time.sleep(DOWN_SECONDS)
                started = pg_ctl("start")
                notes["pg_start"] = started.returncode, started.stderr.strip()[-200:]
            finally:
                mailbox.release()
                pg_ensure_up()
            notes["postgres_up_at"] = round(load.now(), 2)
            for _ in iter_until(RESUME_WITHIN, 0.2):
                if stack.readyz()[0] == 200:
                    notes["readyz_ok_at"] = round(load.now(), 2)
                    break

        yield run_scenario(stack, load, fault, warmup=3, after=6, settle=30)


def test_postgres_really_stopped_and_started(outcome):
    assert outcome.notes["pg_stop"][0] == 0 and outcome.notes["pg_start"][0] == 0, outcome.notes
    assert pg_ready()
    status, body = outcome.notes["readyz_while_down"]
    assert status == 503 and not next(c for c in body["checks"] if c["name"] == "database")["ok"], body


def test_no_traceback_ever(outcome):
    problems = [p for p in outcome.page_problems() if "traceback" in p]
    assert_none(problems, "tracebacks shown to people", outcome)
    assert_none(outcome.driver_errors(), "the load driver failed", outcome)


ANONYMOUS_STEPS = {"login_form", "login_password", "login_code_form", "login_code", "register_form", "register"}


def test_people_see_errors_on_the_french_error_page_while_the_database_is_away(outcome):
    """Pages of people not logged in yet (the logged-in case is the finding below)."""
    errors = [h for h in outcome.load.hits if h.status is not None and h.status >= 500]
    assert errors, f"nobody met the outage, the test proves nothing: {outcome.describe()}"
    bare = [(round(h.at, 1), h.who, h.step, h.status, h.excerpt[:80]) for h in errors
            if h.step in ANONYMOUS_STEPS and not h.french_error_page]
    assert not bare, f"errors without the French error page: {bare}"
    assert all(h.status in (500, 503) for h in errors), {h.status for h in errors}


def test_a_request_that_loses_the_database_half_way_gets_the_french_error_page(outcome):
    notes = outcome.notes
    if notes["aimed_at_worker"] is None:
        pytest.skip("no attestation was being written when PostgreSQL stopped")
    aimed = [h for h in outcome.load.hits if h.who == "big-pro4" and h.step == "access_request"
             and h.at <= notes["stopped_at"] <= h.at + h.took]
    # Any logged-in request that lost the database half-way shows the same.
    if not aimed or aimed[0].status is None or aimed[0].status < 500:
        pytest.skip(f"the aimed request did not fail on the database: {aimed}")
    assert_none(outcome.page_problems(), "pages people should not see", outcome)


def test_service_resumes_by_itself(outcome):
    notes = outcome.notes
    assert "readyz_ok_at" in notes, f"/readyz not back within {RESUME_WITHIN:.0f} s: {outcome.describe()}"
    up = notes["postgres_up_at"]
    late = [h for h in outcome.load.hits
            if h.at > up + RESUME_WITHIN and (h.status is None or h.status >= 500) and h.step != "login_code_mail"]
    assert not late, f"errors more than {RESUME_WITHIN:.0f} s after PostgreSQL was back: " \
                     f"{[(round(h.at, 1), h.step, h.status, h.error) for h in late][:10]}"
    logins = [at for _, at in outcome.load.acks.logins if at > up]
    uploads = [a for a in outcome.load.acks.uploads if a["at"] > up]
    assert logins and uploads, f"no login or upload acknowledged after the restart: {outcome.describe()}"


def test_nothing_acknowledged_is_lost(outcome):
    assert_none(outcome.lost(), "acknowledged work lost or duplicated", outcome)
    problems = [p for p in outcome.email_problems() if not p.startswith("duplicate email")]
    assert_none(problems, "emails not delivered", outcome)


def test_no_email_twice(outcome):
    if outcome.notes["email_held"] is None:
        pytest.skip("no email was in the middle of its delivery when PostgreSQL stopped")
    assert_none(outcome.email_problems(), "emails not delivered exactly once", outcome)


def test_store_and_database_agree(outcome):
    assert_none(outcome.store_problems(), "store and database disagree", outcome)
