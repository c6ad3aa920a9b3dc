"""The audit log: who decided what, when, about whom, and why.

Entries are written in the same transaction as the decision they describe, so a
decision and its trace are committed (or rolled back) together.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import has_request_context, request
from sqlalchemy.orm import Mapped, Session, mapped_column

from portal.clock import now
from portal.db import Base


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_at", "at"),
        sa.Index("ix_audit_log_action", "action"),
        sa.Index("ix_audit_log_target", "target_type", "target_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime]
    # The actor is kept as an id and a readable label: the label survives a deleted user.
    actor_id: Mapped[int | None]
    actor_label: Mapped[str | None] = mapped_column(sa.String(320))
    action: Mapped[str] = mapped_column(sa.String(64))
    target_type: Mapped[str | None] = mapped_column(sa.String(32))
    target_id: Mapped[str | None] = mapped_column(sa.String(64))
    outcome: Mapped[str] = mapped_column(sa.String(16), default="success")
    reason: Mapped[str | None] = mapped_column(sa.Text)
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    details: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)


def record(
    session: Session,
    action: str,
    *,
    actor_id: int | None = None,
    actor_label: str | None = None,
    target_type: str | None = None,
    target_id: object = None,
    outcome: str = "success",
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=now(),
        actor_id=actor_id,
        actor_label=actor_label,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        outcome=outcome,
        reason=reason,
        ip=request.remote_addr if has_request_context() else None,
        details=details,
    )
    session.add(entry)
    from portal.observability import count_audit_event

    count_audit_event(action, outcome, details)
    return entry


def purge_older_than(session: Session, days: int) -> int:
    """Audit retention: entries older than `days` go (ENRS_AUDIT_RETENTION_DAYS)."""
    from datetime import timedelta

    return session.execute(sa.delete(AuditEntry).where(AuditEntry.at < now() - timedelta(days=days))).rowcount
