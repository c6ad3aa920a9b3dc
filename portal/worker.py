"""`enrs worker`: the background work of a deployment, in a process of its own.

Every few seconds: deliver the outbox (mail, with backoff), then the periodic jobs the
packages registered in app.extensions["enrs.periodic"] (back-channel logout notices,
the admins' digest, purges of expired codes, sessions, pending logins, captcha
challenges and unfinished registrations, audit retention). Several workers may run:
every job claims its rows (conditional UPDATE) or deletes idempotently, so a message is
sent once. SIGTERM or SIGINT ends the loop once the message in hand is sent and recorded
(the rest of the round waits for the next process).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable

from flask import Flask

log = logging.getLogger("enrs.worker")


def every(seconds: float, job: Callable[[], object]) -> Callable[[], object]:
    """A periodic job that runs at most once per `seconds` in this process (purges need
    not run every round)."""
    last = [float("-inf")]

    def run() -> object:
        if time.monotonic() - last[0] < seconds:
            return None
        last[0] = time.monotonic()
        return job()

    run.__name__ = getattr(job, "__name__", "job")
    return run


def run_once(app: Flask, stop: threading.Event | None = None) -> dict:
    """One round. Once `stop` is set, no further message is claimed and the periodic jobs
    wait for the next process: a stop asked mid-round ends with the message in hand sent
    and recorded, not after the whole round (up to 200 messages, each with its SMTP
    timeouts when the relay is slow), which a service manager's stop timeout could cut
    between the relay's 250 and that record."""
    from portal.mail import deliver, run_job

    with app.app_context():
        report = deliver(stopping=stop)
        failures = 0
        for job in app.extensions.get("enrs.periodic", []):
            if stop is not None and stop.is_set():
                break
            failures += not run_job(job)
    return {"mail_sent": report.sent, "mail_failed": report.failed, "job_failures": failures}


def run(app: Flask, *, interval: float = 5.0, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()

    def _stop(signum, _frame) -> None:
        log.info("signal %s: stopping after this round", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    log.info("worker started (every %.0f s)", interval)
    while not stop.is_set():
        try:
            outcome = run_once(app, stop)
            if outcome["mail_sent"] or outcome["mail_failed"]:
                log.info("round", extra={"fields": {"event": "worker_round", **outcome}})
        except Exception:  # the database may be restarting: try again next round
            log.exception("worker round failed")
        stop.wait(interval)
    log.info("worker stopped")
