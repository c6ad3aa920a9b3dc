"""Registration submit latency ("DEMANDER MON INSCRIPTION"), in-process, captcha excluded.

Each submission creates an account, writes the audit entry and queues the verification
email, which the delivery thread sends to a real SMTP server on loopback after the
response (the time the user waits is measured; the bench waits for the delivery between
submissions so that runs do not pile up). The captcha check is replaced by a pass-through so
that the figure is the portal's own cost; GET /register (which draws a new challenge)
is reported beside it. Runs on SQLite and, when reachable, on PostgreSQL.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ITERATIONS = int(os.environ.get("ENRS_BENCH_REGISTRATIONS", "300"))
PG_URL = os.environ.get("ENRS_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2), "n": len(ordered)}


def _postgres_schema_url() -> tuple[str, str] | None:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        schema = f"enrs_bench_{uuid.uuid4().hex[:8]}"
        with engine.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        engine.dispose()
    except Exception:
        return None
    separator = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{separator}options=-csearch_path%3D{schema}", schema


def _drop_schema(schema: str) -> None:
    engine = sa.create_engine(PG_URL)
    with engine.begin() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()


def _measure(database_url: str, smtp_url: str, instance: Path) -> dict[str, object]:
    import re

    from flask.testing import FlaskClient

    import onboarding.captcha as captcha
    from onboarding.finess import load_demo_establishments
    from portal.app import create_app
    from portal.cgu import DEFAULT_CGU_TEXT, publish_cgu
    from portal.db import db, upgrade
    from portal.mail import drain

    app = create_app({
        "ENRS_ENV": "development", "ENRS_INSTANCE_DIR": str(instance), "ENRS_DATABASE_URL": database_url,
        "ENRS_SECRET_KEY": "bench-" + "k" * 40, "ENRS_MAIL_URL": smtp_url, "ENRS_BASE_URL": "http://localhost",
    })
    with app.app_context():
        upgrade(db.engine)
        publish_cgu(db.session, "1.0", DEFAULT_CGU_TEXT)
        load_demo_establishments(db.session)
        db.session.commit()

    original_verify = captcha.verify
    captcha.verify = lambda session, form: None  # the captcha is measured apart
    try:
        # The plain client: the time measured is what the user waits, not the delivery.
        client = FlaskClient(app, app.response_class)
        page = client.get("/register").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        gets, posts = [], []
        for i in range(ITERATIONS):
            started = time.perf_counter()
            client.get("/register")
            gets.append(time.perf_counter() - started)
            data = {
                "csrf_token": token, "cgu": "y", "profession": "10", "civility": "MME", "last_name": "Petit",
                "first_name": "Nathalie", "national_id": "10108825463", "phone_pro": "02 37 51 52 53",
                "email": f"nathalie.petit{i}@esante-centre.fr", "email_confirm": f"nathalie.petit{i}@esante-centre.fr",
                "establishments-0-finess": "280503848", "establishments-0-function_type": "Médecin",
                "establishments-0-service": "ADMINISTRATION", "action": "submit",
            }
            started = time.perf_counter()
            # One address per registrant, as in real life: the per-IP limit stays in force.
            response = client.post("/register", data=data, buffered=False,
                                   environ_base={"REMOTE_ADDR": f"10.0.{i // 250}.{i % 250}"})
            response.get_data()
            posts.append(time.perf_counter() - started)
            response.close()
            drain(app)  # the delivery thread sends the mail; keep runs independent
            if response.status_code != 303:
                raise RuntimeError(f"registration refused during the bench: {response.status_code}")
    finally:
        captcha.verify = original_verify
        with app.app_context():
            db.engine.dispose()
    return {"submit": _percentiles(posts), "get_form_with_new_captcha": _percentiles(gets)}


def run() -> dict[str, object]:
    from tests.conftest import SMTPServer

    smtp = SMTPServer()
    smtp.start()
    results: dict[str, object] = {"iterations": ITERATIONS, "target": "submit p95 < 50 ms (captcha excluded)"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = _measure(f"sqlite:///{tmp}/bench.db", smtp.url, Path(tmp))
        pg = _postgres_schema_url()
        if pg is None:
            results["postgresql"] = "unreachable"
        else:
            url, schema = pg
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    results["postgresql"] = _measure(url, smtp.url, Path(tmp))
            finally:
                _drop_schema(schema)
        results["emails_received"] = len(smtp.mailbox.messages)
    finally:
        smtp.stop()
    return results
