"""(a) kill -9 of one gunicorn worker in the middle of the load.

The kill is aimed: the suite watches the workers' open files and kills the one that is
writing an attestation into the store at that moment (a 6 MiB scan sent by one of the
people), the worst moment for the store; failing that within a few seconds, any worker.
gunicorn must fork a replacement; the requests in flight on the killed worker may fail
at the connection level, nothing acknowledged may be lost.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from tests.faults.support import (
    Load,
    Outcome,
    assert_none,
    enrs_command,
    iter_until,
    run_scenario,
    worker_writing_to_store,
)


def kill_worker_mid_upload(stack, notes: dict, timeout: float = 12.0) -> int:
    victim = worker_writing_to_store(stack, timeout)
    notes["killed_during_upload"] = victim is not None
    if victim is None:
        victim = random.choice(stack.worker_pids())
    os.kill(victim, signal.SIGKILL)
    return victim


@pytest.fixture(scope="module")
def outcome(production_stack) -> Outcome:
    with production_stack("worker-kill") as stack:
        load = Load(stack, professionals=3, registrants=1, big_uploaders=1)

        def fault(load: Load, notes: dict) -> None:
            before = stack.worker_pids()
            victim = kill_worker_mid_upload(stack, notes)
            killed_at = time.monotonic()
            notes.update(workers_before=before, killed=victim, killed_at=round(load.now(), 2),
                         killed_at_wall=time.time())
            for _ in iter_until(20, 0.1):
                workers = stack.worker_pids()
                if len(workers) == 2 and victim not in workers:
                    notes.update(workers_after=workers, replaced_after_s=round(time.monotonic() - killed_at, 2))
                    break
            notes["readyz_after_kill"] = stack.readyz()[0]

        yield run_scenario(stack, load, fault, warmup=3, after=5, settle=30)


def test_gunicorn_replaces_the_killed_worker(outcome):
    notes = outcome.notes
    assert "workers_after" in notes, f"no replacement for worker {notes['killed']}: {outcome.describe()}"
    assert notes["killed"] not in notes["workers_after"] and len(notes["workers_after"]) == 2
    assert notes["readyz_after_kill"] == 200


def test_people_see_connection_errors_at_most_never_an_error_page(outcome):
    assert_none(outcome.page_problems(), "pages people should not see", outcome)
    errors = {status: n for status, n in outcome.statuses().items() if isinstance(status, int) and status >= 500}
    assert not errors, f"server errors after a worker was killed: {errors}; {outcome.describe()}"
    assert_none(outcome.driver_errors(), "the load driver failed", outcome)


def test_service_goes_on_after_the_kill(outcome):
    after = [ack for ack in outcome.load.acks.uploads if ack["at"] > outcome.notes["fault_end"]]
    logins = [at for _, at in outcome.load.acks.logins if at > outcome.notes["fault_end"]]
    assert after and logins, f"nothing acknowledged after the kill: {outcome.describe()}"


def test_nothing_acknowledged_is_lost_and_no_email_twice(outcome):
    """Except, at most, the one message the killed worker had just handed to the SMTP
    server and not yet recorded as sent: it goes out again, same Message-ID (see
    Outcome.email_problems)."""
    assert_none(outcome.lost(), "acknowledged work lost or duplicated", outcome)
    assert_none(outcome.email_problems(), "emails not delivered exactly once", outcome)


def test_every_row_has_its_whole_file_and_the_only_debris_is_the_killed_uploads(outcome):
    assert_none(outcome.row_problems(), "rows without their file", outcome)
    killed = outcome.notes["killed_at_wall"]
    later = [(kind, name) for kind, name, _, mtime in outcome.debris() if mtime > killed + 0.5]
    assert not later, f"debris written after the kill: {later}"


# Last: the sweep changes the store the other tests look at.
def test_the_sweep_removes_what_the_kill_left_and_nothing_else(outcome):
    """kill -9 mid-upload leaves debris no row refers to (a reserved key, a temporary file,
    or a whole file whose row was never committed); the worker's hourly sweep removes
    files older than an hour; here `enrs access sweep --older-than 0` does it at once."""
    if not outcome.notes["killed_during_upload"]:
        pytest.skip("the kill did not land on an attestation being written this time")
    done = subprocess.run(enrs_command() + ["access", "sweep", "--older-than", "0"],
                          env=outcome.stack.process_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    after = Outcome(outcome.load, outcome.stack, outcome.notes)
    assert_none(after.store_problems(), "store and database disagree after the sweep", after)
