"""(f) One gunicorn worker stopped gracefully (SIGTERM, as a rolling restart or the
recycling after max_requests does) while its email is in the hands of the SMTP server.

The stop is aimed: the suite's SMTP server holds the next message before answering 250,
the worker that sent it gets SIGTERM, and the server answers half a second after gunicorn
logged "Worker exiting" for it (its requests answered, only its exit hook left). The
worker must finish that delivery and record it (its `worker_exit` hook,
portal/gunicorn_conf.py) rather than exit with the message claimed: it would then go out
a second time once its claim expired. gunicorn forks a replacement;
the requests in flight on the stopping worker are answered; nothing is lost.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.support import DATABASE, Load, Outcome, assert_none, iter_until, pg_query, run_scenario

HELD_AFTER_EXITING = 0.5  # seconds the SMTP server still holds its 250 once the worker is on its way out


def sender_of(message_id: str) -> int:
    """The process that queued a message: email.utils.make_msgid puts its pid second."""
    return int(message_id.strip("<>").split(".")[1])


@pytest.fixture(scope="module")
def outcome(production_stack) -> Outcome:
    with production_stack("graceful-stop") as stack:
        load = Load(stack, professionals=3, registrants=1, big_uploaders=1)

        def fault(load: Load, notes: dict) -> None:
            mailbox = stack.mail.mailbox
            before = stack.worker_pids()
            notes["workers_before"] = before
            try:
                # The next email a web worker sends (one that `enrs worker`'s round sends
                # instead is let go, and the next one held).
                for _ in range(5):
                    mailbox.hold_next()
                    held = mailbox.holding.wait(8)
                    mailbox.armed = False
                    notes["email_held"] = mailbox.held_message_id if held else None
                    notes["sender"] = sender = sender_of(mailbox.held_message_id) if held else None
                    if sender in before:
                        break
                    mailbox.release()
                else:
                    return
                os.kill(sender, signal.SIGTERM)
                notes["stopped_at"] = round(load.now(), 2)
                # gunicorn logs this once the worker's requests are answered, just before its
                # worker_exit hook: from then on, only the hook keeps it alive.
                exiting = f"Worker exiting (pid: {sender})"
                for _ in iter_until(20, 0.05):
                    if exiting in (stack.artifacts / "gunicorn.log").read_text(errors="replace"):
                        notes["exiting_at"] = round(load.now(), 2)
                        break
                time.sleep(HELD_AFTER_EXITING)
                notes["sender_alive_when_released"] = os.path.exists(f"/proc/{sender}")
            finally:
                mailbox.release()
            notes["released_at"] = round(load.now(), 2)
            for _ in iter_until(20, 0.1):
                workers = stack.worker_pids()
                if len(workers) == 2 and sender not in workers:
                    notes.update(workers_after=workers, replaced_at=round(load.now(), 2))
                    break
            notes["readyz_after_stop"] = stack.readyz()[0]

        yield run_scenario(stack, load, fault, warmup=3, after=5, settle=30)


def aimed(outcome: Outcome) -> dict:
    notes = outcome.notes
    assert notes.get("sender") in notes["workers_before"], f"no web worker's email was held: {notes}"
    return notes


def test_the_stopping_worker_waits_for_its_email_and_is_replaced(outcome):
    notes = aimed(outcome)
    assert "exiting_at" in notes, f"worker {notes['sender']} never logged its exit: {outcome.describe()}"
    assert notes["sender_alive_when_released"], f"the worker exited with its email in hand: {outcome.describe()}"
    assert "workers_after" in notes, f"no replacement for worker {notes['sender']}: {outcome.describe()}"
    assert notes["readyz_after_stop"] == 200


def test_the_email_in_hand_is_recorded_sent_at_its_first_attempt(outcome):
    notes = aimed(outcome)
    rows = pg_query(DATABASE, "SELECT status, attempts FROM mail_outbox WHERE message_id = %s", notes["email_held"])
    assert rows == [("sent", 1)], f"{rows}: {outcome.describe()}"
    assert "claims_expired_by_the_suite" not in notes, outcome.describe()


def test_nothing_acknowledged_is_lost_and_no_email_twice(outcome):
    assert_none(outcome.lost(), "acknowledged work lost or duplicated", outcome)
    assert_none(outcome.email_problems(), "emails not delivered exactly once", outcome)


def test_people_see_no_error_page(outcome):
    """The stopping worker answers what it was given; a kept-alive connection it closes
    as a request goes out on it is a connection error, which browsers retry."""
    assert_none(outcome.page_problems(), "pages people should not see", outcome)
    errors = {status: n for status, n in outcome.statuses().items() if isinstance(status, int) and status >= 500}
    assert not errors, f"server errors during a graceful stop: {errors}; {outcome.describe()}"
    assert_none(outcome.driver_errors(), "the load driver failed", outcome)
