"""J7 "Mes applications": the tiles of the applications registered on the portal,
favourites first, and the hand-off to an application (OpenID Connect third-party-initiated
login, https://openid.net/specs/openid-connect-core-1_0.html#ThirdPartyInitiatedLogin).

Everything works without JavaScript: the star and the move buttons are small POST forms
that come back to the tile they were pressed on."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idp.models import User
from idp.provider.claims import may_open
from idp.provider.clients import find_client
from idp.provider.models import Client, FavouriteApplication
from idp.sessions import login_required
from onboarding.models import ROLE_LABELS
from portal import audit
from portal.clock import now
from portal.db import db

bp = Blueprint("dashboard", __name__)

# What each icon of clients.ICONS shows, for the image's text alternative and the
# console's icon list.
ICON_LABELS = {
    "application": "Application",
    "ror": "Répertoire opérationnel des ressources",
    "agenda": "Agenda",
    "annuaire": "Annuaire",
    "messagerie": "Messagerie",
    "teleconsultation": "Téléconsultation",
}
FAVOURITE_ACTIONS = ("add", "remove", "up", "down")


@dataclass
class Tile:
    client: Client
    favourite: bool
    may_open: bool
    role_label: str | None

    @property
    def anchor(self) -> str:
        return f"app-{self.client.client_id}"


def role_label(role: str | None) -> str | None:
    if role is None:
        return None
    return ROLE_LABELS.get(role, role)


def enabled_clients(session: Session) -> list[Client]:
    clients = session.scalars(sa.select(Client).where(Client.disabled_at.is_(None))).all()
    # Sorted here rather than by the database, whose collation differs (SQLite, PostgreSQL).
    return sorted(clients, key=lambda c: (c.name.casefold(), c.client_id))


def favourites_of(session: Session, user: User) -> list[FavouriteApplication]:
    return list(session.scalars(
        sa.select(FavouriteApplication).where(FavouriteApplication.user_id == user.id)
        .order_by(FavouriteApplication.position, FavouriteApplication.created_at, FavouriteApplication.client_pk)
    ))


def tiles_for(session: Session, user: User) -> tuple[list[Tile], list[Tile]]:
    """(favourites in the user's order, the other applications by name); disabled
    applications are left out, a favourite among them comes back when re-enabled."""
    clients = enabled_clients(session)
    by_pk = {c.id: c for c in clients}
    favourite_pks = [f.client_pk for f in favourites_of(session, user) if f.client_pk in by_pk]
    allowed: dict[str | None, bool] = {}  # one role check per role, not per tile

    def tile(client: Client, favourite: bool) -> Tile:
        if client.required_role not in allowed:
            allowed[client.required_role] = may_open(session, user, client)
        return Tile(client, favourite, allowed[client.required_role], role_label(client.required_role))

    favourites = [tile(by_pk[pk], True) for pk in favourite_pks]
    others = [tile(c, False) for c in clients if c.id not in set(favourite_pks)]
    return favourites, others


@bp.get("/apps")
@login_required
def apps():
    favourites, others = tiles_for(db.session, g.user)
    return render_template("dashboard/apps.html", favourites=favourites, others=others, icon_labels=ICON_LABELS)


# -- favourites ----------------------------------------------------------------------------


def _renumber(session: Session, user: User, ordered_pks: list[int]) -> None:
    """Positions 0..n-1 in the given order; favourites not in it (disabled applications)
    keep their relative order after them."""
    rows = {f.client_pk: f for f in favourites_of(session, user)}
    rest = [pk for pk in rows if pk not in ordered_pks]
    for position, pk in enumerate([*ordered_pks, *rest]):
        rows[pk].position = position


def change_favourite(session: Session, user: User, client: Client, action: str) -> str | None:
    """Apply the star or a move; the French message to show, or None when nothing changed."""
    enabled = {c.id for c in enabled_clients(session)}
    visible = [f.client_pk for f in favourites_of(session, user) if f.client_pk in enabled]
    if action == "add":
        if client.id in visible:
            return None
        session.add(FavouriteApplication(user_id=user.id, client_pk=client.id, position=len(visible),
                                         created_at=now()))
        try:
            session.flush()
        except IntegrityError:  # the same star pressed twice at once: the other press won
            session.rollback()
            return None
        _renumber(session, user, [*visible, client.id])
        return f"« {client.name} » est ajoutée à vos applications favorites."
    if client.id not in visible:
        return None
    if action == "remove":
        session.delete(session.get(FavouriteApplication, (user.id, client.id)))
        session.flush()
        _renumber(session, user, [pk for pk in visible if pk != client.id])
        return f"« {client.name} » est retirée de vos applications favorites."
    index = visible.index(client.id)
    other = index - 1 if action == "up" else index + 1
    if not 0 <= other < len(visible):
        return None
    visible[index], visible[other] = visible[other], visible[index]
    _renumber(session, user, visible)
    where = "plus haut" if action == "up" else "plus bas"
    return f"« {client.name} » est déplacée {where} dans vos favoris (position {other + 1} sur {len(visible)})."


@bp.post("/apps/<client_id>/favourite")
@login_required
def favourite(client_id: str):
    if not FlaskForm().validate():
        abort(400)
    action = request.form.get("action", "")
    if action not in FAVOURITE_ACTIONS:
        abort(400)
    session = db.session
    client = find_client(session, client_id)
    if client is None:
        abort(404)
    message = change_favourite(session, g.user, client, action)
    session.commit()
    if message:
        flash(message, "success")
    # Back to the tile the button was on, so that a keyboard user carries on from there.
    return redirect(url_for("dashboard.apps", _anchor=f"app-{client.client_id}"), code=303)


# -- opening an application ----------------------------------------------------------------


def origin_of(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, "/", "", ""))


def initiate_login_url(client: Client, issuer: str) -> str:
    """The application's login-initiation address with `iss` and `target_link_uri`;
    its own query parameters are kept, ours replace any of the same name."""
    if not client.initiate_login_uri:
        # No third-party login endpoint: the application's home, where it logs in itself.
        return origin_of(client.redirect_uris[0])
    parts = urlsplit(client.initiate_login_uri)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("iss", "target_link_uri")]
    query += [("iss", issuer), ("target_link_uri", origin_of(client.initiate_login_uri))]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def issuer() -> str:
    # The OpenID Provider's issuer is the configured base URL (never the request's Host).
    return current_app.extensions["enrs.settings"].base_url.rstrip("/")


@bp.get("/apps/<client_id>/open", endpoint="open")
@login_required
def open_app(client_id: str):
    session = db.session
    user: User = g.user
    client = find_client(session, client_id)
    if client is None or not client.redirect_uris:
        abort(404)
    if not may_open(session, user, client):
        audit.record(session, "app.open", actor_id=user.id, actor_label=user.login, target_type="application",
                     target_id=client.client_id, outcome="failure", reason="rôle manquant",
                     details={"required_role": client.required_role})
        session.commit()
        flash(f"L'application « {client.name} » est réservée au rôle {role_label(client.required_role)}. "
              "Vous pouvez demander cet accès ci-dessous.", "error")
        return redirect(url_for("access.request_ror"), code=303)
    target = initiate_login_url(client, issuer())
    audit.record(session, "app.open", actor_id=user.id, actor_label=user.login, target_type="application",
                 target_id=client.client_id, details={"name": client.name})
    session.commit()
    return redirect(target, code=303)
