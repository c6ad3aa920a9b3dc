""""Réinitialiser mon mot de passe": the same answer whatever the address, a signed
single-use link valid 1 hour, then every session of the account ends."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import StringField

from idp.models import STATUS_ACTIVE, User
from idp.passwords import DEFAULT_POLICY, NewPasswordForm, check_new_password, set_password
from idp.sessions import revoke_all
from idp.tokens import PURPOSE_RESET_PASSWORD, LinkError, consume_link, make_link_token, read_link_token
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


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
@limiter.limit("20 per hour", methods=["POST"])
def choose_password(token: str):
    session = db.session
    try:
        claim = read_link_token(session, token, PURPOSE_RESET_PASSWORD)
    except LinkError as exc:
        return render_template("idp/reset_invalid.html", reason=exc.reason), 400
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
                return render_template("idp/reset_invalid.html", reason=exc.reason), 400
            set_password(session, user, form.password.data)
            revoke_all(session, user, reason="revoked_by_reset")
            audit.record(session, "password.set", actor_id=user.id, actor_label=user.login,
                         target_type="user", target_id=user.id, details={"via": "reset"})
            queue_mail(session, user.email, f"[{current_settings().portal_name}] Votre mot de passe a été modifié",
                       "password_changed", user=user)
            session.commit()
            flash("Votre mot de passe est enregistré ; vos autres sessions sont fermées. "
                  "Vous pouvez vous connecter.", "success")
            return redirect(url_for("login.login"), code=303)
    return render_template("idp/set_password.html", form=form, errors=errors, user=user, policy=DEFAULT_POLICY,
                           heading="Choisissez un nouveau mot de passe"), (422 if errors else 200)
