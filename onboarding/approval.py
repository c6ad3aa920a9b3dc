"""J2: account review by a regional admin, activation ("vos identifiants") and the
first password."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from flask import Blueprint, render_template
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload
from wtforms import StringField

from idp.identity import login_candidates
from idp.models import (
    STATUS_ACTIVE,
    STATUS_REJECTED,
    STATUS_REVIEW_PENDING,
    User,
    UserEstablishment,
)
from idp.reset import choose_password_from_link
from idp.tokens import PURPOSE_ACTIVATE, make_link_token
from portal import audit
from portal.clock import now
from portal.config import current_settings
from portal.mail import queue_mail
from portal.security import external_url, limiter

bp = Blueprint("activation", __name__)


class DecisionError(Exception):
    """A review that cannot be done (already decided, out of scope); French message."""


# -- the queue ----------------------------------------------------------------------------------


def in_scope(query: sa.Select, admin: User) -> sa.Select:
    """Restrict a query on users to the admin's départements (super admins see all)."""
    if admin.is_super_admin:
        return query
    departments = admin.departments
    return query.where(
        sa.exists().where(
            UserEstablishment.user_id == User.id,
            UserEstablishment.department.in_(departments),
        )
    )


def pending_accounts(session: Session, admin: User) -> list[User]:
    query = (
        sa.select(User)
        .where(User.status == STATUS_REVIEW_PENDING)
        .order_by(User.created_at, User.id)
        .options(selectinload(User.establishments))
    )
    return list(session.scalars(in_scope(query, admin)))


def pending_count(session: Session, admin: User) -> int:
    query = sa.select(sa.func.count()).select_from(User).where(User.status == STATUS_REVIEW_PENDING)
    return session.scalar(in_scope(query, admin)) or 0


def account_in_scope(session: Session, admin: User, user_id: int) -> User | None:
    query = sa.select(User).where(User.id == user_id).options(selectinload(User.establishments))
    return session.scalar(in_scope(query, admin))


@dataclass
class Flags:
    """What the admin should look at before deciding."""

    not_listed: bool
    national_id: bool
    homonyms: int


def flags_for(session: Session, users: list[User]) -> dict[int, Flags]:
    if not users:
        return {}
    names = {(u.last_name.lower(), u.first_name.lower()) for u in users}
    counts: dict[tuple[str, str], int] = {}
    rows = session.execute(
        sa.select(sa.func.lower(User.last_name), sa.func.lower(User.first_name), sa.func.count())
        .where(sa.tuple_(sa.func.lower(User.last_name), sa.func.lower(User.first_name)).in_(list(names)))
        .group_by(sa.func.lower(User.last_name), sa.func.lower(User.first_name))
    )
    for last, first, count in rows:
        counts[(last, first)] = count
    return {
        u.id: Flags(
            not_listed=any(e.not_listed for e in u.establishments),
            national_id=u.national_id is not None,
            homonyms=counts.get((u.last_name.lower(), u.first_name.lower()), 1) - 1,
        )
        for u in users
    }


# -- decisions -------------------------------------------------------------------------------------


def _claim_review(session: Session, user: User, new_status: str, admin: User, reason: str | None) -> None:
    """Decide once: of two admins deciding at the same moment, one wins, the other is told."""
    result = session.execute(
        sa.update(User)
        .where(User.id == user.id, User.status == STATUS_REVIEW_PENDING)
        .values(status=new_status, reviewed_at=now(), reviewed_by_id=admin.id, review_reason=reason)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        raise DecisionError("Ce compte a déjà été traité par un autre administrateur.")
    session.refresh(user)


def approve(session: Session, admin: User, user: User) -> None:
    _claim_review(session, user, STATUS_ACTIVE, admin, None)
    activate(session, user, reviewer=admin)


def reject(session: Session, admin: User, user: User, reason: str) -> None:
    reason = (reason or "").strip()
    if not reason:
        raise DecisionError("Indiquez le motif du refus : il est communiqué au demandeur.")
    _claim_review(session, user, STATUS_REJECTED, admin, reason)
    audit.record(session, "account.reject", actor_id=admin.id, actor_label=admin.login,
                 target_type="user", target_id=user.id, reason=reason)
    queue_mail(session, user.email, "Votre demande d'inscription", "account_rejected", user=user, reason=reason)


def activate(session: Session, user: User, reviewer: User | None) -> None:
    """Give the account its login identifier and send "vos identifiants" with the link to
    choose a password (never a password in an email)."""
    user.status = STATUS_ACTIVE
    assign_login(session, user)
    audit.record(session, "account.approve" if reviewer else "account.activate",
                 actor_id=reviewer.id if reviewer else None,
                 actor_label=reviewer.login if reviewer else "validation du mail",
                 target_type="user", target_id=user.id, details={"login": user.login})
    send_credentials(session, user)


def assign_login(session: Session, user: User) -> str:
    """The login identifier, made once from the names (ndupont, n2dupont, …)."""
    if user.login is not None:
        return user.login
    for candidate in login_candidates(user.first_name, user.last_name):
        taken = session.scalar(sa.select(sa.func.count()).select_from(User).where(User.login == candidate))
        if not taken:
            # The unique index is the final judge when two approvals race for one login.
            nested = session.begin_nested()
            user.login = candidate
            try:
                session.flush()
            except IntegrityError:
                nested.rollback()
                continue
            nested.commit()
            return candidate
    raise RuntimeError("unreachable: login candidates are endless")


def send_credentials(session: Session, user: User) -> None:
    link = external_url("activation.set_first_password", token=make_link_token(user, PURPOSE_ACTIVATE))
    queue_mail(session, user.email, f"{current_settings().portal_name} : vos identifiants", "account_credentials",
               user=user, link=link)


# -- links ---------------------------------------------------------------------------------------


class ResendForm(FlaskForm):
    """Ask for a new verification or activation link (same answer whatever the address)."""

    email = StringField("Mail pour l'authentification")


def invalid_link_page(reason: str):
    return render_template("onboarding/link_invalid.html", reason=reason, form=ResendForm()), 400


# -- first password ------------------------------------------------------------------------------


def _finish_activation(session: Session, user: User) -> str:
    audit.record(session, "password.set", actor_id=user.id, actor_label=user.login,
                 target_type="user", target_id=user.id, details={"via": "activation"})
    return f"Votre mot de passe est enregistré. Vous pouvez maintenant vous connecter avec votre identifiant {user.login}."


@bp.route("/activate/<token>", methods=["GET", "POST"])
@limiter.limit("20 per hour", methods=["POST"])
def set_first_password(token: str):
    return choose_password_from_link(token, PURPOSE_ACTIVATE, heading="Choisissez votre mot de passe",
                                     invalid_page=invalid_link_page, finish=_finish_activation)
