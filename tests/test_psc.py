"""J8: Pro Santé Connect — log in with a CPS / e-CPS identity, link it to an account, or
create the account from it; and everything PSC (or someone in its place) may get wrong.

PSC is played by tests/psc_fake.py over real HTTP on loopback; the interop suite plays
the same flows against panva's oidc-provider configured like PSC."""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from tests.journeys import captcha_answer, csrf, field_value, link_in, login, path_of, registration_data, seed_doctor
from tests.psc_fake import DOCTOR, FakePsc

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"


@pytest.fixture
def fake_psc(clock):
    fake = FakePsc(clock=clock)
    yield fake
    fake.close()


@pytest.fixture
def app_env(app_env, fake_psc):
    return {**app_env, **fake_psc.env()}


@pytest.fixture
def portal(app):
    seed_doctor(app, EMAIL, PASSWORD)
    return app


def the_user(app, email: str = EMAIL):
    from idp.models import User
    from portal.db import db

    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        db.session.expunge(user)
        return user


def link_doctor(app, email: str = EMAIL) -> None:
    from idp.psc.models import PscLink
    from portal.clock import now
    from portal.db import db

    with app.app_context():
        user_id = db.session.execute(sa.text("SELECT id FROM users WHERE email = :e"), {"e": email}).scalar()
        db.session.add(PscLink(user_id=user_id, psc_subject=DOCTOR["sub"], national_id="10108825463",
                               linked_at=now()))
        db.session.commit()


def start(client, path: str = "/psc/login") -> dict[str, str]:
    """The portal sends the browser to PSC: the authorization request's parameters."""
    response = client.get(path) if path.startswith("/psc/login") else client.post(path, data={
        "csrf_token": csrf(client.get("/psc/").get_data(as_text=True))})
    assert response.status_code == 303, response.get_data(as_text=True)[:300]
    location = response.headers["Location"]
    assert location.startswith("http://localhost:"), "PSC's login page is on another host than its issuer"
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def come_back(client, fake: FakePsc, params: dict, identity: str = "doctor", **extra):
    code = fake.approve(params, identity)
    query = {"code": code, "state": params["state"], **extra}
    return client.get("/psc/callback", query_string=query)


def psc_round_trip(client, fake, path="/psc/login", identity="doctor"):
    return come_back(client, fake, start(client, path), identity)


def flash_after(client, response) -> str:
    from html import unescape

    return unescape(client.get(response.headers["Location"]).get_data(as_text=True))


# -- the request PSC receives --------------------------------------------------------------


def test_the_authorization_request_is_the_one_psc_expects(portal, fake_psc):
    client = portal.test_client()
    params = start(client)
    assert params["scope"] == "openid scope_all" and params["acr_values"] == "eidas1"
    assert params["response_type"] == "code" and params["client_id"] == "portail-enrs"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["state"] and params["nonce"] and params["redirect_uri"] == "http://localhost/psc/callback"
    come_back(client, fake_psc, params)
    exchange = fake_psc.token_requests[-1]
    assert exchange["authorization"].startswith("Basic ") and exchange["code_verifier"]


def test_the_button_shows_only_when_psc_is_configured(portal, app_env):
    assert "Se connecter avec Pro Santé Connect" in portal.test_client().get("/login").get_data(as_text=True)
    from portal.app import create_app

    bare = create_app({k: v for k, v in app_env.items() if not k.startswith("ENRS_PSC_")})
    client = bare.test_client()
    assert "Pro Santé Connect" not in client.get("/login").get_data(as_text=True)
    assert client.get("/psc/login").status_code == 404
    bare.extensions["enrs.db"]["engine"].dispose()


def test_psc_outage_shows_a_french_message_and_the_other_ways(portal, fake_psc):
    fake_psc.fail_discovery = True
    client = portal.test_client()
    response = client.get("/psc/login")
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    page = flash_after(client, response)
    assert "Pro Santé Connect est momentanément indisponible" in page and 'name="password"' in page


# -- a linked identity ------------------------------------------------------------------------


def test_linked_identity_logs_in_directly_without_an_email_code(portal, fake_psc, mailbox):
    link_doctor(portal)
    client = portal.test_client()
    response = psc_round_trip(client, fake_psc)
    assert response.status_code == 303 and response.headers["Location"] == "/apps"
    assert client.get("/account/").status_code == 200
    assert mailbox.to(EMAIL) == [], "no emailed code"
    from idp.sessions import UserSession
    from portal.db import db

    with portal.app_context():
        record = db.session.scalar(sa.select(UserSession).where(UserSession.revoked_at.is_(None)))
        assert record.acr == "eidas1" and record.amr == ["psc", "mfa"] and record.psc_id_token


def test_the_ror_app_receives_acr_and_amr_saying_psc(portal, fake_psc):
    from idp.models import UserRole
    from idp.provider.clients import ClientSpec, create_client
    from portal.clock import now
    from portal.db import db

    link_doctor(portal)
    with portal.app_context():
        create_client(db.session, ClientSpec(name="ROR", client_id="ror", redirect_uris=["https://ror.test/cb"]),
                      secret="s" * 40)
        user_id = db.session.execute(sa.text("SELECT id FROM users")).scalar()
        db.session.add(UserRole(user_id=user_id, role="ror_referent_offre", finess="280503848", granted_at=now()))
        db.session.commit()
    client = portal.test_client()
    psc_round_trip(client, fake_psc)
    location = client.get("/oidc/authorize", query_string={
        "response_type": "code", "client_id": "ror", "redirect_uri": "https://ror.test/cb",
        "scope": "openid profile national_id roles", "state": "s", "nonce": "n"}).headers["Location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    tokens = client.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                               "redirect_uri": "https://ror.test/cb"},
                         auth=("ror", "s" * 40)).json
    from joserfc import jwt
    from joserfc.jwk import KeySet

    claims = jwt.decode(tokens["id_token"], KeySet.import_key_set(client.get("/oauth/jwks").json)).claims
    assert claims["acr"] == "eidas1" and claims["amr"] == ["psc", "mfa"]
    assert claims["national_id"] == "10108825463"


def test_logging_out_after_a_psc_login_ends_the_psc_session_too(portal, fake_psc):
    link_doctor(portal)
    client = portal.test_client()
    psc_round_trip(client, fake_psc)
    page = client.get("/account/").get_data(as_text=True)
    response = client.post("/logout", data={"csrf_token": csrf(page)})
    assert response.status_code == 303
    target = urlsplit(response.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{fake_psc.issuer}/protocol/openid-connect/logout"
    params = parse_qs(target.query)
    assert params["post_logout_redirect_uri"] == ["http://localhost/psc/logged-out"] and params["id_token_hint"]
    assert client.get("/account/").status_code == 302, "the portal session is over"
    assert "déconnecté du portail et de Pro Santé Connect" in flash_after(client, client.get("/psc/logged-out"))


def test_a_pending_or_disabled_account_cannot_log_in_with_psc(portal, fake_psc):
    from idp.models import User
    from portal.db import db

    link_doctor(portal)
    for status, words in (("review_pending", "en attente de validation"), ("disabled", "désactivé")):
        with portal.app_context():
            db.session.execute(sa.update(User).values(status=status))
            db.session.commit()
        client = portal.test_client()
        response = psc_round_trip(client, fake_psc)
        assert response.headers["Location"] == "/login" and words in flash_after(client, response)
        assert client.get("/account/").status_code == 302


def test_a_national_id_that_disagrees_with_the_account_is_refused(portal, fake_psc):
    from idp.models import User
    from portal.db import db

    link_doctor(portal)
    with portal.app_context():
        db.session.execute(sa.update(User).values(national_id="19900000002", national_id_type="rpps"))
        db.session.commit()
    client = portal.test_client()
    response = psc_round_trip(client, fake_psc)
    assert "ne correspond pas à celui de votre compte" in flash_after(client, response)
    with portal.app_context():
        from portal.audit import AuditEntry

        assert db.session.scalar(sa.select(AuditEntry).where(AuditEntry.action == "psc.national_id_mismatch"))


# -- an unlinked identity: the seed's choice ------------------------------------------------------


def test_unlinked_identity_chooses_and_links_an_existing_account(portal, fake_psc, mailbox):
    client = portal.test_client()
    response = psc_round_trip(client, fake_psc)
    assert response.headers["Location"] == "/psc/choice"
    page = client.get("/psc/choice").get_data(as_text=True)
    assert "J'ai déjà un compte sur le Portail" in page and "Je n'ai pas de compte" in page
    done = login(client, mailbox, EMAIL, PASSWORD, EMAIL, next_url="/psc/confirm-link")
    assert done.headers["Location"] == "/psc/confirm-link"
    page = client.get("/psc/confirm-link").get_data(as_text=True)
    assert "Lier ma carte e-CPS" in page and "10108825463" in page
    response = client.post("/psc/confirm-link", data={"csrf_token": csrf(page)})
    assert response.headers["Location"] == "/apps"
    assert the_user(portal).national_id == "10108825463"
    # From now on, PSC alone logs this professional in.
    fresh = portal.test_client()
    assert psc_round_trip(fresh, fake_psc).headers["Location"] == "/apps"


def test_unlinked_identity_creates_an_account_prefilled_from_psc(portal, fake_psc, mailbox):
    client = portal.test_client()
    psc_round_trip(client, fake_psc)
    page = client.get("/register?psc=1").get_data(as_text=True)
    assert "Informations transmises par Pro Santé Connect" in page
    assert field_value(page, "last_name") == "DUPONT" and field_value(page, "first_name") == "Nathalie"
    assert re.search(r'name="national_id"[^>]*readonly', page) or re.search(r'readonly[^>]*name="national_id"', page)
    assert field_value(page, "establishments-0-finess") == "280503848"
    assert "750000012" in page, "the FINESS PSC sent that the referential lacks is pointed out"
    data = {"csrf_token": csrf(page), **captcha_answer(portal, page), **registration_data(
        last_name="Forged", national_id="", email="n.dupont@chu-test.fr", email_confirm="n.dupont@chu-test.fr")}
    response = client.post("/register", data=data)
    assert response.status_code == 303, response.get_data(as_text=True)[:2000]
    user = the_user(portal, "n.dupont@chu-test.fr")
    assert user.last_name == "DUPONT" and user.national_id == "10108825463", "PSC's values, not the forged ones"
    assert user.status == "email_pending", "the email is still verified"
    client.get(path_of(link_in(mailbox.last("n.dupont@chu-test.fr"), "/register/verify/")))
    from idp.psc.models import PscLink
    from portal.db import db

    with portal.app_context():
        assert db.session.scalar(sa.select(PscLink.psc_subject).where(PscLink.user_id == user.id)) == DOCTOR["sub"]


def test_the_choice_page_without_a_pending_identity(portal):
    client = portal.test_client()
    response = client.get("/psc/choice")
    assert response.headers["Location"] == "/login" and "a expiré" in flash_after(client, response)


# -- Mon compte: link and unlink ----------------------------------------------------------------------


def test_logged_in_user_links_then_unlinks_with_the_password(portal, fake_psc, mailbox):
    client = portal.test_client()
    login(client, mailbox, EMAIL, PASSWORD, EMAIL)
    assert "Lier ma carte e-CPS ou gérer la liaison" in client.get("/account/").get_data(as_text=True)
    response = psc_round_trip(client, fake_psc, path="/psc/link")
    assert response.headers["Location"] == "/psc/"
    page = flash_after(client, response)
    assert "est liée à votre compte" in page
    wrong = client.post("/psc/unlink", data={"csrf_token": csrf(page), "password": "wrong"})
    assert wrong.status_code == 422 and "Le mot de passe est incorrect" in wrong.get_data(as_text=True)
    response = client.post("/psc/unlink", data={"csrf_token": csrf(page), "password": PASSWORD})
    assert "n'est plus liée" in flash_after(client, response)


def test_an_identity_linked_to_another_account_is_refused(portal, fake_psc, mailbox):
    from onboarding.accounts import create_professional
    from portal.db import db

    with portal.app_context():
        create_professional(db.session, email="autre@esante-test.fr", password=PASSWORD, first_name="Paul",
                            last_name="Autre", profession="10", finess="280503848")
        db.session.commit()
    link_doctor(portal, "autre@esante-test.fr")
    client = portal.test_client()
    login(client, mailbox, EMAIL, PASSWORD, EMAIL)
    response = psc_round_trip(client, fake_psc, path="/psc/link")
    assert "déjà liée à un autre compte" in flash_after(client, response)


# -- what PSC (or an attacker) may get wrong ----------------------------------------------------------


def refused(client, response, words: str = "n'a pas pu être vérifiée") -> None:
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    assert words in flash_after(client, response)
    assert client.get("/account/").status_code == 302, "no session was opened"


@pytest.mark.parametrize("case, change", [
    ("nonce", {"id_token_overrides": {"nonce": "another"}}),
    ("audience", {"id_token_overrides": {"aud": "another-client"}}),
    ("issuer", {"id_token_overrides": {"iss": "https://evil.example/auth/realms/esante-wallet"}}),
    ("expired", {"id_token_overrides": {"exp": 1}}),
    ("not yet valid", {"id_token_overrides": {"iat": 4102444800, "nbf": 4102444800}}),
    ("alg none", {"header_overrides": {"alg": "none"}}),
    ("unknown kid", {"header_overrides": {"use_other_key": True}}),
    ("acr missing", {"acr": None}),
    ("acr too weak", {"acr": "eidas0"}),
    ("userinfo for another sub", {"userinfo_overrides": {"sub": "someone-else"}}),
    ("userinfo error", {"userinfo_status": 500}),
])
def test_a_doubtful_answer_from_psc_is_refused(portal, fake_psc, case, change):
    link_doctor(portal)
    for name, value in change.items():
        setattr(fake_psc, name, value)
    client = portal.test_client()
    refused(client, psc_round_trip(client, fake_psc),
            "assez forte" if case.startswith("acr") else "n'a pas pu être vérifiée")


def test_userinfo_timeout_is_a_french_message(portal, fake_psc, monkeypatch):
    import idp.psc.client as psc_client

    link_doctor(portal)
    monkeypatch.setattr(psc_client, "HTTP_TIMEOUT_SECONDS", 0.2)
    fake_psc.userinfo_delay = 1.0
    client = portal.test_client()
    refused(client, psc_round_trip(client, fake_psc), "momentanément indisponible")


def test_missing_subject_name_id_is_refused(portal, fake_psc):
    fake_psc.identities["doctor"] = {k: v for k, v in DOCTOR.items() if k != "SubjectNameID"}
    client = portal.test_client()
    refused(client, psc_round_trip(client, fake_psc), "identifiant national")


def test_state_mismatch_missing_or_replayed_callback_is_refused(portal, fake_psc):
    link_doctor(portal)
    client = portal.test_client()
    params = start(client)
    refused(client, come_back(client, fake_psc, {**params, "state": "forged"}), "n'est pas valide")
    params = start(client)
    code = fake_psc.approve(params)
    refused(client, client.get("/psc/callback", query_string={"code": code}), "n'est pas valide")
    params = start(client)
    good = come_back(client, fake_psc, params)
    assert good.headers["Location"] == "/apps"
    replay = client.get("/psc/callback", query_string={"code": fake_psc.approve(params), "state": params["state"]})
    assert replay.headers["Location"] == "/login"
    from html import unescape

    assert "n'est pas valide" in unescape(client.get("/login", follow_redirects=True).get_data(as_text=True))


def test_user_cancelling_at_psc_returns_to_the_login_page(portal, fake_psc):
    client = portal.test_client()
    params = start(client)
    response = client.get("/psc/callback", query_string={"error": "access_denied", "state": params["state"]})
    assert response.headers["Location"] == "/login" and "annulée" in flash_after(client, response)


def test_userinfo_as_a_signed_jwt_and_odd_identities(portal, fake_psc):
    """PSC may sign userinfo; otherIDs is sometimes spelled so, with malformed entries;
    a non-RPPS test identity keeps its identifier as it is."""
    fake_psc.userinfo_as_jwt = True
    fake_psc.identities["tester"] = {
        "sub": "f:test:3000123456", "SubjectNameID": "3000123456", "given_name": "", "family_name": "",
        "otherIDs": ["garbage", {"identifiant": "", "origine": "RPPS"}],
        "SubjectRefPro": {"exercices": [{"codeProfession": "50", "prenomDexercice": "Sophie",
                                         "nomDexercice": "SAGE", "activities": [{"numeroFinessSite": ""}]}]},
    }
    client = portal.test_client()
    response = psc_round_trip(client, fake_psc, identity="tester")
    assert response.headers["Location"] == "/psc/choice"
    page = client.get("/register?psc=1").get_data(as_text=True)
    assert field_value(page, "first_name") == "Sophie" and field_value(page, "last_name") == "SAGE"
    assert field_value(page, "national_id") == "3000123456"


def test_an_id_token_signed_with_the_client_secret_is_accepted(portal, fake_psc):
    from joserfc.jwk import OctKey

    link_doctor(portal)
    fake_psc.key = OctKey.import_key(fake_psc.client_secret.encode(), {"kid": "hs"})
    fake_psc.header_overrides = {"alg": "HS256"}
    client = portal.test_client()
    assert psc_round_trip(client, fake_psc).headers["Location"] == "/apps"


def test_identity_claims_mapping():
    from idp.psc.client import identity_from_claims, national_identifier

    assert national_identifier("810108825463", None) == ("10108825463", "rpps")
    assert national_identifier("0123456789", None) == ("123456789", "adeli")
    assert national_identifier("xyz", [{"identifiant": "10108825463", "origine": "RPPS"}]) == ("10108825463", "rpps")
    assert national_identifier("3000123456", "not a list") == ("3000123456", None)
    identity = identity_from_claims({"sub": DOCTOR["sub"], "acr": "eidas2"}, DOCTOR)
    assert identity.finess_sites == ["280503848", "750000012"], "empty strings mean absent"
    assert identity.profession_code == "10" and identity.acr == "eidas2"


def test_forms_that_lead_to_psc_are_allowed_by_the_page_policy(portal, fake_psc, mailbox):
    client = portal.test_client()
    login(client, mailbox, EMAIL, PASSWORD, EMAIL)
    issuer_origin = f"http://127.0.0.1:{fake_psc.port}"
    assert issuer_origin in client.get("/account/").headers["Content-Security-Policy"], "logout goes to PSC's issuer"
    assert f"http://localhost:{fake_psc.port}" in client.get("/psc/").headers["Content-Security-Policy"], \
        "linking goes to PSC's login host"


def test_psc_going_down_after_a_first_use_shows_the_message_too(portal, fake_psc):
    client = portal.test_client()
    start(client)
    fake_psc.fail_discovery = True
    response = client.get("/psc/login")
    assert response.headers["Location"] == "/login"
    assert "momentanément indisponible" in flash_after(client, response)


def test_tls_client_auth_presents_the_certificate_and_no_secret(app_env, fake_psc, clock, tmp_path):
    """PSC's production clients may authenticate with a certificate (tls_client_auth):
    the configured PEM pair is presented and no secret is sent."""
    from portal.app import create_app

    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    env = {**app_env, "ENRS_PSC_AUTH_METHOD": "tls_client_auth", "ENRS_PSC_CLIENT_CERT": str(cert),
           "ENRS_PSC_CLIENT_KEY": str(key)}
    env.pop("ENRS_PSC_CLIENT_SECRET")
    app = create_app(env, clock=clock)
    with app.test_request_context():
        from idp.psc.client import PscError, psc_client

        client = psc_client()
        assert client.http.cert == (str(cert), str(key))
        with pytest.raises(PscError):  # the fake PSC speaks plain HTTP and wants a secret: refused
            client.exchange(code="c", redirect_uri="http://localhost/psc/callback", code_verifier="v" * 43)
    sent = fake_psc.token_requests[-1]
    assert sent["client_id"] == "portail-enrs" and "client_secret" not in sent and sent["authorization"] is None
    app.extensions["enrs.db"]["engine"].dispose()


def test_tls_client_auth_needs_readable_pem_files(app_env, fake_psc):
    from portal.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="ENRS_PSC_CLIENT_CERT"):
        load_settings({**app_env, "ENRS_PSC_AUTH_METHOD": "tls_client_auth"})
