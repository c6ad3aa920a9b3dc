"""Signed links sent by email (email verification, activation, password reset).

A link is bound to one purpose, expires, and is single use: it carries the account's
security stamp, and consuming it rotates the stamp with a conditional UPDATE, so the
same link (or any older link of that account, or one issued before a password change)
stops working.
"""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app
from itsdangerous import (
    BadSignature,
    SignatureExpired,
    TimestampSigner,
    URLSafeTimedSerializer,
)
from sqlalchemy.orm import Session

from idp.models import User, new_security_stamp
from portal.clock import now

PURPOSE_VERIFY_EMAIL = "verify-email"
PURPOSE_ACTIVATE = "activate"
PURPOSE_RESET_PASSWORD = "reset-password"
PURPOSE_CHANGE_EMAIL = "change-email"

MAX_AGE = {
    PURPOSE_VERIFY_EMAIL: 48 * 3600,
    PURPOSE_ACTIVATE: 72 * 3600,
    PURPOSE_RESET_PASSWORD: 3600,
    PURPOSE_CHANGE_EMAIL: 24 * 3600,
}


class LinkError(Exception):
    """Why a link was refused: "expired", "invalid" or "used"."""

    def __init__(self, reason: str, user: User | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user


class _ClockSigner(TimestampSigner):
    """Reads the portal's clock, so that tests can expire links without waiting."""

    def get_timestamp(self) -> int:
        return int(now().timestamp())


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        current_app.config["SECRET_KEY"], salt=f"enrs-link-{purpose}", signer=_ClockSigner
    )


def make_link_token(user: User, purpose: str, **extra: str) -> str:
    """`extra` travels signed with the link (e.g. the new address of an email change)."""
    if purpose not in MAX_AGE:
        raise ValueError(f"unknown link purpose {purpose}")
    return _serializer(purpose).dumps({**extra, "u": user.public_id, "s": user.security_stamp})


@dataclass
class LinkClaim:
    user: User
    stamp: str
    extra: dict[str, str]


def read_link_token(session: Session, token: str, purpose: str) -> LinkClaim:
    """The account a link speaks for, without consuming it (to show a form first)."""
    try:
        payload = _serializer(purpose).loads(token, max_age=MAX_AGE[purpose])
    except SignatureExpired:
        raise LinkError("expired") from None
    except BadSignature:
        raise LinkError("invalid") from None
    if not isinstance(payload, dict) or not {"u", "s"} <= payload.keys():
        raise LinkError("invalid")
    user = session.scalar(sa.select(User).where(User.public_id == str(payload["u"])))
    if user is None:
        raise LinkError("invalid")
    if user.security_stamp != payload["s"]:
        raise LinkError("used", user)
    extra = {k: str(v) for k, v in payload.items() if k not in ("u", "s")}
    return LinkClaim(user=user, stamp=str(payload["s"]), extra=extra)


def consume_link(session: Session, claim: LinkClaim) -> None:
    """Use the link once: exactly one of two concurrent uses gets through."""
    fresh = new_security_stamp()
    result = session.execute(
        sa.update(User)
        .where(User.id == claim.user.id, User.security_stamp == claim.stamp)
        .values(security_stamp=fresh)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise LinkError("used", claim.user)
    claim.user.security_stamp = fresh


__all__ = [
    "LinkError", "LinkClaim", "make_link_token", "read_link_token", "consume_link",
    "PURPOSE_VERIFY_EMAIL", "PURPOSE_ACTIVATE", "PURPOSE_RESET_PASSWORD", "PURPOSE_CHANGE_EMAIL",
]
