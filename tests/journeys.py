"""Steps a person takes through the real forms, shared by the journey tests."""
from __future__ import annotations

import re
from html import unescape

from tests.conftest import body_text

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
CAPTCHA_ID_RE = re.compile(r'name="captcha_id" value="([^"]+)"')
LINK_RE = re.compile(r"https?://\S+")


def csrf(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def captcha_answer(app, html: str) -> dict[str, str]:
    """Read the image like a person would (the code is derived from the challenge id)."""
    from onboarding.captcha import code_for

    match = CAPTCHA_ID_RE.search(html)
    assert match, "no captcha in the page"
    with app.app_context():
        return {"captcha_id": match.group(1), "captcha_answer": code_for(match.group(1)).lower()}


def registration_data(**overrides: str) -> dict[str, str]:
    data = {
        "cgu": "y",
        "profession": "10",
        "specialty": "Cardiologie",
        "civility": "MME",
        "last_name": "Petit",
        "first_name": "Nathalie",
        "national_id": "10108825463",
        "phone_pro": "02 37 51 52 53",
        "phone_mobile": "",
        "email": "nathalie.petit@esante-centre.fr",
        "email_confirm": "nathalie.petit@esante-centre.fr",
        "contact_email": "",
        "establishments-0-query": "AIRBP IRC DREUX",
        "establishments-0-finess": "280503848",
        "establishments-0-function_type": "Médecin",
        "establishments-0-service": "ADMINISTRATION",
        "action": "submit",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def submit_registration(app, client, **overrides: str):
    page = client.get("/register").get_data(as_text=True)
    data = {"csrf_token": csrf(page), **captcha_answer(app, page), **registration_data(**overrides)}
    return client.post("/register", data=data)


def link_in(message, start: str) -> str:
    for link in LINK_RE.findall(body_text(message)):
        if start in link:
            return link
    raise AssertionError(f"no link containing {start} in the email")


def path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def field_value(html: str, name: str) -> str | None:
    match = re.search(rf'name="{re.escape(name)}"[^>]*?value="([^"]*)"', html) or re.search(
        rf'value="([^"]*)"[^>]*?name="{re.escape(name)}"', html)
    return unescape(match.group(1)) if match else None


def error_for(html: str, field_id: str) -> str | None:
    match = re.search(rf'id="{re.escape(field_id)}-error">(?:<span class="visually-hidden">Erreur : </span>)?([^<]+)<', html)
    return unescape(match.group(1)).strip() if match else None


def login(client, mailbox, username: str, password: str, email: str, next_url: str | None = None):
    """Identifier + password, then the code received by mail: the J3 steps."""
    page = client.get("/login" + (f"?next={next_url}" if next_url else "")).get_data(as_text=True)
    response = client.post("/login", data={"csrf_token": csrf(page), "username": username, "password": password,
                                           "next": field_value(page, "next") or ""})
    assert response.status_code == 303, response.get_data(as_text=True)
    code = re.search(r"Votre code d'authentification unique est : (\d{6})", body_text(mailbox.last(email))).group(1)
    page = client.get("/login/code").get_data(as_text=True)
    response = client.post("/login/code", data={"csrf_token": csrf(page), "code": code})
    return accept_cgu_if_asked(client, response)


def accept_cgu_if_asked(client, response):
    """A person asked to accept a newer CGU version ticks the box and goes on."""
    target = response.headers.get("Location", "")
    follow = client.get(target) if response.status_code in (302, 303) else None
    if follow is not None and follow.status_code in (302, 303) and "/account/cgu" in follow.headers["Location"]:
        page = client.get(follow.headers["Location"]).get_data(as_text=True)
        next_value = field_value(page, "next") or ""
        return client.post("/account/cgu", data={"csrf_token": csrf(page), "accept": "y", "next": next_value})
    return response


def seed_doctor(app, email: str = "nathalie.dupont@esante-test.fr", password: str = "Hopital-Dreux-2026") -> None:
    """The demo establishments, and Nathalie Dupont, an active doctor at FINESS 280503848:
    the starting point of most journeys."""
    from onboarding.accounts import create_professional
    from onboarding.finess import load_demo_establishments
    from portal.db import db

    with app.app_context():
        load_demo_establishments(db.session)
        create_professional(db.session, email=email, password=password, first_name="Nathalie", last_name="Dupont",
                            profession="10", finess="280503848")
        db.session.commit()
