"""Forgetting what the provider no longer needs: used or expired codes, dead tokens,
delivered logout notices. Run by the periodic sweep (and the worker)."""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from idp.provider.models import AuthorizationCode, BackchannelLogout, Token
from portal.clock import now

# Kept a while after they died: a reused code or refresh token is still recognised (and
# its family revoked) during that time, and the audit trail can be cross-checked.
GRACE = timedelta(days=1)
NOTICES_KEPT = timedelta(days=7)


def purge(session: Session) -> dict[str, int]:
    limit = now() - GRACE
    codes = session.execute(sa.delete(AuthorizationCode).where(AuthorizationCode.expires_at < limit)).rowcount
    tokens = session.execute(sa.delete(Token).where(
        Token.access_expires_at < limit,
        sa.or_(Token.refresh_expires_at.is_(None), Token.refresh_expires_at < limit,
               Token.revoked_at < limit),
    )).rowcount
    notices = session.execute(sa.delete(BackchannelLogout).where(
        sa.or_(BackchannelLogout.delivered_at < now() - NOTICES_KEPT,
               BackchannelLogout.created_at < now() - NOTICES_KEPT))).rowcount
    return {"codes": codes, "tokens": tokens, "logout_notices": notices}


def purge_job() -> None:
    from portal.db import db

    purge(db.session)
    db.session.commit()
