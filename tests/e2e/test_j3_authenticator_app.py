"""J3 with an authenticator app: enrol it from Mon compte (QR code and key), keep the
recovery codes, log out, then log in with the app's code instead of an emailed one."""
from __future__ import annotations

import re
import time

import pyotp
from playwright.sync_api import expect

from tests.e2e.steps import Person, expect_logged_in, label, login, logout, submit_password

PASSWORD = "Appli-Secrete-2026!"


def test_enrol_an_authenticator_app_and_log_in_with_it(portal, open_page, shots):
    person = Person("Julie", "Perrin")
    login_id = portal.create_professional(email=person.email, password=PASSWORD, first_name="Julie",
                                          last_name="Perrin")
    page = open_page(portal)
    login(page, portal, login_id, PASSWORD, person.email, shots)
    page.goto("/account/")
    page.get_by_role("link", name=re.compile("application d'authentification", re.I)).first.click()
    page.get_by_role("button", name="Ajouter une application d'authentification").click()
    expect(page.get_by_role("heading", name="Ajouter une application d'authentification", level=1)).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("QR code"))).to_be_visible()
    shots(page, "totp-enrol")
    # The person's phone: the key written under the QR code.
    totp = pyotp.TOTP(re.sub(r"\s", "", page.locator("#totp-key").inner_text()))
    page.get_by_label(label("Code affiché par l'application")).fill(totp.now())
    page.get_by_role("button", name="Valider").click()
    expect(page.get_by_role("heading", name="Vos codes de secours", level=1)).to_be_visible()
    shots(page, "totp-recovery-codes")
    page.get_by_role("link", name="J'ai conservé mes codes").click()
    logout(page)

    page.goto("/login")
    since = portal.mark()
    submit_password(page, login_id, PASSWORD)
    expect(page.get_by_role("heading", name="Code d'authentification", level=1)).to_be_visible()
    field = page.get_by_label(label("Code affiché par votre application d'authentification"))
    # The code of the next 30-second step (the portal accepts one step of drift): the
    # enrolment already used the current one, and a code is never accepted twice.
    field.fill(totp.at(time.time() + 30))
    shots(page, "totp-login")
    page.get_by_role("button", name="Se connecter", exact=True).click()
    expect_logged_in(page)
    assert not [m for m in portal.inbox.messages[since:] if m["To"] == person.email], \
        "with an authenticator app, no code is sent by mail"
