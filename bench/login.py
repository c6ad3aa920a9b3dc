"""Full logins (GET /login, POST password, POST emailed code) per second in one process,
one at a time, next to the Argon2id verification rate of one caller measured in the same
run, bare (argon2-cffi, its lanes on every core) and as the portal hashes (its lanes in
the calling thread, one core); and the timing of a login for an unknown user against a
known user with a wrong password. The machine's capacity is the load test's (bench/load).

The code is read from the email a real SMTP server on loopback received, as the user
does. Runs on SQLite and, when reachable, PostgreSQL.
"""
from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

LOGINS = int(os.environ.get("ENRS_BENCH_LOGINS", "60"))
PROBES = int(os.environ.get("ENRS_BENCH_TIMING_PROBES", "40"))
PG_URL = os.environ.get("ENRS_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PASSWORD = "Hopital-Dreux-2026"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
CODE_RE = re.compile(r"Votre code d'authentification unique est : (\d{6})")


def hash_rate(seconds: float = 5.0, as_portal: bool = False) -> float:
    """Argon2id verifications per second with the portal's parameters, one after the other:
    by argon2-cffi as any program calls it (a thread per lane; with PyPI's wheel in the
    processes of bench.load.argon2_rate, this is the bare rate the targets are read
    against), or as_portal, the way the portal computes them (the lanes in the calling
    thread, idp/argon2id.py), both with the libargon2 this process loaded."""
    from argon2 import PasswordHasher

    from idp.passwords import HASHER

    hasher = HASHER if as_portal else PasswordHasher(
        time_cost=HASHER.time_cost, memory_cost=HASHER.memory_cost, parallelism=HASHER.parallelism)
    stored = hasher.hash(PASSWORD)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        hasher.verify(stored, PASSWORD)
        count += 1
    return count / (time.perf_counter() - started)


def _bare_rate() -> float:
    """argon2-cffi as any program runs it, with PyPI's wheel (in a process of its own, where
    the wheel comes first on the path), whatever build the portal runs (idp/argon2_build.py)."""
    from bench.load.argon2_rate import machine_rate

    return machine_rate(1)["total"]


def _app(database_url: str, smtp_url: str, instance: Path):
    from onboarding.accounts import create_professional
    from portal.app import create_app
    from portal.db import db, upgrade

    app = create_app({
        "ENRS_ENV": "development", "ENRS_INSTANCE_DIR": str(instance), "ENRS_DATABASE_URL": database_url,
        "ENRS_SECRET_KEY": "bench-" + "k" * 40, "ENRS_MAIL_URL": smtp_url, "ENRS_BASE_URL": "http://localhost",
    })
    with app.app_context():
        upgrade(db.engine)
        for i in range(LOGINS):
            create_professional(db.session, email=f"pro{i}@esante-bench.fr", password=PASSWORD,
                                first_name="Nathalie", last_name=f"Dupont{i}", profession="10", finess=None)
        db.session.commit()
    return app


def _full_logins(app, mailbox) -> tuple[float, list[float]]:
    from idp.models import User
    from portal.db import db

    with app.app_context():
        accounts = db.session.execute(sa.select(User.login, User.email).order_by(User.id)).all()
    durations = []
    started_all = time.perf_counter()
    for index, (login, email) in enumerate(accounts):
        client = app.test_client()
        address = {"REMOTE_ADDR": f"10.1.{index // 250}.{index % 250}"}
        started = time.perf_counter()
        page = client.get("/login", environ_base=address).get_data(as_text=True)
        token = CSRF_RE.search(page).group(1)
        response = client.post("/login", data={"csrf_token": token, "username": login, "password": PASSWORD},
                               environ_base=address)
        assert response.status_code == 303, response.status_code
        code = CODE_RE.search(mailbox.last(email).get_body(preferencelist=("plain",)).get_content()).group(1)
        response = client.post("/login/code", data={"csrf_token": token, "code": code}, environ_base=address)
        assert response.status_code == 303, response.status_code
        durations.append(time.perf_counter() - started)
    return len(accounts) / (time.perf_counter() - started_all), durations


def _timing_probe(app) -> dict[str, float]:
    """Median time of a refused login: unknown identifier vs known one with a wrong password."""
    from idp.models import User
    from portal.db import db

    with app.app_context():
        known = db.session.scalar(sa.select(User.login).limit(1))
    samples: dict[str, list[float]] = {"unknown_user": [], "known_user_wrong_password": []}
    client = app.test_client()
    token = CSRF_RE.search(client.get("/login").get_data(as_text=True)).group(1)
    for i in range(PROBES):
        for kind, username in (("unknown_user", f"inconnu{i}"), ("known_user_wrong_password", known)):
            address = {"REMOTE_ADDR": f"10.2.{i}.{len(samples[kind]) % 250}"}
            started = time.perf_counter()
            response = client.post("/login", data={"csrf_token": token, "username": username,
                                                   "password": "Mauvais-Secret-1"}, environ_base=address)
            samples[kind].append(time.perf_counter() - started)
            assert response.status_code == 401
        if i % 2 == 1:  # keep the known account below its lockout threshold
            with app.app_context():
                db.session.execute(sa.update(User).values(failed_logins=0, locked_until=None))
                db.session.commit()
    medians = {kind: statistics.median(values) * 1000 for kind, values in samples.items()}
    medians["difference_percent"] = abs(medians["unknown_user"] - medians["known_user_wrong_password"]) / max(
        medians.values()) * 100
    return {k: round(v, 2) for k, v in medians.items()}


def _measure(database_url: str, smtp, instance: Path) -> dict[str, object]:
    from portal.db import db

    app = _app(database_url, smtp.url, instance)
    try:
        rate, durations = _full_logins(app, smtp.mailbox)
        ordered = sorted(durations)
        return {
            "full_logins_per_second": round(rate, 2),
            "login_p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "login_p95_ms": round(ordered[int(len(ordered) * 0.95)] * 1000, 1),
            "timing_refused_login_median_ms": _timing_probe(app),
        }
    finally:
        with app.app_context():
            db.engine.dispose()


def run() -> dict[str, object]:
    from tests.conftest import SMTPServer

    smtp = SMTPServer()
    smtp.start()
    try:
        before, own_before = _bare_rate(), hash_rate(as_portal=True)
        results: dict[str, object] = {"logins": LOGINS}
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = _measure(f"sqlite:///{tmp}/bench.db", smtp, Path(tmp))
        try:
            engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            schema = f"enrs_bench_{uuid.uuid4().hex[:8]}"
            with engine.begin() as connection:
                connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        except Exception:
            results["postgresql"] = "unreachable"
        else:
            separator = "&" if "?" in PG_URL else "?"
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    results["postgresql"] = _measure(f"{PG_URL}{separator}options=-csearch_path%3D{schema}",
                                                     smtp, Path(tmp))
            finally:
                with engine.begin() as connection:
                    connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                engine.dispose()
        own_after, after = hash_rate(as_portal=True), _bare_rate()
        rate, own = (before + after) / 2, (own_before + own_after) / 2
        results["argon2id_verifications_per_second"] = round(rate, 2)
        # One login at a time: the portal's hash uses one core (idp/argon2id.py) and its
        # own build of libargon2, the bare one both cores and PyPI's wheel; against the
        # portal's own rate, the ratio is what the login adds.
        results["argon2id_verifications_per_second_as_portal"] = round(own, 2)
        for backend in ("sqlite", "postgresql"):
            if isinstance(results.get(backend), dict):
                results[backend]["ratio_to_hash_rate"] = round(results[backend]["full_logins_per_second"] / rate, 3)
                results[backend]["ratio_to_portal_hash_rate"] = round(
                    results[backend]["full_logins_per_second"] / own, 3)
        results["target"] = "full logins >= 0.8 x hash rate; refused-login medians within 5 %"
        return results
    finally:
        smtp.stop()
