"""J4 "Mon compte": contacts, authentication email, password, sessions, CGU."""
from __future__ import annotations

from html import unescape

import pytest
import sqlalchemy as sa

from tests.conftest import body_text
from tests.journeys import csrf, error_for, field_value, link_in, login, path_of, seed_doctor

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"


@pytest.fixture
def portal(app):
    seed_doctor(app, EMAIL, PASSWORD)
    return app


@pytest.fixture
def signed_in(portal, mailbox):
    client = portal.test_client()
    assert login(client, mailbox, "ndupont", PASSWORD, EMAIL).status_code == 303
    mailbox.clear()
    return client


def account_page(client) -> str:
    response = client.get("/account/")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def user_row(portal):
    from idp.models import User
    from portal.db import db

    with portal.app_context():
        return db.session.scalar(sa.select(User).where(User.login == "ndupont"))


def test_mon_compte_shows_the_profile_and_establishments(signed_in):
    page = account_page(signed_in)
    for text in ["Mon compte", "ndupont", "Nathalie DUPONT", "Médecin", "AIRBP IRC DREUX", "Mes sessions",
                 "(cette session)", "Changer de mot de passe"]:
        assert text in page, text


def test_anonymous_visitor_is_sent_to_the_login_page(portal):
    response = portal.test_client().get("/account/")
    assert response.status_code == 302 and "/login?next=/account/" in response.headers["Location"]


def test_contacts_are_updated_and_a_bad_phone_is_refused_without_losing_input(portal, signed_in):
    page = account_page(signed_in)
    bad = signed_in.post("/account/contacts", data={"csrf_token": csrf(page), "phone_pro": "12",
                                                    "phone_mobile": "06 12 34 56 78", "contact_email": ""})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert error_for(html, "phone_pro").startswith("Le numéro de téléphone doit comporter 10 chiffres")
    assert field_value(html, "phone_mobile") == "06 12 34 56 78"
    ok = signed_in.post("/account/contacts", data={"csrf_token": csrf(page), "phone_pro": "0237515253",
                                                   "phone_mobile": "", "contact_email": "Secretariat@CH-Dreux.fr"})
    assert ok.status_code == 303
    user = user_row(portal)
    assert user.phone_pro == "02 37 51 52 53" and user.contact_email == "secretariat@ch-dreux.fr"


def test_changing_the_authentication_email_is_confirmed_from_the_new_address(portal, signed_in, mailbox):
    page = account_page(signed_in)
    wrong = signed_in.post("/account/email", data={"csrf_token": csrf(page), "new_email": "n.dupont@chu-test.fr",
                                                   "email_password": "pas-le-bon"})
    assert wrong.status_code == 422
    assert error_for(wrong.get_data(as_text=True), "email_password") == "Mot de passe actuel incorrect."
    mssante = signed_in.post("/account/email", data={"csrf_token": csrf(page), "new_email": "n.dupont@mssante.fr",
                                                     "email_password": PASSWORD})
    assert "Les adresses MSSanté sont interdites" in error_for(mssante.get_data(as_text=True), "new_email")

    response = signed_in.post("/account/email", data={"csrf_token": csrf(page), "new_email": "n.dupont@chu-test.fr",
                                                      "email_password": PASSWORD})
    assert response.status_code == 303
    assert "n.dupont@chu-test.fr" in body_text(mailbox.last(EMAIL))  # the old address is told
    link = path_of(link_in(mailbox.last("n.dupont@chu-test.fr"), "/account/email/confirm/"))
    assert user_row(portal).email == EMAIL  # nothing changes before the confirmation
    assert signed_in.get(link).status_code == 303
    assert user_row(portal).email == "n.dupont@chu-test.fr"
    assert signed_in.get(link).status_code == 400  # single use


def test_changing_the_password_ends_the_other_sessions(portal, signed_in, mailbox):
    other = portal.test_client()
    login(other, mailbox, "ndupont", PASSWORD, EMAIL)
    mailbox.clear()
    page = account_page(signed_in)
    bad = signed_in.post("/account/password", data={"csrf_token": csrf(page), "current_password": "faux",
                                                    "password": "court", "password_confirm": "autre"})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert error_for(html, "current_password") == "Mot de passe actuel incorrect."
    assert "Taille minimale : 12" in error_for(html, "password")
    assert error_for(html, "password_confirm") == "Les deux mots de passe ne sont pas identiques."
    same = signed_in.post("/account/password", data={"csrf_token": csrf(page), "current_password": PASSWORD,
                                                     "password": PASSWORD, "password_confirm": PASSWORD})
    assert "déjà été utilisé récemment" in error_for(same.get_data(as_text=True), "password")
    ok = signed_in.post("/account/password", data={"csrf_token": csrf(page), "current_password": PASSWORD,
                                                   "password": "Autre-Secret-2027", "password_confirm": "Autre-Secret-2027"})
    assert ok.status_code == 303
    assert "Mon compte" in signed_in.get("/account/").get_data(as_text=True)  # this session goes on
    assert other.get("/account/").status_code == 302  # the other one is over
    assert "mot de passe a été modifié" in body_text(mailbox.last(EMAIL))


def test_user_closes_another_session_then_all_others(portal, signed_in, mailbox):
    from idp.sessions import UserSession
    from portal.db import db

    phone, tablet = portal.test_client(), portal.test_client()
    login(phone, mailbox, "ndupont", PASSWORD, EMAIL)
    login(tablet, mailbox, "ndupont", PASSWORD, EMAIL)
    page = account_page(signed_in)
    assert page.count("Fermer cette session") == 2
    with portal.app_context():
        ids = db.session.scalars(sa.select(UserSession.public_id).order_by(UserSession.created_at)).all()
    response = signed_in.post(f"/account/sessions/{ids[1]}/revoke", data={"csrf_token": csrf(page)})
    assert response.status_code == 303
    assert phone.get("/account/").status_code == 302 and tablet.get("/account/").status_code == 200
    signed_in.post("/account/sessions/revoke-others", data={"csrf_token": csrf(page)})
    assert tablet.get("/account/").status_code == 302 and signed_in.get("/account/").status_code == 200


def test_someone_elses_session_cannot_be_closed(portal, signed_in, mailbox):
    from idp.sessions import UserSession
    from onboarding.accounts import create_professional
    from portal.db import db

    with portal.app_context():
        create_professional(db.session, email="autre@esante-test.fr", password="Un-Secret-Solide-1",
                            first_name="Anne", last_name="Leroy", profession="60", finess=None)
        db.session.commit()
    other = portal.test_client()
    login(other, mailbox, "aleroy", "Un-Secret-Solide-1", "autre@esante-test.fr")
    with portal.app_context():
        theirs = db.session.scalar(sa.select(UserSession.public_id).join(UserSession.user)
                                   .where(UserSession.user.has(login="aleroy")))
    page = account_page(signed_in)
    assert signed_in.post(f"/account/sessions/{theirs}/revoke", data={"csrf_token": csrf(page)}).status_code == 404
    assert other.get("/account/").status_code == 200


def test_a_newer_cgu_version_must_be_accepted_before_going_on(portal, signed_in, clock):
    from portal.cgu import publish_cgu
    from portal.db import db

    with portal.app_context():
        publish_cgu(db.session, "1.0", "Article 1 – Objet\nPremière version.")
        db.session.commit()
    clock.advance(seconds=31)  # the current version is cached for 30 s
    first = signed_in.get("/account/")
    page = unescape(signed_in.get(first.headers["Location"]).get_data(as_text=True))
    assert "Avant votre première utilisation du portail" in page and "Première version." in page
    signed_in.post("/account/cgu", data={"csrf_token": csrf(page), "accept": "y", "next": "/account/"})

    with portal.app_context():
        publish_cgu(db.session, "2.0", "Article 1 – Objet\nNouvelle version.")
        db.session.commit()
    clock.advance(seconds=31)
    response = signed_in.get("/account/")
    assert response.status_code == 302 and "/account/cgu" in response.headers["Location"]
    page = unescape(signed_in.get(response.headers["Location"]).get_data(as_text=True))
    assert "Nouvelles conditions générales d'utilisation" in page and "Nouvelle version." in page
    refused = signed_in.post("/account/cgu", data={"csrf_token": csrf(page), "next": "/account/"})
    assert refused.status_code == 422
    accepted = signed_in.post("/account/cgu", data={"csrf_token": csrf(page), "accept": "y", "next": "/account/"})
    assert accepted.status_code == 303 and accepted.headers["Location"] == "/account/"
    assert "version 2.0" in signed_in.get("/account/").get_data(as_text=True)
    assert signed_in.get("/cgu").status_code == 200


def test_user_adds_an_establishment_found_by_search_then_removes_the_first(portal, signed_in):
    import re

    page = signed_in.get("/account/establishments/").get_data(as_text=True)
    assert "AIRBP IRC DREUX" in page and "Ajouter un établissement" in page
    searched = signed_in.post("/account/establishments/", data={
        "csrf_token": csrf(page), "action": "search-0", "establishments-0-query": "tours bretonneau"})
    html = searched.get_data(as_text=True)
    choice = re.search(r'name="establishments-0-choice" value="(\w+)"', html).group(1)
    missing = signed_in.post("/account/establishments/", data={
        "csrf_token": csrf(page), "establishments-0-choice": choice, "action": "submit"})
    assert missing.status_code == 422
    assert error_for(missing.get_data(as_text=True), "establishments-0-service") == "Ce champ est obligatoire."
    added = signed_in.post("/account/establishments/", data={
        "csrf_token": csrf(page), "establishments-0-finess": choice, "establishments-0-function_type": "Médecin",
        "establishments-0-service": "Cardiologie", "action": "submit"})
    assert added.status_code == 303
    again = signed_in.post("/account/establishments/", data={
        "csrf_token": csrf(page), "establishments-0-finess": choice, "establishments-0-function_type": "Médecin",
        "establishments-0-service": "Cardiologie", "action": "submit"})
    assert error_for(again.get_data(as_text=True), "establishments-0-finess") == (
        "Cet établissement figure déjà dans votre liste.")

    from idp.models import UserEstablishment
    from portal.db import db

    with portal.app_context():
        first = db.session.scalar(sa.select(UserEstablishment).where(UserEstablishment.finess == "280503848"))
    done = signed_in.post(f"/account/establishments/{first.id}/remove", data={"csrf_token": csrf(page)},
                          follow_redirects=True).get_data(as_text=True)
    assert "L'établissement AIRBP IRC DREUX est retiré de votre liste." in __import__("html").unescape(done)
    page = signed_in.get("/account/establishments/").get_data(as_text=True)
    assert "AIRBP IRC DREUX" not in page and "CHU TOURS BRETONNEAU" in page
    # The last establishment cannot be removed.
    with portal.app_context():
        last = db.session.scalar(sa.select(UserEstablishment))
    response = signed_in.post(f"/account/establishments/{last.id}/remove", data={"csrf_token": csrf(page)},
                              follow_redirects=True)
    assert "Vous devez garder au moins un établissement" in response.get_data(as_text=True)


def test_someone_elses_establishment_row_cannot_be_removed(portal, signed_in):
    from idp.models import UserEstablishment
    from onboarding.accounts import create_professional
    from portal.db import db

    with portal.app_context():
        other = create_professional(db.session, email="autre@esante-test.fr", password="Un-Secret-Solide-1",
                                    first_name="Anne", last_name="Leroy", profession="60", finess="280503848")
        db.session.commit()
        row_id = db.session.scalar(sa.select(UserEstablishment.id).where(UserEstablishment.user_id == other.id))
    page = account_page(signed_in)
    assert signed_in.post(f"/account/establishments/{row_id}/remove",
                          data={"csrf_token": csrf(page)}).status_code == 404


def test_the_cgu_gate_leaves_the_establishment_autocomplete_answering_json(portal, signed_in, clock):
    from portal.cgu import publish_cgu
    from portal.db import db

    with portal.app_context():
        publish_cgu(db.session, "1.0", "Article 1 – Objet\nPremière version.")
        db.session.commit()
    clock.advance(seconds=31)
    assert signed_in.get("/account/").status_code == 302  # pages wait for the acceptance
    response = signed_in.get("/api/establishments?q=dreux")
    assert response.status_code == 200 and response.is_json
