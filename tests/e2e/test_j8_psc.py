"""J8 in a real browser: an existing account links its e-CPS from Mon compte through the
Pro Santé Connect sandbox (tests/psc_sandbox, panva's oidc-provider set up like PSC), logs
out, then logs in with "Se connecter avec Pro Santé Connect" (no emailed code) and opens
the ROR tile."""
from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.steps import (
    DREUX,
    ROR_APP_NAME,
    Person,
    expect_logged_in,
    expect_my_apps,
    expect_ror_welcome,
    log_in_as_ror_referent,
    logout,
    open_app,
    starts,
)
from tests.psc_sandbox.sandbox import browser_login

PASSWORD = "Carte-ECPS-Liee-2026!"
PSC_IDENTITY = "medecin"  # Nathalie DUPONT, RPPS 10108825463 (tests/psc_sandbox/identities.json)
PSC_LOGIN = "Se connecter avec Pro Santé Connect"


def expect_psc_identity_page(page: Page, sso) -> None:
    """The sandbox's page, on PSC's own host (not the portal's): not audited, not ours."""
    expect(page).to_have_url(re.compile("^" + re.escape(f"http://localhost:{sso.psc.wallet_port}/")))
    expect(page.get_by_role("heading", name="Choisissez une identité de test")).to_be_visible()


def test_link_the_e_cps_then_log_in_with_pro_sante_connect(sso, open_page, shots):
    portal = sso.portal
    person = Person("Nathalie", "Dupont")
    page = log_in_as_ror_referent(portal, open_page, shots, person, PASSWORD)

    # Mon compte → Pro Santé Connect → "Lier ma carte e-CPS".
    page.get_by_role("navigation", name="Menu principal").get_by_role("link", name="Mon compte").click()
    expect(page.get_by_role("heading", name="Mon compte", level=1)).to_be_visible()
    shots(page, "my-account")
    page.get_by_role("link", name="Lier ma carte e-CPS ou gérer la liaison").click()
    expect(page.get_by_role("heading", name="Pro Santé Connect (carte CPS / e-CPS)", level=1)).to_be_visible()
    shots(page, "psc-not-linked")
    page.get_by_role("button", name="Lier ma carte e-CPS").click()
    expect_psc_identity_page(page, sso)
    shots(page, "psc-identity-page", audit=False)
    browser_login(page, PSC_IDENTITY)

    # Back on the portal: linked.
    expect(page).to_have_url(portal.base_url + "/psc/")
    expect(page.get_by_role("status")).to_contain_text("Votre carte e-CPS est liée à votre compte")
    expect(page.get_by_role("main")).to_contain_text("Votre carte e-CPS est liée à votre compte depuis le")
    expect(page.get_by_role("heading", name="Délier ma carte e-CPS")).to_be_visible()
    shots(page, "psc-linked")
    logout(page)

    # "Se connecter avec Pro Santé Connect": no password, no emailed code.
    since = portal.mark()
    page.goto("/login")
    shots(page, "login-page-with-psc")
    page.get_by_role("link", name=PSC_LOGIN).click()
    expect_psc_identity_page(page, sso)
    browser_login(page, PSC_IDENTITY)
    expect_my_apps(page)
    expect_logged_in(page)
    shots(page, "psc-logged-in")
    assert not [m for m in portal.inbox.messages[since:] if m["To"] == person.email], \
        "a Pro Santé Connect login sends no code by mail"

    open_app(page, ROR_APP_NAME)
    expect(page).to_have_url(sso.ror.base_url + "/")
    expect_ror_welcome(page, person.first_name, person.last_name, DREUX)
    expect(page.get_by_role("main")).to_contain_text("10108825463")  # the RPPS that PSC vouched for
    shots(page, "ror-welcome-psc")

    # The portal's logout also ends the Pro Santé Connect session, then comes back.
    page.go_back()
    expect_my_apps(page)
    page.get_by_role("button", name="Se déconnecter").click()
    expect(page).to_have_url(re.compile("^" + re.escape(portal.base_url + "/")))
    expect(page.get_by_role("status")).to_contain_text("Vous êtes déconnecté du portail et de Pro Santé Connect.")
    expect(page.get_by_role("heading", level=1)).to_contain_text(starts("Bienvenue"))
    shots(page, "psc-logged-out")
