"""J7 "Mes applications": after login a professional lands on the tiles, favourites first;
the star and the order work without JavaScript; a tile needing a role the user lacks
leads to the access request; opening a tile is an OpenID Connect third-party-initiated
login (the app's initiate_login_uri with iss and target_link_uri)."""
from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qsl, urlsplit

import pytest
import sqlalchemy as sa

from tests.journeys import csrf, login, seed_doctor

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"
ROR_INITIATE = "https://ror.esante-test.fr/oidc/initiate?tenant=centre"


def register_app(app, name: str, **fields):
    from idp.provider.clients import ClientSpec, create_client
    from portal.db import db

    fields.setdefault("redirect_uris", [f"https://{fields.get('client_id', 'app')}.esante-test.fr/callback"])
    with app.app_context():
        client, _ = create_client(db.session, ClientSpec(name=name, **fields))
        db.session.commit()
        return client.client_id


def grant_role(app, email: str, role: str) -> None:
    from idp.models import User, UserRole
    from portal.clock import now
    from portal.db import db

    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        db.session.add(UserRole(user_id=user.id, role=role, finess="280503848", granted_at=now()))
        db.session.commit()


@pytest.fixture
def portal(app):
    seed_doctor(app, EMAIL, PASSWORD)
    app.ror = register_app(app, "ROR Centre-Val de Loire", client_id="ror-cvl", icon="ror",
                           description="Répertoire Opérationnel des Ressources",
                           redirect_uris=["https://ror.esante-test.fr/oidc/callback"],
                           initiate_login_uri=ROR_INITIATE, required_role="ror_referent_offre")
    app.agenda = register_app(app, "Agenda partagé", client_id="agenda", icon="agenda",
                              description="Les rendez-vous de l'équipe",
                              redirect_uris=["https://agenda.esante-test.fr:8443/auth/callback?v=2",
                                             "https://autre.esante-test.fr/cb"])
    app.mail = register_app(app, "Messagerie sécurisée", client_id="messagerie", icon="messagerie",
                            initiate_login_uri="http://127.0.0.1:5001/login/start")
    return app


@pytest.fixture
def user(portal, mailbox):
    client = portal.test_client()
    response = login(client, mailbox, "ndupont", PASSWORD, EMAIL)
    assert response.status_code == 303 and response.headers["Location"] == "/apps"
    return client


def page_of(client) -> str:
    response = client.get("/apps")
    assert response.status_code == 200
    return unescape(response.get_data(as_text=True))


def section(html: str, title: str) -> str:
    """The part of the page under the <h2> named `title`, up to the next section."""
    start = html.index(f">{title}</h2>")
    end = html.find("</section>", start)
    return html[start:end]


def names_in(html: str) -> list[str]:
    return re.findall(r'<h3 class="app-name"[^>]*>([^<]+)</h3>', html)


def press(client, client_id: str, action: str):
    page = client.get("/apps").get_data(as_text=True)
    return client.post(f"/apps/{client_id}/favourite", data={"csrf_token": csrf(page), "action": action})


def audit_entries(app, action: str):
    from portal.audit import AuditEntry
    from portal.db import db

    with app.app_context():
        return db.session.scalars(sa.select(AuditEntry).where(AuditEntry.action == action)
                                  .order_by(AuditEntry.id)).all()


# -- the page --------------------------------------------------------------------------------------


def test_login_lands_on_mes_applications(user):
    html = page_of(user)
    assert "<h1>Mes applications</h1>" in html
    favourites = section(html, "Mes applications favorites")
    assert "Vous n'avez pas d'applications favorites." in favourites and names_in(favourites) == []
    others = section(html, "Autres applications disponibles")
    assert names_in(others) == ["Agenda partagé", "Messagerie sécurisée", "ROR Centre-Val de Loire"]
    # Each tile: its icon with a text alternative, its description, the star and the way in.
    assert '<img class="app-icon" src="/static/img/apps/agenda.svg"' in others and 'alt="Agenda"' in others
    assert "Les rendez-vous de l'équipe" in others
    assert others.count("Ajouter aux favoris") == 3
    assert 'href="/apps/agenda/open">Accéder à Agenda partagé</a>' in others


def test_every_icon_offered_to_the_admins_exists():
    from pathlib import Path

    from idp.provider.clients import ICONS
    from portal.dashboard import ICON_LABELS

    folder = Path(__file__).resolve().parent.parent / "static" / "img" / "apps"
    for icon in ICONS:
        svg = (folder / f"{icon}.svg").read_text(encoding="utf-8")
        assert svg.startswith("<svg") and "<script" not in svg and "<title" in svg, icon
        assert ICON_LABELS[icon], icon


def test_a_logged_in_user_asking_for_the_login_page_goes_to_the_applications(user):
    response = user.get("/login")
    assert response.status_code == 302 and response.headers["Location"] == "/apps"


def test_the_home_page_leads_a_logged_in_user_to_the_applications(user, client):
    assert 'href="/apps">Mes applications</a>' in user.get("/").get_data(as_text=True)
    assert 'href="/apps"' not in client.get("/").get_data(as_text=True)  # anonymous visitor


def test_anonymous_visitor_logs_in_first_and_comes_back_to_the_application(portal, client, mailbox):
    response = client.get("/apps/agenda/open")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")
    response = login(client, mailbox, "ndupont", PASSWORD, EMAIL, next_url="/apps/agenda/open")
    assert response.headers["Location"] == "/apps/agenda/open"
    assert client.get("/apps").status_code == 200


# -- favourites ------------------------------------------------------------------------------------


def test_user_sees_favourites_first(user):
    response = press(user, "messagerie", "add")
    assert response.status_code == 303 and response.headers["Location"] == "/apps#app-messagerie"
    html = page_of(user)
    assert "« Messagerie sécurisée » est ajoutée à vos applications favorites." in html
    assert html.index(">Mes applications favorites</h2>") < html.index(">Messagerie sécurisée</h3>") \
        < html.index(">Autres applications disponibles</h2>")
    favourites = section(html, "Mes applications favorites")
    assert names_in(favourites) == ["Messagerie sécurisée"]
    assert "Retirer des favoris" in favourites and "Ajouter aux favoris" not in favourites
    assert "Monter" not in favourites and "Descendre" not in favourites  # alone: nothing to move
    assert names_in(section(html, "Autres applications disponibles")) == ["Agenda partagé", "ROR Centre-Val de Loire"]


def test_favourites_keep_the_order_the_user_chose(user):
    for client_id in ("agenda", "ror-cvl", "messagerie"):
        assert press(user, client_id, "add").status_code == 303
    assert names_in(section(page_of(user), "Mes applications favorites")) == [
        "Agenda partagé", "ROR Centre-Val de Loire", "Messagerie sécurisée"]

    press(user, "messagerie", "up")
    html = page_of(user)
    assert "« Messagerie sécurisée » est déplacée plus haut dans vos favoris (position 2 sur 3)." in html
    assert names_in(section(html, "Mes applications favorites")) == [
        "Agenda partagé", "Messagerie sécurisée", "ROR Centre-Val de Loire"]
    press(user, "agenda", "down")
    press(user, "agenda", "down")
    press(user, "agenda", "down")  # already last: nothing moves
    favourites = section(page_of(user), "Mes applications favorites")
    assert names_in(favourites) == ["Messagerie sécurisée", "ROR Centre-Val de Loire", "Agenda partagé"]
    # The first cannot go up, the last cannot go down.
    first, middle, last = favourites.split('<li class="app-tile')[1:]
    assert "Monter" not in first and "Descendre" in first
    assert "Monter" in middle and "Descendre" in middle
    assert "Monter" in last and "Descendre" not in last

    press(user, "ror-cvl", "remove")
    html = page_of(user)
    assert names_in(section(html, "Mes applications favorites")) == ["Messagerie sécurisée", "Agenda partagé"]
    assert names_in(section(html, "Autres applications disponibles")) == ["ROR Centre-Val de Loire"]
    press(user, "ror-cvl", "add")  # back at the end
    assert names_in(section(page_of(user), "Mes applications favorites")) == [
        "Messagerie sécurisée", "Agenda partagé", "ROR Centre-Val de Loire"]


def test_favourites_belong_to_each_user(portal, user, mailbox):
    from onboarding.accounts import create_professional
    from portal.db import db

    press(user, "agenda", "add")
    with portal.app_context():
        create_professional(db.session, email="paul.martin@esante-test.fr", password=PASSWORD, first_name="Paul",
                            last_name="Martin", profession="10", finess="280503848")
        db.session.commit()
    other = portal.test_client()
    login(other, mailbox, "pmartin", PASSWORD, "paul.martin@esante-test.fr")
    assert names_in(section(page_of(other), "Mes applications favorites")) == []


def test_the_star_needs_the_form_token_and_a_known_action(user):
    assert user.post("/apps/agenda/favourite", data={"action": "add"}).status_code == 400
    page = user.get("/apps").get_data(as_text=True)
    assert user.post("/apps/agenda/favourite", data={"csrf_token": csrf(page), "action": "top"}).status_code == 400
    assert user.get("/apps/agenda/favourite").status_code == 405
    assert press(user, "inconnue", "add").status_code == 404


def test_a_disabled_application_leaves_the_page_and_its_favourite_comes_back(portal, user):
    from idp.provider.models import Client
    from portal.clock import now
    from portal.db import db

    press(user, "agenda", "add")
    press(user, "messagerie", "add")

    def set_disabled(value):
        with portal.app_context():
            db.session.scalar(sa.select(Client).where(Client.client_id == "agenda")).disabled_at = value
            db.session.commit()

    set_disabled(now())
    html = page_of(user)
    assert "Agenda partagé" not in html
    assert names_in(section(html, "Mes applications favorites")) == ["Messagerie sécurisée"]
    assert user.get("/apps/agenda/open").status_code == 404
    assert press(user, "agenda", "remove").status_code == 404
    set_disabled(None)
    assert names_in(section(page_of(user), "Mes applications favorites")) == ["Agenda partagé", "Messagerie sécurisée"]


# -- roles -----------------------------------------------------------------------------------------


def test_a_tile_needing_a_role_the_user_lacks_leads_to_the_access_request(portal, user):
    ror = section(page_of(user), "Autres applications disponibles").split('id="app-ror-cvl"')[1]
    ror = ror.split("</li>")[0]
    assert "Accès réservé : référent ROR (saisie de l'offre)." in ror
    assert 'href="/access/ror">Demander l\'accès<span class="visually-hidden"> à ROR Centre-Val de Loire</span>' in ror
    assert "/apps/ror-cvl/open" not in ror
    assert "Ajouter aux favoris" in ror  # a favourite even before the access is granted

    response = user.get("/apps/ror-cvl/open")
    assert response.status_code == 303 and response.headers["Location"] == "/access/ror"
    page = unescape(user.get("/access/ror").get_data(as_text=True))
    assert "L'application « ROR Centre-Val de Loire » est réservée au rôle référent ROR (saisie de l'offre)." in page
    [refused] = audit_entries(portal, "app.open")
    assert (refused.outcome, refused.target_type, refused.target_id) == ("failure", "application", "ror-cvl")

    grant_role(portal, EMAIL, "ror_referent_offre")
    ror = section(page_of(user), "Autres applications disponibles").split('id="app-ror-cvl"')[1].split("</li>")[0]
    assert 'href="/apps/ror-cvl/open">Accéder à ROR Centre-Val de Loire</a>' in ror
    assert "Demander l'accès" not in ror


def test_the_other_ror_role_does_not_open_an_application_requiring_the_offre_role(portal, user):
    grant_role(portal, EMAIL, "ror_referent_lits")
    assert user.get("/apps/ror-cvl/open").headers["Location"] == "/access/ror"


# -- opening an application ------------------------------------------------------------------------


def test_opening_a_tile_is_a_third_party_initiated_login(portal, user):
    grant_role(portal, EMAIL, "ror_referent_offre")
    response = user.get("/apps/ror-cvl/open")
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "ror.esante-test.fr", "/oidc/initiate")
    # The application's own parameter is kept; iss is the portal's issuer (no trailing
    # slash), target_link_uri the application's home.
    assert parse_qsl(location.query) == [("tenant", "centre"), ("iss", "http://localhost"),
                                         ("target_link_uri", "https://ror.esante-test.fr/")]
    assert location.fragment == ""
    [opened] = audit_entries(portal, "app.open")
    assert (opened.outcome, opened.target_id, opened.actor_label) == ("success", "ror-cvl", "ndupont")


def test_the_home_of_an_application_keeps_its_port(user):
    response = user.get("/apps/messagerie/open")
    assert response.status_code == 303
    assert response.headers["Location"] == (
        "http://127.0.0.1:5001/login/start?iss=http%3A%2F%2Flocalhost&target_link_uri=http%3A%2F%2F127.0.0.1%3A5001%2F")


def test_an_application_without_initiate_login_uri_opens_at_its_home(user):
    response = user.get("/apps/agenda/open")
    assert response.status_code == 303 and response.headers["Location"] == "https://agenda.esante-test.fr:8443/"


def test_iss_follows_the_configured_base_url(app_env, portal, mailbox):
    from portal.app import create_app

    app = create_app({**app_env, "ENRS_BASE_URL": "http://127.0.0.1:5000/"})
    app.config.update(TESTING=True)
    client = app.test_client()
    login(client, mailbox, "ndupont", PASSWORD, EMAIL)
    query = dict(parse_qsl(urlsplit(client.get("/apps/messagerie/open").headers["Location"]).query))
    assert query["iss"] == "http://127.0.0.1:5000"
    app.extensions["enrs.db"]["engine"].dispose()


def test_unknown_application_is_not_found(user):
    assert user.get("/apps/inconnue/open").status_code == 404
    assert user.get("/apps/" + "x" * 100 + "/open").status_code == 404


def test_an_existing_iss_parameter_is_replaced_not_doubled(portal, user):
    register_app(portal, "Annuaire", client_id="annuaire", redirect_uris=["https://annuaire.esante-test.fr/cb"],
                 initiate_login_uri="https://annuaire.esante-test.fr/start?iss=https%3A%2F%2Fevil.example&x=")
    query = parse_qsl(urlsplit(user.get("/apps/annuaire/open").headers["Location"]).query, keep_blank_values=True)
    assert query == [("x", ""), ("iss", "http://localhost"), ("target_link_uri", "https://annuaire.esante-test.fr/")]
