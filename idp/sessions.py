"""Server-side sessions: the cookie carries a random id, the database the truth.

A session can be revoked (logout, "Mes sessions", an admin), ends after an idle
timeout and an absolute lifetime, and records how the user authenticated (amr/acr) for
the OpenID Provider.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from functools import wraps
from typing import Callable

import sqlalchemy as sa
from flask import Flask, abort, g, redirect, request, url_for
from flask import session as cookie
from sqlalchemy.orm import Mapped, Session, joinedload, mapped_column, relationship

from idp.models import STATUS_ACTIVE, User
from portal import audit
from portal.clock import now
from portal.config import current_settings
from portal.db import Base, db

COOKIE_KEY = "sid"
CARRIED_OVER_LOGIN = ("oidc_reauth_after", "psc_pending")
# Writing last_seen on every request would make every page a write; once a minute is
# precise enough for an idle timeout counted in tens of minutes.
TOUCH_INTERVAL = timedelta(seconds=60)


def token_digest(token: str) -> str:
    """Only digests are stored: a stolen database copy holds no usable session id."""
    return hashlib.sha256(token.encode()).hexdigest()


class UserSession(Base):
    __tablename__ = "user_sessions"
    __table_args__ = (sa.Index("ix_user_sessions_user_id", "user_id", "revoked_at"),)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # sha256 of the cookie token
    # A second random id, safe to show and to put in ID tokens (`sid`) and forms.
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(255))
    amr: Mapped[list[str]] = mapped_column(sa.JSON)
    acr: Mapped[str] = mapped_column(sa.String(64))
    # After a Pro Santé Connect login: the ID token PSC issued, the hint its logout needs.
    psc_id_token: Mapped[str | None] = mapped_column(sa.Text)

    user: Mapped[User] = relationship()


def start_session(session: Session, user: User, amr: list[str], acr: str) -> UserSession:
    """A new session id at every login (no fixation): the old cookie content is dropped."""
    settings = current_settings()
    previous = cookie.get(COOKIE_KEY)
    if previous and isinstance(previous, str):
        # Logging in again (an application asked for a fresh login) replaces the session.
        old = session.get(UserSession, token_digest(previous))
        if old is not None and old.revoked_at is None:
            end_session(session, old, reason="replaced")
    token = secrets.token_urlsafe(32)
    current = now()
    record = UserSession(
        id=token_digest(token),
        public_id=secrets.token_hex(16),
        user_id=user.id,
        created_at=current,
        last_seen_at=current,
        expires_at=current + timedelta(seconds=settings.session_lifetime),
        ip=request.remote_addr,
        user_agent=(request.user_agent.string or "")[:255],
        amr=amr,
        acr=acr,
    )
    session.add(record)
    # Everything else in the cookie is dropped (no fixation), except the marks of a
    # journey that continues after the login: an application's forced re-login, a
    # Pro Santé Connect identity waiting to be linked.
    carried = {key: cookie[key] for key in CARRIED_OVER_LOGIN if key in cookie}
    cookie.clear()
    cookie.update(carried)
    cookie[COOKIE_KEY] = token
    cookie.permanent = False
    audit.record(session, "login.success", actor_id=user.id, actor_label=user.login or user.email,
                 target_type="user", target_id=user.id, details={"amr": amr})
    return record


def end_session(session: Session, record: UserSession, reason: str = "logout") -> None:
    from idp.provider.backchannel import sessions_ended

    if record.revoked_at is None:
        record.revoked_at = now()
        # The applications this session opened are told (back-channel logout).
        sessions_ended(session, [record.id])
    audit.record(session, f"session.{reason}", actor_id=record.user_id, target_type="session",
                 target_id=record.public_id)


def revoke_all(session: Session, user: User, *, except_id: str | None = None, reason: str) -> int:
    from idp.provider.backchannel import sessions_ended

    query = sa.select(UserSession.id).where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
    if except_id:
        query = query.where(UserSession.id != except_id)
    ids = list(session.scalars(query))
    if ids:
        session.execute(sa.update(UserSession).where(UserSession.id.in_(ids), UserSession.revoked_at.is_(None))
                        .values(revoked_at=now()).execution_options(synchronize_session=False))
        sessions_ended(session, ids)
    audit.record(session, f"session.{reason}", actor_id=user.id, target_type="user", target_id=user.id,
                 details={"revoked": len(ids)})
    return len(ids)


def _load_current():
    g.user = None
    g.user_session = None
    g.user_id = None
    token = cookie.get(COOKIE_KEY)
    if not token or not isinstance(token, str):
        return
    # The user comes in the same query: every page needs both.
    record = db.session.get(UserSession, token_digest(token), options=[joinedload(UserSession.user)])
    current = now()
    settings = current_settings()
    if (
        record is None
        or record.revoked_at is not None
        or record.expires_at <= current
        or record.last_seen_at + timedelta(seconds=settings.session_idle_timeout) <= current
        or record.user.status != STATUS_ACTIVE
    ):
        cookie.pop(COOKIE_KEY, None)
        return
    if current - record.last_seen_at >= TOUCH_INTERVAL:
        record.last_seen_at = current
        db.session.commit()
    g.user = record.user
    g.user_session = record
    g.user_id = record.user_id
    if (record.user.cgu_version_id != _current_cgu_id() and request.endpoint not in CGU_EXEMPT_ENDPOINTS
            and request.blueprint not in CGU_EXEMPT_BLUEPRINTS):
        g.cgu_outdated = True
        if request.endpoint == "oidc.authorize" and "none" in (request.values.get("prompt") or "").split():
            return None  # no page may be shown: the provider answers interaction_required
        return redirect(url_for("account.accept_cgu", next=request.full_path.rstrip("?")))
    return None


# Pages reachable before accepting a newer CGU version: the CGU themselves, the legal
# pages, logging out.
CGU_EXEMPT_ENDPOINTS = {
    "account.accept_cgu", "cgu.show_current", "login.logout", "static", "portal.legal_notice",
    "portal.contact", "portal.accessibility", "oidc.end_session", "psc.logged_out", "healthz", "readyz", "metrics",
}
# The JSON and media endpoints behind forms (autocomplete, captcha images) answer as usual.
CGU_EXEMPT_BLUEPRINTS = {"referentials", "captcha"}
CGU_CACHE_SECONDS = 30


def _current_cgu_id() -> int | None:
    """The current CGU version, cached briefly: publishing is rare, requests are not."""
    from flask import current_app

    from portal.cgu import current_cgu

    cached = current_app.extensions.get("enrs.cgu_cache")
    current = now()
    if cached is None or (current - cached[1]).total_seconds() > CGU_CACHE_SECONDS or cached[1] > current:
        cgu = current_cgu(db.session)
        cached = (cgu.id if cgu else None, current)
        current_app.extensions["enrs.cgu_cache"] = cached
    return cached[0]


def current_user() -> User | None:
    return g.get("user")


def init_app(app: Flask) -> None:
    app.before_request(_load_current)

    @app.context_processor
    def _user():
        return {"current_user": g.get("user")}


def _requires(allowed: Callable[[User], bool]) -> Callable[[Callable], Callable]:
    """Anonymous visitors go to the login page (and come back); others need `allowed`."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = g.get("user")
            if user is None:
                return redirect(url_for("login.login", next=request.full_path.rstrip("?")))
            if not allowed(user):
                abort(403)
            return view(*args, **kwargs)
        return wrapper
    return decorator


login_required = _requires(lambda user: True)
admin_required = _requires(lambda user: user.is_admin)
super_admin_required = _requires(lambda user: user.is_super_admin)
