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
