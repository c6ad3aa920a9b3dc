"""What an application learns about the user, scope by scope, and whether it may open
at all (the role it requires)."""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session

from idp.models import User, UserEstablishment, UserRole
from idp.provider.models import Client

# Built once on the tables (they run for every token and userinfo call): compiled once,
# and run as Core statements, without the ORM's per-statement work. Being Core, they do
# not autoflush: a role changed in the same request must be flushed before asking.
_roles = UserRole.__table__
_establishments = UserEstablishment.__table__
_ROLES = (sa.select(_roles.c.role, _roles.c.finess)
          .where(_roles.c.user_id == sa.bindparam("user_id"), _roles.c.revoked_at.is_(None))
          .order_by(_roles.c.granted_at, _roles.c.id))
_HAS_ROLE = (sa.select(_roles.c.id)
             .where(_roles.c.user_id == sa.bindparam("user_id"), _roles.c.role == sa.bindparam("role"),
                    _roles.c.revoked_at.is_(None))
             .limit(1))
_ESTABLISHMENTS = (sa.select(_establishments.c.finess, _establishments.c.name, _establishments.c.service,
                             _establishments.c.function_type)
                   .where(_establishments.c.user_id == sa.bindparam("user_id"))
                   .order_by(_establishments.c.position, _establishments.c.id))


def active_roles(session: Session, user_id: int) -> list[dict[str, str]]:
    rows = session.connection().execute(_ROLES, {"user_id": user_id})
    return [{"role": role, "finess": finess} for role, finess in rows]


def has_role(session: Session, user_id: int, role: str) -> bool:
    """Asked at every authorization and refresh of an application that requires a role."""
    return session.connection().execute(_HAS_ROLE, {"user_id": user_id, "role": role}).first() is not None


def may_open(session: Session, user: User, client: Client) -> bool:
    """A client without a required role is open to every active user."""
    return client.required_role is None or has_role(session, user.id, client.required_role)


def _profession_label(code: str | None) -> str | None:
    # The professions referential belongs to onboarding; the app wires its lookup in.
    lookup = current_app.extensions.get("enrs.profession_label")
    return lookup(code) if lookup and code else None


def user_claims(session: Session, user: User, scope: str) -> dict:
    """The claims of `scope` (space-separated), `sub` always. Empty values are left out.
    `user` is the ORM user or the token path's record of its columns (idp.provider.store)."""
    scopes = set(scope.split())
    claims: dict = {"sub": user.public_id}
    if "profile" in scopes:
        claims["given_name"] = user.first_name
        claims["family_name"] = user.last_name
        claims["name"] = f"{user.first_name} {user.last_name}"
        if user.login:
            claims["preferred_username"] = user.login
        if user.profession_code:
            claims["profession"] = {"code": user.profession_code,
                                    "label": user.profession_other or _profession_label(user.profession_code)}
    if "email" in scopes:
        claims["email"] = user.email
        claims["email_verified"] = user.email_verified_at is not None
    if "national_id" in scopes and user.national_id:
        claims["national_id"] = user.national_id
        if user.national_id_type:
            claims["national_id_type"] = user.national_id_type
    if "establishments" in scopes:
        # Four columns, not whole objects.
        rows = session.connection().execute(_ESTABLISHMENTS, {"user_id": user.id})
        claims["establishments"] = [
            {"finess": finess, "name": name, "service": service, "function": function}
            for finess, name, service, function in rows
        ]
    if "roles" in scopes:
        claims["roles"] = active_roles(session, user.id)
    return claims
