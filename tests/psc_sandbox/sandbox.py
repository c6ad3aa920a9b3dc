"""Start the Pro Santé Connect stand-in (server.mjs) from tests, and play a person's
browser through its pages with `requests` (or Playwright).

    with running_sandbox(redirect_uri="http://127.0.0.1:5000/psc/callback",
                         post_logout_uri="http://127.0.0.1:5000/psc/logged-out") as psc:
        settings = psc.portal_env()          # the ENRS_PSC_* variables
        callback = complete_login(browser, authorize_url, "medecin")

Only `node` (and `npm` the first time, for `npm ci`) is needed.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator
from urllib.parse import urljoin, urlsplit

import requests

from tests.processes import end_process

HERE = Path(__file__).resolve().parent
REALM = "/auth/realms/esante-wallet"
IDENTITIES: dict[str, dict] = json.loads((HERE / "identities.json").read_text(encoding="utf-8"))
CLIENT_ID = "enrs-portal"
CLIENT_SECRET = "psc-sandbox-secret-not-for-production"
REDIRECTS = (301, 302, 303, 307, 308)
TIMEOUT = 10.0


@dataclass
class Sandbox:
    port: int
    wallet_port: int
    client_id: str
    client_secret: str
    log: Path
    metadata: dict = field(default_factory=dict)  # the discovery document, once started

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}{REALM}"

    @property
    def discovery_url(self) -> str:
        """The name PSC serves (the standard one works too)."""
        return f"{self.issuer}/.well-known/wallet-openid-configuration"

    @property
    def authorization_endpoint(self) -> str:
        return f"http://localhost:{self.wallet_port}/auth"

    @property
    def end_session_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/logout"

    def portal_env(self) -> dict[str, str]:
        return {"ENRS_PSC_DISCOVERY_URL": self.discovery_url, "ENRS_PSC_CLIENT_ID": self.client_id,
                "ENRS_PSC_CLIENT_SECRET": self.client_secret}


def node_available() -> bool:
    return shutil.which("node") is not None


def install() -> None:
    """`npm ci` when node_modules is missing or older than the lock file (as `make psc-sandbox`)."""
    installed = HERE / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= (HERE / "package-lock.json").stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm est requis pour installer le bac à sable PSC (npm ci dans tests/psc_sandbox)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True,
                   stdout=subprocess.DEVNULL)
    installed.touch()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_sandbox(port: int | None = None, redirect_uri: str | list[str] = "http://127.0.0.1:5000/psc/callback",
                    post_logout_uri: str | list[str] = "http://127.0.0.1:5000/psc/logged-out", *,
                    wallet_port: int | None = None, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET,
                    userinfo: str = "json", id_token_alg: str = "RS256",
                    startup_timeout: float = 30.0) -> Iterator[Sandbox]:
    """The sandbox in a Node process for the duration of the block (free ports by default);
    its output goes to a temporary log file (`sandbox.log`), shown if it fails to start."""
    install()
    port = port or free_port()
    while not wallet_port or wallet_port == port:
        wallet_port = free_port()
    args = ["node", str(HERE / "server.mjs"), "--port", str(port), "--wallet-port", str(wallet_port),
            "--client-id", client_id, "--client-secret", client_secret,
            "--userinfo", userinfo, "--id-token-alg", id_token_alg]
    for uri in [redirect_uri] if isinstance(redirect_uri, str) else redirect_uri:
        args += ["--redirect-uri", uri]
    for uri in [post_logout_uri] if isinstance(post_logout_uri, str) else post_logout_uri:
        args += ["--post-logout-redirect-uri", uri]
    log = Path(tempfile.mkstemp(prefix="psc-sandbox-", suffix=".log")[1])
    sandbox = Sandbox(port, wallet_port, client_id, client_secret, log)
    process = None
    try:
        # Node 20 has been seen, about once in a hundred starts here, asleep on a futex
        # before it listens, alive but deaf for good: such a start is ended and made
        # again once (said on stderr). A sandbox that exits is an error at once.
        for attempt in (1, 2):
            with log.open("ab") as out:
                process = subprocess.Popen(args, cwd=HERE, stdout=out, stderr=subprocess.STDOUT)
            try:
                _wait_until_ready(process, sandbox, startup_timeout / 2 if attempt == 1 else startup_timeout)
                break
            except SandboxStalled as stalled:
                end_process(process)
                if attempt == 2:
                    raise RuntimeError(str(stalled)) from None
                print(f"{stalled}; relancé", file=sys.stderr)
        yield sandbox
    finally:
        end_process(process)
        log.unlink(missing_ok=True)


class SandboxStalled(RuntimeError):
    """Alive, but not answering on its port."""


def _wait_until_ready(process: subprocess.Popen, sandbox: Sandbox, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"le bac à sable PSC s'est arrêté (code de sortie : {process.returncode}) :\n"
                               f"{sandbox.log.read_text(errors='replace')}")
        try:
            response = requests.get(sandbox.discovery_url, timeout=1)
            if response.ok:
                requests.get(sandbox.authorization_endpoint, timeout=1)  # the wallet listener too
                sandbox.metadata = response.json()
                return
            last = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.1)
    raise SandboxStalled(f"le bac à sable PSC ne répond pas après {timeout:.0f} s (dernière réponse : {last}) :\n"
                         f"{sandbox.log.read_text(errors='replace')}")


# -- a browser played by requests ----------------------------------------------------------


class _Forms(HTMLParser):
    """The forms of a page: action, method, hidden and checked fields."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action") or "", "method": (attrs.get("method") or "get").lower(),
                               "fields": {}, "buttons": []})
        elif tag == "input" and self.forms and attrs.get("name"):
            if attrs.get("type") not in ("radio", "checkbox") or "checked" in attrs:
                self.forms[-1]["fields"][attrs["name"]] = attrs.get("value") or ""
        elif tag == "button" and self.forms:
            self.forms[-1]["buttons"].append(attrs)


def forms_of(html: str) -> list[dict]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


AUTO_SUBMIT = "document.forms[0].submit()"


def _follow(session: requests.Session, response: requests.Response, origins: set[str]) -> requests.Response | str:
    """Follows redirects, and the pages a browser's script submits at once (logout
    confirmation, oidc-provider's switch of identity), while they stay on the sandbox;
    returns the first address outside it (not requested) or the sandbox page they end on."""
    while True:
        if response.status_code in REDIRECTS:
            target = urljoin(response.url, response.headers["Location"])
            if _origin(target) not in origins:
                return target
            response = session.get(target, allow_redirects=False, timeout=TIMEOUT)
        elif response.status_code == 200 and AUTO_SUBMIT in response.text:
            form = forms_of(response.text)[0]
            target = urljoin(response.url, form["action"])
            origins = origins | {_origin(target)}
            response = session.post(target, data=form["fields"], allow_redirects=False, timeout=TIMEOUT)
        else:
            return response


def _through_login_page(session: requests.Session, authorize_url: str, action: str,
                        data: dict[str, str]) -> str:
    origins = {_origin(authorize_url)}
    response = _follow(session, session.get(authorize_url, allow_redirects=False, timeout=TIMEOUT), origins)
    if isinstance(response, str):
        return response  # an error sent straight back to the client (e.g. error=invalid_scope)
    form = next((f for f in forms_of(response.text) if f["action"].endswith(action)), None)
    if form is None:
        raise AssertionError(f"pas de page de connexion PSC ({response.status_code}) :\n{response.text[:2000]}")
    posted = session.post(urljoin(response.url, form["action"]), data=data, allow_redirects=False, timeout=TIMEOUT)
    result = _follow(session, posted, origins)
    if isinstance(result, str):
        return result
    raise AssertionError(f"PSC n'a pas renvoyé vers le client ({result.status_code}) :\n{result.text[:2000]}")


def complete_login(session: requests.Session, authorize_url: str, identity: str) -> str:
    """Opens the authorization URL, chooses `identity` (a key of identities.json) and
    returns the redirect to the client's callback, without following it."""
    if identity not in IDENTITIES:
        raise KeyError(f"identité de test inconnue : {identity} (connues : {', '.join(IDENTITIES)})")
    return _through_login_page(session, authorize_url, "/login", {"login": identity})


def cancel_login(session: requests.Session, authorize_url: str) -> str:
    """Opens the authorization URL and presses "Annuler": the callback URL carries
    error=access_denied."""
    return _through_login_page(session, authorize_url, "/abort", {})


def complete_logout(session: requests.Session, logout_url: str) -> str:
    """Opens PSC's logout URL (id_token_hint, post_logout_redirect_uri), lets its page
    confirm itself as a browser would, and returns where PSC sends the browser next: the
    post_logout_redirect_uri (not requested), or the sandbox's "déconnecté" page without one."""
    result = _follow(session, session.get(logout_url, allow_redirects=False, timeout=TIMEOUT), {_origin(logout_url)})
    if isinstance(result, str):
        return result
    if result.status_code != 200:
        raise AssertionError(f"déconnexion PSC refusée ({result.status_code}) :\n{result.text[:2000]}")
    return result.url


def browser_login(page, identity: str) -> None:
    """The same choice in a Playwright page showing PSC's login page."""
    page.check(f"input[name='login'][value='{identity}']")
    page.get_by_role("button", name="Se connecter").click()
