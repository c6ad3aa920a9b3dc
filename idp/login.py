"""J3 login: "Veuillez vous authentifier" (identifier + password), then the code sent by
mail, then a server-side session."""
from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa
from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask import session as cookie
from flask_wtf import FlaskForm
from sqlalchemy.orm import joinedload
from wtforms import HiddenField, PasswordField, StringField

from idp import codes, lockout, totp
from idp.codes import CodeRefused, PendingLogin
from idp.models import STATUS_ACTIVE, User
from idp.passwords import hash_password, needs_rehash, verify_password
from idp.sessions import end_session, start_session, token_digest
from portal import audit
from portal.clock import now
from portal.db import db
from portal.security import limiter, safe_next

bp = Blueprint("login", __name__)

PENDING_KEY = "pending_login"
GENERIC_FAILURE = "Identifiant ou mot de passe incorrect."
# How the session was proven, for the OpenID Provider's amr/acr claims (RFC 8176 values).
AMR_EMAIL_CODE = ["pwd", "otp", "mca"]
ACR_EMAIL_CODE = "urn:enrs:acr:pwd-otp-email"
AMR_TOTP = ["pwd", "otp", "mfa"]
AMR_RECOVERY_CODE = ["pwd", "kba", "mfa"]
ACR_TOTP = "urn:enrs:acr:pwd-otp-app"


class LoginForm(FlaskForm):
    username = StringField("Identifiant ou mail pour l'authentification")
    password = PasswordField("Mot de passe")
    next = HiddenField()


class CodeForm(FlaskForm):
    code = StringField("Code reçu par mail")


def find_account(session, username: str) -> tuple[User | None, bool]:
    """The account named by its email or login, and whether it has an authenticator app
    (read in the same round trip: the password step needs both)."""
    value = (username or "").strip().lower()
    if not value or len(value) > 320:
        return None, False
    column = User.email if "@" in value else User.login
    row = session.execute(sa.select(User, totp.app_enrolled(User.id)).where(column == value)).one_or_none()
    return (row[0], bool(row[1])) if row is not None else (None, False)


def _failed(response) -> bool:
    return response.status_code == 401


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit("30 per minute; 300 per hour", methods=["POST"])
# Failed attempts from one address: the per-address half of the brute-force protection.
@limiter.limit("20 per 10 minutes; 60 per day", methods=["POST"], deduct_when=_failed)
def login():
    form = LoginForm()
    if request.method == "GET":
        form.next.data = safe_next(request.args.get("next"), "")
        # An application may name who should log in (login_hint): the field is pre-filled.
        form.username.data = (request.args.get("login_hint") or "")[:320] or None
        # An application may also ask for a fresh login (prompt=login, max_age): then the
        # form is shown even to a logged-in user.
        if g.get("user") is not None and request.args.get("reauth") != "1":
            return redirect(safe_next(form.next.data, url_for("dashboard.apps")))
    if request.method == "POST" and form.validate():
        session = db.session
        user, app_enrolled = find_account(session, form.username.data or "")
        # The hash is computed whether or not the account exists or is locked, so that
        # neither shows in the response time.
        password_ok = verify_password(user.password_hash if user else None, form.password.data or "")
        locked = user is not None and lockout.is_locked(user)
        if user is None or not password_ok or user.status != STATUS_ACTIVE or locked:
            if user is not None and not password_ok and not locked:
                lockout.record_failure(session, user)
            audit.record(session, "login.password_refused", outcome="failure",
                         actor_label=(form.username.data or "")[:320],
                         target_type="user" if user else None, target_id=user.id if user else None,
                         details={"locked": locked} if locked else None)
            session.commit()
            form.password.data = ""
            return render_template("idp/login.html", form=form, error=GENERIC_FAILURE), 401
        lockout.record_success(session, user)
        if needs_rehash(user.password_hash):
            user.password_hash = hash_password(form.password.data)
        token = secrets.token_urlsafe(32)
        current = now()
        pending = PendingLogin(
            id=token_digest(token), user_id=user.id, created_at=current,
            expires_at=current + codes.PENDING_LOGIN_LIFETIME,
            next_url=safe_next(form.next.data, "") or None, user=user,
        )
        session.add(pending)
        # With an authenticator app the code comes from the app; the email code remains
        # one click away ("Recevoir plutôt un code par mail").
        if not app_enrolled:
            codes.send_code(session, pending)
        audit.record(session, "login.password_ok", actor_id=user.id, actor_label=user.login,
                     target_type="user", target_id=user.id)
        session.commit()
        cookie[PENDING_KEY] = token
        return redirect(url_for("login.code"), code=303)
    return render_template("idp/login.html", form=form, error=None)


# The pending login, its user, and whether that user has an authenticator app: what
# every second-step page needs, in one round trip.
_PENDING = (sa.select(PendingLogin, totp.app_enrolled(PendingLogin.user_id))
            .options(joinedload(PendingLogin.user))
            .where(PendingLogin.id == sa.bindparam("id")))


def _pending() -> tuple[PendingLogin, bool] | tuple[None, bool]:
    """(the browser's pending login, whether its user has an authenticator app), or
    (None, False) when there is none, or it is used or expired."""
    token = cookie.get(PENDING_KEY)
    if not token or not isinstance(token, str):
        return None, False
    row = db.session.execute(_PENDING, {"id": token_digest(token)}).one_or_none()
    if row is None:
        return None, False
    pending, app_enrolled = row
    if pending.consumed_at is not None or pending.expires_at <= now():
        return None, False
    return pending, bool(app_enrolled)


def _restart(message: str):
    cookie.pop(PENDING_KEY, None)
    flash(message, "error")
    return redirect(url_for("login.login"), code=303)


def _second_factor(session, pending: PendingLogin, app_enrolled: bool, answer: str) -> tuple[list[str], str] | None:
    """(amr, acr) of the second factor the answer proves, or None. Tried in turn: the
    authenticator app (when `app_enrolled`), the emailed code, a recovery code."""
    user = pending.user
    digits = "".join(ch for ch in answer if ch.isdigit())
    if app_enrolled and len(digits) == 6 and digits == answer.replace(" ", "") and totp.verify_totp(session, user, digits):
        return AMR_TOTP, ACR_TOTP
    if codes.email_code_matches(pending, digits):
        return AMR_EMAIL_CODE, ACR_EMAIL_CODE
    if app_enrolled and totp.verify_recovery_code(session, user, answer):
        return AMR_RECOVERY_CODE, ACR_TOTP
    return None


def _code_page(form: CodeForm, pending: PendingLogin, app_enrolled: bool, error: str | None, status: int = 200):
    return render_template("idp/login_code.html", form=form, error=error, pending=pending,
                           app_enrolled=app_enrolled, email_sent=pending.code_hash is not None), status


@bp.route("/login/code", methods=["GET", "POST"])
@limiter.limit("20 per minute", methods=["POST"])
def code():
    pending, app_enrolled = _pending()
    if pending is None:
        return _restart("Votre demande de connexion a expiré. Veuillez vous authentifier à nouveau.")
    form = CodeForm()
    if request.method == "POST" and form.validate():
        session = db.session
        answer = (form.code.data or "").strip()[:64]
        try:
            attempts = codes.count_attempt(session, pending)
            proof = _second_factor(session, pending, app_enrolled, answer)
            if proof is None:
                if codes.email_code_expired(pending) and not app_enrolled:
                    raise CodeRefused("expired")
                left = codes.MAX_CODE_ATTEMPTS - attempts
                raise CodeRefused("wrong" if left else "exhausted", left)
            codes.consume(session, pending)
        except CodeRefused as refused:
            session.rollback()
            audit.record(session, "login.code_refused", outcome="failure", actor_id=pending.user_id,
                         target_type="user", target_id=pending.user_id, details={"reason": refused.reason})
            session.commit()
            if refused.reason == "used":
                return _restart("Ce code a déjà été utilisé. Veuillez vous authentifier à nouveau.")
            form.code.data = ""
            message = REFUSALS[refused.reason].format(left=refused.attempts_left,
                                                      s="s" if refused.attempts_left > 1 else "")
            return _code_page(form, pending, app_enrolled, message, 401)
        amr, acr = proof
        start_session(session, pending.user, amr, acr)
        session.commit()
        return redirect(safe_next(pending.next_url, url_for("dashboard.apps")), code=303)
    return _code_page(form, pending, app_enrolled, None)


REFUSALS = {
    "wrong": "Le code saisi est incorrect. Il vous reste {left} essai{s}.",
    "exhausted": "Trop de codes incorrects : ce code n'est plus valable. Demandez un nouveau code.",
    "expired": "Ce code a expiré. Demandez un nouveau code.",
}


@bp.post("/login/resend")
@limiter.limit("5 per minute")
def resend():
    pending, _app_enrolled = _pending()
    if pending is None:
        return _restart("Votre demande de connexion a expiré. Veuillez vous authentifier à nouveau.")
    session = db.session
    if not codes.can_resend(pending):
        wait = int((pending.code_sent_at + codes.RESEND_INTERVAL - now()).total_seconds()) + 1
        flash(f"Un code vient d'être envoyé. Vous pourrez en demander un nouveau dans {wait} secondes.", "error")
    else:
        first = pending.code_hash is not None
        codes.send_code(session, pending)
        audit.record(session, "login.code_resent", actor_id=pending.user_id, target_type="user",
                     target_id=pending.user_id)
        session.commit()
        flash("Un code vous a été envoyé par mail." + (" Le précédent n'est plus valable." if first else ""), "success")
    return redirect(url_for("login.code"), code=303)


@bp.post("/login/cancel")
def cancel():
    pending, _app_enrolled = _pending()
    if pending is not None:
        pending.expires_at = now() - timedelta(seconds=1)
        db.session.commit()
    cookie.pop(PENDING_KEY, None)
    return redirect(url_for("login.login"), code=303)


@bp.post("/logout")
def logout():
    record = g.get("user_session")
    psc_logout = None
    if record is not None:
        from idp.psc.views import logout_redirect

        psc_logout = logout_redirect(record)
        end_session(db.session, record)
        db.session.commit()
    cookie.clear()
    if psc_logout:
        # A session opened with Pro Santé Connect also ends PSC's session, which comes back.
        return redirect(psc_logout, code=303)
    flash("Vous êtes déconnecté.", "success")
    return redirect(url_for("portal.home"), code=303)
