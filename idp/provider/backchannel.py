"""OpenID Connect Back-Channel Logout: when a portal session ends, every application it
opened receives a signed logout token.

The notices are rows written in the same transaction that ends the session, so none is
lost: the request hands them to the per-process background thread once committed, and
the periodic sweep retries those an application did not accept (with backoff), as the
mail outbox does.
"""
from __future__ import annotations

import logging
import secrets
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from typing import Iterable

import sqlalchemy as sa
from flask import Flask, current_app, g, has_request_context
from joserfc import jwt
from sqlalchemy import event
from sqlalchemy.orm import Session

from idp.provider.models import BackchannelLogout, Client, SessionClient
from portal.clock import now
from portal.db import db

log = logging.getLogger("enrs.oidc.backchannel")

EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_SECONDS = 120
POST_TIMEOUT_SECONDS = 5
CLAIM_SECONDS = 60
MAX_ATTEMPTS = 12


def sessions_ended(session: Session, session_ids: Iterable[str]) -> int:
    """Queue a logout notice for each application these portal sessions opened."""
    from idp.sessions import UserSession

    session_ids = list(session_ids)
    if not session_ids:
        return 0
    rows = session.execute(
        sa.select(Client.id, UserSession.public_id, UserSession.user_id)
        .join(SessionClient, SessionClient.client_pk == Client.id)
        .join(UserSession, UserSession.id == SessionClient.session_id)
        .where(SessionClient.session_id.in_(session_ids), Client.backchannel_logout_uri.is_not(None))
    ).all()
    if not rows:
        return 0
    from idp.models import User

    subjects = dict(session.execute(sa.select(User.id, User.public_id)
                                    .where(User.id.in_({user_id for _, _, user_id in rows}))).all())
    current = now()
    notices = [BackchannelLogout(client_pk=client_pk, subject=subjects[user_id], sid=sid, created_at=current,
                                 next_attempt_at=current) for client_pk, sid, user_id in rows]
    session.add_all(notices)
    session.info.setdefault("enrs_backchannel", []).extend(notices)
    return len(notices)


@event.listens_for(Session, "after_commit")
def _hand_over_after_commit(session: Session) -> None:
    notices = session.info.pop("enrs_backchannel", None)
    if not notices:
        return
    ids = [notice.id for notice in notices if notice.id is not None]
    if ids and has_request_context():
        g.setdefault("enrs_backchannel_ids", []).extend(ids)


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, _previous: object) -> None:
    session.info.pop("enrs_backchannel", None)


def init_app(app: Flask) -> None:
    from idp.provider.purge import purge_job
    from portal.worker import every

    app.extensions.setdefault("enrs.periodic", []).extend([deliver_due, every(3600, purge_job)])

    @app.teardown_request
    def _submit(_exc: BaseException | None) -> None:
        ids = g.pop("enrs_backchannel_ids", None)
        if ids:
            app.extensions["enrs.mail.thread"].submit_job(lambda: deliver(ids))


def logout_token(client: Client, subject: str, sid: str) -> str:
    from idp.provider.keys import key_ring
    from idp.provider.server import issuer

    alg = client.id_token_signed_response_alg
    kid, key = key_ring(db.session).signing[alg]
    issued = int(now().timestamp())
    claims = {"iss": issuer(), "aud": client.client_id, "iat": issued, "exp": issued + LOGOUT_TOKEN_SECONDS,
              "jti": secrets.token_urlsafe(16), "sub": subject, "sid": sid, "events": {EVENT: {}}}
    return jwt.encode({"alg": alg, "kid": kid, "typ": "logout+jwt"}, claims, key, algorithms=[alg])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a refusal: followed, the POST would become a GET without the token
    (an application's login page answering 200 would count as a delivered notice)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's signature
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post(uri: str, token: str) -> None:
    body = urllib.parse.urlencode({"logout_token": token}).encode()
    request = urllib.request.Request(uri, data=body, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    # OIDC Back-Channel Logout §2.8: 200 (or 204) means done; anything else, a redirect
    # included (urllib raises HTTPError for the 3xx it does not follow), is retried.
    with _OPENER.open(request, timeout=POST_TIMEOUT_SECONDS) as response:  # noqa: S310 (registered https URI)
        if response.status not in (200, 204):
            raise urllib.error.HTTPError(uri, response.status, "refused", response.headers, None)


def deliver(ids: Iterable[int] | None = None, limit: int = 200) -> int:
    """Send the given notices, or those due; returns how many the applications accepted."""
    session = db.new_session()
    delivered = 0
    try:
        current = now()
        table = BackchannelLogout.__table__
        if ids is None:
            ids = session.scalars(
                sa.select(table.c.id).where(table.c.delivered_at.is_(None), table.c.next_attempt_at <= current,
                                            sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < current),
                                            table.c.attempts < MAX_ATTEMPTS)
                .order_by(table.c.id).limit(limit)
            ).all()
        for notice_id in ids:
            claimed = session.execute(
                table.update().where(table.c.id == notice_id, table.c.delivered_at.is_(None),
                                     sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < current))
                .values(claimed_until=current + timedelta(seconds=CLAIM_SECONDS), attempts=table.c.attempts + 1)
            ).rowcount
            session.commit()
            if claimed != 1:
                continue
            notice = session.get(BackchannelLogout, notice_id, populate_existing=True)
            client = session.get(Client, notice.client_pk)
            try:
                if client is None or not client.backchannel_logout_uri:
                    raise LookupError("application removed")
                _post(client.backchannel_logout_uri, logout_token(client, notice.subject, notice.sid))
            except Exception as exc:  # network, refusal, removed app: retried with backoff
                notice.last_error = f"{type(exc).__name__}: {exc}"[:500]
                notice.claimed_until = None
                notice.next_attempt_at = now() + timedelta(seconds=min(3600, 15 * 2 ** notice.attempts))
                log.warning("back-channel logout to client %s failed: %s", notice.client_pk, notice.last_error)
            else:
                notice.delivered_at = now()
                delivered += 1
            session.commit()
    finally:
        session.close()
    return delivered


def deliver_due() -> None:
    if current_app:
        deliver()
