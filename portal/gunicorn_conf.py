"""gunicorn settings for the portal: `gunicorn -c python:portal.gunicorn_conf portal.wsgi:app`
(what `enrs serve --prod` runs). Every value can be overridden on the command line.

Each worker is a separate process with its own database pool; all state lives in the
database (and Redis for rate limits), so any worker serves any step of any flow. On
SIGTERM gunicorn stops accepting, lets in-flight requests finish (graceful_timeout),
then exits: a rolling restart loses no acknowledged request.
"""
from __future__ import annotations

import os
import tempfile

bind = os.environ.get("ENRS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# Threads overlap the waits (database, SMTP hand-off, Argon2 releases the GIL); CPU-bound
# work (hashing, signing) is spread by the processes. A worker runs one Argon2id hash at a
# time (ENRS_PASSWORD_HASH_CONCURRENCY): logins waiting for it hold threads, so a worker
# needs more threads than that queue to keep serving the cheap pages. 8 rather than 4: in
# the load test, 9-20 % more logins per second, lower latency, less CPU per journey.
worker_class = "gthread"
threads = int(os.environ.get("ENRS_THREADS", "8"))
timeout = 30
graceful_timeout = 25
keepalive = 5
# The reverse proxy terminates TLS and buffers slow clients; its address alone may set
# X-Forwarded-* (ENRS_TRUSTED_PROXIES makes the app believe them).
forwarded_allow_ips = os.environ.get("ENRS_PROXY_IPS", "127.0.0.1")
accesslog = None  # the app writes one JSON line per request itself (with its request id)
errorlog = "-"
# gunicorn 27's control socket lives at one path per user: several masters on a machine
# would overwrite each other's; the portal does not use it.
control_socket_disable = True
max_requests = 5000  # recycle workers now and then: bounded memory over weeks
max_requests_jitter = 500
# Prometheus counters of every worker add up in this folder (prometheus-client's
# multiprocess mode); cleaned when a worker exits.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="enrs-metrics-")


def child_exit(server, worker) -> None:  # gunicorn hook
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# A worker that stops (SIGTERM, or recycled after max_requests) first lets its delivery
# thread finish the message in hand, claiming no other: the code email being handed to
# the relay is recorded as sent rather than cut off between the relay's 250 and that
# record (which would send it again, 2 minutes later, once its claim expired). What is
# still queued is committed outbox rows that `enrs worker` sends. At most this long (a
# worker stopped alone is killed by the master after `timeout` without a heartbeat, and
# when the whole server stops, `graceful_timeout` after SIGTERM, in-flight requests
# included: the hook may then get less).
MAIL_DRAIN_SECONDS = 10


def worker_exit(server, worker) -> None:  # gunicorn hook, in the worker
    from portal.mail import stop_delivery

    app = getattr(worker, "wsgi", None)
    if app is not None and "enrs.mail.thread" in getattr(app, "extensions", {}):
        if not stop_delivery(app, MAIL_DRAIN_SECONDS):
            server.log.warning("worker %s stopped with mail still being delivered: the outbox keeps it", worker.pid)
