"""J2: a regional admin validates the account ("Comptes à valider"), the professional
receives "vos identifiants", chooses a generated password and logs in with the code."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.steps import (
    DREUX,
    GENERATED_RE,
    TOURS,
    Person,
    expect_logged_in,
    label,
    login,
    register,
    show_email,
)


def test_admin_validates_the_account_then_the_professional_activates_it(portal, open_page, shots):
    person = Person("Élodie", "Garnier")
    professional = open_page(portal, name="professional")
    register(professional, portal, person, shots, establishments=(DREUX, TOURS))

    # The regional admin (departments 18, 28, 36, 37, 41, 45), in a browser of their own.
    admin = open_page(portal, name="admin")
    login(admin, portal, portal.admin_login, portal.demo_password, portal.admin_email, shots)
    admin.get_by_role("navigation", name="Menu principal").get_by_role("link", name="Administration").click()
    expect(admin.get_by_role("heading", name="Administration", level=1)).to_be_visible()
    shots(admin, "admin-dashboard")
    admin.get_by_role("navigation", name="Console d'administration").get_by_role(
        "link", name="Comptes à valider").click()
    expect(admin.get_by_role("heading", name=re.compile(r"^Comptes à valider \(\d+\)"), level=1)).to_be_visible()
    request_row = admin.get_by_role("row").filter(has=admin.get_by_role("link", name=person.listed_name))
    expect(request_row).to_contain_text(f"{DREUX.name} ({DREUX.finess}, 28)")
    expect(request_row).to_contain_text(f"{TOURS.name} ({TOURS.finess}, 37)")
    shots(admin, "accounts-to-validate")

    request_row.get_by_role("link", name=person.listed_name).click()
    expect(admin.get_by_role("heading", level=1)).to_have_text(
        f"Demande de compte : Mme {person.first_name} {person.last_name.upper()}")
    expect(admin.get_by_text(person.email, exact=True)).to_be_visible()
    establishments = admin.get_by_role("table")
    for establishment in (DREUX, TOURS):
        row = establishments.get_by_role("row").filter(has_text=establishment.finess)
        expect(row).to_contain_text(establishment.name)
        expect(row).to_contain_text(establishment.function)
        expect(row).to_contain_text(establishment.service)
    shots(admin, "account-request")
    since = portal.mark()
    admin.get_by_role("button", name="Valider le compte").click()
    expect(admin.get_by_role("status")).to_contain_text(f"Le compte de {person.first_name} ")
    expect(admin.get_by_role("link", name=person.listed_name)).to_have_count(0)
    shots(admin, "account-validated")

    # "vos identifiants": the login identifier and the link to choose a password.
    credentials = portal.receive(person.email, "vos identifiants", since=since)
    login_id = re.search(r"Identifiant : (\S+)", credentials.get_body(("plain",)).get_content()).group(1)
    show_email(professional, credentials)
    expect(professional.get_by_text(login_id, exact=True)).to_be_visible()
    shots(professional, "email-credentials")
    professional.get_by_role("link", name="Choisir mon mot de passe").click()
    expect(professional.get_by_role("heading", name="Choisissez votre mot de passe", level=1)).to_be_visible()
    expect(professional.get_by_role("main")).to_contain_text(f"Votre identifiant de connexion : {login_id}")

    professional.get_by_role("button", name="Générer le mot de passe automatiquement").click()
    shown = professional.get_by_text(re.compile(r"^Mot de passe généré : "))
    expect(shown).to_be_visible()
    password = GENERATED_RE.search(shown.inner_text()).group(1)
    expect(professional.get_by_label(label("Nouveau mot de passe"))).to_have_value(password)
    expect(professional.get_by_label(label("Confirmez le mot de passe"))).to_have_value(password)
    shots(professional, "password-generated")
    professional.get_by_role("button", name="Envoyer").click()
    expect(professional.get_by_role("status")).to_contain_text(
        f"Votre mot de passe est enregistré. Vous pouvez maintenant vous connecter avec votre identifiant {login_id}.")
    shots(professional, "password-set")

    login(professional, portal, login_id, password, person.email, shots)
    expect_logged_in(professional)
    shots(professional, "logged-in")
