"""Brute-force protection of the password step, per account (growing waits, then a
temporary lock) — the per-address part is a rate limit on failed logins in login.py.

In the spirit of Keycloak's defaults: the first failures cost nothing, the next ones
impose a doubling wait, and after `max_failures` the account is locked for
`lock_duration`. A quiet period forgets old failures. A locked account answers exactly
like a wrong password (same text, status and hashing work): an attacker learns nothing,
and the owner is told by email.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from idp.models import User
from portal import audit
from portal.clock import now
from portal.config import current_settings
from portal.mail import queue_mail


@dataclass(frozen=True)
class LockoutPolicy:
    free_failures: int = 3
    first_wait: timedelta = timedelta(seconds=30)
    max_failures: int = 8
    lock_duration: timedelta = timedelta(minutes=15)
    quiet_reset: timedelta = timedelta(hours=12)

    def wait_after(self, failures: int) -> timedelta | None:
        if failures >= self.max_failures:
            return self.lock_duration
        if failures >= self.free_failures:
            return min(self.first_wait * 2 ** (failures - self.free_failures), self.lock_duration)
        return None


POLICY = LockoutPolicy()


def is_locked(user: User) -> bool:
    return user.locked_until is not None and user.locked_until > now()


def record_failure(session: Session, user: User, policy: LockoutPolicy = POLICY) -> None:
    """Count one failed password, atomically (parallel guesses all count)."""
    current = now()
    table = User.__table__
    failures = session.execute(
        table.update()
        .where(table.c.id == user.id)
        .values(
            failed_logins=sa.case(
                (table.c.last_failed_login_at < current - policy.quiet_reset, 1),
                (table.c.last_failed_login_at.is_(None), 1),
                else_=table.c.failed_logins + 1,
            ),
            last_failed_login_at=current,
        )
        .returning(table.c.failed_logins)
    ).scalar_one()
    wait = policy.wait_after(failures)
    if wait is None:
        return
    session.execute(table.update().where(table.c.id == user.id).values(locked_until=current + wait))
    if failures == policy.max_failures:
        audit.record(session, "login.locked", outcome="failure", target_type="user", target_id=user.id,
                     details={"failures": failures, "until": (current + wait).isoformat()})
        queue_mail(session, user.email, f"[{current_settings().portal_name}] Connexion temporairement bloquée",
                   "account_locked", user=user, minutes=int(wait.total_seconds() // 60))


def record_success(session: Session, user: User) -> None:
    if user.failed_logins or user.locked_until is not None:
        user.failed_logins = 0
        user.locked_until = None


def unlock(session: Session, user: User, admin: User) -> None:
    user.failed_logins = 0
    user.locked_until = None
    audit.record(session, "login.unlocked", actor_id=admin.id, actor_label=admin.login,
                 target_type="user", target_id=user.id)
