"""The load test's portal: its own PostgreSQL database, migrated and seeded through the
`enrs` commands, plus many professionals who hold the ROR role.

Accounts are created through onboarding.accounts.create_professional (login assignment,
password policy, audit entry, password history, as `enrs user create` does), with one
difference: idp.passwords.hash_password is replaced, for this setup only, by a function
that returns one Argon2id hash of the shared password computed once. Hashing costs about
0.3 s of CPU per account on this machine, so 300 accounts would cost 1.5 minutes of the
run; sharing a hash (hence its salt) changes nothing for the load, since a login verifies
the stored hash with the same parameters whatever its salt, and it matters only against
an offline attacker holding the database, which this throw-away database never meets.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Charge-Centre-Val-2026"
EMAIL_DOMAIN = "charge.esante-bench.fr"
SECRET_KEY = "bench-load-" + "s" * 40


@dataclass(frozen=True)
class Account:
    index: int
    email: str
    address: str  # the source address its browser connects from


def account_address(index: int) -> str:
    """127.0.1.1 … 127.0.1.250, 127.0.2.1 …: Linux routes all of 127.0.0.0/8 to lo, so
    every account has a workstation of its own and the per-address limits of /login
    see as many addresses as a region's hospitals would."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


def enrs_command() -> list[str]:
    script = Path(sys.executable).with_name("enrs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "portal.cli"]


def process_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    """The portal refuses unknown ENRS_* variables: only ours reach its processes."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ENRS_")}
    return {**inherited, **env, "PYTHONUNBUFFERED": "1", **extra}


def cli(env: dict[str, str], *args: str, **extra: str) -> str:
    result = subprocess.run([*enrs_command(), *args], env=process_env(env, **extra), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"enrs {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


# -- the database ----------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def create_database(server_url: str, name: str) -> str:
    """A fresh database `name` on the cluster of `server_url` (any database of it); its URL.
    A leftover of an interrupted run is dropped first: the load test owns that name."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"invalid database name {name!r}")
    admin = sa.create_engine(_with_database(server_url, "postgres"), isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return _with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    admin = sa.create_engine(_with_database(server_url, "postgres"), isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


# -- seeding --------------------------------------------------------------------------------


def seed(env: dict[str, str], rp_base_url: str) -> dict:
    """`enrs db upgrade` and `enrs demo` (CGU, establishments, admins, and the demo ROR
    application registered with its addresses on `rp_base_url`); the ROR client's
    configuration as `enrs demo` wrote it (issuer, client id, secret)."""
    cli(env, "db", "upgrade")
    cli(env, "demo", ROR_APP_BASE_URL=rp_base_url)
    config = json.loads((Path(env["ENRS_INSTANCE_DIR"]) / "ror_app_client.json").read_text())
    return config


def create_accounts(env: dict[str, str], count: int) -> list[Account]:
    """`count` active professionals of the demo doctor's establishment, each holding the
    ROR offer-referent role (as an approved access request leaves it) and having accepted
    the current CGU, sharing one password hash (see the module's docstring)."""
    from idp import passwords
    from idp.models import User, UserRole
    from onboarding.accounts import create_professional
    from onboarding.models import ROLE_REFERENT_OFFRE
    from portal.app import create_app
    from portal.cgu import current_cgu
    from portal.clock import now
    from portal.db import db
    from portal.demo import DOCTOR_FINESS

    app = create_app(env)
    shared_hash = passwords.hash_password(PASSWORD)
    accounts = []
    with app.app_context(), mock.patch.object(passwords, "hash_password", lambda _password: shared_hash):
        session = db.session
        cgu = current_cgu(session)
        for index in range(count):
            email = f"pro{index:04d}@{EMAIL_DOMAIN}"
            user = create_professional(session, email=email, password=PASSWORD, first_name="Camille",
                                       last_name=f"Bench{index:04d}", profession="10", finess=DOCTOR_FINESS)
            user.cgu_version_id, user.cgu_accepted_at = cgu.id, now()
            session.add(UserRole(user_id=user.id, role=ROLE_REFERENT_OFFRE, finess=DOCTOR_FINESS, granted_at=now()))
            accounts.append(Account(index, email, account_address(index)))
            if index % 100 == 99:
                session.commit()
        session.commit()
        stored = session.scalar(sa.select(sa.func.count()).select_from(User).where(User.email.like(f"%@{EMAIL_DOMAIN}")))
        assert stored == count, (stored, count)
        db.engine.dispose()
    return accounts
