"""J5 "ROR inscription": a professional asks for a ROR role for one of their
establishments with the attestation signed by the director; J6: a regional admin of the
establishment's département reviews it and grants the role."""
from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from flask import Blueprint, Response, abort, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload
from wtforms import StringField

from idp.models import ROLE_REGIONAL_ADMIN, ROLE_SUPER_ADMIN, STATUS_ACTIVE, User, UserRole
from idp.sessions import login_required
from onboarding import captcha
from onboarding.attestation import AttestationRefused, check_upload, render_attestation_pdf
from onboarding.models import (
    REQUEST_APPROVED,
    REQUEST_CANCELLED,
    REQUEST_PENDING,
    REQUEST_REJECTED,
    REQUEST_TYPES,
    ROLE_LABELS,
    AccessRequest,
)
from onboarding.referentials import get_establishment, profession_label
from portal import audit
from portal.clock import now
from portal.config import current_settings
from portal.db import db
from portal.mail import queue_mail
from portal.security import external_url, limiter
from portal.storage import StorageError, store_for, stored_until_committed

bp = Blueprint("access", __name__, url_prefix="/access")
log = logging.getLogger("enrs.access_requests")

# The attestation may be 12 MiB; a larger one must still reach the view so that the form
# comes back with a French message and everything typed, instead of a bare 413.
UPLOAD_REQUEST_LIMIT = 40 * 1024 * 1024
DIGEST_INTERVAL = timedelta(hours=1)


class AccessRequestForm(FlaskForm):
    request_type = StringField("Quelle est votre demande")
    establishment = StringField("Établissement concerné")


def _user_establishments(user: User) -> list:
    """The establishments a role can be asked for: those with a FINESS number."""
    return [e for e in user.establishments if e.finess]


@bp.record_once
def _allow_large_uploads(state) -> None:
    state.app.config.setdefault("ENRS_LARGE_BODY_ENDPOINTS", {})["access.request_ror"] = UPLOAD_REQUEST_LIMIT
    # Requests that arrived within the hour after an admin's digest are announced by the
    # periodic sweep once the hour is over.
    state.app.extensions.setdefault("enrs.periodic", []).append(lambda: send_admin_digests(db.session))


def _form_page(form: AccessRequestForm, errors: dict[str, str], status: int = 200):
    session = db.session
    challenge = captcha.new_challenge(session)
    session.commit()
    return render_template(
        "onboarding/access_request.html", form=form, errors=errors, request_types=REQUEST_TYPES,
        establishments=_user_establishments(g.user), captcha=challenge, captcha_error=errors.get("captcha_answer"),
    ), status


@bp.route("/ror", methods=["GET", "POST"])
@login_required
@limiter.limit("20 per hour", methods=["POST"])
def request_ror():
    user: User = g.user
    form = AccessRequestForm()
    if request.method == "GET":
        form.request_type.data = request.args.get("request_type", "")
        form.establishment.data = request.args.get("establishment", "")
        return _form_page(form, {})
    if not form.validate():  # CSRF
        abort(400)
    session = db.session
    session.commit()  # the captcha is spent in a transaction of its own
    errors: dict[str, str] = {}
    captcha_error = captcha.verify(session, request.form)
    if captcha_error:
        errors["captcha_answer"] = captcha_error
    request_type = form.request_type.data or ""
    if request_type not in REQUEST_TYPES:
        errors["request_type"] = "Choisissez votre demande."
    chosen = next((e for e in _user_establishments(user) if e.finess == (form.establishment.data or "")), None)
    if chosen is None:
        errors["establishment"] = "Choisissez l'un de vos établissements."
    role = REQUEST_TYPES[request_type][1] if request_type in REQUEST_TYPES else None
    if role and chosen and _pending_exists(session, user, role, chosen.finess):
        errors["request_type"] = ("Vous avez déjà une demande en attente pour ce rôle et cet établissement : "
                                  "suivez-la dans « Mes demandes d'accès ».")
    try:
        attestation = check_upload(request.files)
    except AttestationRefused as refused:
        errors["attestation"] = str(refused)
        attestation = None
    if errors:
        return _form_page(form, errors, 422)

    # The admins who review it are those of the establishment's département: the
    # directory's, when it lists the establishment (it may have been added since the user
    # typed theirs in), not the postal code the user typed.
    listed = get_establishment(session, chosen.finess)
    establishment_name, department = (listed.name, listed.department_code) if listed else (chosen.name,
                                                                                           chosen.department)
    store = store_for()
    try:
        with stored_until_committed(store, attestation.stream) as stored:
            access_request = AccessRequest(
                user_id=user.id, request_type=request_type, role=role, finess=chosen.finess,
                establishment_name=establishment_name, department=department, status=REQUEST_PENDING,
                created_at=now(), attestation_key=stored.key, attestation_name=attestation.display_name,
                attestation_type=attestation.content_type, attestation_size=stored.size,
                attestation_sha256=stored.sha256,
            )
            session.add(access_request)
            session.flush()
            audit.record(session, "access.request", actor_id=user.id, actor_label=user.login,
                         target_type="access_request", target_id=access_request.id,
                         details={"role": role, "finess": chosen.finess, "sha256": stored.sha256,
                                  "size": stored.size})
            queue_mail(session, user.email, f"[{current_settings().portal_name}] Demande d'accès au ROR reçue",
                       "access_request_received", user=user, access_request=access_request)
            session.commit()
    except IntegrityError:
        # The same request submitted twice at once: the unique index kept one.
        session.rollback()
        flash("Votre demande a déjà été enregistrée.", "success")
        return redirect(url_for("access.my_requests"), code=303)
    except (StorageError, OSError):
        # The store refuses writes (full, read-only, unreachable): nothing was kept, the
        # form comes back with a message about the file (the file itself must be sent again).
        session.rollback()
        log.exception("attestation store refused an upload")
        errors["attestation"] = ("Le dépôt de votre attestation n'a pas pu être enregistré. Réessayez dans quelques "
                                 "instants ; vos autres informations sont conservées.")
        return _form_page(form, errors, 422)
    try:
        send_admin_digests(session)
    except Exception:
        # The request is committed and acknowledged; the digest is retried by the worker.
        session.rollback()
        log.exception("admin digest after an access request failed; the worker will send it")
    return redirect(url_for("access.thanks"), code=303)


def _pending_exists(session: Session, user: User, role: str, finess: str) -> bool:
    return session.scalar(sa.select(sa.func.count()).select_from(AccessRequest).where(
        AccessRequest.user_id == user.id, AccessRequest.role == role, AccessRequest.finess == finess,
        AccessRequest.status == REQUEST_PENDING)) > 0


@bp.get("/ror/merci")
@login_required
def thanks():
    return render_template("onboarding/access_thanks.html")


@bp.get("/ror/attestation.pdf")
@login_required
def attestation_template():
    """"Téléchargez l'attestation de désignation", pre-filled for the user."""
    user: User = g.user
    request_type = request.args.get("request_type", "offre_new")
    label, role = REQUEST_TYPES.get(request_type, REQUEST_TYPES["offre_new"])
    establishments = _user_establishments(user)
    chosen = next((e for e in establishments if e.finess == request.args.get("establishment")),
                  establishments[0] if establishments else None)
    if chosen is None:
        abort(404)
    pdf = render_attestation_pdf(
        portal_name=current_settings().portal_name, user_full_name=user.full_name,
        profession_label=profession_label(user.profession_code) or (user.profession_other or ""),
        national_id=user.national_id or "", email=user.email, establishment_name=chosen.name,
        finess=chosen.finess, establishment_city=f"{chosen.postal_code or ''} {chosen.city or ''}".strip(),
        role_label=ROLE_LABELS[role], request_label=label, today=now().date(),
    )
    return Response(pdf, mimetype="application/pdf", headers={
        "Content-Disposition": f'attachment; filename="attestation-designation-{chosen.finess}.pdf"'})


@bp.get("/")
@login_required
def my_requests():
    """"Mes demandes d'accès": status, reason of a refusal, cancel while pending; roles held."""
    user: User = g.user
    session = db.session
    requests_ = session.scalars(sa.select(AccessRequest).where(AccessRequest.user_id == user.id)
                                .order_by(AccessRequest.created_at.desc())).all()
    roles = session.scalars(sa.select(UserRole).where(UserRole.user_id == user.id, UserRole.revoked_at.is_(None))
                            .order_by(UserRole.granted_at)).all()
    names = {e.finess: e.name for e in user.establishments if e.finess}
    return render_template("onboarding/my_requests.html", requests=requests_, roles=roles, names=names,
                           role_labels=ROLE_LABELS)


@bp.post("/<int:request_id>/cancel")
@login_required
def cancel(request_id: int):
    session = db.session
    result = session.execute(
        sa.update(AccessRequest)
        .where(AccessRequest.id == request_id, AccessRequest.user_id == g.user.id,
               AccessRequest.status == REQUEST_PENDING)
        .values(status=REQUEST_CANCELLED, decided_at=now())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        abort(404)
    audit.record(session, "access.cancel", actor_id=g.user.id, actor_label=g.user.login,
                 target_type="access_request", target_id=request_id)
    session.commit()
    flash("Votre demande est annulée.", "success")
    return redirect(url_for("access.my_requests"), code=303)


# -- review (used by the admin console) ------------------------------------------------------


class ReviewError(Exception):
    """A decision that cannot be taken; French message."""


def in_scope(query: sa.Select, admin: User) -> sa.Select:
    if admin.is_super_admin:
        return query
    return query.where(AccessRequest.department.in_(admin.departments))


def pending_requests(session: Session, admin: User) -> list[AccessRequest]:
    query = (sa.select(AccessRequest).where(AccessRequest.status == REQUEST_PENDING)
             .order_by(AccessRequest.created_at, AccessRequest.id))
    return list(session.scalars(in_scope(query, admin)))


def pending_count(session: Session, admin: User) -> int:
    query = sa.select(sa.func.count()).select_from(AccessRequest).where(AccessRequest.status == REQUEST_PENDING)
    return session.scalar(in_scope(query, admin)) or 0


def request_in_scope(session: Session, admin: User, request_id: int) -> AccessRequest | None:
    return session.scalar(in_scope(sa.select(AccessRequest).where(AccessRequest.id == request_id), admin))


def _decide(session: Session, access_request: AccessRequest, status: str, admin: User, reason: str | None) -> None:
    """Decide once: of two admins deciding at the same moment, one wins, the other is told."""
    result = session.execute(
        sa.update(AccessRequest)
        .where(AccessRequest.id == access_request.id, AccessRequest.status == REQUEST_PENDING)
        .values(status=status, decided_at=now(), decided_by_id=admin.id, reason=reason)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        raise ReviewError("Cette demande a déjà été traitée (ou annulée par le demandeur).")
    session.refresh(access_request)


def approve(session: Session, admin: User, access_request: AccessRequest) -> None:
    _decide(session, access_request, REQUEST_APPROVED, admin, None)
    user = session.get(User, access_request.user_id)
    existing = session.scalar(sa.select(UserRole).where(
        UserRole.user_id == user.id, UserRole.role == access_request.role, UserRole.finess == access_request.finess,
        UserRole.revoked_at.is_(None)))
    if existing is None:
        session.add(UserRole(user_id=user.id, role=access_request.role, finess=access_request.finess,
                             granted_at=now(), granted_by_id=admin.id, request_id=access_request.id))
    audit.record(session, "access.approve", actor_id=admin.id, actor_label=admin.login,
                 target_type="access_request", target_id=access_request.id,
                 details={"user_id": user.id, "role": access_request.role, "finess": access_request.finess})
    queue_mail(session, user.email, f"[{current_settings().portal_name}] Votre demande d'accès au ROR est acceptée",
               "access_request_approved", user=user, access_request=access_request,
               link=external_url("access.my_requests"))


def reject(session: Session, admin: User, access_request: AccessRequest, reason: str) -> None:
    reason = (reason or "").strip()
    if not reason:
        raise ReviewError("Indiquez le motif du refus : il est communiqué au demandeur.")
    _decide(session, access_request, REQUEST_REJECTED, admin, reason)
    user = session.get(User, access_request.user_id)
    audit.record(session, "access.reject", actor_id=admin.id, actor_label=admin.login,
                 target_type="access_request", target_id=access_request.id, reason=reason,
                 details={"user_id": user.id, "role": access_request.role, "finess": access_request.finess})
    queue_mail(session, user.email, f"[{current_settings().portal_name}] Votre demande d'accès au ROR est refusée",
               "access_request_rejected", user=user, access_request=access_request, reason=reason,
               link=external_url("access.request_ror"))


def role_department(session: Session, role: UserRole) -> str | None:
    """The département of the establishment a role was granted for: the directory's, else
    the one its access request was reviewed under."""
    listed = get_establishment(session, role.finess)
    if listed is not None:
        return listed.department_code
    granted_by = session.get(AccessRequest, role.request_id) if role.request_id else None
    return granted_by.department if granted_by else None


def role_in_scope(session: Session, admin: User, role: UserRole) -> bool:
    """Whether the admin may revoke it: the admin of a professional's other establishment may
    not withdraw a role another region granted."""
    return admin.is_super_admin or role_department(session, role) in admin.departments


def revoke_role(session: Session, admin: User, role: UserRole, reason: str) -> None:
    reason = (reason or "").strip()
    if not reason:
        raise ReviewError("Indiquez le motif du retrait : il est communiqué à l'utilisateur.")
    result = session.execute(
        sa.update(UserRole).where(UserRole.id == role.id, UserRole.revoked_at.is_(None))
        .values(revoked_at=now(), revoked_by_id=admin.id, revoke_reason=reason)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        raise ReviewError("Ce rôle a déjà été retiré.")
    user = session.get(User, role.user_id)
    audit.record(session, "role.revoke", actor_id=admin.id, actor_label=admin.login, target_type="user",
                 target_id=user.id, reason=reason, details={"role": role.role, "finess": role.finess})
    queue_mail(session, user.email, f"[{current_settings().portal_name}] Retrait d'un accès au ROR",
               "role_revoked", user=user, role_label=ROLE_LABELS.get(role.role, role.role), finess=role.finess,
               reason=reason)


def active_roles(session: Session, user: User) -> list[UserRole]:
    return list(session.scalars(sa.select(UserRole).where(UserRole.user_id == user.id, UserRole.revoked_at.is_(None))
                                .order_by(UserRole.granted_at)))


# -- admins are told, at most once an hour each -----------------------------------------------


def send_admin_digests(session: Session) -> int:
    """Email each admin whose scope has requests they were not told about, unless they got
    such an email less than an hour ago; returns how many were sent. Called after each
    new request and by the periodic sweep, so a request is announced within the hour."""
    current = now()
    admins = session.scalars(
        sa.select(User).where(User.role.in_([ROLE_REGIONAL_ADMIN, ROLE_SUPER_ADMIN]), User.status == STATUS_ACTIVE)
        .options(selectinload(User.admin_departments))
    ).all()
    sent = 0
    for admin in admins:
        if admin.access_digest_sent_at is not None and current - admin.access_digest_sent_at < DIGEST_INTERVAL:
            continue
        query = sa.select(AccessRequest).where(AccessRequest.status == REQUEST_PENDING)
        if admin.access_digest_last_request_id is not None:
            query = query.where(AccessRequest.id > admin.access_digest_last_request_id)
        new = list(session.scalars(in_scope(query.order_by(AccessRequest.id), admin)))
        if not new:
            continue
        queue_mail(session, admin.email, f"[{current_settings().portal_name}] Demandes d'accès à valider",
                   "access_admin_digest", user=admin, requests=new, total=pending_count(session, admin),
                   link=external_url("admin.access_requests"))
        admin.access_digest_sent_at = current
        admin.access_digest_last_request_id = new[-1].id
        for access_request in new:
            access_request.notified_admins_at = access_request.notified_admins_at or current
        sent += 1
    session.commit()
    return sent

