"""J1 "Créer un compte", through the real form, with a real SMTP server on loopback."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from tests.conftest import body_text
from tests.journeys import (
    captcha_answer,
    csrf,
    error_for,
    field_value,
    link_in,
    path_of,
    registration_data,
    submit_registration,
)


@pytest.fixture
def portal(app):
    """A portal with its CGU and the demo establishments, as after `enrs demo`."""
    from onboarding.finess import load_demo_establishments
    from portal.cgu import DEFAULT_CGU_TEXT, publish_cgu
    from portal.db import db

    with app.app_context():
        publish_cgu(db.session, "1.0", DEFAULT_CGU_TEXT)
        load_demo_establishments(db.session)
        db.session.commit()
    return app


def users(app):
    from sqlalchemy.orm import selectinload

    from idp.models import User
    from portal.db import db

    with app.app_context():
        return db.session.scalars(sa.select(User).order_by(User.id).options(selectinload(User.establishments))).all()


def test_professional_registers_then_validates_the_email_and_waits_for_review(portal, client, mailbox):
    response = submit_registration(portal, client)
    assert response.status_code == 303 and response.headers["Location"].endswith("/register/sent")
    assert "Je valide mon adresse mail" in client.get("/register/sent").get_data(as_text=True)

    [user] = users(portal)
    assert user.status == "email_pending" and user.login is None and user.password_hash is None
    assert user.email == "nathalie.petit@esante-centre.fr" and user.last_name == "PETIT"
    assert user.national_id == "10108825463" and user.national_id_type == "rpps"
    assert user.cgu_version_id is not None and user.cgu_accepted_at is not None
    [establishment] = user.establishments
    assert (establishment.finess, establishment.city, establishment.department) == ("280503848", "DREUX", "28")

    message = mailbox.last("nathalie.petit@esante-centre.fr")
    assert message["Subject"] == "Validation de votre inscription"
    assert "Je valide mon adresse mail" in body_text(message)
    link = link_in(message, "/register/verify/")

    page = client.get(path_of(link))
    assert page.status_code == 200
    assert "Nous étudions votre demande" in page.get_data(as_text=True)
    assert users(portal)[0].status == "review_pending"
    review = mailbox.last("nathalie.petit@esante-centre.fr")
    assert review["Subject"] == "Nous étudions votre demande"
    assert "en cours de traitement par nos équipes" in body_text(review)

    # A second click (or a mail scanner that got there first) is not an error.
    again = client.get(path_of(link))
    assert again.status_code == 200 and "déjà validée" in again.get_data(as_text=True)


def test_every_required_field_left_empty_is_named_next_to_it(portal, client):
    empty = {k: "" for k in registration_data()}
    empty.pop("cgu")
    response = submit_registration(portal, client, **{**empty, "cgu": None, "action": "submit"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert error_for(html, "cgu") == "Vous devez accepter les conditions générales d'utilisation."
    assert error_for(html, "profession") == "Veuillez choisir votre profession."
    assert error_for(html, "last_name") == "Ce champ est obligatoire."
    assert error_for(html, "first_name") == "Ce champ est obligatoire."
    assert error_for(html, "email") == "Veuillez saisir une adresse mail."
    assert error_for(html, "email_confirm").startswith("Veuillez saisir une seconde fois")
    assert error_for(html, "establishments-0-query").startswith("Choisissez votre établissement")
    assert error_for(html, "establishments-0-function_type") == "Ce champ est obligatoire."
    assert error_for(html, "establishments-0-service") == "Ce champ est obligatoire."
    assert 'class="error-summary"' in html and 'href="#last_name"' in html
    assert users(portal) == []


def test_a_refused_form_keeps_everything_typed_except_the_captcha(portal, client):
    response = submit_registration(portal, client, email_confirm="autre.adresse@esante-centre.fr",
                                   phone_mobile="06 12 34 56 78", contact_email="contact@chu-dreux.fr")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert error_for(html, "email_confirm") == "Les deux adresses mail ne sont pas identiques."
    for name, value in [("last_name", "Petit"), ("first_name", "Nathalie"), ("national_id", "10108825463"),
                        ("phone_pro", "02 37 51 52 53"), ("phone_mobile", "06 12 34 56 78"),
                        ("email", "nathalie.petit@esante-centre.fr"),
                        ("email_confirm", "autre.adresse@esante-centre.fr"), ("contact_email", "contact@chu-dreux.fr"),
                        ("specialty", "Cardiologie"), ("establishments-0-finess", "280503848"),
                        ("establishments-0-function_type", "Médecin"), ("establishments-0-service", "ADMINISTRATION")]:
        assert field_value(html, name) == value, name
    assert 'value="10" selected' in html and 'value="MME" selected' in html
    assert 'name="cgu" value="y" checked' in html
    assert field_value(html, "captcha_answer") is None


@pytest.mark.parametrize("address", [
    "n.petit@mssante.fr", "n.petit@ch-dreux.mssante.fr", "N.Petit@Pharmacien.MSSante.fr",
    "contact@ch-dreux.fr", "accueil@ch-dreux.fr", "secretariat@ch-dreux.fr", "direction@ch-dreux.fr",
    "secretariat.cardio@ch-dreux.fr", "info@clinique.fr",
])
def test_authentication_email_must_be_individual(portal, client, address):
    response = submit_registration(portal, client, email=address, email_confirm=address)
    assert error_for(response.get_data(as_text=True), "email") == (
        "Mail individuel obligatoire. Les adresses MSSanté sont interdites ainsi que le mail générique.")
    assert users(portal) == []


def test_contact_email_may_be_generic_and_addresses_are_normalised(portal, client):
    response = submit_registration(portal, client, email="  Nathalie.Petit@ESANTE-Centre.FR ",
                                   email_confirm="nathalie.petit@esante-centre.fr", contact_email="Contact@CH-Dreux.fr")
    assert response.status_code == 303
    [user] = users(portal)
    assert user.email == "nathalie.petit@esante-centre.fr" and user.contact_email == "contact@ch-dreux.fr"


@pytest.mark.parametrize("field, value, message", [
    ("national_id", "10108825464", "Le numéro RPPS saisi n'est pas valide"),
    ("national_id", "123456780", "Le numéro ADELI saisi n'est pas valide"),
    ("national_id", "12345", "L'identifiant national doit comporter 11 chiffres (RPPS) ou 9 chiffres (ADELI)."),
    ("establishments-0-finess", "280503849", "Le numéro FINESS n'est pas valide"),
    ("phone_pro", "12 34", "Le numéro de téléphone doit comporter 10 chiffres"),
    ("email", "pas-une-adresse", "L'adresse mail n'est pas valide"),
])
def test_identifiers_with_a_wrong_check_digit_or_shape_are_refused(portal, client, field, value, message):
    overrides = {field: value}
    if field == "email":
        overrides["email_confirm"] = value
    response = submit_registration(portal, client, **overrides)
    assert response.status_code == 422
    assert error_for(response.get_data(as_text=True), field).startswith(message)


def test_adeli_number_is_accepted(portal, client):
    assert submit_registration(portal, client, national_id="280000019").status_code == 303
    assert users(portal)[0].national_id_type == "adeli"


def test_finess_absent_from_the_referential_needs_the_not_listed_box(portal, client):
    response = submit_registration(portal, client, **{"establishments-0-finess": "280000068"})
    assert error_for(response.get_data(as_text=True), "establishments-0-finess").startswith(
        "Cet établissement n'est pas dans le répertoire FINESS")
    response = submit_registration(portal, client, **{
        "establishments-0-finess": "", "establishments-0-not_listed": "y",
        "establishments-0-name": "Cabinet infirmier des Tilleuls", "establishments-0-postal_code": "28000",
        "establishments-0-city": "Chartres"})
    assert response.status_code == 303
    [user] = users(portal)
    [establishment] = user.establishments
    assert establishment.not_listed and establishment.finess is None
    assert (establishment.name, establishment.city, establishment.department) == (
        "Cabinet infirmier des Tilleuls", "CHARTRES", "28")


def test_not_listed_establishment_needs_name_postal_code_and_city(portal, client):
    response = submit_registration(portal, client, **{
        "establishments-0-finess": "", "establishments-0-not_listed": "y", "establishments-0-postal_code": "280"})
    html = response.get_data(as_text=True)
    assert error_for(html, "establishments-0-name") == "Indiquez le nom de votre établissement."
    assert error_for(html, "establishments-0-postal_code") == "Le code postal doit comporter 5 chiffres."
    assert error_for(html, "establishments-0-city") == "Ce champ est obligatoire."


def test_a_2000_character_name_is_refused_with_a_message(portal, client):
    response = submit_registration(portal, client, last_name="A" * 2000)
    assert response.status_code == 422
    assert error_for(response.get_data(as_text=True), "last_name") == "100 caractères au maximum."


def test_html_typed_in_the_fields_is_stored_as_text_and_shown_escaped(portal, client, mailbox):
    script = '<script>alert("x")</script>'
    response = submit_registration(portal, client, first_name=script, specialty=script,
                                   **{"establishments-0-service": script})
    assert response.status_code == 303
    [user] = users(portal)
    assert user.first_name == script and user.establishments[0].service == script
    refused = submit_registration(portal, client, last_name="", first_name=script)
    html = refused.get_data(as_text=True)
    assert script not in html and "&lt;script&gt;" in html
    assert script not in mailbox.last().get_body(preferencelist=("html",)).get_content()


def test_profession_autre_needs_the_exact_profession(portal, client):
    response = submit_registration(portal, client, profession="autre")
    assert error_for(response.get_data(as_text=True), "profession_other") == "Indiquez votre profession exacte."
    assert submit_registration(portal, client, profession="autre", profession_other="Assistante sociale").status_code == 303
    assert users(portal)[0].profession_other == "Assistante sociale"


def test_second_establishment_is_added_and_searched_without_javascript(portal, client):
    page = client.get("/register").get_data(as_text=True)
    assert "Ajouter un deuxième établissement" in page
    data = {"csrf_token": csrf(page), **registration_data(action="add_establishment")}
    page = client.post("/register", data=data).get_data(as_text=True)
    assert 'name="establishments-1-query"' in page
    assert field_value(page, "establishments-0-finess") == "280503848"  # the first row is kept

    data = {"csrf_token": csrf(page), **registration_data(action="search-1"),
            "establishments-1-query": "tours", "establishments-1-function_type": "Cadre de santé",
            "establishments-1-service": "Urgences"}
    page = client.post("/register", data=data).get_data(as_text=True)
    assert "Choisissez votre établissement" in page
    import re

    choice = re.search(r'name="establishments-1-choice" value="(\w+)"', page).group(1)

    data = {"csrf_token": csrf(page), **captcha_answer(portal, page), **registration_data(),
            "establishments-1-choice": choice, "establishments-1-function_type": "Cadre de santé",
            "establishments-1-service": "Urgences"}
    response = client.post("/register", data=data)
    assert response.status_code == 303, response.get_data(as_text=True)
    [user] = users(portal)
    assert [e.finess for e in user.establishments] == ["280503848", choice]
    assert user.establishments[1].department == "37"


def test_captcha_wrong_expired_or_reused_is_refused(portal, client, clock):
    page = client.get("/register").get_data(as_text=True)
    answer = captcha_answer(portal, page)
    wrong = client.post("/register", data={"csrf_token": csrf(page), **registration_data(),
                                           "captcha_id": answer["captcha_id"], "captcha_answer": "ZZZZZZ"})
    assert wrong.status_code == 422
    assert error_for(wrong.get_data(as_text=True), "captcha") is not None
    reused = client.post("/register", data={"csrf_token": csrf(page), **registration_data(), **answer})
    assert reused.status_code == 422

    page = client.get("/register").get_data(as_text=True)
    answer = captcha_answer(portal, page)
    clock.advance(minutes=30)
    expired = client.post("/register", data={"csrf_token": csrf(page), **registration_data(), **answer})
    assert expired.status_code == 422
    assert users(portal) == []


def test_double_submission_creates_one_account(portal, client, mailbox):
    page = client.get("/register").get_data(as_text=True)
    data = {"csrf_token": csrf(page), **captcha_answer(portal, page), **registration_data()}
    first = client.post("/register", data=data)
    page = client.get("/register").get_data(as_text=True)
    second = client.post("/register", data={**data, **captcha_answer(portal, page)})
    assert first.status_code == second.status_code == 303
    assert len(users(portal)) == 1


def test_registering_with_an_address_that_has_an_account_shows_the_same_page(portal, client, mailbox):
    from onboarding.accounts import create_professional
    from portal.db import db

    with portal.app_context():
        create_professional(db.session, email="nathalie.petit@esante-centre.fr", password="Tr3s-Long-Secret!",
                            first_name="Nathalie", last_name="Petit", profession="10", finess=None)
        db.session.commit()
    mailbox.clear()
    response = submit_registration(portal, client)
    assert response.status_code == 303 and response.headers["Location"].endswith("/register/sent")
    assert len(users(portal)) == 1
    message = mailbox.last("nathalie.petit@esante-centre.fr")
    assert message["Subject"] == "Tentative d'inscription avec votre adresse"
    assert "Votre identifiant de connexion est : npetit" in body_text(message)


def test_fifty_concurrent_registrations_with_one_address_make_one_account(portal, mailbox):
    clients = []
    for _ in range(50):
        c = portal.test_client()
        page = c.get("/register").get_data(as_text=True)
        clients.append((c, {"csrf_token": csrf(page), **captcha_answer(portal, page), **registration_data()}))
    statuses = []

    def post(c, data):
        statuses.append(c.post("/register", data=data).status_code)

    threads = [threading.Thread(target=post, args=pair) for pair in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [303] * 50
    assert len(users(portal)) == 1


def test_verification_link_forged_expired_or_reused_offers_a_new_one(portal, client, mailbox, clock):
    submit_registration(portal, client)
    link = path_of(link_in(mailbox.last(), "/register/verify/"))

    forged = client.get(link[:-3] + "abc")
    assert forged.status_code == 400
    html = forged.get_data(as_text=True)
    assert "Ce lien n'est plus valide" in html and "Recevoir un nouveau lien" in html

    clock.advance(hours=49)
    expired = client.get(link)
    assert expired.status_code == 400 and "Ce lien a expiré." in expired.get_data(as_text=True)

    page = client.get("/register/resend").get_data(as_text=True)
    response = client.post("/register/resend", data={"csrf_token": csrf(page),
                                                     "email": "nathalie.petit@esante-centre.fr"})
    assert response.status_code == 303
    fresh = path_of(link_in(mailbox.last(), "/register/verify/"))
    assert client.get(fresh).status_code == 200
    assert users(portal)[0].status == "review_pending"


def test_resend_answers_the_same_for_an_unknown_address(portal, client, mailbox):
    page = client.get("/register/resend").get_data(as_text=True)
    response = client.post("/register/resend", data={"csrf_token": csrf(page), "email": "inconnu@esante-centre.fr"},
                           follow_redirects=True)
    assert "Si cette adresse correspond à une inscription en cours" in response.get_data(as_text=True)
    assert mailbox.messages == []


def test_no_mail_is_lost_when_smtp_is_down_during_registration(portal, client, smtp_server, mailbox, clock):
    from portal.mail import deliver

    smtp_server.stop()
    assert submit_registration(portal, client).status_code == 303
    assert users(portal)[0].status == "email_pending"
    smtp_server.start()
    clock.advance(minutes=5)
    with portal.app_context():
        assert deliver().sent == 1
    assert mailbox.last("nathalie.petit@esante-centre.fr")["Subject"] == "Validation de votre inscription"


def test_registration_form_without_csrf_token_is_refused(portal, client):
    page = client.get("/register").get_data(as_text=True)
    response = client.post("/register", data={**captcha_answer(portal, page), **registration_data()})
    assert response.status_code == 400
    assert "Session expirée" in response.get_data(as_text=True)
    assert users(portal) == []


def test_registration_page_has_the_seed_labels(portal, client):
    from html import unescape

    html = unescape(client.get("/register").get_data(as_text=True))
    for label in ["J'accepte les conditions générales d'utilisation", "Informations personnelles", "Contacts",
                  "Mail pour l'authentification", "Mail pour la communication", "Établissement d'exercice",
                  "FINESS géographique", "Type de fonction", "Service d'exercice",
                  "Mon établissement n'est pas référencé dans la liste", "Ajouter un deuxième établissement",
                  "Quel code est dissimulé dans l'image ?", "DEMANDER MON INSCRIPTION", "Médecin"]:
        assert label in html, label
    import re

    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html)), "inline script breaks the CSP"
