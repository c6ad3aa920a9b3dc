"""The admin console: "Comptes à valider" and, for super admins, the regional admins."""
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
from wtforms import StringField, TextAreaField

from idp.identity import InvalidEmail, normalise_email
from idp.models import ROLE_REGIONAL_ADMIN, ROLE_SUPER_ADMIN, User
from idp.sessions import admin_required, super_admin_required
from onboarding import accounts as operator_accounts
from onboarding import approval
from portal.db import db

bp = Blueprint("admin", __name__, url_prefix="/admin")


class DecisionForm(FlaskForm):
    reason = TextAreaField("Motif (obligatoire en cas de refus, communiqué au demandeur)")


@bp.get("/")
@admin_required
def index():
    return render_template("admin/index.html", pending=approval.pending_count(db.session, g.user))


@bp.get("/accounts")
@admin_required
def accounts():
    users = approval.pending_accounts(db.session, g.user)
    return render_template("admin/accounts.html", users=users, flags=approval.flags_for(db.session, users))


@bp.route("/accounts/<int:user_id>", methods=["GET", "POST"])
@admin_required
def account(user_id: int):
    session = db.session
    user = approval.account_in_scope(session, g.user, user_id)
    if user is None:
        abort(404)  # another region's account is not even acknowledged
    form = DecisionForm()
    error = None
    if request.method == "POST" and form.validate():
        decision = request.form.get("decision")
        try:
            if decision == "approve":
                approval.approve(session, g.user, user)
                message = f"Le compte de {user.full_name} est validé ; ses identifiants ({user.login}) lui ont été envoyés."
            elif decision == "reject":
                approval.reject(session, g.user, user, form.reason.data or "")
                message = f"La demande de {user.full_name} est refusée ; le motif lui a été envoyé."
            else:
                abort(400)
        except approval.DecisionError as exc:
            error = str(exc)
        else:
            session.commit()
            flash(message, "success")
            return redirect(url_for("admin.accounts"), code=303)
    flags = approval.flags_for(session, [user])[user.id]
    return render_template("admin/account.html", user=user, form=form, error=error, flags=flags), (
        422 if error else 200)


# -- regional admins (super admins only) -----------------------------------------------------


class AdminForm(FlaskForm):
    email = StringField("Adresse mail")
    first_name = StringField("Prénom")
    last_name = StringField("Nom")
    departments = StringField("Départements (séparés par des virgules, ex. 28, 37, 45)")


@bp.route("/admins", methods=["GET", "POST"])
@super_admin_required
def admins():
    session = db.session
    form = AdminForm()
    errors: dict[str, str] = {}
    if request.method == "POST" and form.validate():
        try:
            email = normalise_email(form.email.data or "")
        except InvalidEmail as exc:
            errors["email"] = str(exc)
        for field in (form.first_name, form.last_name):
            if not (field.data or "").strip():
                errors[field.name] = "Ce champ est obligatoire."
        try:
            departments = operator_accounts.parse_departments(form.departments.data or "")
            if not departments:
                errors["departments"] = "Indiquez au moins un département."
        except ValueError as exc:
            errors["departments"] = str(exc)
        if not errors:
            try:
                admin = operator_accounts.create_admin(
                    session, email=email, first_name=form.first_name.data.strip(),
                    last_name=form.last_name.data.strip(), role=ROLE_REGIONAL_ADMIN,
                    departments=departments, actor=g.user)
            except ValueError as exc:
                errors["email"] = str(exc)
            else:
                session.commit()
                flash(f"Administrateur {admin.full_name} créé ({admin.login}) ; ses identifiants lui ont été envoyés.",
                      "success")
                return redirect(url_for("admin.admins"), code=303)
    listing = session.scalars(
        sa.select(User).where(User.role.in_([ROLE_REGIONAL_ADMIN, ROLE_SUPER_ADMIN])).order_by(User.last_name)
    ).all()
    return render_template("admin/admins.html", form=form, errors=errors, admins=listing), (422 if errors else 200)


@bp.post("/admins/<int:user_id>/departments")
@super_admin_required
def admin_departments(user_id: int):
    session = db.session
    admin = session.get(User, user_id)
    if admin is None or admin.role != ROLE_REGIONAL_ADMIN:
        abort(404)
    try:
        departments = operator_accounts.parse_departments(request.form.get("departments", ""))
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.admins"), code=303)
    operator_accounts.set_departments(session, admin, departments, actor=g.user)
    session.commit()
    flash(f"Départements de {admin.full_name} : {', '.join(departments) or 'aucun'}.", "success")
    return redirect(url_for("admin.admins"), code=303)


# -- users of the admin's scope ------------------------------------------------------------------


@bp.get("/users")
@admin_required
def users():
    query_text = (request.args.get("q") or "").strip()[:100]
    found = []
    if len(query_text) >= 2:
        pattern = f"%{query_text.lower()}%"
        query = (
            sa.select(User)
            .where(sa.or_(sa.func.lower(User.last_name).like(pattern), sa.func.lower(User.first_name).like(pattern),
                          User.email.like(pattern), User.login.like(pattern)))
            .order_by(User.last_name, User.first_name)
            .limit(50)
        )
        found = db.session.scalars(approval.in_scope(query, g.user)).all()
    return render_template("admin/users.html", q=query_text, users=found)


@bp.route("/users/<int:user_id>", methods=["GET", "POST"])
@admin_required
def user(user_id: int):
    from idp import lockout
    from idp.sessions import revoke_all

    session = db.session
    target = approval.account_in_scope(session, g.user, user_id)
    if target is None:
        abort(404)
    if request.method == "POST" and FlaskForm().validate():
        action = request.form.get("action")
        if action == "unlock":
            lockout.unlock(session, target, g.user)
            flash(f"Le compte {target.login} est déverrouillé.", "success")
        elif action == "end_sessions":
            count = revoke_all(session, target, reason="revoked_by_admin")
            flash(f"{count} session(s) de {target.full_name} fermée(s).", "success")
        else:
            abort(400)
        session.commit()
        return redirect(url_for("admin.user", user_id=target.id), code=303)
    return render_template("admin/user.html", user=target, locked=lockout.is_locked(target))
