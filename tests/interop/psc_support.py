"""Pro Santé Connect against the real stand-in: a served portal (`enrs serve`) whose
ENRS_PSC_* point at tests/psc_sandbox (panva's oidc-provider configured like PSC), and a
person's browser played by `requests` through both: the portal's pages and cookies, the
sandbox's identity page (tests/psc_sandbox/sandbox.py's complete_login), the code
received by mail for a password login.

Nothing here runs in the portal's process: what a person cannot see on screen (the
account's national identifier, the link row, the audit log, the session's acr) is read
from the served portal's database by an app of the same settings (Portal.app()).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import sqlalchemy as sa

from tests.e2e.support import Portal, link_in, login_code_in
from tests.interop.support import HTTP_TIMEOUT, REDIRECTS, REPO, query, text_of
from tests.journeys import csrf, field_value
from tests.psc_sandbox.sandbox import Sandbox, cancel_login, complete_login

# An application of the region registered with `enrs client add`, open to every account
# (no required role): what the ROR tile stands for here. Its addresses are never served:
# the browser stops before following them, and the test plays the application's back end.
ROR_CLIENT_ID = "ror-psc-interop"
ROR_NAME = "ROR Centre-Val de Loire (interop PSC)"
ROR_BASE = "http://localhost/ror-psc"
ROR_CALLBACK = f"{ROR_BASE}/callback"
ROR_INITIATE = f"{ROR_BASE}/initiate-login"
ROR_SCOPES = "openid profile national_id"

UNAVAILABLE = "Pro Santé Connect est momentanément indisponible"
PSC_BUTTON = "Se connecter avec Pro Santé Connect"


def page_text(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))).strip()


def input_tag(html: str, name: str) -> str:
    """The <input> whose name is `name`, as served."""
    match = re.search(rf'<input\b[^>]*\bname="{re.escape(name)}"[^>]*>', html)
    assert match, f"no input {name!r} in the page"
    return match.group(0)


def link_href(html: str, text: str) -> str:
    """The href of the link whose text is `text`, as a person would click it."""
    for match in re.finditer(r'<a\b[^>]*\bhref="([^"]*)"[^>]*>(.*?)</a>', html, re.S):
        if page_text(match.group(2)) == text:
            return unescape(match.group(1))
    raise AssertionError(f"no link {text!r} in the page")


def selected_option(html: str, name: str) -> str | None:
    """The value of the selected <option> of the <select> `name`."""
    select = re.search(rf'<select\b[^>]*\bname="{re.escape(name)}"[^>]*>(.*?)</select>', html, re.S)
    assert select, f"no select {name!r} in the page"
    option = re.search(r'<option\b[^>]*value="([^"]*)"[^>]*\bselected\b', select.group(1))
    return option.group(1) if option else None


def jwt_claims(token: str) -> dict:
    """A JWT's payload, unverified (to read what the portal passes on, e.g. id_token_hint)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# -- the portal's side ------------------------------------------------------------------------


def psc_env(sandbox: Sandbox) -> dict[str, str]:
    return {**sandbox.portal_env(), "ENRS_PSC_AUTH_METHOD": "client_secret_basic"}


def enrs_command() -> list[str]:
    script = Path(sys.executable).with_name("enrs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "portal.cli"]


class ServeOnly(Portal):
    """Another `enrs serve` process on an instance that is already set up (the database
    upgraded and `enrs demo` loaded by another Portal): its own address and settings."""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen([*enrs_command(), "serve", "--port", str(self.port)],
                                            env=self.process_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()


def register_ror(portal: Portal) -> str:
    """`enrs client add` as an operator runs it; the application's secret."""
    answer = portal.cli("client", "add", "--json", "--client-id", ROR_CLIENT_ID, "--name", ROR_NAME,
                        "--redirect-uri", ROR_CALLBACK, "--initiate-login-uri", ROR_INITIATE,
                        "--scope", ROR_SCOPES)
    return json.loads(answer.strip().splitlines()[-1])["client_secret"]


def in_database(portal: Portal, read):
    """`read(session)` against the served portal's database."""
    from portal.db import db

    with portal.app().app_context():
        try:
            return read(db.session)
        finally:
            db.session.rollback()


@dataclass(frozen=True)
class Account:
    id: int
    status: str
    first_name: str
    last_name: str
    national_id: str | None
    national_id_type: str | None
    psc_subject: str | None  # the linked PSC identity, if any


def account(portal: Portal, email: str) -> Account:
    from idp.models import User
    from idp.psc.models import PscLink

    def read(session):
        user = session.scalar(sa.select(User).where(User.email == email))
        assert user is not None, f"no account for {email}"
        subject = session.scalar(sa.select(PscLink.psc_subject).where(PscLink.user_id == user.id))
        return Account(user.id, user.status, user.first_name, user.last_name, user.national_id,
                       user.national_id_type, subject)

    return in_database(portal, read)


def last_audit_id(portal: Portal) -> int:
    from portal.audit import AuditEntry

    return in_database(portal, lambda s: s.scalar(sa.select(sa.func.max(AuditEntry.id))) or 0)


def audit_actions(portal: Portal, after: int) -> list[str]:
    """The audit log's actions recorded after the entry `after` (see last_audit_id)."""
    from portal.audit import AuditEntry

    return in_database(portal, lambda s: list(s.scalars(
        sa.select(AuditEntry.action).where(AuditEntry.id > after).order_by(AuditEntry.id))))


def latest_session(portal: Portal, user_id: int) -> tuple[str, list[str], bool]:
    """(acr, amr, holds a PSC id_token) of the account's newest portal session."""
    from idp.sessions import UserSession

    def read(session):
        record = session.scalar(sa.select(UserSession).where(UserSession.user_id == user_id)
                                .order_by(UserSession.created_at.desc()).limit(1))
        return record.acr, list(record.amr), bool(record.psc_id_token)

    return in_database(portal, read)


# -- the browser --------------------------------------------------------------------------------


@dataclass
class PscBrowser:
    """One person's browser: the portal's cookies and PSC's (another host) in one jar."""

    portal: Portal
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def base(self) -> str:
        return self.portal.base_url

    def get(self, url: str) -> requests.Response:
        return self.http.get(urljoin(self.base, url), allow_redirects=False, timeout=HTTP_TIMEOUT)

    def post(self, url: str, data: dict) -> requests.Response:
        return self.http.post(urljoin(self.base, url), data=data, allow_redirects=False, timeout=HTTP_TIMEOUT)

    def page(self, url: str) -> str:
        response = self.get(url)
        assert response.status_code == 200, f"GET {url}: {response.status_code} {text_of(response)[:400]}"
        return response.text

    def submit(self, page_url: str, action: str, data: dict) -> requests.Response:
        """The form of `page_url` posted to `action` with its CSRF token."""
        return self.post(action, {"csrf_token": csrf(self.page(page_url)), **data})

    def shown_after(self, response: requests.Response) -> str:
        """The text of the page a redirect leads to (where the flashed message shows)."""
        assert response.status_code in REDIRECTS, f"{response.status_code}: {text_of(response)[:400]}"
        return page_text(self.page(response.headers["Location"]))

    def logged_in(self) -> bool:
        return self.get("/account/").status_code == 200

    # -- Pro Santé Connect ------------------------------------------------------------------

    def to_psc(self, response: requests.Response) -> str:
        """The authorization URL the portal's answer sends the browser to (PSC's login
        page, on another host than PSC's issuer)."""
        assert response.status_code == 303, f"{response.status_code}: {text_of(response)[:400]}"
        location = response.headers["Location"]
        assert not location.startswith(self.base), f"not sent to PSC: {location}"
        return location

    def start(self, via: str = "login") -> str:
        """"Se connecter avec Pro Santé Connect" (`via` login) or Mon compte's "Lier ma
        carte e-CPS" (`via` link): the authorization URL at PSC."""
        if via == "login":
            return self.to_psc(self.get("/psc/login"))
        return self.to_psc(self.submit("/psc/", "/psc/link", {}))

    def callback(self, callback_url: str) -> requests.Response:
        assert callback_url.startswith(f"{self.base}/psc/callback?"), callback_url
        return self.get(callback_url)

    def psc_login(self, identity: str, via: str = "login") -> requests.Response:
        """The whole round trip with the identity chosen at PSC: the portal's answer to
        the callback (a redirect)."""
        callback_url = complete_login(self.http, self.start(via), identity)
        return self.callback(callback_url)

    def psc_cancel(self) -> requests.Response:
        return self.callback(cancel_login(self.http, self.start()))

    # -- identifier, password and the code received by mail (J3) ------------------------------

    def log_in(self, username: str, password: str, email: str, login_url: str = "/login") -> str:
        """Where the portal sends the browser after the code (its `next`), once the
        terms of use are accepted if asked."""
        page = self.page(login_url)
        since = self.portal.mark()
        response = self.post("/login", {"csrf_token": csrf(page), "username": username, "password": password,
                                        "next": field_value(page, "next") or ""})
        assert response.status_code == 303 and urlsplit(response.headers["Location"]).path == "/login/code", \
            f"password step refused ({response.status_code}): {text_of(response)[:400]}"
        code = login_code_in(self.portal.receive(email, "Code d'authentification", since=since))
        response = self.submit("/login/code", "/login/code", {"code": code})
        assert response.status_code == 303, f"code refused ({response.status_code}): {text_of(response)[:400]}"
        target = urljoin(self.base, response.headers["Location"])
        if self.get("/account/cgu").status_code == 200:
            accepted = self.submit("/account/cgu", "/account/cgu", {"accept": "y"})
            assert accepted.status_code in REDIRECTS, f"CGU refused: {text_of(accepted)[:300]}"
        return target

    # -- an application of the region (the ROR tile) --------------------------------------------

    def open_ror(self, secret: str) -> dict:
        """The tile, then the application's authorization request (PKCE, state, nonce)
        followed by the browser, then its back end exchanging the code at /oauth/token:
        the token response and the ID token's verified claims."""
        from joserfc import jwt
        from joserfc.jwk import KeySet

        opened = self.get(f"/apps/{ROR_CLIENT_ID}/open")
        assert opened.status_code in REDIRECTS, f"tile: {opened.status_code} {text_of(opened)[:300]}"
        initiate = opened.headers["Location"]
        assert initiate.startswith(ROR_INITIATE) and query(initiate)["iss"] == self.base, initiate

        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        verifier, challenge = pkce()
        response = self.get("/oidc/authorize?" + urlencode({
            "response_type": "code", "client_id": ROR_CLIENT_ID, "redirect_uri": ROR_CALLBACK, "scope": ROR_SCOPES,
            "state": state, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"}))
        assert response.status_code in REDIRECTS, f"authorize: {response.status_code} {text_of(response)[:400]}"
        back = response.headers["Location"]
        assert back.startswith(ROR_CALLBACK + "?"), f"not sent back to the application: {back}"
        params = query(back)
        assert params["state"] == state and "code" in params, params

        tokens = requests.post(f"{self.base}/oauth/token", auth=(ROR_CLIENT_ID, secret), timeout=HTTP_TIMEOUT, data={
            "grant_type": "authorization_code", "code": params["code"], "redirect_uri": ROR_CALLBACK,
            "code_verifier": verifier})
        assert tokens.status_code == 200, f"token: {tokens.status_code} {tokens.text[:400]}"
        tokens = tokens.json()
        keys = KeySet.import_key_set(requests.get(f"{self.base}/oauth/jwks", timeout=HTTP_TIMEOUT).json())
        claims = jwt.decode(tokens["id_token"], keys).claims
        assert claims["iss"] == self.base and claims["aud"] in (ROR_CLIENT_ID, [ROR_CLIENT_ID]), claims
        assert claims["nonce"] == nonce, claims
        return {"tokens": tokens, "claims": claims}


def verification_link(portal: Portal, email: str, since: int) -> str:
    return link_in(portal.receive(email, "Validation de votre inscription", since=since), "/register/verify/")


def sandbox_log(sandbox: Sandbox, destination: Path) -> None:
    """Keep the sandbox's output beside the portal's log (its own is deleted at the end)."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(sandbox.log.read_bytes())
    except OSError:
        pass
