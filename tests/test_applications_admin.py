"""The super admin's "Applications" console: register an application and see its secret
once, correct a refused form without retyping it, edit, give a new secret, disable,
remove; regional admins and professionals never see it."""
from __future__ import annotations

import hashlib
import re
from html import unescape

import pytest
import sqlalchemy as sa

from tests.journeys import csrf, error_for, field_value, login

ADMIN_PASSWORD = "Console-Region-2026!"
PASSWORD = "Hopital-Dreux-2026"
SUPER = ("smartin", "super@esante-test.fr")
REGIONAL = ("pbernard", "admin.centre@esante-test.fr")
PRO = ("ndupont", "nathalie.dupont@esante-test.fr")
SECRET_WARNING = "Copiez ce secret maintenant : il ne sera plus affiché."

ROR_FORM = {
    "name": "ROR Centre-Val de Loire",
    "description": "Répertoire Opérationnel des Ressources",
    "icon": "ror",
    "client_id": "",
    "client_type": "confidential",
    "redirect_uris": "https://ror.esante-test.fr/oidc/callback\r\n\r\n  https://ror.esante-test.fr/oidc/callback2  \r\n",
    "post_logout_redirect_uris": "https://ror.esante-test.fr/",
    "backchannel_logout_uri": "https://ror.esante-test.fr/oidc/backchannel",
    "initiate_login_uri": "https://ror.esante-test.fr/oidc/initiate",
    "required_role": "ror_referent_offre",
    "allowed_scopes": ["openid", "profile", "establishments", "roles"],
    "id_token_signed_response_alg": "ES256",
    "token_endpoint_auth_method": "client_secret_post",
}


@pytest.fixture
def portal(app):
    from onboarding.accounts import create_admin, create_professional
    from onboarding.finess import load_demo_establishments
    from portal.db import db

    with app.app_context():
        load_demo_establishments(db.session)
        create_admin(db.session, email=SUPER[1], first_name="Sophie", last_name="Martin", role="super_admin",
                     departments=[], actor=None, password=ADMIN_PASSWORD)
        create_admin(db.session, email=REGIONAL[1], first_name="Paul", last_name="Bernard", role="regional_admin",
                     departments=["28", "37"], actor=None, password=ADMIN_PASSWORD)
        create_professional(db.session, email=PRO[1], password=PASSWORD, first_name="Nathalie", last_name="Dupont",
                            profession="10", finess="280503848")
        db.session.commit()
    return app


@pytest.fixture
def superadmin(portal, mailbox):
    client = portal.test_client()
    assert login(client, mailbox, SUPER[0], ADMIN_PASSWORD, SUPER[1]).status_code == 303
    return client


def post_new(client, **overrides):
    page = client.get("/admin/applications/new").get_data(as_text=True)
    data = {**ROR_FORM, **overrides, "csrf_token": csrf(page)}
    return client.post("/admin/applications/new", data={k: v for k, v in data.items() if v is not None})


def clients_in_db(app):
    from idp.provider.models import Client
    from portal.db import db

    with app.app_context():
        return db.session.scalars(sa.select(Client).order_by(Client.id)).all()


def audit_actions(app) -> list[tuple[str, str | None, dict | None]]:
    from portal.audit import AuditEntry
    from portal.db import db

    with app.app_context():
        return [(e.action, e.target_id, e.details) for e in db.session.scalars(
            sa.select(AuditEntry).where(AuditEntry.action.like("app.%")).order_by(AuditEntry.id))]


def shown(html: str, field_id: str) -> str:
    """The value of an input, or the text of a textarea, as the page shows it."""
    match = re.search(rf'<textarea id="{field_id}"[^>]*>([^<]*)</textarea>', html)
    if match:
        return unescape(match.group(1))
    return field_value(html, field_id) or ""


def selected(html: str, field_id: str) -> str | None:
    block = re.search(rf'<select id="{field_id}".*?</select>', html, re.S)
    match = re.search(r'<option value="([^"]*)" selected>', block.group(0)) if block else None
    return match.group(1) if match else None


def readonly(html: str, field_id: str) -> str | None:
    match = re.search(rf'<input type="text" id="{field_id}" value="([^"]*)" readonly', html)
    return unescape(match.group(1)) if match else None


def secret_on(html: str) -> str:
    secret = readonly(html, "client_secret")
    assert secret, "no secret on the page"
    return secret


def application_id(app, client_id: str) -> int:
    return next(c.id for c in clients_in_db(app) if c.client_id == client_id)


# -- registering ------------------------------------------------------------------------------------


def test_every_field_of_the_form_has_a_label(superadmin):
    html = superadmin.get("/admin/applications/new").get_data(as_text=True)
    assert "style=" not in html and "<script" not in html  # the CSP allows neither
    for field in ("name", "description", "icon", "client_id", "redirect_uris", "post_logout_redirect_uris",
                  "backchannel_logout_uri", "initiate_login_uri", "required_role", "id_token_signed_response_alg",
                  "token_endpoint_auth_method", "client_type-confidential", "client_type-public",
                  "allowed_scopes-profile", "allowed_scopes-national_id"):
        assert f'id="{field}"' in html and f'<label for="{field}"' in html, field
    page = unescape(html)
    for text in ("Aucun : toute personne connectée", "Référent ROR (saisie de l'offre)",
                 "Référent disponibilité des lits (saisie du capacitaire)", "openid est toujours inclus."):
        assert text in page, text
    assert selected(html, "icon") == "application" and selected(html, "id_token_signed_response_alg") == "RS256"


def test_super_admin_registers_an_application_and_sees_its_secret_once(portal, superadmin):
    from idp.provider.clients import secret_matches

    response = post_new(superadmin)
    html = unescape(response.get_data(as_text=True))
    assert response.status_code == 200 and SECRET_WARNING in html
    assert response.headers["Cache-Control"] == "no-store"
    secret = secret_on(html)
    [client] = clients_in_db(portal)
    assert readonly(html, "client_id") == client.client_id and len(client.client_id) >= 16
    assert client.secret_hash == hashlib.sha256(secret.encode()).hexdigest() and secret_matches(client, secret)
    assert (client.name, client.icon, client.is_public, client.required_role) == (
        "ROR Centre-Val de Loire", "ror", False, "ror_referent_offre")
    assert client.redirect_uris == ["https://ror.esante-test.fr/oidc/callback",
                                    "https://ror.esante-test.fr/oidc/callback2"]
    assert client.post_logout_redirect_uris == ["https://ror.esante-test.fr/"]
    assert client.backchannel_logout_uri == "https://ror.esante-test.fr/oidc/backchannel"
    assert client.initiate_login_uri == "https://ror.esante-test.fr/oidc/initiate"
    assert client.allowed_scopes == "openid profile establishments roles"
    assert (client.id_token_signed_response_alg, client.token_endpoint_auth_method) == ("ES256", "client_secret_post")
    assert "http://localhost/.well-known/openid-configuration" in html

    # Nowhere else, ever again.
    for path in ("/admin/applications/", f"/admin/applications/{client.id}"):
        page = superadmin.get(path).get_data(as_text=True)
        assert secret not in page and SECRET_WARNING not in unescape(page)
    listing = unescape(superadmin.get("/admin/applications/").get_data(as_text=True))
    assert "ROR Centre-Val de Loire" in listing and client.client_id in listing and "Confidentielle" in listing
    assert "référent ROR (saisie de l'offre)" in listing
    [(action, target, details)] = audit_actions(portal)
    assert (action, target, details["name"]) == ("app.created", client.client_id, "ROR Centre-Val de Loire")
    assert secret not in str(details)


def test_a_chosen_client_id_and_a_public_application_without_secret(portal, superadmin):
    response = post_new(superadmin, client_id="ror-mobile", client_type="public", name="ROR mobile")
    html = unescape(response.get_data(as_text=True))
    assert response.status_code == 200 and "Application publique : elle n'a pas de secret." in html
    assert SECRET_WARNING not in html and 'id="client_secret"' not in html
    [client] = clients_in_db(portal)
    assert (client.client_id, client.is_public, client.secret_hash, client.token_endpoint_auth_method) == (
        "ror-mobile", True, None, "none")
    edit = superadmin.get(f"/admin/applications/{client.id}").get_data(as_text=True)
    assert "Générer un nouveau secret" not in edit
    assert superadmin.get(f"/admin/applications/{client.id}/secret").status_code == 303


@pytest.mark.parametrize("overrides, field, message", [
    ({"name": "  "}, "name", "Indiquez le nom de l'application"),
    ({"icon": "licorne"}, "icon", "Choisissez une icône dans la liste."),
    ({"redirect_uris": "https://ror.esante-test.fr/cb\nhttp://ror.esante-test.fr/cb"}, "redirect_uris",
     "« http://ror.esante-test.fr/cb » doit utiliser https"),
    ({"redirect_uris": "https://ror.esante-test.fr/cb#section"}, "redirect_uris", "ne doit pas contenir de fragment"),
    ({"redirect_uris": "/oidc/callback"}, "redirect_uris", "n'est pas une adresse web absolue"),
    ({"redirect_uris": " \n "}, "redirect_uris", "Indiquez au moins une adresse de retour"),
    ({"post_logout_redirect_uris": "ftp://ror.esante-test.fr/"}, "post_logout_redirect_uris", "adresse web absolue"),
    ({"backchannel_logout_uri": "http://ror.esante-test.fr/bc"}, "backchannel_logout_uri", "doit utiliser https"),
    ({"initiate_login_uri": "https://user:pw@ror.esante-test.fr/"}, "initiate_login_uri", "identifiants"),
    ({"required_role": "super_admin"}, "required_role", "Rôle inconnu : super_admin."),
    ({"allowed_scopes": ["openid", "offline_access"]}, "allowed_scopes", "doivent inclure openid"),
    ({"id_token_signed_response_alg": "HS256"}, "id_token_signed_response_alg", "Algorithme de signature inconnu"),
    ({"token_endpoint_auth_method": "none"}, "token_endpoint_auth_method", "Méthode d'authentification inconnue."),
    ({"client_id": "ror cvl/1"}, "client_id", "L'identifiant ne peut contenir que"),
    ({"client_type": "secret"}, "client_type", "Choisissez le type d'application."),
])
def test_a_refused_form_shows_the_message_next_to_the_field_and_keeps_every_value(
        portal, superadmin, overrides, field, message):
    response = post_new(superadmin, **{"client_id": "ror-cvl", **overrides})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert message in (error_for(html, field) or ""), error_for(html, field)
    assert 'class="error-summary"' in html and f'href="#{field}"' in html
    assert clients_in_db(portal) == [] and audit_actions(portal) == []
    typed = {**ROR_FORM, "client_id": "ror-cvl", **overrides}
    for name in ("name", "description", "client_id", "backchannel_logout_uri", "initiate_login_uri",
                 "post_logout_redirect_uris"):
        assert shown(html, name) == typed[name], name
    assert shown(html, "redirect_uris").split() == typed["redirect_uris"].split()
    if field != "icon":
        assert selected(html, "icon") == typed["icon"]
    if field not in ("required_role", "id_token_signed_response_alg"):
        assert selected(html, "required_role") == typed["required_role"]
        assert selected(html, "id_token_signed_response_alg") == typed["id_token_signed_response_alg"]
    checked = re.findall(r'name="allowed_scopes" value="([a-z_]+)" checked', html)
    assert checked == [s for s in typed["allowed_scopes"] if s not in ("openid", "offline_access")]


def test_a_client_id_already_taken_is_refused(portal, superadmin):
    assert post_new(superadmin, client_id="ror-cvl").status_code == 200
    response = post_new(superadmin, client_id="ror-cvl", name="Un autre ROR")
    html = unescape(response.get_data(as_text=True))
    assert response.status_code == 422
    assert error_for(html, "client_id") == "L'identifiant « ror-cvl » est déjà utilisé."
    assert shown(html, "name") == "Un autre ROR"
    assert len(clients_in_db(portal)) == 1


def test_the_form_needs_its_token(portal, superadmin):
    assert superadmin.post("/admin/applications/new", data=ROR_FORM).status_code == 400
    assert clients_in_db(portal) == []


# -- changing ---------------------------------------------------------------------------------------


def test_super_admin_edits_everything_but_the_identifier_and_the_type(portal, superadmin):
    post_new(superadmin, client_id="ror-cvl")
    app_id = application_id(portal, "ror-cvl")
    page = superadmin.get(f"/admin/applications/{app_id}").get_data(as_text=True)
    assert shown(page, "name") == "ROR Centre-Val de Loire" and selected(page, "required_role") == "ror_referent_offre"
    assert shown(page, "redirect_uris") == ("https://ror.esante-test.fr/oidc/callback\n"
                                            "https://ror.esante-test.fr/oidc/callback2")
    assert 'name="client_id"' not in page and 'name="client_type"' not in page
    data = {**ROR_FORM, "csrf_token": csrf(page), "name": "ROR CVL", "required_role": "",
            "redirect_uris": "https://ror.esante-test.fr/cb", "allowed_scopes": ["profile"],
            "client_id": "pirate", "client_type": "public"}
    response = superadmin.post(f"/admin/applications/{app_id}", data=data)
    assert response.status_code == 303 and response.headers["Location"] == "/admin/applications/"
    [client] = clients_in_db(portal)
    assert (client.client_id, client.is_public, client.name, client.required_role) == ("ror-cvl", False, "ROR CVL", None)
    assert client.redirect_uris == ["https://ror.esante-test.fr/cb"] and client.allowed_scopes == "openid profile"
    assert "L'application « ROR CVL » est enregistrée." in unescape(
        superadmin.get("/admin/applications/").get_data(as_text=True))
    action, target, details = audit_actions(portal)[-1]
    assert (action, target) == ("app.updated", "ror-cvl")
    assert details["changed"] == ["allowed_scopes", "name", "redirect_uris", "required_role"]


def test_a_refused_edit_changes_nothing_and_keeps_what_was_typed(portal, superadmin):
    post_new(superadmin, client_id="ror-cvl")
    app_id = application_id(portal, "ror-cvl")
    page = superadmin.get(f"/admin/applications/{app_id}").get_data(as_text=True)
    data = {**ROR_FORM, "csrf_token": csrf(page), "name": "Nouveau nom", "redirect_uris": "https://x.fr/#frag"}
    response = superadmin.post(f"/admin/applications/{app_id}", data=data)
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and "ne doit pas contenir de fragment" in error_for(html, "redirect_uris")
    assert shown(html, "name") == "Nouveau nom" and shown(html, "redirect_uris") == "https://x.fr/#frag"
    [client] = clients_in_db(portal)
    assert client.name == "ROR Centre-Val de Loire"
    assert [a for a, _, _ in audit_actions(portal)] == ["app.created"]


def test_a_new_secret_replaces_the_old_one_after_confirmation(portal, superadmin):
    from idp.provider.clients import secret_matches

    old = secret_on(post_new(superadmin, client_id="ror-cvl").get_data(as_text=True))
    app_id = application_id(portal, "ror-cvl")
    edit = unescape(superadmin.get(f"/admin/applications/{app_id}").get_data(as_text=True))
    assert f'href="/admin/applications/{app_id}/secret">Générer un nouveau secret' in edit
    confirm = superadmin.get(f"/admin/applications/{app_id}/secret")
    text = unescape(confirm.get_data(as_text=True))
    assert confirm.status_code == 200 and "l'ancien cessera de fonctionner immédiatement" in text
    [client] = clients_in_db(portal)
    assert secret_matches(client, old)  # asking is not doing
    response = superadmin.post(f"/admin/applications/{app_id}/secret", data={"csrf_token": csrf(text)})
    html = unescape(response.get_data(as_text=True))
    assert response.status_code == 200 and SECRET_WARNING in html
    new = secret_on(html)
    [client] = clients_in_db(portal)
    assert new != old and secret_matches(client, new) and not secret_matches(client, old)
    assert audit_actions(portal)[-1][:2] == ("app.secret_rotated", "ror-cvl")
    assert superadmin.post(f"/admin/applications/{app_id}/secret").status_code == 400  # no token


def test_a_disabled_application_leaves_the_tiles_until_enabled(portal, superadmin, mailbox):
    post_new(superadmin, client_id="agenda", name="Agenda partagé", required_role="")
    app_id = application_id(portal, "agenda")
    pro = portal.test_client()
    login(pro, mailbox, PRO[0], PASSWORD, PRO[1])
    assert "Agenda partagé" in unescape(pro.get("/apps").get_data(as_text=True))

    page = superadmin.get(f"/admin/applications/{app_id}").get_data(as_text=True)
    response = superadmin.post(f"/admin/applications/{app_id}/disable", data={"csrf_token": csrf(page)})
    assert response.status_code == 303
    listing = unescape(superadmin.get("/admin/applications/").get_data(as_text=True))
    assert "est désactivée" in listing and "Désactivée" in listing and "Réactiver" in listing
    assert "Agenda partagé" not in unescape(pro.get("/apps").get_data(as_text=True))
    assert pro.get("/apps/agenda/open").status_code == 404

    superadmin.post(f"/admin/applications/{app_id}/enable", data={"csrf_token": csrf(page)})
    assert "Agenda partagé" in unescape(pro.get("/apps").get_data(as_text=True))
    assert [a for a, _, _ in audit_actions(portal)] == ["app.created", "app.disabled", "app.enabled"]


def test_removing_asks_for_confirmation_then_takes_the_favourites_along(portal, superadmin, mailbox):
    from idp.provider.models import FavouriteApplication
    from portal.db import db

    post_new(superadmin, client_id="agenda", name="Agenda partagé", required_role="")
    app_id = application_id(portal, "agenda")
    pro = portal.test_client()
    login(pro, mailbox, PRO[0], PASSWORD, PRO[1])
    tiles = pro.get("/apps").get_data(as_text=True)
    pro.post("/apps/agenda/favourite", data={"csrf_token": csrf(tiles), "action": "add"})

    confirm = superadmin.get(f"/admin/applications/{app_id}/remove")
    text = unescape(confirm.get_data(as_text=True))
    assert confirm.status_code == 200 and "Cette action est définitive" in text
    assert len(clients_in_db(portal)) == 1
    response = superadmin.post(f"/admin/applications/{app_id}/remove", data={"csrf_token": csrf(text)})
    assert response.status_code == 303
    assert "L'application « Agenda partagé » est supprimée." in unescape(
        superadmin.get("/admin/applications/").get_data(as_text=True))
    assert clients_in_db(portal) == []
    with portal.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(FavouriteApplication)) == 0
    assert audit_actions(portal)[-1][:2] == ("app.removed", "agenda")
    assert superadmin.get(f"/admin/applications/{app_id}").status_code == 404


# -- who may ----------------------------------------------------------------------------------------


def test_only_super_admins_reach_the_console(portal, superadmin, mailbox):
    post_new(superadmin, client_id="ror-cvl")
    app_id = application_id(portal, "ror-cvl")
    nav = superadmin.get("/admin/").get_data(as_text=True)
    assert 'href="/admin/applications/">Applications</a>' in nav

    regional = portal.test_client()
    login(regional, mailbox, REGIONAL[0], ADMIN_PASSWORD, REGIONAL[1])
    assert "/admin/applications" not in regional.get("/admin/").get_data(as_text=True)
    pro = portal.test_client()
    login(pro, mailbox, PRO[0], PASSWORD, PRO[1])
    for who in (regional, pro):
        token = csrf(who.get("/apps").get_data(as_text=True))
        for path in ("/admin/applications/", "/admin/applications/new", f"/admin/applications/{app_id}",
                     f"/admin/applications/{app_id}/secret", f"/admin/applications/{app_id}/remove"):
            assert who.get(path).status_code == 403, path
        for path in (f"/admin/applications/{app_id}/remove", f"/admin/applications/{app_id}/disable",
                     f"/admin/applications/{app_id}/secret"):
            assert who.post(path, data={"csrf_token": token}).status_code == 403, path
    anonymous = portal.test_client()
    response = anonymous.get("/admin/applications/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")
    assert len(clients_in_db(portal)) == 1 and clients_in_db(portal)[0].disabled_at is None
