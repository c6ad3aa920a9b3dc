"""Accounts created by operators rather than through the registration form: regional
and super admins (console and CLI), and active professionals (`enrs user create`)."""
from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idp.identity import InvalidEmail, normalise_email
from idp.models import (
    ROLE_PROFESSIONAL,
    ROLE_REGIONAL_ADMIN,
    ROLE_SUPER_ADMIN,
    STATUS_ACTIVE,
    AdminDepartment,
    User,
    UserEstablishment,
)
from idp.passwords import policy_errors, set_password
from onboarding import approval
from onboarding.finess import is_valid_finess
from onboarding.referentials import get_establishment, profession_label
from portal import audit
from portal.clock import now

ROLES = {"super": ROLE_SUPER_ADMIN, "regional": ROLE_REGIONAL_ADMIN}


def parse_departments(value: str) -> list[str]:
    """["28", "2A"] from "28, 2a"; raises ValueError naming a wrong code."""
    import re

    codes: list[str] = []
    for raw in re.split(r"[\s,;]+", (value or "").strip().upper()):
        if not raw:
            continue
        if not re.fullmatch(r"0[1-9]|[1-8]\d|9[0-5]|2A|2B|97[1-8]", raw) or raw == "20":
            raise ValueError(f"« {raw} » n'est pas un code de département (exemples : 28, 2A, 974).")
        if raw not in codes:
            codes.append(raw)
    return codes


def set_departments(session: Session, admin: User, departments: list[str], actor: User | None) -> None:
    admin.admin_departments = [AdminDepartment(department=d) for d in departments]
    audit.record(session, "admin.scope", actor_id=actor.id if actor else None,
                 actor_label=actor.login if actor else "cli", target_type="user", target_id=admin.id,
                 details={"departments": departments})


def _new_user(session: Session, **fields) -> User:
    user = User(status=STATUS_ACTIVE, created_at=now(), email_verified_at=now(), **fields)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ValueError("Un compte existe déjà avec cette adresse mail.") from None
    return user


def create_admin(session: Session, *, email: str, first_name: str, last_name: str, role: str,
                 departments: list[str], actor: User | None, password: str | None = None) -> User:
    """An active admin. Without a password, "vos identifiants" with a link to choose one is sent."""
    try:
        email = normalise_email(email)
    except InvalidEmail as exc:
        raise ValueError(str(exc)) from None
    if role == ROLE_REGIONAL_ADMIN and not departments:
        raise ValueError("Un administrateur régional doit avoir au moins un département.")
    admin = _new_user(session, email=email, first_name=first_name, last_name=last_name.upper(), role=role)
    set_departments(session, admin, departments if role == ROLE_REGIONAL_ADMIN else [], actor)
    audit.record(session, "admin.create", actor_id=actor.id if actor else None,
                 actor_label=actor.login if actor else "cli", target_type="user", target_id=admin.id,
                 details={"role": role})
    if password is None:
        approval.activate(session, admin, reviewer=actor)
    else:
        _set_checked_password(session, admin, password)
    return admin


def create_professional(session: Session, *, email: str, password: str, first_name: str, last_name: str,
                        profession: str, finess: str | None) -> User:
    try:
        email = normalise_email(email)
    except InvalidEmail as exc:
        raise ValueError(str(exc)) from None
    if profession_label(profession) is None:
        raise ValueError(f"profession inconnue : {profession} (code de la nomenclature TRE_G15, ex. 10 pour Médecin)")
    establishment = None
    if finess:
        if not is_valid_finess(finess):
            raise ValueError(f"numéro FINESS invalide : {finess}")
        establishment = get_establishment(session, finess)
        if establishment is None:
            raise ValueError(f"établissement {finess} absent du répertoire FINESS (importez-le d'abord)")
    user = _new_user(session, email=email, first_name=first_name, last_name=last_name.upper(),
                     role=ROLE_PROFESSIONAL, profession_code=profession)
    if establishment is not None:
        user.establishments.append(UserEstablishment(
            finess=establishment.finess, name=establishment.name, postal_code=establishment.postal_code,
            city=establishment.city, department=establishment.department_code,
            function_type=profession_label(profession) or "", service="Non précisé",
        ))
    approval.assign_login(session, user)
    audit.record(session, "account.create", actor_label="cli", target_type="user", target_id=user.id)
    _set_checked_password(session, user, password)
    return user


def _set_checked_password(session: Session, user: User, password: str) -> None:
    if user.login is None:
        approval.assign_login(session, user)
    errors = policy_errors(password, personal=(user.login, user.first_name, user.last_name, user.email))
    if errors:
        raise ValueError("mot de passe refusé : " + " ; ".join(errors))
    set_password(session, user, password)
