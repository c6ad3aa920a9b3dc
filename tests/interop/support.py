"""The two sides the interop suite plays around a served portal:

- `RelyingParty`: rp.mjs, panva's openid-client in a Node process, driven one JSON
  command per line; it does every check an application does.
- `Browser`: a person's browser played by `requests` (cookie jar, redirects followed one
  by one, the login form and the code received by mail), stopping at the application's
  callback, which is never served.
"""
from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from tests.e2e.support import Portal, login_code_in
from tests.journeys import csrf, field_value

INTEROP = Path(__file__).resolve().parent
REPO = INTEROP.parent.parent
ARTIFACTS = INTEROP / "artifacts"
DRIVER = INTEROP / "rp.mjs"
ANSWER_TIMEOUT = 30.0
HTTP_TIMEOUT = 15.0

# The applications' addresses: never served, the browser stops before following them.
RP_BASE = "http://localhost/interop"
CALLBACK = f"{RP_BASE}/callback"
LOGGED_OUT = f"{RP_BASE}/logged-out"
ALL_SCOPES = "openid profile email establishments roles national_id"
ROR_ROLE = "ror_referent_offre"
PASSWORD = "Chartres-Hopital-2026"
REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class Person:
    email: str
    first_name: str
    last_name: str
    national_id: str
    finess: str = "280071135"  # in `enrs demo`'s establishments


NATHALIE = Person(email="nathalie.lefort@esante-test.fr", first_name="Nathalie", last_name="Lefort",
                  national_id="10108825463")


@dataclass(frozen=True)
class Application:
    """An application registered on the portal, as the relying party knows it."""

    client_id: str
    auth: str  # token_endpoint_auth_method
    alg: str = "RS256"
    public: bool = False
    role: str | None = None
    scopes: str = ALL_SCOPES
    secret: str | None = None


# A confidential client (basic, RS256) that needs the ROR role, one with
# client_secret_post and ES256 ID tokens, and a public one (PKCE, no secret).
APPLICATIONS = {
    "basic": Application("interop-basic", "client_secret_basic", role=ROR_ROLE),
    "post": Application("interop-post", "client_secret_post", alg="ES256"),
    "public": Application("interop-public", "none", public=True, scopes="openid profile"),
}


def query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def text_of(response: requests.Response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.text)).strip()


# -- the relying party ------------------------------------------------------------------------


class RPError(Exception):
    """What openid-client threw: `.error` has name, code, message and, for an OAuth
    error answer, `error`, `error_description`, `status`."""

    def __init__(self, op: str, error: dict) -> None:
        super().__init__(f"{op}: {error}")
        self.op = op
        self.error = error


class RelyingParty:
    """rp.mjs in a Node process: one JSON command per line in, one answer per line out."""

    def __init__(self, node: str, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w")
        self.process = subprocess.Popen([node, str(DRIVER)], cwd=INTEROP, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @staticmethod
    def node() -> str | None:
        return shutil.which("node")

    def _read(self) -> None:
        for line in self.process.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def call(self, op: str, **args):
        """The result of `op`; raises RPError when openid-client throws."""
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        try:
            line = self._answers.get(timeout=ANSWER_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"the openid-client driver did not answer {op} in {ANSWER_TIMEOUT:.0f} s") from None
        if line is None:
            raise AssertionError(f"the openid-client driver exited ({self.process.poll()}) during {op}; "
                                 f"see {self._log.name}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RPError(op, answer["error"])
        return answer["result"]

    def fails(self, op: str, **args) -> dict:
        """What openid-client threw for `op`, which must fail."""
        try:
            result = self.call(op, **args)
        except RPError as exc:
            return exc.error
        raise AssertionError(f"{op} succeeded although it should have failed: {json.dumps(result)[:500]}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


def discover(driver: RelyingParty, portal: Portal, name: str, app: Application, **extra) -> dict:
    """openid-client's discovery for `app`, kept by the driver under `name`."""
    metadata = {"redirect_uris": [CALLBACK], "post_logout_redirect_uris": [LOGGED_OUT],
                "id_token_signed_response_alg": app.alg}
    return driver.call("discover", name=name, issuer=portal.base_url, client_id=app.client_id,
                       client_secret=app.secret, auth=app.auth, metadata=metadata, **extra)


# -- the browser --------------------------------------------------------------------------------


@dataclass
class Browser:
    """One person's browser against the served portal."""

    portal: Portal
    person: Person
    http: requests.Session = field(default_factory=requests.Session)

    def get(self, url: str) -> requests.Response:
        return self.http.get(urljoin(self.portal.base_url, url), allow_redirects=False, timeout=HTTP_TIMEOUT)

    def post(self, url: str, data: dict) -> requests.Response:
        return self.http.post(urljoin(self.portal.base_url, url), data=data, allow_redirects=False,
                              timeout=HTTP_TIMEOUT)

    def follow(self, url: str, *, log_in: bool = True, max_hops: int = 10) -> str:
        """Follow `url` through the portal, logging in when it asks (unless `log_in` is
        False), until the portal sends the browser to the application: that address."""
        for _ in range(max_hops):
            path = urlsplit(url).path
            if url.startswith(RP_BASE):
                return url
            if path == "/login":
                if not log_in:
                    raise AssertionError(f"the portal asked for a login: {url}")
                url = self.log_in(url)
                continue
            if path == "/account/cgu":
                url = self.accept_cgu(url)
                continue
            response = self.get(url)
            if response.status_code not in REDIRECTS:
                raise AssertionError(f"GET {url} answered {response.status_code}, not a redirect: "
                                     f"{text_of(response)[:400]}")
            url = urljoin(response.url, response.headers["Location"])
        raise AssertionError(f"more than {max_hops} redirects from {url}")

    def log_in(self, login_url: str = "/login", *, accept_cgu: bool = True) -> str:
        """The login form at `login_url`, then the code received by mail, then the terms
        of use a new account accepts (unless `accept_cgu` is False); where the portal
        sends the browser afterwards (its `next`)."""
        page = self.get(login_url)
        assert page.status_code == 200, f"GET {login_url}: {page.status_code} {text_of(page)[:300]}"
        since = self.portal.mark()
        response = self.post("/login", {"csrf_token": csrf(page.text), "username": self.person.email,
                                        "password": PASSWORD, "next": field_value(page.text, "next") or ""})
        assert response.status_code == 303 and urlsplit(response.headers["Location"]).path == "/login/code", \
            f"password step refused ({response.status_code}): {text_of(response)[:400]}"
        code = login_code_in(self.portal.receive(self.person.email, "Code d'authentification", since=since))
        page = self.get("/login/code")
        response = self.post("/login/code", {"csrf_token": csrf(page.text), "code": code})
        assert response.status_code == 303, f"code refused ({response.status_code}): {text_of(response)[:400]}"
        target = urljoin(response.url, response.headers["Location"])
        if accept_cgu and self.get("/account/cgu").status_code == 200:
            self.accept_cgu("/account/cgu")
        return target

    def accept_cgu(self, url: str) -> str:
        """The terms of use at `url` (where the portal's CGU gate sends a person who has
        not accepted the current version; it keeps `next`), accepted; where the portal
        sends the browser afterwards."""
        page = self.get(url)
        assert page.status_code == 200, f"GET {url}: {page.status_code}"
        response = self.post(url, {"csrf_token": csrf(page.text), "accept": "y"})
        assert response.status_code in REDIRECTS, f"CGU refused ({response.status_code}): {text_of(response)[:300]}"
        return urljoin(response.url, response.headers["Location"])

    def logged_in(self) -> bool:
        """Whether the portal still knows this browser: /login sends a logged-in person on."""
        return self.get("/login").status_code in REDIRECTS
