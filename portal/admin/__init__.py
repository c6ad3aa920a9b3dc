"""The admin console: "Comptes à valider", "Demandes d'accès", users of the admin's scope
and, for super admins, the regional admins."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, abort, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import StringField, TextAreaField

from idp.identity import InvalidEmail, normalise_email
from idp.models import ROLE_REGIONAL_ADMIN, ROLE_SUPER_ADMIN, User
from idp.sessions import admin_required, super_admin_required
from onboarding import accounts as operator_accounts
from onboarding import approval
from portal import audit
from portal.db import db
from portal.security import CONTENT_SECURITY_POLICY

bp = Blueprint("admin", __name__, url_prefix="/admin")


class DecisionForm(FlaskForm):
    reason = TextAreaField("Motif (obligatoire en cas de refus, communiqué au demandeur)")


def _decision(form: DecisionForm, *, approve, reject, approved, rejected: str, errors: tuple, back: str):
    """Apply the admin's "approve" or "reject" to a reviewed item: (error, None) when the
    decision was refused, (None, redirect) when it was taken, (None, None) on a GET."""
    if request.method != "POST" or not form.validate():
        return None, None
    decision = request.form.get("decision")
    try:
        if decision == "approve":
            approve()
            message = approved()
        elif decision == "reject":
            reject(form.reason.data or "")
            message = rejected
        else:
            abort(400)
    except errors as exc:
        return str(exc), None
    db.session.commit()
    flash(message, "success")
    return None, redirect(url_for(back), code=303)


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
    error, done = _decision(
        form,
        approve=lambda: approval.approve(session, g.user, user),
        reject=lambda reason: approval.reject(session, g.user, user, reason),
        approved=lambda: f"Le compte de {user.full_name} est validé ; ses identifiants ({user.login}) lui ont été envoyés.",
        rejected=f"La demande de {user.full_name} est refusée ; le motif lui a été envoyé.",
        errors=(approval.DecisionError,), back="admin.accounts")
    if done is not None:
        return done
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
    from onboarding import access

    roles = access.active_roles(session, target)
    return render_template("admin/user.html", user=target, locked=lockout.is_locked(target), roles=roles,
                           revocable={r.id for r in roles if access.role_in_scope(session, g.user, r)})


# -- ROR access requests ("Demandes d'accès") ------------------------------------------------------


@bp.get("/requests")
@admin_required
def access_requests():
    from onboarding import access

    pending = access.pending_requests(db.session, g.user)
    users_by_id = {u.id: u for u in db.session.scalars(sa.select(User).where(User.id.in_({r.user_id for r in pending})))}
    return render_template("admin/access_requests.html", requests=pending, users=users_by_id)


@bp.route("/requests/<int:request_id>", methods=["GET", "POST"])
@admin_required
def access_request(request_id: int):
    from onboarding import access

    session = db.session
    item = access.request_in_scope(session, g.user, request_id)
    if item is None:
        abort(404)  # another region's request is not even acknowledged
    form = DecisionForm()
    error, done = _decision(
        form,
        approve=lambda: access.approve(session, g.user, item),
        reject=lambda reason: access.reject(session, g.user, item, reason),
        approved=lambda: "La demande est acceptée : le rôle est attribué et le demandeur prévenu.",
        rejected="La demande est refusée ; le motif a été envoyé au demandeur.",
        errors=(access.ReviewError,), back="admin.access_requests")
    if done is not None:
        return done
    applicant = session.get(User, item.user_id)
    from onboarding.referentials import get_establishment

    page = render_template("admin/access_request.html", item=item, applicant=applicant, form=form, error=error,
                           establishment=get_establishment(session, item.finess))
    # The PDF attestation is shown in an <object>: this page alone allows same-origin objects.
    return page, (422 if error else 200), {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY.replace("object-src 'none'", "object-src 'self'")}


@bp.get("/requests/<int:request_id>/attestation")
@admin_required
def attestation(request_id: int):
    """The attestation, to admins of the request's scope only: shown inline for images and
    PDF (the browser's viewer) or downloaded, never interpreted as a page of the portal."""
    from werkzeug.utils import quote as url_quote

    from onboarding import access
    from portal.storage import store_for

    item = access.request_in_scope(db.session, g.user, request_id)
    if item is None:
        abort(404)
    disposition = "attachment" if request.args.get("download") else "inline"
    # Who read a professional's attestation (a signed document naming them) is on record.
    audit.record(db.session, "access.attestation_view", actor_id=g.user.id, actor_label=g.user.login,
                 target_type="access_request", target_id=item.id, details={"disposition": disposition})
    db.session.commit()
    response = Response(store_for().iter_chunks(item.attestation_key), mimetype=item.attestation_type)
    response.headers["Content-Length"] = str(item.attestation_size)
    response.headers["Content-Disposition"] = (
        f"{disposition}; filename=\"attestation-{item.id}.{item.attestation_type.rsplit('/', 1)[-1]}\"; "
        f"filename*=UTF-8''{url_quote(item.attestation_name)}")
    # Nothing in the file may run as a page of the portal: no scripts, no requests, and
    # images are sandboxed. (A sandbox would stop the browser's PDF viewer; PDFs carrying
    # scripts or actions were refused at upload.)
    policy = "default-src 'none'; frame-ancestors 'self'"
    if item.attestation_type.startswith("image/"):
        policy += "; sandbox"
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.post("/users/<int:user_id>/roles/<int:role_id>/revoke")
@admin_required
def revoke_role(user_id: int, role_id: int):
    from idp.models import UserRole
    from onboarding import access

    session = db.session
    target = approval.account_in_scope(session, g.user, user_id)
    role = session.get(UserRole, role_id)
    if target is None or role is None or role.user_id != target.id or not access.role_in_scope(session, g.user, role):
        abort(404)
    try:
        access.revoke_role(session, g.user, role, request.form.get("reason", ""))
    except access.ReviewError as exc:
        flash(str(exc), "error")
    else:
        session.commit()
        flash("Le rôle est retiré ; l'utilisateur en est prévenu.", "success")
    return redirect(url_for("admin.user", user_id=target.id), code=303)


@bp.app_context_processor
def _console_counts():
    """The counts shown in the console's navigation, for admins on console pages."""
    user = g.get("user")
    if user is None or not user.is_admin or not (request.endpoint or "").startswith(("admin.", "audit_log.")):
        return {}
    from onboarding import access

    return {"console_counts": {"accounts": approval.pending_count(db.session, user),
                               "requests": access.pending_count(db.session, user)}}
