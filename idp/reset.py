""""Réinitialiser mon mot de passe": the same answer whatever the address, a signed
single-use link valid 1 hour, then every session of the account ends."""
from __future__ import annotations

from typing import Callable

import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session
from wtforms import StringField

from idp.models import STATUS_ACTIVE, User
from idp.passwords import (
    DEFAULT_POLICY,
    NewPasswordForm,
    check_new_password,
    set_password,
)
from idp.sessions import revoke_all
from idp.tokens import (
    PURPOSE_RESET_PASSWORD,
    LinkError,
    consume_link,
    make_link_token,
    read_link_token,
)
from portal import audit
from portal.config import current_settings
from portal.db import db
from portal.mail import queue_mail
from portal.security import external_url, limiter

bp = Blueprint("reset", __name__)

SAME_ANSWER = ("Si un compte actif correspond à cette adresse, un mail contenant un lien pour choisir un nouveau "
               "mot de passe vient de lui être envoyé. Le lien est valable une heure.")


class ResetRequestForm(FlaskForm):
    email = StringField("Mail pour l'authentification")


@bp.route("/password/reset", methods=["GET", "POST"])
@limiter.limit("5 per minute; 30 per hour", methods=["POST"])
def request_reset():
    form = ResetRequestForm()
    if request.method == "POST" and form.validate():
        session = db.session
        email = (form.email.data or "").strip().lower()
        user = session.scalar(sa.select(User).where(User.email == email)) if email else None
        if user is not None and user.status == STATUS_ACTIVE and user.password_hash is not None:
            link = external_url("reset.choose_password", token=make_link_token(user, PURPOSE_RESET_PASSWORD))
            queue_mail(session, user.email, f"[{current_settings().portal_name}] Réinitialisation de votre mot de passe",
                       "password_reset", user=user, link=link)
        audit.record(session, "password.reset_requested", target_type="user" if user else None,
                     target_id=user.id if user else None, actor_label=email[:320] or None,
                     details={"known": user is not None})
        session.commit()
        flash(SAME_ANSWER, "success")
        return redirect(url_for("reset.request_reset"), code=303)
    return render_template("idp/reset_request.html", form=form)


def choose_password_from_link(token: str, purpose: str, *, heading: str,
                              invalid_page: Callable[[str], ResponseReturnValue],
                              finish: Callable[[Session, User], str]) -> ResponseReturnValue:
    """The page behind an emailed password link (activation, reset): GET shows the form
    with the policy, a valid POST consumes the link once and sets the password; `finish`
    does what the purpose adds and returns the message shown on the login page."""
    session = db.session
    try:
        claim = read_link_token(session, token, purpose)
    except LinkError as exc:
        return invalid_page(exc.reason)
    user = claim.user
    form = NewPasswordForm()
    errors: dict[str, list[str]] = {}
    if request.method == "POST" and form.validate():
        errors = check_new_password(session, user, form)
        if not errors:
            try:
                consume_link(session, claim)
            except LinkError as exc:
                session.rollback()
                return invalid_page(exc.reason)
            set_password(session, user, form.password.data)
            message = finish(session, user)
            session.commit()
            flash(message, "success")
            return redirect(url_for("login.login"), code=303)
    return render_template("idp/set_password.html", form=form, errors=errors, user=user, policy=DEFAULT_POLICY,
                           heading=heading), (422 if errors else 200)


def _invalid_reset_link(reason: str) -> ResponseReturnValue:
    return render_template("idp/reset_invalid.html", reason=reason), 400


def _finish_reset(session: Session, user: User) -> str:
    revoke_all(session, user, reason="revoked_by_reset")
    audit.record(session, "password.set", actor_id=user.id, actor_label=user.login,
                 target_type="user", target_id=user.id, details={"via": "reset"})
    queue_mail(session, user.email, f"[{current_settings().portal_name}] Votre mot de passe a été modifié",
               "password_changed", user=user)
    return "Votre mot de passe est enregistré ; vos autres sessions sont fermées. Vous pouvez vous connecter."


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
@limiter.limit("20 per hour", methods=["POST"])
def choose_password(token: str):
    return choose_password_from_link(token, PURPOSE_RESET_PASSWORD, heading="Choisissez un nouveau mot de passe",
                                     invalid_page=_invalid_reset_link, finish=_finish_reset)
