"""J7 in a real browser: a professional holding the ROR role logs in, stars the ROR tile
of "Mes applications", opens it and lands signed in on the demo ROR app (examples/ror_app,
its own process); logging out of the portal ends the ROR app's session too (back-channel
logout), as a reload of its page shows."""
from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.steps import (
    DREUX,
    ROR_APP_NAME,
    Person,
    app_tile,
    expect_my_apps,
    expect_ror_signed_out,
    expect_ror_welcome,
    favourites,
    log_in_as_ror_referent,
    logout,
    open_app,
    other_apps,
    star,
)

PASSWORD = "Referente-Offre-2026!"


def test_ror_tile_single_sign_on_then_back_channel_logout(sso, open_page, shots):
    portal, ror = sso.portal, sso.ror
    person = Person("Sophie", "Marchand")
    page = log_in_as_ror_referent(portal, open_page, shots, person, PASSWORD)
    # After the login: "Mes applications", the ROR tile among the other applications.
    expect_my_apps(page)
    expect(favourites(page)).to_contain_text("Vous n'avez pas d'applications favorites.")
    expect(app_tile(other_apps(page), ROR_APP_NAME)).to_be_visible()
    shots(page, "my-applications")

    star(page, ROR_APP_NAME)
    shots(page, "ror-starred")

    open_app(page, ROR_APP_NAME)
    expect(page).to_have_url(ror.base_url + "/")
    expect_ror_welcome(page, person.first_name, person.last_name, DREUX)
    shots(page, "ror-welcome")

    # Back to the portal, and out of it: the portal tells the ROR app, server to server.
    page.go_back()
    expect_my_apps(page)
    expect(app_tile(favourites(page), ROR_APP_NAME)).to_be_visible()
    logout(page)
    shots(page, "portal-logged-out")
    page.goto(ror.base_url + "/")
    expect_ror_signed_out(page)
    shots(page, "ror-session-ended")
