"""Forgetting what onboarding no longer needs: spent captcha challenges, and the
registrations whose email was never verified (their link expired long ago)."""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from idp.models import STATUS_EMAIL_PENDING, User
from onboarding.models import CaptchaChallenge
from portal import audit
from portal.clock import now

UNVERIFIED_KEPT = timedelta(days=30)


def purge(session: Session) -> dict[str, int]:
    current = now()
    challenges = session.execute(sa.delete(CaptchaChallenge).where(
        CaptchaChallenge.expires_at < current - timedelta(hours=1))).rowcount
    stale = list(session.scalars(sa.select(User.id).where(User.status == STATUS_EMAIL_PENDING,
                                                          User.created_at < current - UNVERIFIED_KEPT)))
    if stale:
        session.execute(sa.delete(User).where(User.id.in_(stale), User.status == STATUS_EMAIL_PENDING))
        audit.record(session, "account.registration_expired", details={"accounts": len(stale)})
    return {"captcha_challenges": challenges, "unverified_registrations": len(stale)}
