"""J7 and SPEC §4: the portal as the OpenID Provider the ROR application trusts.

Each test walks what an application and a user do: the authorization request in the
browser, the code exchange by the application's back end, userinfo, refresh, revocation,
introspection, logout; and what an attacker or a buggy client tries."""
from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.journeys import csrf, field_value, login

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"
ROR = "https://ror.esante-test.fr"
CALLBACK = f"{ROR}/callback"
SECRET = "ror-secret-" + "s" * 32


@pytest.fixture
def portal(app):
    """A professional with the ROR role, the ROR application (confidential, needs the
    role) and a public application (no role, PKCE)."""
    from idp.models import UserRole
    from idp.provider.clients import ClientSpec, create_client
    from onboarding.accounts import create_professional
    from onboarding.finess import load_demo_establishments
    from portal.clock import now
    from portal.db import db

    with app.app_context():
        load_demo_establishments(db.session)
        user = create_professional(db.session, email=EMAIL, password=PASSWORD, first_name="Nathalie",
                                   last_name="Dupont", profession="10", finess="280503848")
        user.national_id, user.national_id_type = "10108825463", "rpps"
        db.session.add(UserRole(user_id=user.id, role="ror_referent_offre", finess="280503848", granted_at=now()))
        create_client(db.session, ClientSpec(
            name="ROR Centre-Val de Loire", client_id="ror", redirect_uris=[CALLBACK],
            post_logout_redirect_uris=[f"{ROR}/"], required_role="ror_referent_offre", icon="ror"), secret=SECRET)
        create_client(db.session, ClientSpec(
            name="Agenda", client_id="agenda", redirect_uris=["https://agenda.esante-test.fr/cb"], is_public=True,
            allowed_scopes="openid profile"))
        create_client(db.session, ClientSpec(
            name="Annuaire", client_id="annuaire", redirect_uris=["https://annuaire.esante-test.fr/cb"],
            token_endpoint_auth_method="client_secret_post", id_token_signed_response_alg="ES256"),
            secret="annuaire-secret-" + "a" * 32)
        db.session.commit()
    return app


@pytest.fixture
def user_client(portal, mailbox):
    client = portal.test_client()
    login(client, mailbox, EMAIL, PASSWORD, EMAIL)
    return client


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(**overrides) -> dict:
    params = {"response_type": "code", "client_id": "ror", "redirect_uri": CALLBACK,
              "scope": "openid profile email establishments roles national_id", "state": "st-123",
              "nonce": "n-456"}
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def authorize(client, **overrides):
    return client.get("/oidc/authorize?" + urlencode(authorize_params(**overrides)))


def redirect_params(response) -> dict[str, str]:
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}


def get_code(client, **overrides) -> str:
    params = redirect_params(authorize(client, **overrides))
    assert params.get("state") == overrides.get("state", "st-123")
    return params["code"]


def basic(client_id: str = "ror", secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def exchange(client, code: str, *, headers=None, **form):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, **form}
    return client.post("/oauth/token", data=data, headers=basic() if headers is None else headers)


def verify(client, id_token: str) -> dict:
    keys = KeySet.import_key_set(client.get("/oauth/jwks").json)
    return jwt.decode(id_token, keys, algorithms=["RS256", "ES256"]).claims


def tokens_for(client, **overrides) -> dict:
    response = exchange(client, get_code(client, **overrides))
    assert response.status_code == 200, response.json
    return response.json


# -- discovery and keys -------------------------------------------------------------------


def test_application_discovers_the_portal_endpoints_and_keys(portal):
    client = portal.test_client()
    config = client.get("/.well-known/openid-configuration").json
    assert config["issuer"] == "http://localhost"
    assert config["authorization_endpoint"] == "http://localhost/oidc/authorize"
    assert config["token_endpoint"] == "http://localhost/oauth/token"
    assert config["end_session_endpoint"] == "http://localhost/oidc/logout"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["backchannel_logout_supported"] is True
    assert {"roles", "establishments", "national_id"} <= set(config["scopes_supported"])
    keys = client.get(urlsplit(config["jwks_uri"]).path).json["keys"]
    assert {key["alg"] for key in keys} == {"RS256", "ES256"}
    assert all("d" not in key for key in keys), "private parts never published"


# -- the code flow --------------------------------------------------------------------------


def test_logged_in_professional_gets_a_code_and_the_ror_app_receives_who_they_are(portal, user_client):
    tokens = tokens_for(user_client)
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"] and tokens["expires_in"] == 300
    claims = verify(user_client, tokens["id_token"])
    with portal.app_context():
        from idp.models import User
        from idp.sessions import UserSession
        from portal.db import db

        user = db.session.scalar(sa.select(User).where(User.email == EMAIL))
        session_record = db.session.scalar(sa.select(UserSession).where(UserSession.user_id == user.id))
        assert claims["sub"] == user.public_id and claims["sub"] != str(user.id)
        assert claims["sid"] == session_record.public_id
        assert claims["auth_time"] == int(session_record.created_at.timestamp())
    assert claims["iss"] == "http://localhost" and claims["aud"] == "ror" and claims["nonce"] == "n-456"
    assert claims["acr"] == "urn:enrs:acr:pwd-otp-email" and claims["amr"] == ["pwd", "otp", "mca"]
    assert claims["given_name"] == "Nathalie" and claims["family_name"] == "DUPONT"
    assert claims["profession"] == {"code": "10", "label": "Médecin"}
    assert claims["national_id"] == "10108825463"
    assert claims["roles"] == [{"role": "ror_referent_offre", "finess": "280503848"}]
    assert claims["establishments"][0]["finess"] == "280503848"
    assert claims["at_hash"]

    for method in ("GET", "POST"):
        info = user_client.open("/oauth/userinfo", method=method,
                                headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert info.status_code == 200
        assert info.json["sub"] == claims["sub"] and info.json["roles"] == claims["roles"]
        assert info.json["email"] == EMAIL and info.json["email_verified"] is True


def test_scopes_limit_the_claims(user_client):
    claims = verify(user_client, tokens_for(user_client, scope="openid")["id_token"])
    assert "given_name" not in claims and "roles" not in claims and "email" not in claims
    info = user_client.get("/oauth/userinfo", headers={"Authorization": "Bearer " + tokens_for(
        user_client, scope="openid email")["access_token"]}).json
    assert set(info) == {"sub", "email", "email_verified"}


def test_client_secret_post_and_es256_for_a_client_that_asked_for_them(user_client):
    code = get_code(user_client, client_id="annuaire", redirect_uri="https://annuaire.esante-test.fr/cb")
    refused = user_client.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                     "redirect_uri": "https://annuaire.esante-test.fr/cb"},
                               headers=basic("annuaire", "annuaire-secret-" + "a" * 32))
    assert refused.status_code == 401, "registered for client_secret_post: basic is refused"
    code = get_code(user_client, client_id="annuaire", redirect_uri="https://annuaire.esante-test.fr/cb")
    response = user_client.post("/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": "https://annuaire.esante-test.fr/cb",
        "client_id": "annuaire", "client_secret": "annuaire-secret-" + "a" * 32})
    assert response.status_code == 200, response.json
    header = jwt.decode(response.json["id_token"], KeySet.import_key_set(user_client.get("/oauth/jwks").json),
                        algorithms=["ES256"]).header
    assert header["alg"] == "ES256" and header["kid"].startswith("es256-")


def test_public_client_must_use_pkce_and_the_verifier_must_match(user_client):
    public = {"client_id": "agenda", "redirect_uri": "https://agenda.esante-test.fr/cb", "scope": "openid profile"}
    params = redirect_params(authorize(user_client, **public))
    assert params["error"] == "invalid_request" and params["state"] == "st-123"

    verifier, challenge = pkce()
    code = get_code(user_client, code_challenge=challenge, code_challenge_method="S256", **public)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": public["redirect_uri"],
            "client_id": "agenda"}
    assert user_client.post("/oauth/token", data=form).json["error"] == "invalid_request"  # no verifier
    code = get_code(user_client, code_challenge=challenge, code_challenge_method="S256", **public)
    wrong = user_client.post("/oauth/token", data={**form, "code": code, "code_verifier": pkce()[0]})
    assert wrong.json["error"] == "invalid_grant"
    code = get_code(user_client, code_challenge=challenge, code_challenge_method="S256", **public)
    ok = user_client.post("/oauth/token", data={**form, "code": code, "code_verifier": verifier})
    assert ok.status_code == 200 and ok.json["id_token"]


def test_plain_pkce_is_refused(user_client):
    params = redirect_params(authorize(user_client, code_challenge="a" * 43, code_challenge_method="plain"))
    assert params["error"] == "invalid_request"


def test_confidential_client_pkce_is_honoured(user_client):
    verifier, challenge = pkce()
    code = get_code(user_client, code_challenge=challenge, code_challenge_method="S256")
    assert exchange(user_client, code).json["error"] == "invalid_request"
    code = get_code(user_client, code_challenge=challenge, code_challenge_method="S256")
    assert exchange(user_client, code, code_verifier=verifier).status_code == 200


# -- what a code is bound to ------------------------------------------------------------------


def test_a_reused_code_is_refused_and_revokes_what_it_gave(user_client):
    code = get_code(user_client)
    first = exchange(user_client, code)
    assert first.status_code == 200
    second = exchange(user_client, code)
    assert second.status_code == 400 and second.json["error"] == "invalid_grant"
    info = user_client.get("/oauth/userinfo", headers={"Authorization": f"Bearer {first.json['access_token']}"})
    assert info.status_code == 401
    refresh = user_client.post("/oauth/token", headers=basic(),
                               data={"grant_type": "refresh_token", "refresh_token": first.json["refresh_token"]})
    assert refresh.json["error"] == "invalid_grant"


def test_a_code_expires_after_60_seconds(user_client, clock):
    code = get_code(user_client)
    clock.advance(61)
    assert exchange(user_client, code).json["error"] == "invalid_grant"


def test_a_code_is_bound_to_its_client_and_redirect_uri(user_client):
    code = get_code(user_client)
    other = exchange(user_client, code, headers=basic("annuaire", "annuaire-secret-" + "a" * 32))
    assert other.status_code in (400, 401)
    assert exchange(user_client, code, redirect_uri=f"{ROR}/other").json["error"] == "invalid_grant"


def test_wrong_client_secret_is_refused(user_client):
    code = get_code(user_client)
    response = exchange(user_client, code, headers=basic("ror", "not-the-secret"))
    assert response.status_code == 401 and response.json["error"] == "invalid_client"
    assert exchange(user_client, code).status_code == 200, "a failed client authentication does not burn the code"


def test_only_one_of_100_concurrent_exchanges_of_a_code_wins(portal, user_client):
    code = get_code(user_client)
    results: list[int] = []
    start = threading.Barrier(20)

    def worker(count: int) -> None:
        client = portal.test_client()
        start.wait()
        for _ in range(count):
            results.append(exchange(client, code).status_code)

    threads = [threading.Thread(target=worker, args=(5,)) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 100
    assert results.count(200) == 1 and results.count(400) == 99


# -- refresh, revocation, introspection -----------------------------------------------------


def refresh(client, token: str, headers=None):
    return client.post("/oauth/token", headers=basic() if headers is None else headers,
                       data={"grant_type": "refresh_token", "refresh_token": token})


def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_chain(user_client):
    first = tokens_for(user_client)
    second = refresh(user_client, first["refresh_token"])
    assert second.status_code == 200 and second.json["refresh_token"] != first["refresh_token"]
    claims = verify(user_client, second.json["id_token"])
    assert claims["sub"] and "nonce" not in claims
    third = refresh(user_client, second.json["refresh_token"])
    assert third.status_code == 200
    replay = refresh(user_client, first["refresh_token"])
    assert replay.json["error"] == "invalid_grant"
    # The whole chain is gone, including the newest tokens.
    assert refresh(user_client, third.json["refresh_token"]).json["error"] == "invalid_grant"
    info = user_client.get("/oauth/userinfo", headers={"Authorization": f"Bearer {third.json['access_token']}"})
    assert info.status_code == 401


def test_a_withdrawn_role_ends_the_applications_refreshes(portal, user_client):
    # The ROR requires its role: once an admin withdraws it, the application gets no new
    # tokens, as a new authorization request would be refused.
    from idp.models import UserRole
    from portal.clock import now
    from portal.db import db

    tokens = tokens_for(user_client)
    with portal.app_context():
        db.session.execute(sa.update(UserRole).values(revoked_at=now()))
        db.session.commit()
    refused = refresh(user_client, tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json["error"] == "invalid_grant"
    with portal.app_context():
        db.session.execute(sa.update(UserRole).values(revoked_at=None))
        db.session.commit()
    # Refused, not burned: given back its role, the same refresh token works again.
    assert refresh(user_client, tokens["refresh_token"]).status_code == 200


def test_another_clients_refresh_token_is_refused_and_not_burned(user_client):
    tokens = tokens_for(user_client)
    stolen = refresh(user_client, tokens["refresh_token"], headers=basic("annuaire", "annuaire-secret-" + "a" * 32))
    assert stolen.status_code in (400, 401)
    assert refresh(user_client, tokens["refresh_token"]).status_code == 200


def test_revoking_a_refresh_token_ends_its_access_tokens(user_client):
    tokens = tokens_for(user_client)
    response = user_client.post("/oauth/revoke", headers=basic(),
                                data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"})
    assert response.status_code == 200
    assert refresh(user_client, tokens["refresh_token"]).json["error"] == "invalid_grant"
    info = user_client.get("/oauth/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.status_code == 401


def test_revoking_an_access_token_and_unknown_tokens(user_client):
    tokens = tokens_for(user_client)
    assert user_client.post("/oauth/revoke", headers=basic(), data={"token": tokens["access_token"]}).status_code == 200
    assert user_client.get("/oauth/userinfo",
                           headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401
    # RFC 7009 §2.2: an unknown token is not an error.
    assert user_client.post("/oauth/revoke", headers=basic(), data={"token": "nothing"}).status_code == 200
    assert user_client.post("/oauth/revoke", headers=basic("ror", "bad"), data={"token": "x"}).status_code == 401


def test_introspection_tells_an_app_about_its_own_tokens_only(user_client):
    tokens = tokens_for(user_client)
    answer = user_client.post("/oauth/introspect", headers=basic(), data={"token": tokens["access_token"]}).json
    assert answer["active"] is True and answer["client_id"] == "ror" and answer["sid"] and answer["sub"]
    assert answer["scope"].startswith("openid")
    other = user_client.post("/oauth/introspect", headers=basic("annuaire", "annuaire-secret-" + "a" * 32),
                             data={"token": tokens["access_token"], "client_id": "annuaire",
                                   "client_secret": "annuaire-secret-" + "a" * 32})
    assert other.status_code in (200, 401) and other.json.get("active") is not True


def test_an_access_token_of_a_closed_session_is_refused(user_client):
    tokens = tokens_for(user_client)
    page = user_client.get("/").get_data(as_text=True)
    user_client.post("/logout", data={"csrf_token": csrf(page)})
    info = user_client.get("/oauth/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.status_code == 401 and "invalid_token" in info.headers["WWW-Authenticate"]
    answer = user_client.post("/oauth/introspect", headers=basic(), data={"token": tokens["access_token"]}).json
    assert answer == {"active": False}
    assert refresh(user_client, tokens["refresh_token"]).json["error"] == "invalid_grant"


def test_userinfo_without_or_with_a_bad_token(portal):
    client = portal.test_client()
    assert client.get("/oauth/userinfo").status_code == 401
    assert client.get("/oauth/userinfo", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_an_expired_access_token_is_refused(user_client, clock):
    tokens = tokens_for(user_client)
    clock.advance(301)
    assert user_client.get("/oauth/userinfo",
                           headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401


# -- bad authorization requests ----------------------------------------------------------------


def test_unregistered_redirect_uri_gets_a_french_page_not_a_redirect(user_client):
    for uri in (f"{ROR}/evil", f"{CALLBACK}/more", f"{CALLBACK}?x=1", f"{CALLBACK}#frag", "https://evil.example/cb",
                CALLBACK.upper()):
        response = authorize(user_client, redirect_uri=uri)
        assert response.status_code == 400 and "Location" not in response.headers, uri
        assert "Adresse de retour non autorisée" in response.get_data(as_text=True)
    response = authorize(user_client, redirect_uri=None)
    assert response.status_code == 400 and "Location" not in response.headers


def test_unknown_or_missing_client_gets_a_french_page(user_client):
    for client_id in ("nobody", None, "x" * 300):
        response = authorize(user_client, client_id=client_id)
        assert response.status_code == 400 and "Application inconnue" in response.get_data(as_text=True)


@pytest.mark.parametrize("name", ["response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                                  "prompt", "code_challenge"])
def test_duplicated_parameters_are_refused(user_client, name):
    params = list(authorize_params(prompt="login", code_challenge="c" * 43, code_challenge_method="S256").items())
    params.append((name, dict(params)[name]))
    response = user_client.get("/oidc/authorize?" + urlencode(params))
    if name in ("client_id", "redirect_uri"):
        assert response.status_code == 400 and "Location" not in response.headers
    else:
        assert redirect_params(response)["error"] == "invalid_request"


def test_response_type_other_than_code_is_refused(user_client):
    for response_type in ("token", "id_token", "code id_token", None):
        params = redirect_params(authorize(user_client, response_type=response_type))
        assert params["error"] in ("unsupported_response_type", "invalid_request"), response_type
        assert params["state"] == "st-123"


def test_scopes_not_allowed_or_without_openid_are_refused(user_client):
    public = {"client_id": "agenda", "redirect_uri": "https://agenda.esante-test.fr/cb", "code_challenge": pkce()[1],
              "code_challenge_method": "S256"}
    assert redirect_params(authorize(user_client, scope="openid roles", **public))["error"] == "invalid_scope"
    assert redirect_params(authorize(user_client, scope="profile email"))["error"] == "invalid_scope"
    assert redirect_params(authorize(user_client, scope=None))["error"] == "invalid_scope"
    # Unknown scopes are ignored, as OpenID Connect asks.
    code = get_code(user_client, scope="openid offline_access profile")
    assert exchange(user_client, code).json["scope"] == "openid profile"


def test_invalid_max_age_is_refused(user_client):
    assert redirect_params(authorize(user_client, max_age="-1"))["error"] == "invalid_request"


# -- login, prompt, max_age, roles -----------------------------------------------------------


def test_without_a_session_the_user_logs_in_and_comes_back_with_a_code(portal, mailbox):
    client = portal.test_client()
    response = authorize(client, login_hint=EMAIL)
    assert response.status_code == 303 and response.headers["Location"].startswith("/login?")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert field_value(page, "username") == EMAIL
    next_url = parse_qs(urlsplit(response.headers["Location"]).query)["next"][0]
    done = login(client, mailbox, EMAIL, PASSWORD, EMAIL, next_url=next_url.replace("&", "%26").replace("?", "%3F"))
    assert done.headers["Location"].startswith("/oidc/authorize?")
    assert "code" in redirect_params(client.get(done.headers["Location"]))


def test_prompt_none_without_a_session_answers_login_required(portal):
    params = redirect_params(authorize(portal.test_client(), prompt="none"))
    assert params["error"] == "login_required" and params["state"] == "st-123"


def test_prompt_none_with_a_session_answers_at_once(user_client):
    assert "code" in redirect_params(authorize(user_client, prompt="none"))


def log_in_again(client, mailbox, login_url: str):
    """The login page an application's forced re-login leads to: password, then code."""
    import re

    from tests.conftest import body_text

    page = client.get(login_url)
    assert page.status_code == 200, "the login form is shown although a session exists"
    html = page.get_data(as_text=True)
    client.post("/login", data={"csrf_token": csrf(html), "username": EMAIL, "password": PASSWORD,
                                "next": field_value(html, "next")})
    code = re.search(r"est : (\d{6})", body_text(mailbox.last(EMAIL))).group(1)
    html = client.get("/login/code").get_data(as_text=True)
    return client.post("/login/code", data={"csrf_token": csrf(html), "code": code})


def test_prompt_login_and_max_age_zero_ask_for_a_new_login_once(user_client, mailbox, clock):
    for extra in ({"prompt": "login"}, {"max_age": "0"}):
        clock.advance(5)
        response = authorize(user_client, **extra)
        assert response.status_code == 303 and "reauth=1" in response.headers["Location"]
        clock.advance(5)
        done = log_in_again(user_client, mailbox, response.headers["Location"])
        assert done.status_code == 303 and done.headers["Location"].startswith("/oidc/authorize?")
        clock.advance(1)
        params = redirect_params(user_client.get(done.headers["Location"]))
        claims = verify(user_client, exchange(user_client, params["code"]).json["id_token"])
        assert claims["auth_time"] == int(clock().timestamp()) - 1
        # The fresh login served this request only: the next prompt=login asks again.
        assert authorize(user_client, **extra).status_code == 303


def test_a_forced_login_left_halfway_does_not_excuse_a_later_one(user_client, mailbox, clock):
    # The application asked for a new login; the user went away, and came back later by
    # the portal's own login page. Twenty minutes on, prompt=login asks again.
    response = authorize(user_client, prompt="login")
    assert response.status_code == 303
    clock.advance(5)
    assert log_in_again(user_client, mailbox, "/login?reauth=1").status_code == 303
    clock.advance(20 * 60)
    assert authorize(user_client, prompt="login").status_code == 303


def test_a_forced_login_for_one_application_does_not_serve_another(portal, user_client, mailbox, clock):
    response = authorize(user_client, prompt="login")
    clock.advance(5)
    assert log_in_again(user_client, mailbox, response.headers["Location"]).status_code == 303
    other = authorize(user_client, prompt="login", client_id="annuaire", redirect_uri="https://annuaire.esante-test.fr/cb")
    assert other.status_code == 303 and "reauth=1" in other.headers["Location"]


def test_an_authorization_request_sent_as_a_form_survives_the_login(portal, mailbox):
    # OIDC Core §3.1.2.1: the request may come by POST; the login page must bring the
    # browser back to it with every parameter.
    client = portal.test_client()
    response = client.post("/oidc/authorize", data=authorize_params())
    assert response.status_code == 303
    next_url = parse_qs(urlsplit(response.headers["Location"]).query)["next"][0]
    assert next_url.startswith("/oidc/authorize?") and "client_id=ror" in next_url
    done = login(client, mailbox, EMAIL, PASSWORD, EMAIL, next_url=next_url.replace("&", "%26").replace("?", "%3F"))
    assert "code" in redirect_params(client.get(done.headers["Location"]))


def test_max_age_accepts_a_recent_enough_session(user_client, clock):
    clock.advance(30)
    assert "code" in redirect_params(authorize(user_client, max_age="3600"))
    assert authorize(user_client, max_age="10", prompt="none").headers["Location"].count("login_required") == 1


def test_a_user_without_the_required_role_is_offered_the_access_request(portal, user_client):
    with portal.app_context():
        from idp.models import UserRole
        from portal.clock import now
        from portal.db import db

        db.session.execute(sa.update(UserRole).values(revoked_at=now()))
        db.session.commit()
    response = authorize(user_client)
    page = response.get_data(as_text=True)
    assert response.status_code == 403 and "Location" not in response.headers
    assert "Demander l'accès" in page and "/access/ror" in page or "Demander l'accès" in page
    assert redirect_params(authorize(user_client, prompt="none"))["error"] == "access_denied"


# -- logout --------------------------------------------------------------------------------------


def test_rp_initiated_logout_with_id_token_hint_returns_to_the_registered_uri(portal, user_client):
    tokens = tokens_for(user_client)
    response = user_client.get("/oidc/logout?" + urlencode({
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": f"{ROR}/", "state": "bye"}))
    assert response.status_code == 302 and response.headers["Location"] == f"{ROR}/?state=bye"
    assert user_client.get("/oauth/userinfo",
                           headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401
    assert authorize(user_client).status_code == 303, "logged out of the portal too"


def test_logout_to_an_unregistered_uri_does_not_redirect(user_client):
    tokens = tokens_for(user_client)
    response = user_client.get("/oidc/logout?" + urlencode({
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://evil.example/"}))
    assert response.status_code == 200 and "Vous êtes déconnecté" in response.get_data(as_text=True)


def test_logout_with_a_tampered_hint_is_refused(user_client):
    tokens = tokens_for(user_client)
    head, payload, signature = tokens["id_token"].split(".")
    forged = base64.urlsafe_b64encode(base64.urlsafe_b64decode(payload + "==").replace(b'"ror"', b'"agenda"'))
    tampered = ".".join([head, forged.decode().rstrip("="), signature])
    response = user_client.get("/oidc/logout?" + urlencode({"id_token_hint": tampered,
                                                            "post_logout_redirect_uri": f"{ROR}/"}))
    assert response.status_code == 400 and "Location" not in response.headers
    assert authorize(user_client).status_code == 302, "still logged in"


def test_logout_without_a_hint_asks_for_confirmation(user_client):
    page = user_client.get("/oidc/logout").get_data(as_text=True)
    assert "Voulez-vous vous déconnecter du portail" in page
    assert authorize(user_client).status_code == 302, "nothing happened before the confirmation"
    response = user_client.post("/oidc/logout", data={"confirm": "1", "csrf_token": csrf(page)})
    assert response.status_code == 200 and "Vous êtes déconnecté" in response.get_data(as_text=True)
    assert authorize(user_client).status_code == 303
    # A forged confirmation (no CSRF token) only shows the question again.
    assert "Voulez-vous" not in user_client.post("/oidc/logout", data={"confirm": "1"}).get_data(as_text=True)


class LogoutReceiver:
    """An application's back-channel logout endpoint on loopback."""

    def __init__(self, status: int = 200) -> None:
        self.tokens: list[str] = []
        self.status = status
        self.location: str | None = None  # answer the POST with a redirect there
        self.pages_served = 0  # GETs of that page
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.tokens.append(parse_qs(body)["logout_token"][0])
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.end_headers()

            def do_GET(self):  # noqa: N802 - the application's login page, say
                receiver.pages_served += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/backchannel-logout"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver(portal):
    from idp.provider.models import Client
    from portal.db import db

    server = LogoutReceiver()
    with portal.app_context():
        db.session.execute(sa.update(Client).where(Client.client_id == "ror")
                           .values(backchannel_logout_uri=server.url))
        db.session.commit()
    yield server
    server.close()


def test_logging_out_of_the_portal_notifies_the_applications_the_session_opened(portal, user_client, receiver):
    tokens = tokens_for(user_client)
    sid = verify(user_client, tokens["id_token"])["sid"]
    page = user_client.get("/").get_data(as_text=True)
    user_client.post("/logout", data={"csrf_token": csrf(page)})
    assert len(receiver.tokens) == 1
    keys = KeySet.import_key_set(user_client.get("/oauth/jwks").json)
    token = jwt.decode(receiver.tokens[0], keys, algorithms=["RS256"])
    assert token.header["typ"] == "logout+jwt"
    claims = token.claims
    assert claims["iss"] == "http://localhost" and claims["aud"] == "ror" and claims["sid"] == sid
    assert claims["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
    assert "nonce" not in claims and claims["jti"]


def test_an_admin_ending_the_sessions_notifies_the_applications(portal, user_client, receiver):
    tokens_for(user_client)
    with portal.app_context():
        from idp.models import User
        from idp.sessions import revoke_all
        from portal.db import db

        user = db.session.scalar(sa.select(User).where(User.email == EMAIL))
        revoke_all(db.session, user, reason="revoked_by_admin")
        db.session.commit()
    from idp.provider.backchannel import deliver

    with portal.app_context():
        assert deliver() == 1
    assert len(receiver.tokens) == 1


def test_an_unreachable_application_gets_its_logout_notice_later(portal, user_client, receiver, clock):
    from idp.provider.backchannel import deliver
    from idp.provider.models import BackchannelLogout
    from portal.db import db

    tokens_for(user_client)
    receiver.status = 503
    page = user_client.get("/").get_data(as_text=True)
    user_client.post("/logout", data={"csrf_token": csrf(page)})
    assert len(receiver.tokens) == 1
    with portal.app_context():
        notice = db.session.scalar(sa.select(BackchannelLogout))
        assert notice.delivered_at is None and "503" in notice.last_error
        db.session.rollback()
        receiver.status = 200
        assert deliver() == 0, "not due yet"
        clock.advance(60)
        assert deliver() == 1
        assert deliver() == 0, "delivered once"
    assert len(receiver.tokens) == 2


def test_a_redirect_from_the_application_is_not_a_delivered_logout_notice(portal, user_client, receiver):
    # Followed, the POST would become a GET without the token, and the application's login
    # page answering 200 would pass for an acknowledgement: its session would live on.
    from idp.provider.models import BackchannelLogout
    from portal.db import db

    tokens_for(user_client)
    receiver.status, receiver.location = 302, "/login"
    page = user_client.get("/").get_data(as_text=True)
    user_client.post("/logout", data={"csrf_token": csrf(page)})
    assert len(receiver.tokens) == 1 and receiver.pages_served == 0
    with portal.app_context():
        notice = db.session.scalar(sa.select(BackchannelLogout))
        assert notice.delivered_at is None and "302" in notice.last_error


# -- keys -----------------------------------------------------------------------------------------


def _kid(user_client, id_token: str) -> str:
    keys = KeySet.import_key_set(user_client.get("/oauth/jwks").json)
    return jwt.decode(id_token, keys, algorithms=["RS256"]).header["kid"]


def test_a_rotated_in_key_is_published_first_and_signs_minutes_later(portal, user_client, clock):
    # Applications and proxies may keep the JWKS for its max-age, and other processes their
    # keys for 30 s: a token must never carry a kid its verifier cannot find yet.
    from idp.provider.keys import JWKS_MAX_AGE, PUBLICATION_DELAY, forget_cached_keys, rotate
    from portal.db import db

    old_kid = _kid(user_client, tokens_for(user_client)["id_token"])
    with portal.app_context():
        [new_rs256, _es256] = rotate(db.session, portal.config["SECRET_KEY"])
        db.session.commit()
        forget_cached_keys()
    published = user_client.get("/oauth/jwks")
    assert new_rs256.kid in {key["kid"] for key in published.json["keys"]} and len(published.json["keys"]) == 4
    assert f"max-age={JWKS_MAX_AGE}" in published.headers["Cache-Control"]
    assert PUBLICATION_DELAY.total_seconds() > JWKS_MAX_AGE + 30
    clock.advance(PUBLICATION_DELAY.total_seconds() - 1)
    with portal.app_context():
        forget_cached_keys()
    assert _kid(user_client, tokens_for(user_client)["id_token"]) == old_kid
    clock.advance(1)
    with portal.app_context():
        forget_cached_keys()
    assert _kid(user_client, tokens_for(user_client)["id_token"]) == new_rs256.kid
    # The former key stays published a day after it stopped signing, for the tokens it signed.
    assert old_kid in {key["kid"] for key in user_client.get("/oauth/jwks").json["keys"]}


def test_private_keys_are_stored_encrypted(portal):
    from idp.provider.keys import key_ring
    from idp.provider.models import SigningKey
    from portal.db import db

    with portal.app_context():
        key_ring(db.session)
        stored = db.session.scalars(sa.select(SigningKey.private_encrypted)).all()
    assert stored and all('"d"' not in value and "d" not in value[:3] for value in stored)


def test_dead_codes_and_tokens_are_purged_after_a_day(portal, user_client, clock):
    from idp.provider.models import AuthorizationCode, Token
    from idp.provider.purge import purge
    from portal.db import db

    tokens = tokens_for(user_client)
    get_code(user_client)  # never exchanged
    with portal.app_context():
        assert purge(db.session) == {"codes": 0, "tokens": 0, "logout_notices": 0}
        db.session.rollback()
    clock.advance(days=2)
    with portal.app_context():
        result = purge(db.session)
        db.session.commit()
        assert result["codes"] == 2 and result["tokens"] == 1
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuthorizationCode)) == 0
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Token)) == 0
    assert refresh(user_client, tokens["refresh_token"]).json["error"] == "invalid_grant"


def test_operator_rotates_the_keys_from_the_command_line(portal, monkeypatch):
    from click.testing import CliRunner

    import portal.cli as cli

    monkeypatch.setattr(cli, "_app", portal)
    runner = CliRunner()
    before = portal.test_client().get("/oauth/jwks").json["keys"]
    result = runner.invoke(cli.main, ["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert "Nouvelle clé RS256" in result.output and "Nouvelle clé ES256" in result.output
    listed = runner.invoke(cli.main, ["keys", "list"]).output
    # The new keys are published and wait; the former ones sign until then.
    assert listed.count("\tpubliée, signe à partir du") == 2 and listed.count("\tsigne jusqu'au") == len(before)
    # After a suspected leak: keys that sign at once, the others retired at once.
    assert runner.invoke(cli.main, ["keys", "rotate", "--now"]).exit_code == 0
    listed = runner.invoke(cli.main, ["keys", "list"]).output
    assert listed.count("\tsigne\n") == 2 and listed.count("retirée") == 4
    with portal.app_context():
        from idp.provider.keys import forget_cached_keys, key_ring
        from idp.provider.models import SigningKey
        from portal.db import db

        forget_cached_keys()
        latest = db.session.scalars(sa.select(SigningKey.kid).where(SigningKey.retired_at.is_(None))).all()
        assert len(latest) == 2 and {kid for kid, _key in key_ring(db.session).signing.values()} == set(latest)


def test_prompt_none_for_a_user_who_must_accept_new_cgu_answers_interaction_required(portal, user_client, clock):
    from portal.cgu import publish_cgu
    from portal.db import db

    with portal.app_context():
        publish_cgu(db.session, "2027-01", "Nouvelles conditions générales d'utilisation.")
        db.session.commit()
    clock.advance(31)  # the current CGU version is cached for 30 s
    params = redirect_params(authorize(user_client, prompt="none"))
    assert params["error"] == "interaction_required" and params["state"] == "st-123"
    # Without prompt=none, the CGU page comes first, as for any page of the portal.
    assert "/account/cgu" in authorize(user_client).headers["Location"]
    # Logging out at an application's request is never held up by the CGU.
    assert "Voulez-vous vous déconnecter" in user_client.get("/oidc/logout").get_data(as_text=True)


def test_login_pages_let_their_form_lead_back_to_a_registered_application(portal, mailbox):
    """Chromium applies form-action to the redirects after a submission: the code page's
    policy must name the applications' origins, or the return to the app is blocked."""
    client = portal.test_client()
    response = authorize(client)
    client.get(response.headers["Location"])
    client.post("/login", data={"csrf_token": csrf(client.get("/login").get_data(as_text=True)),
                                "username": EMAIL, "password": PASSWORD})
    policy = client.get("/login/code").headers["Content-Security-Policy"]
    form_action = [d for d in policy.split("; ") if d.startswith("form-action")][0]
    assert form_action.split()[1:] == ["'self'", "https://agenda.esante-test.fr", "https://annuaire.esante-test.fr",
                                       ROR]
    assert "form-action 'self';" in client.get("/").headers["Content-Security-Policy"] + ";", \
        "other pages keep the strict policy"


def test_using_an_app_keeps_the_portal_session_alive_and_a_lapsed_one_is_ended_for_the_apps(
        portal, user_client, receiver, clock):
    from idp import maintenance
    from portal.db import db

    tokens = tokens_for(user_client)
    for _ in range(3):  # an hour of work in the ROR app, refreshing every 20 minutes
        clock.advance(minutes=20)
        tokens = refresh(user_client, tokens["refresh_token"]).json
        assert "access_token" in tokens
    clock.advance(minutes=31)  # then nothing for longer than the idle timeout
    assert refresh(user_client, tokens["refresh_token"]).json["error"] == "invalid_grant"
    with portal.app_context():
        assert maintenance.end_lapsed_sessions(db.session, 1800) == 1
        db.session.commit()
    from idp.provider.backchannel import deliver

    with portal.app_context():
        deliver()
    assert len(receiver.tokens) == 1, "the ROR app is told the session is over"
