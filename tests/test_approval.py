"""J2: a regional admin reviews the accounts of their départements; approval sends "vos
identifiants" and the link to choose a password."""
from __future__ import annotations

import re
import threading

import pytest
import sqlalchemy as sa

from tests.conftest import body_text
from tests.journeys import csrf, error_for, link_in, login, path_of, submit_registration

ADMIN_PASSWORD = "Console-Region-2026!"


@pytest.fixture
def portal(app):
    from onboarding.accounts import create_admin
    from onboarding.finess import load_demo_establishments
    from portal.cgu import DEFAULT_CGU_TEXT, publish_cgu
    from portal.db import db

    with app.app_context():
        publish_cgu(db.session, "1.0", DEFAULT_CGU_TEXT)
        load_demo_establishments(db.session)
        create_admin(db.session, email="admin.centre@esante-test.fr", first_name="Paul", last_name="Bernard",
                     role="regional_admin", departments=["28", "37"], actor=None, password=ADMIN_PASSWORD)
        create_admin(db.session, email="admin.idf@esante-test.fr", first_name="Lucie", last_name="Moreau",
                     role="regional_admin", departments=["75", "92"], actor=None, password=ADMIN_PASSWORD)
        create_admin(db.session, email="super@esante-test.fr", first_name="Sophie", last_name="Martin",
                     role="super_admin", departments=[], actor=None, password=ADMIN_PASSWORD)
        db.session.commit()
    return app


def registered_and_verified(app, client, mailbox, **overrides):
    assert submit_registration(app, client, **overrides).status_code == 303
    email = overrides.get("email", "nathalie.petit@esante-centre.fr")
    client.get(path_of(link_in(mailbox.last(email), "/register/verify/")))
    from idp.models import User
    from portal.db import db

    with app.app_context():
        return db.session.scalar(sa.select(User).where(User.email == email))


def admin_client(app, mailbox, login_name, email):
    client = app.test_client()
    response = login(client, mailbox, login_name, ADMIN_PASSWORD, email)
    assert response.status_code == 303
    return client


def test_regional_admin_sees_only_the_accounts_of_their_departements(portal, client, mailbox):
    dreux = registered_and_verified(portal, client, mailbox)
    paris = registered_and_verified(portal, portal.test_client(), mailbox, email="jean.roux@aphp-test.fr",
                                    email_confirm="jean.roux@aphp-test.fr", first_name="Jean", last_name="Roux",
                                    **{"establishments-0-finess": "750071136", "establishments-0-query": ""})
    centre = admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    queue = centre.get("/admin/accounts").get_data(as_text=True)
    assert "Comptes à valider (1)" in queue and "PETIT Nathalie" in queue and "ROUX" not in queue
    assert centre.get(f"/admin/accounts/{paris.id}").status_code == 404
    assert centre.get(f"/admin/accounts/{dreux.id}").status_code == 200

    idf = admin_client(portal, mailbox, "lmoreau", "admin.idf@esante-test.fr")
    queue = idf.get("/admin/accounts").get_data(as_text=True)
    assert "ROUX Jean" in queue and "PETIT" not in queue

    superadmin = admin_client(portal, mailbox, "smartin", "super@esante-test.fr")
    queue = superadmin.get("/admin/accounts").get_data(as_text=True)
    assert "Comptes à valider (2)" in queue
    # Oldest first.
    assert queue.index("PETIT Nathalie") < queue.index("ROUX Jean")


def test_professional_cannot_open_the_console(portal, client, mailbox):
    from onboarding.accounts import create_professional
    from portal.db import db

    with portal.app_context():
        create_professional(db.session, email="pro@esante-test.fr", password="Un-Secret-Solide-1",
                            first_name="Anne", last_name="Leroy", profession="60", finess="280503848")
        db.session.commit()
    assert login(client, mailbox, "aleroy", "Un-Secret-Solide-1", "pro@esante-test.fr").status_code == 303
    assert client.get("/admin/accounts").status_code == 403
    anonymous = portal.test_client().get("/admin/accounts")
    assert anonymous.status_code == 302 and "/login?next=/admin/accounts" in anonymous.headers["Location"]


def test_approval_sends_the_login_and_a_link_to_choose_the_password(portal, client, mailbox):
    user = registered_and_verified(portal, client, mailbox)
    centre = admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    page = centre.get(f"/admin/accounts/{user.id}").get_data(as_text=True)
    assert "AIRBP IRC DREUX" in page and "RPPS 10108825463" in page
    response = centre.post(f"/admin/accounts/{user.id}", data={"csrf_token": csrf(page), "decision": "approve"})
    assert response.status_code == 303

    message = mailbox.last("nathalie.petit@esante-centre.fr")
    assert message["Subject"] == "eSanté Test : vos identifiants"
    text = body_text(message)
    assert "Identifiant : npetit" in text
    # No password exists yet, so none can have been sent: the user chooses it.
    from idp.models import User
    from portal.db import db

    with portal.app_context():
        assert db.session.get(User, user.id).password_hash is None
    link = path_of(link_in(message, "/activate/"))

    page = client.get(link).get_data(as_text=True)
    assert "Taille minimale : 12" in page and "Minimum de caractères spéciaux : 1" in page
    assert "Générer le mot de passe automatiquement" in page
    response = client.post(link, data={"csrf_token": csrf(page), "password": "Bonne-Journee-2026",
                                       "password_confirm": "Bonne-Journee-2026"})
    assert response.status_code == 303
    assert client.get(link).status_code == 400  # single use

    fresh = portal.test_client()
    assert login(fresh, mailbox, "npetit", "Bonne-Journee-2026", "nathalie.petit@esante-centre.fr").status_code == 303

    from portal.audit import AuditEntry
    from portal.db import db

    with portal.app_context():
        actions = db.session.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.id)).all()
    assert {"account.register", "account.email_verified", "account.approve", "password.set"} <= set(actions)


@pytest.mark.parametrize("password, rule", [
    ("Court-1a", "Taille minimale : 12"),
    ("SANS-MINUSCULE-12", "Minimum de minuscules : 1"),
    ("sans-majuscule-12", "Minimum de majuscules : 1"),
    ("Sans-Chiffre-Du-Tout", "Minimum de chiffres : 1"),
    ("SansCaractere12Special", "Minimum de caractères spéciaux : 1"),
    ("Npetit-Secret-2026", "ni votre identifiant, ni votre nom"),
    ("Azerty123456!", "trop courant"),
])
def test_each_password_rule_is_named_when_broken(portal, client, mailbox, password, rule):
    user = registered_and_verified(portal, client, mailbox)
    centre = admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    page = centre.get(f"/admin/accounts/{user.id}").get_data(as_text=True)
    centre.post(f"/admin/accounts/{user.id}", data={"csrf_token": csrf(page), "decision": "approve"})
    link = path_of(link_in(mailbox.last("nathalie.petit@esante-centre.fr"), "/activate/"))
    page = client.get(link).get_data(as_text=True)
    response = client.post(link, data={"csrf_token": csrf(page), "password": password, "password_confirm": password})
    assert response.status_code == 422
    assert rule in error_for(response.get_data(as_text=True), "password")


def test_rejection_needs_a_reason_and_tells_the_user(portal, client, mailbox):
    user = registered_and_verified(portal, client, mailbox)
    centre = admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    page = centre.get(f"/admin/accounts/{user.id}").get_data(as_text=True)
    response = centre.post(f"/admin/accounts/{user.id}", data={"csrf_token": csrf(page), "decision": "reject"})
    assert response.status_code == 422
    assert "Indiquez le motif du refus" in response.get_data(as_text=True)
    response = centre.post(f"/admin/accounts/{user.id}", data={
        "csrf_token": csrf(page), "decision": "reject", "reason": "Établissement hors de la région."})
    assert response.status_code == 303
    message = mailbox.last("nathalie.petit@esante-centre.fr")
    assert "Motif : Établissement hors de la région." in body_text(message)
    assert "Comptes à valider (0)" in centre.get("/admin/accounts").get_data(as_text=True)


def test_two_admins_deciding_at_once_make_one_decision(portal, client, mailbox):
    user = registered_and_verified(portal, client, mailbox)
    admins = [admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr"),
              admin_client(portal, mailbox, "smartin", "super@esante-test.fr")]
    forms = [(a, csrf(a.get(f"/admin/accounts/{user.id}").get_data(as_text=True))) for a in admins]
    mailbox.clear()
    statuses = []

    def decide(admin, token):
        statuses.append(admin.post(f"/admin/accounts/{user.id}", data={"csrf_token": token, "decision": "approve"})
                        .status_code)

    threads = [threading.Thread(target=decide, args=pair) for pair in forms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) in ([303, 404], [303, 422])
    assert len(mailbox.to("nathalie.petit@esante-centre.fr")) == 1


def test_homonyms_and_unlisted_establishments_are_flagged(portal, client, mailbox):
    registered_and_verified(portal, client, mailbox)
    registered_and_verified(portal, portal.test_client(), mailbox, email="nathalie.petit2@esante-centre.fr",
                            email_confirm="nathalie.petit2@esante-centre.fr", national_id="",
                            **{"establishments-0-finess": "", "establishments-0-not_listed": "y",
                               "establishments-0-name": "Cabinet des Tilleuls",
                               "establishments-0-postal_code": "28000", "establishments-0-city": "Chartres"})
    centre = admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    queue = centre.get("/admin/accounts").get_data(as_text=True)
    assert queue.count("1 homonyme") == 2
    assert "Établissement non référencé dans FINESS" in queue and "Sans identifiant national" in queue


def test_without_approval_the_verified_email_activates_the_account(app_env, clock, mailbox):
    from onboarding.finess import load_demo_establishments
    from portal.app import create_app
    from portal.db import db

    app = create_app({**app_env, "ENRS_ACCOUNT_APPROVAL": "none"}, clock=clock)
    with app.app_context():
        load_demo_establishments(db.session)
        db.session.commit()
    client = app.test_client()
    submit_registration(app, client)
    page = client.get(path_of(link_in(mailbox.last(), "/register/verify/"))).get_data(as_text=True)
    assert "Votre compte est activé" in page
    message = mailbox.last("nathalie.petit@esante-centre.fr")
    assert "Identifiant : npetit" in body_text(message)


def test_logins_are_made_from_the_names_with_a_number_on_collision(portal, mailbox):
    from onboarding.accounts import create_professional
    from portal.db import db

    logins = []
    with portal.app_context():
        for i, (first, last) in enumerate([("Nathalie", "Dupont"), ("Nicolas", "Dupont"), ("Noël", "Du Pont"),
                                           ("Élodie", "Lefèvre-Martin")]):
            user = create_professional(db.session, email=f"u{i}@esante-test.fr", password="Un-Secret-Solide-1",
                                       first_name=first, last_name=last, profession="10", finess=None)
            logins.append(user.login)
        db.session.commit()
    assert logins == ["ndupont", "n2dupont", "n3dupont", "elefevremartin"]


def test_activation_link_forged_or_expired_offers_a_new_one(portal, client, mailbox, clock):
    user = registered_and_verified(portal, client, mailbox)
    centre = admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    page = centre.get(f"/admin/accounts/{user.id}").get_data(as_text=True)
    centre.post(f"/admin/accounts/{user.id}", data={"csrf_token": csrf(page), "decision": "approve"})
    link = path_of(link_in(mailbox.last("nathalie.petit@esante-centre.fr"), "/activate/"))
    assert client.get(link.replace("/activate/", "/activate/x")).status_code == 400
    clock.advance(hours=73)
    expired = client.get(link)
    assert expired.status_code == 400 and "Ce lien a expiré." in expired.get_data(as_text=True)
    page = client.get("/register/resend").get_data(as_text=True)
    client.post("/register/resend", data={"csrf_token": csrf(page), "email": "nathalie.petit@esante-centre.fr"})
    fresh = path_of(link_in(mailbox.last("nathalie.petit@esante-centre.fr"), "/activate/"))
    assert fresh != link and client.get(fresh).status_code == 200


def test_super_admin_creates_a_regional_admin_with_departements(portal, mailbox):
    superadmin = admin_client(portal, mailbox, "smartin", "super@esante-test.fr")
    page = superadmin.get("/admin/admins").get_data(as_text=True)
    bad = superadmin.post("/admin/admins", data={"csrf_token": csrf(page), "email": "claire.durand@esante-test.fr",
                                                 "first_name": "Claire", "last_name": "Durand",
                                                 "departments": "45, 99"})
    assert bad.status_code == 422
    assert error_for(bad.get_data(as_text=True), "departments").startswith("« 99 » n'est pas un code de département")
    ok = superadmin.post("/admin/admins", data={"csrf_token": csrf(page), "email": "claire.durand@esante-test.fr",
                                                "first_name": "Claire", "last_name": "Durand",
                                                "departments": "45, 41"})
    assert ok.status_code == 303
    assert "Identifiant : cdurand" in body_text(mailbox.last("claire.durand@esante-test.fr"))
    centre = admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    assert centre.get("/admin/admins").status_code == 403


def test_regional_admin_unlocks_a_locked_account_of_their_scope(portal, mailbox, clock):
    from idp.lockout import POLICY
    from onboarding.accounts import create_professional
    from portal.db import db

    with portal.app_context():
        create_professional(db.session, email="pro@esante-test.fr", password="Un-Secret-Solide-1",
                            first_name="Anne", last_name="Leroy", profession="60", finess="280503848")
        db.session.commit()
    attacker = portal.test_client()
    for attempt in range(POLICY.max_failures):
        page = attacker.get("/login").get_data(as_text=True)
        attacker.post("/login", data={"csrf_token": csrf(page), "username": "aleroy", "password": f"x{attempt}"})
        clock.advance((POLICY.wait_after(attempt + 1) or __import__("datetime").timedelta()).total_seconds() + 1
                      if attempt + 1 < POLICY.max_failures else 0)
    owner = portal.test_client()
    page = owner.get("/login").get_data(as_text=True)
    assert owner.post("/login", data={"csrf_token": csrf(page), "username": "aleroy",
                                      "password": "Un-Secret-Solide-1"}).status_code == 401

    idf = admin_client(portal, mailbox, "lmoreau", "admin.idf@esante-test.fr")
    assert "Leroy" not in idf.get("/admin/users?q=leroy").get_data(as_text=True).replace("leroy", "")
    centre = admin_client(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    listing = centre.get("/admin/users?q=leroy").get_data(as_text=True)
    user_id = re.search(r'href="/admin/users/(\d+)"', listing).group(1)
    assert idf.get(f"/admin/users/{user_id}").status_code == 404
    page = centre.get(f"/admin/users/{user_id}").get_data(as_text=True)
    assert "connexion bloquée" in page
    centre.post(f"/admin/users/{user_id}", data={"csrf_token": csrf(page), "action": "unlock"})
    assert owner.post("/login", data={"csrf_token": csrf(owner.get("/login").get_data(as_text=True)),
                                      "username": "aleroy", "password": "Un-Secret-Solide-1"}).status_code == 303
