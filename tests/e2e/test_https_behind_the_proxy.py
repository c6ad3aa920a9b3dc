"""J3 over HTTPS, through the reverse proxy of docs/deploy.md (nginx with the guide's own
block, tests/proxy.py): what only a real browser behind a real proxy shows. Its forms
pass their origin check (the browser's Referer under Referrer-Policy: same-origin, the
Host that nginx passes on with its port), the session cookie is `__Host-` and Secure,
and HSTS comes with every page."""
from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.steps import Person, login, logout

PASSWORD = "Derriere-Le-Proxy-2026!"


def test_a_professional_logs_in_and_out_over_https_behind_the_guides_proxy(https_portal, open_page, shots):
    person = Person("Léa", "Morel")
    login_id = https_portal.create_professional(email=person.email, password=PASSWORD, first_name=person.first_name,
                                                last_name=person.last_name)
    page = open_page(https_portal)
    response = page.goto("/")
    assert page.url.startswith("https://")
    assert "max-age=" in (response.headers.get("strict-transport-security") or "")

    login(page, https_portal, login_id, PASSWORD, person.email, shots)
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    session = cookies.get("__Host-enrs")
    assert session is not None, sorted(cookies)
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/"
    shots(page, "logged-in-over-https")

    logout(page)
    expect(page.get_by_role("main").get_by_role("link", name="Se connecter")).to_be_visible()
