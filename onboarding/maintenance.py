"""Forgetting what onboarding no longer needs: spent captcha challenges, and the
registrations whose email was never verified (their link expired long ago)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

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


# An upload takes seconds; anything unreferenced after this long was left by a process
# that died between writing the file and committing its row (kill -9, power cut).
ORPHAN_AGE = timedelta(hours=1)


def sweep_orphan_attestations(session: Session, store, older_than: datetime | None = None) -> int:
    """Remove stored files no access request refers to, and dead temporary files. The age
    is real time (the files' own timestamps), not the portal's clock."""
    from onboarding.models import AccessRequest

    limit = older_than or datetime.now(timezone.utc) - ORPHAN_AGE
    removed = 0
    batch: list[str] = []

    def flush() -> int:
        known = set(session.scalars(sa.select(AccessRequest.attestation_key)
                                    .where(AccessRequest.attestation_key.in_(batch))))
        gone = 0
        for key in batch:
            if key not in known:
                store.delete(key)
                gone += 1
        batch.clear()
        return gone

    for name, temporary in store.stale_entries(limit):
        if temporary:
            store.remove_temporary(name)
            removed += 1
            continue
        batch.append(name)
        if len(batch) >= 500:
            removed += flush()
    if batch:
        removed += flush()
    if removed:
        audit.record(session, "storage.orphans_removed", details={"files": removed})
    return removed
