"""Forgetting what idp no longer needs: finished login attempts, old sessions, PSC
identities nobody came back for."""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from idp.codes import PendingLogin
from idp.psc.models import PscPending
from idp.sessions import UserSession
from portal.clock import now

# "Mes sessions" and the admins show recent sessions; older ones serve no one.
ENDED_SESSIONS_KEPT = timedelta(days=30)


def purge(session: Session) -> dict[str, int]:
    current = now()
    day_ago = current - timedelta(days=1)
    pending = session.execute(sa.delete(PendingLogin).where(PendingLogin.expires_at < day_ago)).rowcount
    psc = session.execute(sa.delete(PscPending).where(PscPending.expires_at < day_ago)).rowcount
    # Tokens and codes of these sessions go with them (ON DELETE CASCADE).
    sessions = session.execute(sa.delete(UserSession).where(
        sa.or_(UserSession.expires_at < current - ENDED_SESSIONS_KEPT,
               UserSession.revoked_at < current - ENDED_SESSIONS_KEPT))).rowcount
    return {"pending_logins": pending, "psc_pending": psc, "sessions": sessions}


def end_lapsed_sessions(session: Session, idle_timeout: int) -> int:
    """Sessions past their idle timeout or lifetime are ended like a logout, so that the
    applications they opened get their back-channel logout notice."""
    from idp.provider.backchannel import sessions_ended

    current = now()
    ids = list(session.scalars(sa.select(UserSession.id).where(
        UserSession.revoked_at.is_(None),
        sa.or_(UserSession.expires_at <= current,
               UserSession.last_seen_at <= current - timedelta(seconds=idle_timeout))).limit(1000)))
    if ids:
        session.execute(sa.update(UserSession).where(UserSession.id.in_(ids), UserSession.revoked_at.is_(None))
                        .values(revoked_at=current).execution_options(synchronize_session=False))
        sessions_ended(session, ids)
    return len(ids)
