"""Emailed one-time codes of the login's second step, held by a pending-login record.

The record is what ties the steps together server-side: the browser only carries its
random id, so no step can be skipped, replayed or moved to another browser.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from idp.models import User
from portal.clock import now
from portal.config import current_settings
from portal.db import Base
from portal.mail import queue_mail
from portal.observability import CODES_SENT

MAX_CODE_ATTEMPTS = 5
RESEND_INTERVAL = timedelta(seconds=60)
# The second step must be completed within this time, whatever the code's own validity.
PENDING_LOGIN_LIFETIME = timedelta(minutes=30)


class PendingLogin(Base):
    __tablename__ = "pending_logins"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # sha256 of the browser's token
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    next_url: Mapped[str | None] = mapped_column(sa.String(2000))
    code_hash: Mapped[str | None] = mapped_column(sa.String(64))
    code_expires_at: Mapped[datetime | None]
    code_sent_at: Mapped[datetime | None]
    code_attempts: Mapped[int] = mapped_column(default=0)
    consumed_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


def _digest(pending_id: str, code: str) -> str:
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, f"{pending_id}:{code}".encode(), hashlib.sha256).hexdigest()


def new_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def send_code(session: Session, pending: PendingLogin) -> None:
    """A fresh code replaces (voids) the previous one and resets the attempt count."""
    settings = current_settings()
    code = new_code()
    current = now()
    pending.code_hash = _digest(pending.id, code)
    pending.code_expires_at = current + timedelta(seconds=settings.email_code_ttl)
    pending.code_sent_at = current
    pending.code_attempts = 0
    CODES_SENT.inc()
    queue_mail(session, pending.user.email, f"[{settings.portal_name}] Code d'authentification",
               "login_code", code=code, ttl=settings.email_code_ttl, user=pending.user)


def can_resend(pending: PendingLogin) -> bool:
    return pending.code_sent_at is None or now() - pending.code_sent_at >= RESEND_INTERVAL


class CodeRefused(Exception):
    """reason: "wrong" (attempts left), "exhausted", "expired" or "used"."""

    def __init__(self, reason: str, attempts_left: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts_left = attempts_left


def count_attempt(session: Session, pending: PendingLogin) -> int:
    """Count one try at the second step before looking at it, with a conditional UPDATE,
    so that parallel guesses cannot exceed the limit; returns the tries made so far."""
    current = now()
    table = PendingLogin.__table__
    attempts = session.execute(
        table.update()
        .where(
            table.c.id == pending.id,
            table.c.consumed_at.is_(None),
            table.c.code_attempts < MAX_CODE_ATTEMPTS,
            table.c.expires_at > current,
        )
        .values(code_attempts=table.c.code_attempts + 1)
        .returning(table.c.code_attempts)
    ).scalar()
    session.commit()
    if attempts is None:
        session.refresh(pending)
        if pending.consumed_at is not None:
            raise CodeRefused("used")
        if pending.code_attempts >= MAX_CODE_ATTEMPTS:
            raise CodeRefused("exhausted")
        raise CodeRefused("expired")
    return attempts


def email_code_matches(pending: PendingLogin, code: str) -> bool:
    """The emailed code, still valid, compared in constant time."""
    if pending.code_hash is None or pending.code_expires_at is None or pending.code_expires_at <= now():
        return False
    return len(code) == 6 and hmac.compare_digest(pending.code_hash, _digest(pending.id, code))


def email_code_expired(pending: PendingLogin) -> bool:
    return pending.code_expires_at is not None and pending.code_expires_at <= now()


def consume(session: Session, pending: PendingLogin) -> None:
    """End the pending login once: of two concurrent right answers, one logs in."""
    table = PendingLogin.__table__
    won = session.execute(
        table.update().where(table.c.id == pending.id, table.c.consumed_at.is_(None)).values(consumed_at=now())
    ).rowcount
    if won != 1:
        session.rollback()
        raise CodeRefused("used")
