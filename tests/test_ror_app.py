"""J7 from the application's side: the demo ROR app (examples/ror_app) trusting the portal.

Three parts:
- the app against a small fake OpenID Provider on loopback (no database): each rule of
  the relying party on its own (state, nonce, PKCE, initiate-login checks, logout token
  checks, CSRF on logout, the session store);
- `enrs demo` registering the app (once) and writing its configuration file;
- the whole single sign-on through real HTTP: the portal and the ROR app served by
  Werkzeug on loopback ports, a `requests.Session` as the browser.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import threading
import time
from html import unescape
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
import sqlalchemy as sa
from flask import Flask, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from werkzeug.serving import make_server

from examples.ror_app import create_app as create_ror_app
from examples.ror_app.config import ConfigError, load_settings
from examples.ror_app.logout_token import EVENT
from examples.ror_app.store import COOKIE_NAME, SessionStore

CLIENT_ID = "ror-demo"
CLIENT_SECRET = "ror-secret-" + "s" * 32
DOCTOR = {
    "given_name": "Nathalie", "family_name": "DUPONT", "name": "Nathalie DUPONT", "preferred_username": "ndupont",
    "email": "nathalie.dupont@esante-test.fr", "email_verified": True,
    "profession": {"code": "10", "label": "Médecin"},
    "establishments": [{"finess": "280503848", "name": "AIRBP IRC DREUX", "service": "Cardiologie",
                        "function": "Médecin"}],
    "roles": [{"role": "ror_referent_offre", "finess": "280503848"},
              {"role": "ror_referent_lits", "finess": "280503848"}],
    "national_id": "10108825463",
}


# -- servers on loopback --------------------------------------------------------------------


class Served:
    """A WSGI app on a free loopback port, in a thread. The port is known before the app
    exists (the portal's base URL and the ROR app's redirect URIs depend on it)."""

    def __init__(self) -> None:
        self.app: Flask | None = None
        self.server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll: shutdown() waits for the loop to notice, and each test stops two servers.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _wsgi(self, environ, start_response):
        return self.app(environ, start_response)

    def start(self, app: Flask) -> Served:
        self.app = app
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def b64url_sha256(value: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).rstrip(b"=").decode()


# -- a fake OpenID Provider -----------------------------------------------------------------


@functools.cache
def fake_signing_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "fake-1", "use": "sig", "alg": "RS256"})


@functools.cache
def stranger_key(kid: str) -> RSAKey:
    """Not the provider's key, though it may carry the same kid: forgeries."""
    return RSAKey.generate_key(2048, parameters={"kid": kid})


class FakeProvider:
    """Just enough of an OpenID Provider to drive the ROR app: discovery, JWKS, an
    authorization endpoint that approves at once, a token endpoint that checks the client
    secret and PKCE, and an end_session endpoint. Tests tamper with it to play attacks."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.issuer = served.url
        self.key = fake_signing_key()
        self.published = [self.key]
        self.claims = dict(DOCTOR)
        self.sub = "sub-" + secrets.token_hex(8)
        self.sid = "sid-" + secrets.token_hex(8)
        self.acr = "urn:enrs:acr:pwd-otp-email"
        self.amr = ["pwd", "otp", "mca"]
        self.codes: dict[str, dict] = {}
        self.authorize_requests: list[dict] = []
        self.token_requests: list[dict] = []
        self.logout_requests: list[dict] = []
        self.jwks_fetches = 0
        self.discovery_issuer: str | None = None
        self.id_token_overrides: dict = {}
        self.id_token_key = None

    def app(self) -> Flask:
        app = Flask("fake_op")
        fake = self

        @app.get("/.well-known/openid-configuration")
        def discovery():
            return jsonify({
                "issuer": fake.discovery_issuer or fake.issuer,
                "authorization_endpoint": f"{fake.issuer}/oidc/authorize",
                "token_endpoint": f"{fake.issuer}/oauth/token",
                "userinfo_endpoint": f"{fake.issuer}/oauth/userinfo",
                "jwks_uri": f"{fake.issuer}/oauth/jwks",
                "end_session_endpoint": f"{fake.issuer}/oidc/logout",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "code_challenge_methods_supported": ["S256"],
            })

        @app.get("/oauth/jwks")
        def jwks():
            fake.jwks_fetches += 1
            return jsonify({"keys": [key.as_dict(private=False) for key in fake.published]})

        @app.get("/oidc/authorize")
        def authorize():
            params = request.args.to_dict()
            fake.authorize_requests.append(params)
            assert params["client_id"] == CLIENT_ID
            code = secrets.token_urlsafe(16)
            fake.codes[code] = params
            return redirect(params["redirect_uri"] + "?" + urlencode({"code": code, "state": params["state"]}))

        @app.post("/oauth/token")
        def token():
            fake.token_requests.append(request.form.to_dict())
            auth = request.authorization
            if auth is None or (auth.username, auth.password) != (CLIENT_ID, CLIENT_SECRET):
                return jsonify(error="invalid_client"), 401
            asked = fake.codes.pop(request.form.get("code", ""), None)
            if asked is None or asked["redirect_uri"] != request.form.get("redirect_uri"):
                return jsonify(error="invalid_grant"), 400
            if asked.get("code_challenge_method") != "S256" or \
                    b64url_sha256(request.form.get("code_verifier", "")) != asked.get("code_challenge"):
                return jsonify(error="invalid_grant", error_description="PKCE"), 400
            return jsonify({"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 300,
                            "id_token": fake.id_token(asked)})

        @app.route("/oidc/logout", methods=["GET", "POST"])
        def logout():
            params = request.values.to_dict()
            fake.logout_requests.append(params)
            return redirect(params["post_logout_redirect_uri"] + "?" + urlencode({"state": params["state"]}))

        return app

    def id_token(self, asked: dict) -> str:
        issued = int(time.time())
        claims = {"iss": self.issuer, "sub": self.sub, "aud": CLIENT_ID, "iat": issued, "exp": issued + 300,
                  "auth_time": issued - 5, "nonce": asked.get("nonce"), "sid": self.sid, "acr": self.acr,
                  "amr": self.amr, **self.claims, **self.id_token_overrides}
        key = self.id_token_key or self.key
        return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)

    def logout_token(self, key=None, alg: str = "RS256", header: dict | None = None, **changes) -> str:
        issued = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": issued, "exp": issued + 120,
                  "jti": secrets.token_urlsafe(12), "sub": self.sub, "sid": self.sid, "events": {EVENT: {}}}
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not None}
        key = key or self.key
        return jwt.encode({"alg": alg, "kid": key.kid, "typ": "logout+jwt", **(header or {})}, claims, key,
                          algorithms=[alg])


@pytest.fixture
def fake_op() -> Iterator[FakeProvider]:
    served = Served()
    fake = FakeProvider(served)
    served.start(fake.app())
    yield fake
    served.stop()


@pytest.fixture
def ror(fake_op, tmp_path) -> Iterator[Served]:
    served = Served()
    app = create_ror_app({
        "ROR_APP_ISSUER": fake_op.issuer, "ROR_APP_CLIENT_ID": CLIENT_ID, "ROR_APP_CLIENT_SECRET": CLIENT_SECRET,
        "ROR_APP_BASE_URL": served.url, "ROR_APP_INSTANCE_DIR": str(tmp_path / "ror"),
        "ROR_APP_SECRET_KEY": "ror-test-key-" + "k" * 32,
    })
    served.start(app)
    yield served
    served.stop()


def store_of(ror: Served) -> SessionStore:
    return ror.app.extensions["ror_app"].store


def sign_in(ror: Served) -> tuple[requests.Session, requests.Response]:
    browser = requests.Session()
    response = browser.get(f"{ror.url}/login")
    return browser, response


def post_logout_token(ror: Served, token) -> requests.Response:
    return requests.post(f"{ror.url}/backchannel-logout", data={"logout_token": token}, timeout=10)


# -- the relying party's rules, against the fake --------------------------------------------


def test_home_invites_to_sign_in_without_creating_a_session(ror):
    response = requests.get(ror.url + "/", timeout=10)
    assert response.status_code == 200
    assert "Se connecter avec le portail" in response.text
    assert COOKIE_NAME not in response.cookies
    policy = response.headers["Content-Security-Policy"]
    assert "script-src" not in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
    assert "<script" not in response.text and " style=" not in response.text


def test_sign_in_shows_the_user_roles_and_how_they_authenticated(ror, fake_op):
    browser, page = sign_in(ror)

    assert page.status_code == 200 and page.url == ror.url + "/"
    text = text_of(page.text)
    assert "Bienvenue Nathalie DUPONT" in text
    assert "Référent ROR (offre de soins)" in text and "Référent disponibilité des lits" in text
    assert "AIRBP IRC DREUX — FINESS 280503848" in text
    assert "Mot de passe + code reçu par mail" in text
    assert "Mot de passe, code à usage unique" in text
    assert "Se déconnecter" in text
    # Code flow with PKCE (S256), a nonce and a state, all the portal's scopes.
    asked = fake_op.authorize_requests[-1]
    assert asked["response_type"] == "code" and asked["code_challenge_method"] == "S256"
    assert len(asked["nonce"]) >= 16 and len(asked["state"]) >= 16
    assert asked["scope"].split() == ["openid", "profile", "email", "establishments", "roles", "national_id"]
    assert asked["redirect_uri"] == ror.url + "/callback"
    # The cookie holds a signed random id; the claims stay on the server.
    cookie = next(c for c in browser.cookies if c.name == COOKIE_NAME)
    assert cookie.has_nonstandard_attr("HttpOnly") and "Nathalie" not in cookie.value
    assert store_of(ror).count_for(fake_op.sub) == 1


def test_a_session_id_is_never_reused_across_sign_in(ror, fake_op):
    browser = requests.Session()
    browser.get(f"{ror.url}/login", allow_redirects=False)
    before = browser.cookies.get(COOKIE_NAME)
    assert before  # the pending state lives in a server-side session already
    browser.get(f"{ror.url}/login")
    after = browser.cookies.get(COOKIE_NAME)
    assert after and after != before


def test_initiate_login_from_the_portal_starts_the_code_flow(ror, fake_op):
    browser = requests.Session()
    response = browser.get(f"{ror.url}/initiate-login", params={
        "iss": fake_op.issuer, "target_link_uri": f"{ror.url}/?onglet=lits", "login_hint": "ndupont"})
    assert response.url == f"{ror.url}/?onglet=lits"
    assert "Bienvenue Nathalie DUPONT" in text_of(response.text)
    assert fake_op.authorize_requests[-1]["login_hint"] == "ndupont"


@pytest.mark.parametrize("iss", [None, "", "https://portail.ailleurs.example", "http://127.0.0.1:1"])
def test_initiate_login_from_another_issuer_is_refused(ror, fake_op, iss):
    params = {"target_link_uri": ror.url + "/"}
    if iss is not None:
        params["iss"] = iss
    response = requests.get(f"{ror.url}/initiate-login", params=params, allow_redirects=False, timeout=10)
    assert response.status_code == 400
    assert "ne vient pas du portail auquel l'application fait confiance" in text_of(response.text)
    assert fake_op.authorize_requests == []


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/x", "http://127.0.0.1:1/", "javascript:alert(1)", "/\\evil.example",
])
def test_initiate_login_with_a_foreign_target_lands_on_home(ror, fake_op, target):
    response = requests.Session().get(f"{ror.url}/initiate-login", params={"iss": fake_op.issuer,
                                                                           "target_link_uri": target})
    assert response.url == ror.url + "/"
    assert "Bienvenue" in response.text


def test_callback_with_a_wrong_state_is_refused_before_any_token_request(ror, fake_op):
    browser = requests.Session()
    started = browser.get(f"{ror.url}/login", allow_redirects=False)
    authorize = urlsplit(started.headers["Location"])
    assert authorize.netloc == urlsplit(fake_op.issuer).netloc
    response = browser.get(f"{ror.url}/callback", params={"code": "a-code", "state": "not-the-state"})
    assert response.status_code == 400
    assert "ne correspond à aucune demande de connexion en cours" in text_of(response.text)
    assert fake_op.token_requests == []
    assert "Bienvenue" not in browser.get(ror.url + "/").text


def test_callback_cannot_be_replayed(ror, fake_op):
    browser = requests.Session()
    started = browser.get(f"{ror.url}/login", allow_redirects=False)
    to_callback = browser.get(started.headers["Location"], allow_redirects=False).headers["Location"]
    assert browser.get(to_callback).url == ror.url + "/"
    replay = browser.get(to_callback)
    assert replay.status_code == 400
    assert len(fake_op.token_requests) == 1


def test_login_csrf_a_callback_from_another_browser_is_refused(ror, fake_op):
    attacker = requests.Session()
    started = attacker.get(f"{ror.url}/login", allow_redirects=False)
    to_callback = attacker.get(started.headers["Location"], allow_redirects=False).headers["Location"]
    victim = requests.Session()
    assert victim.get(to_callback).status_code == 400
    assert fake_op.token_requests == []


@pytest.mark.parametrize("tamper", ["nonce", "aud", "iss", "expired", "other key"])
def test_an_id_token_that_does_not_verify_opens_no_session(ror, fake_op, tamper):
    if tamper == "nonce":
        fake_op.id_token_overrides = {"nonce": "another-nonce"}
    elif tamper == "aud":
        fake_op.id_token_overrides = {"aud": "another-client"}
    elif tamper == "iss":
        fake_op.id_token_overrides = {"iss": "https://portail.ailleurs.example"}
    elif tamper == "expired":
        fake_op.id_token_overrides = {"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}
    else:
        fake_op.id_token_key = stranger_key("fake-1")
    browser, response = sign_in(ror)
    assert response.status_code == 400
    assert "n'a pas pu être vérifiée" in text_of(response.text)
    assert "Bienvenue" not in browser.get(ror.url + "/").text


def test_a_discovery_document_naming_another_issuer_is_refused(ror, fake_op):
    fake_op.discovery_issuer = "https://portail.ailleurs.example"
    response = requests.get(f"{ror.url}/login", allow_redirects=False, timeout=10)
    assert response.status_code == 502
    assert fake_op.authorize_requests == []


def test_logout_needs_the_form_token(ror, fake_op):
    browser, _ = sign_in(ror)
    for data in ({}, {"csrf_token": "forged"}):
        response = browser.post(f"{ror.url}/logout", data=data, allow_redirects=False)
        assert response.status_code == 400
    assert "Bienvenue" in browser.get(ror.url + "/").text
    assert fake_op.logout_requests == []


def test_rp_initiated_logout_ends_both_sessions(ror, fake_op):
    browser, page = sign_in(ror)
    assert store_of(ror).count_for(fake_op.sub) == 1
    response = browser.post(f"{ror.url}/logout", data={"csrf_token": csrf_of(page.text)}, allow_redirects=False)
    assert response.status_code == 302
    end_session = urlsplit(response.headers["Location"])
    assert f"{end_session.scheme}://{end_session.netloc}{end_session.path}" == f"{fake_op.issuer}/oidc/logout"
    params = {k: v[0] for k, v in parse_qs(end_session.query).items()}
    assert params["post_logout_redirect_uri"] == ror.url + "/"
    assert params["client_id"] == CLIENT_ID and params["state"]
    hint = jwt.decode(params["id_token_hint"], fake_op.key)
    assert hint.claims["sid"] == fake_op.sid
    # The local session is gone before the portal answers.
    assert store_of(ror).count_for(fake_op.sub) == 0
    back = browser.get(response.headers["Location"])
    assert back.url.startswith(ror.url + "/?state=")
    assert "Vous êtes déconnecté de l'application et du portail." in text_of(back.text)
    assert "Se connecter avec le portail" in back.text


# -- back-channel logout ---------------------------------------------------------------------


def test_back_channel_logout_ends_the_portal_session_s_sessions(ror, fake_op):
    browser, _ = sign_in(ror)
    fake_op.sid = "another-sid"
    other_browser, _ = sign_in(ror)  # the same user from another portal session
    assert store_of(ror).count_for(fake_op.sub) == 2

    response = post_logout_token(ror, fake_op.logout_token(sid="another-sid"))

    assert response.status_code == 200
    assert "Bienvenue" not in other_browser.get(ror.url + "/").text
    assert "Bienvenue" in browser.get(ror.url + "/").text


def test_back_channel_logout_by_subject_ends_every_session_of_the_user(ror, fake_op):
    browsers = [sign_in(ror)[0] for _ in range(2)]
    response = post_logout_token(ror, fake_op.logout_token(sid=None))
    assert response.status_code == 200
    assert store_of(ror).count_for(fake_op.sub) == 0
    for browser in browsers:
        page = browser.get(ror.url + "/")
        assert "Se connecter avec le portail" in page.text
    # "Se déconnecter" on a page left open: already done, home without an error.
    stale = browsers[0].post(f"{ror.url}/logout", data={"csrf_token": "from-the-old-page"}, allow_redirects=False)
    assert stale.status_code == 303 and stale.headers["Location"] == "/"
    assert fake_op.logout_requests == []


def test_back_channel_logout_for_no_known_session_is_still_accepted(ror, fake_op):
    # The user may have logged out here first (RP-initiated logout): the portal must not retry forever.
    assert post_logout_token(ror, fake_op.logout_token(sid="unknown", sub="unknown")).status_code == 200


def _forged(fake: FakeProvider) -> str:
    return fake.logout_token(key=stranger_key(fake.key.kid))


def _symmetric(fake: FakeProvider) -> str:
    # Signed with the client secret: anyone holding it (us) could forge one.
    return fake.logout_token(key=OctKey.import_key(CLIENT_SECRET, parameters={"kid": fake.key.kid}), alg="HS256")


def _unsigned(fake: FakeProvider) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps({
        "iss": fake.issuer, "aud": CLIENT_ID, "iat": int(time.time()), "exp": int(time.time()) + 60,
        "jti": "x", "sid": fake.sid, "sub": fake.sub, "events": {EVENT: {}}}).encode()).rstrip(b"=").decode()
    return f"{header}.{body}."


# Each way a logout token can be wrong, and the reason the app gives (its log and 400 answer).
BAD_TOKENS: dict[str, tuple[Callable[[FakeProvider], str | None], str]] = {
    "forged signature": (_forged, "signature not verified"),
    "HS256 with the client secret": (_symmetric, "signature not verified"),
    "alg none": (_unsigned, "signature not verified"),
    "nonce present": (lambda fake: fake.logout_token(nonce="n-123"), "must not contain a nonce"),
    "another audience": (lambda fake: fake.logout_token(aud="another-client"), "'aud'"),
    "another issuer": (lambda fake: fake.logout_token(iss="https://portail.ailleurs.example"), "'iss'"),
    "no events": (lambda fake: fake.logout_token(events=None), "back-channel logout event"),
    "wrong event": (lambda fake: fake.logout_token(events={"http://schemas.openid.net/event/other": {}}),
                    "back-channel logout event"),
    "neither sid nor sub": (lambda fake: fake.logout_token(sid=None, sub=None), "neither sid nor sub"),
    "no iat": (lambda fake: fake.logout_token(iat=None), "'iat'"),
    "no jti": (lambda fake: fake.logout_token(jti=None), "'jti'"),
    "expired": (lambda fake: fake.logout_token(iat=int(time.time()) - 900, exp=int(time.time()) - 600), "expired"),
    "issued in the future": (lambda fake: fake.logout_token(iat=int(time.time()) + 3600,
                                                            exp=int(time.time()) + 3700), "in the future"),
    "an ID token": (lambda fake: fake.logout_token(header={"typ": "JWT"}, events=None, nonce="n"),
                    "back-channel logout event"),
    "typ of another kind": (lambda fake: fake.logout_token(header={"typ": "at+jwt"}), "typ"),
    "garbage": (lambda fake: "not.a.jwt", "signature not verified"),
    "missing": (lambda fake: None, "missing"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_an_invalid_logout_token_is_refused_and_ends_nothing(ror, fake_op, case):
    browser, _ = sign_in(ror)
    make_token, reason = BAD_TOKENS[case]
    token = make_token(fake_op)
    response = requests.post(f"{ror.url}/backchannel-logout", data={} if token is None else {"logout_token": token},
                             timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert reason in response.json()["error_description"]
    assert "Bienvenue" in browser.get(ror.url + "/").text


def test_a_replayed_logout_token_is_refused(ror, fake_op):
    token = fake_op.logout_token()
    assert post_logout_token(ror, token).status_code == 200
    assert post_logout_token(ror, token).status_code == 400


def test_a_logout_token_sent_as_json_is_refused(ror, fake_op):
    response = requests.post(f"{ror.url}/backchannel-logout", json={"logout_token": fake_op.logout_token()},
                             timeout=10)
    assert response.status_code == 400


def test_a_new_portal_key_is_fetched_once_then_cached(ror, fake_op):
    sign_in(ror)
    fetched = fake_op.jwks_fetches
    new_key = ECKey.generate_key("P-256", parameters={"kid": "fake-2", "alg": "ES256", "use": "sig"})
    fake_op.published = [fake_op.key, new_key]
    assert post_logout_token(ror, fake_op.logout_token(key=new_key, alg="ES256")).status_code == 200
    assert fake_op.jwks_fetches == fetched + 1
    # A stream of tokens naming unknown keys does not become a stream of JWKS requests.
    stranger = stranger_key("unknown")
    for _ in range(3):
        assert post_logout_token(ror, fake_op.logout_token(key=stranger)).status_code == 400
    assert fake_op.jwks_fetches == fetched + 1


# -- the session store ------------------------------------------------------------------------


def test_a_session_ended_meanwhile_is_not_resurrected_by_a_late_save(tmp_path):
    store = SessionStore(tmp_path / "sessions.db", lifetime=60)
    store.insert("id-1", {"user": {"sub": "u1", "sid": "s1"}})
    assert store.load("id-1") == {"user": {"sub": "u1", "sid": "s1"}}
    assert store.end_matching("s1", "u1") == 1
    # A request that read the session before the logout token arrived now saves it.
    assert store.update("id-1", {"user": {"sub": "u1", "sid": "s1"}, "seen": 1}) is False
    assert store.load("id-1") is None


def test_sessions_expire(tmp_path):
    store = SessionStore(tmp_path / "sessions.db", lifetime=0)
    store.insert("id-1", {"user": {"sub": "u1"}})
    assert store.load("id-1") is None


def test_a_tampered_cookie_is_ignored(ror, fake_op):
    browser, _ = sign_in(ror)
    value = browser.cookies.get(COOKIE_NAME)
    session_id, _, signature = value.rpartition(".")
    forged = requests.get(ror.url + "/", cookies={COOKIE_NAME: session_id + ".AAAA" + signature[4:]}, timeout=10)
    assert "Bienvenue" not in forged.text


# -- configuration ------------------------------------------------------------------------------


def test_configuration_comes_from_the_demo_file_and_the_environment(tmp_path):
    (tmp_path / "ror_app_client.json").write_text(json.dumps({
        "issuer": "http://127.0.0.1:5000", "client_id": "ror-demo", "client_secret": "from-file",
        "base_url": "http://127.0.0.1:5001"}))
    settings = load_settings({"ROR_APP_INSTANCE_DIR": str(tmp_path)})
    assert (settings.issuer, settings.client_id, settings.client_secret, settings.base_url) == (
        "http://127.0.0.1:5000", "ror-demo", "from-file", "http://127.0.0.1:5001")
    assert len(settings.secret_key) >= 32  # generated once, then kept
    assert load_settings({"ROR_APP_INSTANCE_DIR": str(tmp_path)}).secret_key == settings.secret_key
    overridden = load_settings({"ROR_APP_INSTANCE_DIR": str(tmp_path), "ROR_APP_CLIENT_SECRET": "from-env",
                                "ROR_APP_BASE_URL": "https://ror.esante-test.fr/"})
    assert overridden.client_secret == "from-env" and overridden.base_url == "https://ror.esante-test.fr"
    assert overridden.secure_cookies


@pytest.mark.parametrize("env, message", [
    ({}, "configuration incomplète (ROR_APP_ISSUER, ROR_APP_CLIENT_ID, ROR_APP_CLIENT_SECRET)"),
    ({"ROR_APP_ISSUER": "http://portail.example", "ROR_APP_CLIENT_ID": "c", "ROR_APP_CLIENT_SECRET": "s"},
     "ROR_APP_ISSUER doit utiliser https"),
    ({"ROR_APP_ISSUER": "portail", "ROR_APP_CLIENT_ID": "c", "ROR_APP_CLIENT_SECRET": "s"},
     "ROR_APP_ISSUER doit être une adresse web absolue"),
    ({"ROR_APP_ISSUER": "https://portail.example", "ROR_APP_CLIENT_ID": "c", "ROR_APP_CLIENT_SECRET": "s",
      "ROR_APP_SECRET_KEY": "short"}, "ROR_APP_SECRET_KEY doit compter au moins 32 caractères"),
])
def test_a_wrong_configuration_stops_with_one_line(tmp_path, env, message):
    with pytest.raises(ConfigError) as raised:
        load_settings({"ROR_APP_INSTANCE_DIR": str(tmp_path), **env})
    assert message in str(raised.value)


# -- `enrs demo` registers the application ----------------------------------------------------


def test_demo_registers_the_ror_client_once_and_writes_its_configuration(app, session, monkeypatch):
    from idp.models import User, UserRole
    from idp.provider.models import Client
    from portal.demo import seed_demo

    monkeypatch.setenv("ROR_APP_BASE_URL", "http://127.0.0.1:5001")
    lines = seed_demo(if_empty=True)
    assert any("Application ROR de démonstration : http://127.0.0.1:5001" in line for line in lines)
    path = app.extensions["enrs.settings"].instance_dir / "ror_app_client.json"
    config = json.loads(path.read_text())
    assert path.stat().st_mode & 0o077 == 0  # it holds the client secret
    assert config["issuer"] == "http://localhost" and config["client_id"] == "ror-demo"
    assert config["base_url"] == "http://127.0.0.1:5001"
    client = session.scalar(sa.select(Client).where(Client.client_id == "ror-demo"))
    assert client.check_client_secret(config["client_secret"])
    assert client.redirect_uris == ["http://127.0.0.1:5001/callback"]
    assert client.post_logout_redirect_uris == ["http://127.0.0.1:5001/"]
    assert client.backchannel_logout_uri == "http://127.0.0.1:5001/backchannel-logout"
    assert client.initiate_login_uri == "http://127.0.0.1:5001/initiate-login"
    assert client.required_role == "ror_referent_offre" and client.icon == "ror"
    doctor = session.scalar(sa.select(User).where(User.login == "ndupont"))
    assert [(r.role, r.finess) for r in session.scalars(sa.select(UserRole).where(UserRole.user_id == doctor.id))] \
        == [("ror_referent_offre", "280503848")]

    # Again (every `make run`): nothing new, the same secret.
    assert seed_demo(if_empty=True)[0] == "Données de démonstration déjà présentes."
    assert session.scalar(sa.select(sa.func.count()).select_from(Client)) == 1
    assert session.scalar(sa.select(sa.func.count()).select_from(UserRole)) == 1
    assert json.loads(path.read_text()) == config

    # The file lost: a new secret replaces the old one (only its digest was kept).
    path.unlink()
    seed_demo(if_empty=True)
    renewed = json.loads(path.read_text())
    session.expire_all()
    client = session.scalar(sa.select(Client).where(Client.client_id == "ror-demo"))
    assert renewed["client_secret"] != config["client_secret"]
    assert client.check_client_secret(renewed["client_secret"])

    # Another ROR_PORT: the registration follows, still one client.
    monkeypatch.setenv("ROR_APP_BASE_URL", "http://127.0.0.1:5011")
    seed_demo(if_empty=True)
    session.expire_all()
    client = session.scalar(sa.select(Client).where(Client.client_id == "ror-demo"))
    assert client.redirect_uris == ["http://127.0.0.1:5011/callback"]
    assert json.loads(path.read_text())["base_url"] == "http://127.0.0.1:5011"
    assert session.scalar(sa.select(sa.func.count()).select_from(Client)) == 1


# -- the whole single sign-on, through real HTTP ----------------------------------------------


class SSO:
    def __init__(self, portal: Served, ror: Served, mailbox) -> None:
        self.portal = portal
        self.ror = ror
        self.mailbox = mailbox

    @property
    def portal_app(self) -> Flask:
        return self.portal.app

    def drain(self) -> None:
        """Wait for what the portal handed to its background thread (mail, logout notices)."""
        from portal.mail import drain

        drain(self.portal_app)

    def initiate_login_url(self) -> str:
        """Where the portal's ROR tile sends the browser (OpenID Connect §4)."""
        return f"{self.ror.url}/initiate-login?" + urlencode({"iss": self.portal.url,
                                                              "target_link_uri": self.ror.url + "/"})

    def log_in(self, browser: requests.Session, page: requests.Response, username: str, password: str,
               email: str) -> requests.Response:
        """The portal's login form (already on screen), the emailed code, the CGU if asked."""
        assert page.url.startswith(self.portal.url + "/login"), page.url
        next_value = re.search(r'name="next"[^>]*value="([^"]*)"', page.text)
        response = browser.post(self.portal.url + "/login", data={
            "csrf_token": csrf_of(page.text), "username": username, "password": password,
            "next": unescape(next_value.group(1)) if next_value else ""})
        assert response.url.startswith(self.portal.url + "/login/code"), response.url
        self.drain()
        message = self.mailbox.last(email).get_body(preferencelist=("plain",)).get_content()
        code = re.search(r"Votre code d'authentification unique est : (\d{6})", message).group(1)
        response = browser.post(self.portal.url + "/login/code", data={"csrf_token": csrf_of(response.text),
                                                                       "code": code})
        if "/account/cgu" in response.url:
            next_value = re.search(r'name="next"[^>]*value="([^"]*)"', response.text)
            response = browser.post(self.portal.url + "/account/cgu", data={
                "csrf_token": csrf_of(response.text), "accept": "y",
                "next": unescape(next_value.group(1)) if next_value else ""})
        return response

    def portal_logout(self, browser: requests.Session) -> requests.Response:
        page = browser.get(self.portal.url + "/account")
        return browser.post(self.portal.url + "/logout", data={"csrf_token": csrf_of(page.text)})

    def ror_store(self) -> SessionStore:
        return store_of(self.ror)


@pytest.fixture
def sso(app_env, tmp_path, mailbox, monkeypatch) -> Iterator[SSO]:
    """The portal as `make run` serves it (demo data, the demo ROR client registered by
    `enrs demo`), and the ROR app reading the file the demo wrote."""
    from portal.app import create_app
    from portal.demo import seed_demo

    portal, ror = Served(), Served()
    # Real time (no frozen clock): the ROR app checks iat/exp against its own clock.
    portal_app = create_app({**app_env, "ENRS_BASE_URL": portal.url})
    monkeypatch.setenv("ROR_APP_BASE_URL", ror.url)
    with portal_app.app_context():
        seed_demo()
    ror_app = create_ror_app({
        "ROR_APP_CONFIG_FILE": str(portal_app.extensions["enrs.settings"].instance_dir / "ror_app_client.json"),
        "ROR_APP_INSTANCE_DIR": str(tmp_path / "ror"), "ROR_APP_SECRET_KEY": "ror-test-key-" + "k" * 32,
    })
    portal.start(portal_app)
    ror.start(ror_app)
    yield SSO(portal, ror, mailbox)
    ror.stop()
    portal.stop()
    portal_app.extensions["enrs.db"]["engine"].dispose()


DEMO_LOGIN, DEMO_EMAIL = "ndupont", "nathalie.dupont@esante-demo.fr"


def _signed_in_through_the_portal(sso: SSO) -> tuple[requests.Session, requests.Response]:
    from portal.demo import DEMO_PASSWORD

    browser = requests.Session()
    page = browser.get(sso.initiate_login_url())  # not logged in to the portal yet: its login form
    return browser, sso.log_in(browser, page, DEMO_LOGIN, DEMO_PASSWORD, DEMO_EMAIL)


def test_sso_from_the_portal_to_the_ror_and_back_channel_logout(sso):
    browser, landed = _signed_in_through_the_portal(sso)

    assert landed.status_code == 200 and landed.url == sso.ror.url + "/", landed.url
    text = text_of(landed.text)
    assert "Bienvenue Nathalie DUPONT" in text
    assert "Référent ROR (offre de soins)" in text and "FINESS 280503848" in text
    assert "Mot de passe + code reçu par mail" in text
    assert "Identifiant sur le portail ndupont" in text
    _, sub = _portal_session_of(sso, DEMO_LOGIN)
    assert sso.ror_store().count_for(sub) == 1  # kept server-side with the portal's sub and sid

    # Opening the tile again while logged in to the portal: no login page, straight back.
    again = browser.get(sso.initiate_login_url())
    assert again.url == sso.ror.url + "/" and "Bienvenue Nathalie DUPONT" in again.text
    assert all(not r.url.startswith(sso.portal.url + "/login") for r in again.history)

    # Logging out of the portal ends the ROR session too (back-channel logout).
    response = sso.portal_logout(browser)
    assert response.status_code == 200
    sso.drain()
    page = browser.get(sso.ror.url + "/")
    assert "Se connecter avec le portail" in page.text and "Bienvenue" not in page.text
    assert sso.ror_store().count_for(sub) == 0
    from idp.provider.models import BackchannelLogout
    from portal.db import db

    with sso.portal_app.app_context():
        notices = db.session.scalars(sa.select(BackchannelLogout)).all()
        assert [(n.delivered_at is not None, n.last_error) for n in notices] == [(True, None)]


def test_the_portal_tile_opens_the_ror(sso):
    from portal.demo import DEMO_PASSWORD

    browser = requests.Session()
    page = browser.get(sso.portal.url + "/login")
    sso.log_in(browser, page, DEMO_LOGIN, DEMO_PASSWORD, DEMO_EMAIL)
    apps = browser.get(sso.portal.url + "/apps")
    assert "ROR Centre-Val de Loire" in text_of(apps.text)
    assert 'href="/apps/ror-demo/open">Accéder à ROR Centre-Val de Loire</a>' in apps.text
    landed = browser.get(f"{sso.portal.url}/apps/ror-demo/open")
    assert landed.url == sso.ror.url + "/", landed.url
    assert "Bienvenue Nathalie DUPONT" in text_of(landed.text)


def test_rp_initiated_logout_through_the_portal(sso):
    browser, landed = _signed_in_through_the_portal(sso)
    assert "Bienvenue" in landed.text

    back = browser.post(sso.ror.url + "/logout", data={"csrf_token": csrf_of(landed.text)})

    assert [urlsplit(r.url).path for r in back.history] == ["/logout", "/oidc/logout"]
    assert back.url.startswith(sso.ror.url + "/?state="), back.url
    assert "Vous êtes déconnecté de l'application et du portail." in text_of(back.text)
    # The portal session is over too.
    account = browser.get(sso.portal.url + "/account")
    assert account.url.startswith(sso.portal.url + "/login"), account.url
    sso.drain()  # the back-channel notice still reaches the ROR app, which accepts it (no session left)
    from idp.provider.models import BackchannelLogout
    from portal.db import db

    with sso.portal_app.app_context():
        notices = db.session.scalars(sa.select(BackchannelLogout)).all()
        assert [(n.delivered_at is not None, n.last_error) for n in notices] == [(True, None)]


def test_a_professional_without_the_role_stays_out(sso):
    from onboarding.accounts import create_professional
    from portal.db import db

    password = "Hopital-Chartres-2026!"
    with sso.portal_app.app_context():
        user = create_professional(db.session, email="paul.leroy@esante-test.fr", password=password,
                                   first_name="Paul", last_name="Leroy", profession="10", finess="280503848")
        login = user.login
        db.session.commit()
    browser = requests.Session()
    page = browser.get(sso.initiate_login_url())
    response = sso.log_in(browser, page, login, password, "paul.leroy@esante-test.fr")
    assert response.status_code == 403 and response.url.startswith(sso.portal.url + "/oidc/authorize")
    assert "Vous n'avez pas encore accès à ROR Centre-Val de Loire" in text_of(response.text)
    assert "Bienvenue" not in browser.get(sso.ror.url + "/").text


def test_the_ror_app_refuses_what_did_not_come_from_the_portal(sso):
    browser, landed = _signed_in_through_the_portal(sso)
    assert "Bienvenue" in landed.text

    # initiate-login naming another issuer
    foreign = requests.get(f"{sso.ror.url}/initiate-login", params={"iss": "https://portail.ailleurs.example",
                                                                   "target_link_uri": sso.ror.url + "/"},
                           allow_redirects=False, timeout=10)
    assert foreign.status_code == 400

    # a callback with a state this browser never sent
    started = browser.get(sso.initiate_login_url(), allow_redirects=False)
    assert started.status_code == 303
    wrong = browser.get(f"{sso.ror.url}/callback", params={"code": "x", "state": "forged-state"})
    assert wrong.status_code == 400

    # logout tokens: forged, and one signed with the portal's own key but carrying a nonce
    from idp.provider.keys import key_ring
    from portal.db import db

    with sso.portal_app.app_context():
        kid, key = key_ring(db.session).signing["RS256"]
    sid, sub = _portal_session_of(sso, DEMO_LOGIN)
    issued = int(time.time())
    claims = {"iss": sso.portal.url, "aud": CLIENT_ID, "iat": issued, "exp": issued + 120,
              "jti": secrets.token_urlsafe(12), "sub": sub, "sid": sid, "events": {EVENT: {}}}
    stranger = stranger_key(kid)
    forged = jwt.encode({"alg": "RS256", "kid": kid, "typ": "logout+jwt"}, claims, stranger)
    assert post_logout_token(sso.ror, forged).status_code == 400
    with_nonce = jwt.encode({"alg": "RS256", "kid": kid, "typ": "logout+jwt"}, {**claims, "nonce": "n"}, key)
    assert post_logout_token(sso.ror, with_nonce).status_code == 400
    assert "Bienvenue" in browser.get(sso.ror.url + "/").text

    # the genuine article, signed by the portal's key, does end it
    genuine = jwt.encode({"alg": "RS256", "kid": kid, "typ": "logout+jwt"}, claims, key)
    assert post_logout_token(sso.ror, genuine).status_code == 200
    assert "Bienvenue" not in browser.get(sso.ror.url + "/").text


def _portal_session_of(sso: SSO, login: str) -> tuple[str, str]:
    """(sid, sub) of the user's live portal session, as the portal names them in tokens."""
    from idp.models import User
    from idp.sessions import UserSession
    from portal.db import db

    with sso.portal_app.app_context():
        user = db.session.scalar(sa.select(User).where(User.login == login))
        record = db.session.scalars(sa.select(UserSession).where(UserSession.user_id == user.id,
                                                                 UserSession.revoked_at.is_(None))).one()
        return record.public_id, user.public_id
