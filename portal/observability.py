"""What operators watch: one JSON log line per request (with a request id), Prometheus
metrics, and the health endpoints a load balancer probes.

- /healthz: the process answers (no dependency checked: a restart would not help).
- /readyz: the database, Redis (when configured) and the attestation store answer;
  JSON detail without secrets; 503 only when the database does not ("degraded", 200, when
  Redis or the store is down: the process still serves everything else).
- /metrics: Prometheus text format, allowed from ENRS_METRICS_ALLOW addresses and/or with
  the ENRS_METRICS_TOKEN bearer. Under gunicorn, PROMETHEUS_MULTIPROC_DIR makes every
  worker's counters add up (see portal/gunicorn_conf.py).
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone

import sqlalchemy as sa
from flask import Flask, Response, abort, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

REQUESTS = Counter("enrs_http_requests_total", "HTTP requests by endpoint, method and status",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("enrs_http_request_duration_seconds", "Request duration by endpoint", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LOGINS = Counter("enrs_logins_total", "Login steps by method and outcome", ["method", "outcome"])
MAILS = Counter("enrs_mail_deliveries_total", "Outbox delivery attempts by outcome", ["outcome"])
CODES_SENT = Counter("enrs_login_codes_queued_total", "One-time login codes queued for email")

access_log = logging.getLogger("enrs.access")


# -- request id and the access log ---------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line; what a log pipeline ingests without parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry.setdefault("request_id", request_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """For a developer's terminal: the same facts, on one readable line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields.get("event") == "request":
            record.msg = ("{method} {path} {status} {duration_ms} ms user={user_id} id={request_id}"
                          .format(**fields))
            record.args = ()
        return super().format(record)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from flask import has_request_context

        if has_request_context() and not hasattr(record, "request_id"):
            record.request_id = g.get("request_id")
        return True


def configure_logging(log_format: str) -> None:
    """JSON lines on stderr for the enrs loggers (the access log among them)."""
    root = logging.getLogger("enrs")
    if any(getattr(h, "_enrs", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._enrs = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def _start_request() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    # A proxy's id is kept so one request can be followed across tiers; anything odd is
    # replaced (it ends up in logs).
    g.request_id = incoming if _REQUEST_ID_RE.match(incoming) else secrets.token_hex(16)
    g.request_started = time.perf_counter()
    g.request_cpu_started = time.thread_time()


def _finish_request(response: Response) -> Response:
    started = g.get("request_started")
    if started is None:
        return response
    duration = time.perf_counter() - started
    # This thread's CPU: what the request cost the machine beyond waiting (database, a
    # free hashing slot). Argon2's lane threads are not in it; starting them is.
    cpu = time.thread_time() - g.request_cpu_started
    endpoint = request.endpoint or "unmatched"
    response.headers[REQUEST_ID_HEADER] = g.request_id
    REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
    LATENCY.labels(endpoint).observe(duration)
    # Never the query string (codes, tokens and states travel there) nor any body. The
    # user's id is the one read with the session: the user row itself may be expired
    # by a rollback, and reading it again must not depend on the database.
    access_log.info("request", extra={"fields": {
        "event": "request", "request_id": g.request_id, "method": request.method, "route": endpoint,
        "path": request.path, "status": response.status_code, "duration_ms": round(duration * 1000, 1),
        "cpu_ms": round(cpu * 1000, 1),
        "user_id": g.get("user_id"), "ip": request.remote_addr,
    }})
    return response


# -- logins, from the audit trail --------------------------------------------------------------

def count_audit_event(action: str, outcome: str, details: dict | None) -> None:
    """Login metrics follow the audit entries, so they count the same decisions."""
    if action == "login.success":
        amr = (details or {}).get("amr") or []
        method = "psc" if "psc" in amr else "recovery_code" if "kba" in amr else \
            "totp" if "mfa" in amr else "email_code"
        LOGINS.labels(method, "success").inc()
    elif action == "login.password_refused":
        LOGINS.labels("password", "failure").inc()
    elif action == "login.code_refused":
        LOGINS.labels("second_factor", "failure").inc()
    elif action.startswith("psc.") and outcome == "failure":
        LOGINS.labels("psc", "failure").inc()


# -- gauges read from the database at scrape time -------------------------------------------

class QueueCollector:
    """Outbox backlog and the age of its oldest message; pending requests per queue (the
    queues are counted by functions the app registers in app.extensions["enrs.admin_queues"],
    since the portal's core does not know the models of idp and onboarding)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self):
        from flask import has_app_context

        from portal.clock import now
        from portal.db import db
        from portal.mail import outbox_backlog

        with (nullcontext() if has_app_context() else self.app.app_context()):
            try:
                backlog, oldest = outbox_backlog(db.session)
                queues = {name: count(db.session) for name, count in
                          self.app.extensions.get("enrs.admin_queues", {}).items()}
            finally:
                db.session.rollback()
            current = now()
        yield GaugeMetricFamily("enrs_outbox_backlog", "Emails waiting in the outbox", value=backlog)
        yield GaugeMetricFamily("enrs_outbox_oldest_age_seconds", "Age of the oldest waiting email",
                                value=(current - oldest).total_seconds() if oldest else 0)
        pending = GaugeMetricFamily("enrs_pending_requests", "Requests waiting for an admin", labels=["queue"])
        for name, value in queues.items():
            pending.add_metric([name], value)
        yield pending


class Argon2BuildCollector:
    """Which libargon2 the process hashes with (idp/argon2_build.py): a `pip install
    --force-reinstall` that put PyPI's wheel back makes every login cost ~1.6 times the
    CPU, and shows here as build="wheel"."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self):
        found = self.app.extensions.get("enrs.argon2_build")
        if found:
            yield InfoMetricFamily("enrs_argon2_build", "The build of libargon2 the portal hashes with", value=found)


def _metrics_allowed(app: Flask) -> bool:
    settings = app.extensions["enrs.settings"]
    token = settings.metrics_token
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(address in network for network in settings.metrics_allow)


def _registry(app: Flask) -> CollectorRegistry:
    registry = app.extensions.get("enrs.metrics_registry")
    if registry is None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = CollectorRegistry()
            for collector in (REQUESTS, LATENCY, LOGINS, MAILS, CODES_SENT):
                registry.register(collector)
        registry.register(QueueCollector(app))
        registry.register(Argon2BuildCollector(app))
        app.extensions["enrs.metrics_registry"] = registry
    return registry


# -- readiness ----------------------------------------------------------------------------------

def _check(name: str, probe) -> dict:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # reported, never raised: /readyz must answer
        return {"name": name, "ok": False, "error": type(exc).__name__,
                "ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"name": name, "ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def readiness(app: Flask) -> list[dict]:
    from portal.db import db
    from portal.storage import store_for

    settings = app.extensions["enrs.settings"]

    def database() -> None:
        with db.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    checks = [_check("database", database)]
    if settings.redis_url:
        def redis_ping() -> None:
            import redis

            client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
            try:
                client.ping()
            finally:
                client.close()

        checks.append(_check("redis", redis_ping))
    checks.append(_check("storage", lambda: store_for(app).check()))
    return checks


def init_app(app: Flask) -> None:
    settings = app.extensions["enrs.settings"]
    configure_logging(settings.log_format)
    app.before_request(_start_request)
    app.after_request(_finish_request)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz():
        checks = readiness(app)
        # Only the database makes a process useless: without Redis the limits fall back to
        # memory, without the store only uploads fail (with a message). Taking every process
        # out of the proxy's rotation for those would turn a partial outage into a total one.
        database_ok = all(c["ok"] for c in checks if c["name"] == "database")
        everything_ok = all(c["ok"] for c in checks)
        status = "ready" if everything_ok else "degraded" if database_ok else "unavailable"
        return jsonify(status=status, checks=checks), 200 if database_ok else 503

    @app.get("/metrics")
    def metrics():
        if not _metrics_allowed(app):
            abort(404)  # not advertised to the public
        # SQLite: the request's own transaction would hold the write lock the gauges wait for.
        from portal.db import db

        db.session.rollback()
        return Response(generate_latest(_registry(app)), mimetype=CONTENT_TYPE_LATEST)
