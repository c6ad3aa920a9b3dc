"""J4 "Mon compte": contacts, authentication email change, password change, sessions
(revoke one / all others) and the CGU accepted. Every security change is in the audit
log and told to the owner by email."""
from __future__ import annotations

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField

from idp import identity
from idp.models import User
from idp.passwords import (
    DEFAULT_POLICY,
    NewPasswordForm,
    check_new_password,
    set_password,
    verify_password,
)
from idp.sessions import UserSession, end_session, login_required, revoke_all
from idp.tokens import (
    PURPOSE_CHANGE_EMAIL,
    LinkError,
    consume_link,
    make_link_token,
    read_link_token,
)
from portal import audit
from portal.cgu import CguVersion, current_cgu
from portal.clock import now
from portal.config import current_settings
from portal.db import db
from portal.mail import queue_mail
from portal.security import external_url, limiter

bp = Blueprint("account", __name__, url_prefix="/account")

WRONG_PASSWORD = "Mot de passe actuel incorrect."


class ContactsForm(FlaskForm):
    phone_pro = StringField("Téléphone professionnel")
    phone_mobile = StringField("Téléphone mobile")
    contact_email = StringField("Mail pour la communication")


class EmailChangeForm(FlaskForm):
    new_email = StringField("Nouveau mail pour l'authentification")
    email_password = PasswordField("Mot de passe actuel")


class PasswordChangeForm(NewPasswordForm):
    current_password = PasswordField("Mot de passe actuel")


def _page(status: int = 200, **overrides):
    """Mon compte, with the forms as submitted (errors shown next to their fields)."""
    user: User = g.user
    sessions = db.session.scalars(
        sa.select(UserSession)
        .where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None), UserSession.expires_at > now())
        .order_by(UserSession.last_seen_at.desc())
    ).all()
    context = {
        "user": user,
        "sessions": sessions,
        "accepted_cgu": db.session.get(CguVersion, user.cgu_version_id) if user.cgu_version_id else None,
        "current_cgu": current_cgu(db.session),
        "contacts": ContactsForm(formdata=None, data={
            "phone_pro": user.phone_pro, "phone_mobile": user.phone_mobile, "contact_email": user.contact_email}),
        "email_form": EmailChangeForm(formdata=None),
        "password_form": PasswordChangeForm(formdata=None),
        "policy": DEFAULT_POLICY,
        "errors": {},
    }
    context.update(overrides)
    return render_template("idp/account.html", **context), status


def _notice(user: User, what: str, to: str | None = None) -> None:
    """Tell the owner about a security change, in case it was not them."""
    queue_mail(db.session, to or user.email, f"[{current_settings().portal_name}] Modification de votre compte",
               "security_notice", user=user, what=what)


@bp.get("/")
@login_required
def overview():
    return _page()


@bp.post("/contacts")
@login_required
def update_contacts():
    user: User = g.user
    form = ContactsForm()
    errors: dict[str, str] = {}
    values: dict[str, str | None] = {}
    for field in (form.phone_pro, form.phone_mobile):
        try:
            values[field.name] = identity.phone(field.data or "")
        except ValueError as exc:
            errors[field.id] = str(exc)
    contact = (form.contact_email.data or "").strip()
    if contact:
        try:
            values["contact_email"] = identity.normalise_email(contact)
        except identity.InvalidEmail as exc:
            errors[form.contact_email.id] = str(exc)
    else:
        values["contact_email"] = None
    if errors:
        return _page(422, contacts=form, errors=errors)
    for name, value in values.items():
        setattr(user, name, value)
    audit.record(db.session, "account.contacts", actor_id=user.id, actor_label=user.login, target_type="user",
                 target_id=user.id)
    db.session.commit()
    flash("Vos coordonnées sont enregistrées.", "success")
    return redirect(url_for("account.overview"), code=303)


@bp.post("/email")
@login_required
@limiter.limit("10 per hour")
def change_email():
    user: User = g.user
    form = EmailChangeForm()
    errors: dict[str, str] = {}
    try:
        new_email = identity.authentication_email(form.new_email.data or "", current_settings().generic_mailboxes)
    except identity.InvalidEmail as exc:
        errors[form.new_email.id] = str(exc)
        new_email = None
    if not verify_password(user.password_hash, form.email_password.data or ""):
        errors[form.email_password.id] = WRONG_PASSWORD
    if new_email == user.email:
        errors[form.new_email.id] = "C'est déjà votre mail pour l'authentification."
    if errors:
        form.email_password.data = ""
        return _page(422, email_form=form, errors=errors)
    taken = db.session.scalar(sa.select(User.id).where(User.email == new_email))
    if taken is None:
        link = external_url("account.confirm_email",
                            token=make_link_token(user, PURPOSE_CHANGE_EMAIL, email=new_email))
        queue_mail(db.session, new_email, f"[{current_settings().portal_name}] Confirmez votre nouvelle adresse",
                   "email_change_confirm", user=user, link=link, new_email=new_email)
    # The same page whether or not the address belongs to someone else (no enumeration).
    _notice(user, f"un changement de votre mail pour l'authentification vers {new_email} a été demandé")
    audit.record(db.session, "account.email_change_requested", actor_id=user.id, actor_label=user.login,
                 target_type="user", target_id=user.id, details={"taken": taken is not None})
    db.session.commit()
    flash(f"Un lien de confirmation a été envoyé à {new_email}. Votre adresse actuelle reste utilisée "
          "tant que la nouvelle n'est pas confirmée.", "success")
    return redirect(url_for("account.overview"), code=303)


@bp.get("/email/confirm/<token>")
def confirm_email(token: str):
    session = db.session
    try:
        claim = read_link_token(session, token, PURPOSE_CHANGE_EMAIL)
        new_email = claim.extra.get("email", "")
        if not new_email or session.scalar(sa.select(User.id).where(User.email == new_email)) is not None:
            raise LinkError("invalid")
        consume_link(session, claim)
    except LinkError as exc:
        session.rollback()
        return render_template("idp/reset_invalid.html", reason=exc.reason, for_email=True), 400
    user = claim.user
    old_email = user.email
    user.email = new_email
    audit.record(session, "account.email_changed", actor_id=user.id, actor_label=user.login, target_type="user",
                 target_id=user.id, details={"from": old_email, "to": new_email})
    _notice(user, f"votre mail pour l'authentification a été remplacé par {new_email}", to=old_email)
    session.commit()
    flash("Votre nouveau mail pour l'authentification est confirmé.", "success")
    return redirect(url_for("account.overview" if g.get("user") else "login.login"), code=303)


@bp.post("/password")
@login_required
@limiter.limit("10 per hour")
def change_password():
    user: User = g.user
    form = PasswordChangeForm()
    errors = {key: " ; ".join(messages) for key, messages in check_new_password(db.session, user, form).items()}
    if not verify_password(user.password_hash, form.current_password.data or ""):
        errors = {form.current_password.id: WRONG_PASSWORD, **errors}
    if errors:
        return _page(422, password_form=PasswordChangeForm(formdata=None), errors=errors)
    set_password(db.session, user, form.password.data)
    revoked = revoke_all(db.session, user, except_id=g.user_session.id, reason="revoked_by_password_change")
    audit.record(db.session, "password.set", actor_id=user.id, actor_label=user.login, target_type="user",
                 target_id=user.id, details={"via": "account", "other_sessions_ended": revoked})
    _notice(user, "votre mot de passe a été modifié et vos autres sessions ont été fermées")
    db.session.commit()
    flash("Votre mot de passe est modifié ; vos autres sessions sont fermées.", "success")
    return redirect(url_for("account.overview"), code=303)


@bp.post("/sessions/<public_id>/revoke")
@login_required
def revoke_session(public_id: str):
    user: User = g.user
    record = db.session.scalar(sa.select(UserSession).where(
        UserSession.public_id == public_id, UserSession.user_id == user.id, UserSession.revoked_at.is_(None)))
    if record is None:
        abort(404)
    end_session(db.session, record, reason="revoked_by_user")
    db.session.commit()
    if record.id == g.user_session.id:
        flash("Vous êtes déconnecté.", "success")
        return redirect(url_for("portal.home"), code=303)
    flash("La session est fermée.", "success")
    return redirect(url_for("account.overview"), code=303)


@bp.post("/sessions/revoke-others")
@login_required
def revoke_other_sessions():
    count = revoke_all(db.session, g.user, except_id=g.user_session.id, reason="revoked_by_user")
    db.session.commit()
    flash(f"{count} autre{'s' if count > 1 else ''} session{'s' if count > 1 else ''} fermée{'s' if count > 1 else ''}.",
          "success")
    return redirect(url_for("account.overview"), code=303)


class CguForm(FlaskForm):
    pass


@bp.route("/cgu", methods=["GET", "POST"])
@login_required
def accept_cgu():
    """A newer CGU version was published: accept it to go on (checked on every request)."""
    from portal.security import safe_next

    user: User = g.user
    cgu = current_cgu(db.session)
    target = safe_next(request.values.get("next"), url_for("portal.home"))
    if cgu is None or user.cgu_version_id == cgu.id:
        return redirect(target, code=303)
    error = None
    if request.method == "POST" and CguForm().validate():
        if request.form.get("accept") == "y":
            user.cgu_version_id = cgu.id
            user.cgu_accepted_at = now()
            audit.record(db.session, "cgu.accepted", actor_id=user.id, actor_label=user.login, target_type="user",
                         target_id=user.id, details={"version": cgu.version})
            db.session.commit()
            return redirect(target, code=303)
        error = "Vous devez accepter les conditions générales d'utilisation pour continuer."
    return render_template("idp/accept_cgu.html", cgu=cgu, error=error, next=target), (422 if error else 200)
