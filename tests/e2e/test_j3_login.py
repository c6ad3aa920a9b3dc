"""J3: login with the emailed 6-digit code (on a desktop and on a 390×844 phone), a wrong
password, and "Réinitialiser mon mot de passe" from the email to the next login."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.steps import Person, label, login, logout, submit_password
from tests.e2e.support import link_in

OLD_PASSWORD = "Ancien-Secret-2026!"
NEW_PASSWORD = "Nouveau-Secret-2027?"
WRONG = "Identifiant ou mot de passe incorrect."


def _professional(portal, first_name: str, last_name: str) -> tuple[str, str]:
    """An active account made by `enrs user create`: (login, email)."""
    email = Person(first_name, last_name).email
    login_id = portal.create_professional(email=email, password=OLD_PASSWORD, first_name=first_name,
                                          last_name=last_name)
    return login_id, email


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_login_with_the_emailed_code_and_a_wrong_password(portal, open_page, shots, device):
    login_id, email = _professional(portal, "Thomas", "Girard")
    page = open_page(portal)
    page.goto("/")
    page.get_by_role("main").get_by_role("link", name="Se connecter").click()
    expect(page.get_by_role("heading", name="Veuillez vous authentifier", level=1)).to_be_visible()
    submit_password(page, login_id, "Pas-le-bon-mot-de-passe-1")
    expect(page.get_by_role("alert")).to_contain_text(WRONG)
    expect(page.get_by_label(label("Mot de passe"))).to_have_value("")
    shots(page, "wrong-password")

    login(page, portal, login_id, OLD_PASSWORD, email, shots)
    shots(page, "logged-in")
    logout(page)


def test_password_reset(portal, open_page, shots):
    login_id, email = _professional(portal, "Inès", "Fabre")
    page = open_page(portal)
    page.goto("/login")
    page.get_by_role("link", name="Réinitialiser mon mot de passe", exact=True).click()
    expect(page.get_by_role("heading", name="Réinitialiser mon mot de passe", level=1)).to_be_visible()
    page.get_by_label(label("Mail pour l'authentification")).fill(email)
    shots(page, "reset-request")
    since = portal.mark()
    page.get_by_role("button", name="Envoyer le lien").click()
    expect(page.get_by_role("status")).to_contain_text("Si un compte actif correspond à cette adresse")
    shots(page, "reset-requested")

    message = portal.receive(email, "Réinitialisation de votre mot de passe", since=since)
    page.goto(link_in(message, "/password/reset/"))
    expect(page.get_by_role("heading", name="Choisissez un nouveau mot de passe", level=1)).to_be_visible()
    expect(page.get_by_role("main")).to_contain_text(f"Votre identifiant de connexion : {login_id}")
    page.get_by_label(label("Nouveau mot de passe")).fill(NEW_PASSWORD)
    page.get_by_label(label("Confirmez le mot de passe")).fill(NEW_PASSWORD)
    shots(page, "new-password")
    since = portal.mark()
    page.get_by_role("button", name="Envoyer").click()
    expect(page.get_by_role("status")).to_contain_text("Votre mot de passe est enregistré")
    portal.receive(email, "Votre mot de passe a été modifié", since=since)
    shots(page, "password-changed")

    # The link works once; the old password no longer does; the new one does.
    page.goto(link_in(message, "/password/reset/"))
    expect(page.get_by_role("heading", name="Ce lien n'est plus valide", level=1)).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("Ce lien a déjà été utilisé")
    shots(page, "link-used")
    page.goto("/login")
    submit_password(page, login_id, OLD_PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text(WRONG)
    login(page, portal, login_id, NEW_PASSWORD, email, shots)
    shots(page, "logged-in")
