"""(c) The SMTP server stopped, then started again on the same port, in the middle of the
load.

The portal queues every email in the outbox within the transaction of what causes it,
so a login still answers "code sent" (303 to the code page) while the relay is away;
the delivery fails and is retried with backoff (30 s after the first failure), by
`enrs worker` once the relay is back. Each email arrives exactly once (counted by
Message-ID); nothing acknowledged is lost.
"""
from __future__ import annotations

import time

import pytest

from tests.faults.support import CODE_SUBJECT, Load, Outcome, assert_none, run_scenario

OUTAGE_SECONDS = 8.0


@pytest.fixture(scope="module")
def outcome(production_stack) -> Outcome:
    with production_stack("smtp-outage") as stack:
        load = Load(stack, professionals=4, registrants=1, code_wait=2.0)

        def fault(load: Load, notes: dict) -> None:
            stack.mail.stop()
            time.sleep(1)
            notes["readyz_while_away"] = stack.readyz()[0]
            time.sleep(OUTAGE_SECONDS - 1)
            stack.mail.start()
            notes["smtp_back_at"] = round(load.now(), 2)

        # The messages that failed wait for their retry (backoff: 30 s after the first failure).
        yield run_scenario(stack, load, fault, warmup=3, after=4, settle=60)


def test_logins_still_answer_code_sent_while_the_relay_is_away(outcome):
    notes = outcome.notes
    during = [at for _, at in outcome.load.acks.logins if notes["fault_start"] <= at <= notes["fault_end"]]
    assert during, f"no login acknowledged during the outage: {outcome.describe()}"


def test_readyz_does_not_depend_on_the_relay(outcome):
    assert outcome.notes["readyz_while_away"] == 200


def test_no_error_page_and_no_traceback(outcome):
    assert_none(outcome.page_problems(), "pages people should not see", outcome)
    errors = {s: n for s, n in outcome.statuses().items() if s is None or not isinstance(s, int) or s >= 500}
    assert not errors, f"errors during the SMTP outage: {errors}; {outcome.describe()}"
    assert_none(outcome.driver_errors(), "the load driver failed", outcome)


def test_emails_queued_during_the_outage_are_delivered_after_it_each_once(outcome):
    assert_none(outcome.email_problems(), "emails not delivered exactly once", outcome)
    retried = [row for row in outcome.outbox if row[5] > 1]
    assert retried, f"no email needed a retry: the outage proves nothing ({outcome.describe()})"
    codes = [row for row in retried if CODE_SUBJECT in row[2]]
    assert codes, "no login code was among the emails delivered after the outage"


def test_nothing_acknowledged_is_lost(outcome):
    assert_none(outcome.lost(), "acknowledged work lost or duplicated", outcome)
    assert_none(outcome.store_problems(), "store and database disagree", outcome)
