"""Fault suite fixtures (`make faults`; see docs/faults.md).

- `pg_template` (session): the database `enrs_faults_template` on the PostgreSQL of this
  machine, migrated, with `enrs demo`'s data and the professionals of the load; dropped
  with `enrs_faults` at the end, and PostgreSQL is left running whatever happened.
- `production_stack(name, kind=Stack)`: a context manager giving a `Stack`
  (tests/faults/support.py): a fresh `enrs_faults` copied from the template, a temporary
  store, a loopback SMTP server and a redis-server of its own, gunicorn with 2 workers ×
  4 threads and `enrs worker`; everything stopped and mended on the way out. With
  `kind=ProxiedStack` (tests/faults/proxy.py): two such gunicorns behind nginx.

Each test module runs its fault once (a module fixture) and then asserts on what was
recorded, one test per promise.

The suite runs only when asked for by path (`make faults`, `pytest tests/faults/…`):
`make test` and `make test-postgres` collect `tests` as a whole and must not restart
this machine's PostgreSQL.
"""
from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import pytest

from tests.faults.support import (
    ARTIFACTS,
    DATABASE,
    FINESS,
    PASSWORD,
    PG_ADMIN_URL,
    PROFESSIONALS,
    SECRET_KEY,
    TEMPLATE,
    HoldingMailServer,
    RedisServer,
    Stack,
    database_url,
    pg_admin,
    pg_ensure_up,
    pg_ready,
    professional_email,
)

FAULTS_DIR = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / str(arg).split("::", 1)[0]).resolve()
        if path == FAULTS_DIR or FAULTS_DIR in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name.startswith("test_") and not _asked_for(config):
        return True
    return None


def _build_template(root: Path) -> None:
    from onboarding.accounts import create_professional
    from portal.app import create_app
    from portal.cgu import current_cgu
    from portal.clock import now
    from portal.db import db, upgrade
    from portal.demo import seed_demo

    app = create_app({"ENRS_ENV": "development", "ENRS_SECRET_KEY": SECRET_KEY,
                      "ENRS_INSTANCE_DIR": str(root), "ENRS_DATABASE_URL": database_url(TEMPLATE)})
    try:
        with app.app_context():
            upgrade(db.engine)
            seed_demo()
            cgu = current_cgu(db.session)
            for number in range(1, PROFESSIONALS + 1):
                user = create_professional(db.session, email=professional_email(number), password=PASSWORD,
                                           first_name="Dominique", last_name=f"Panne{number}", profession="10",
                                           finess=FINESS)
                # They accepted the terms of use at an earlier visit: the load goes straight on.
                user.cgu_version_id, user.cgu_accepted_at = cgu.id, now()
            db.session.commit()
    finally:
        app.extensions["enrs.db"]["engine"].dispose()


def _drop_databases() -> None:
    pg_admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not pg_ready():
        pytest.fail(f"PostgreSQL is unreachable at {PG_ADMIN_URL}: the fault suite needs it")
    _drop_databases()
    pg_admin(f"CREATE DATABASE {TEMPLATE}")
    try:
        with tempfile.TemporaryDirectory(prefix="enrs-faults-template-") as root:
            _build_template(Path(root))
        yield TEMPLATE
    finally:
        pg_ensure_up()
        _drop_databases()


def _writable_again(folder: Path) -> None:
    """Undo a test's chmod, so that the temporary folder can be removed."""
    if not folder.exists():
        return
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            os.chmod(path, stat.S_IRWXU)


@pytest.fixture(scope="session")
def production_stack(pg_template) -> Callable[..., ContextManager[Stack]]:
    @contextmanager
    def production_stack(name: str, kind: type[Stack] = Stack) -> Iterator[Stack]:
        pg_ensure_up()
        pg_admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)",
                 f"CREATE DATABASE {DATABASE} TEMPLATE {TEMPLATE}")
        with tempfile.TemporaryDirectory(prefix=f"enrs-faults-{name}-") as root:
            mail = HoldingMailServer()
            mail.start()
            redis = RedisServer(ARTIFACTS / name / "redis.log")
            stack = kind(name=name, root=Path(root), mail=mail, redis=redis)
            try:
                redis.start()
                stack.start()
                yield stack
            finally:
                stack.stop()
                redis.stop()
                mail.stop()
                _writable_again(stack.store_root)

    return production_stack
