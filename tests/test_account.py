"""J4 "Mon compte": contacts, authentication email, password, sessions, CGU."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import body_text
from tests.journeys import csrf, error_for, field_value, link_in, login, path_of

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"


@pytest.fixture
def portal(app):
    from onboarding.accounts import create_professional
    from onboarding.finess import load_demo_establishments
    from portal.db import db

    with app.app_context():
        load_demo_establishments(db.session)
        create_professional(db.session, email=EMAIL, password=PASSWORD, first_name="Nathalie", last_name="Dupont",
                            profession="10", finess="280503848")
        db.session.commit()
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
        publish_cgu(db.session, "2.0", "Article 1 – Objet\nNouvelle version.")
        db.session.commit()
    clock.advance(seconds=31)  # the current version is cached for 30 s
    response = signed_in.get("/account/")
    assert response.status_code == 302 and "/account/cgu" in response.headers["Location"]
    page = signed_in.get(response.headers["Location"]).get_data(as_text=True)
    assert "Nouvelles conditions générales d'utilisation" in page and "Nouvelle version." in page
    refused = signed_in.post("/account/cgu", data={"csrf_token": csrf(page), "next": "/account/"})
    assert refused.status_code == 422
    accepted = signed_in.post("/account/cgu", data={"csrf_token": csrf(page), "accept": "y", "next": "/account/"})
    assert accepted.status_code == 303 and accepted.headers["Location"] == "/account/"
    assert "version 2.0" in signed_in.get("/account/").get_data(as_text=True)
    assert signed_in.get("/cgu").status_code == 200
