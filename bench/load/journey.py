"""One virtual user's journey, and the two servers the driver plays on loopback.

- `Inbox`: an SMTP server (aiosmtpd's protocol on the driver's own event loop) that
  receives the portal's mail; a journey waits there for its login code, as a person
  reads it in their mailbox.
- `Backchannel`: the application's back-channel logout endpoint. It answers 200 and
  counts: every portal logout of a session that opened the ROR makes the portal sign a
  logout token and POST it here, which is part of the load a logout puts on the portal.
- `RelyingParty`: the demo ROR application's server side (client `ror-demo`, registered
  by `enrs demo`): the authorization request with state, nonce and PKCE S256, the code
  exchange with client_secret_basic, the ID token checked against the JWKS, userinfo.
  The browser's hops through the application (/initiate-login, /callback) are played
  in-process: they cost the portal nothing and would only measure the application.
- `journey()`: GET /login, POST identifier + password, the code read from the mail,
  GET + POST /login/code, GET /apps, GET /apps/ror-demo/open (third-party-initiated
  login), GET /oidc/authorize → code, POST /oauth/token, GET /oauth/userinfo, POST /logout;
  or, for the login-only ramp, up to GET /apps.

Every HTTP step is timed on its own: from the request's first byte sent to the whole
response read, connection set-up included (a browser opens its own connections).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import ssl
import time
from dataclasses import dataclass
from email import message_from_bytes, policy
from typing import Callable
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp

from bench.load.setup import PASSWORD, Account

CSRF_RE = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')
CODE_RE = re.compile(r"Votre code d'authentification unique est : (\d{6})\b")
CODE_RE_RAW = re.compile(CODE_RE.pattern.encode())
SCOPES = "openid profile email establishments roles national_id"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30.0)  # gunicorn's own worker timeout
MAIL_TIMEOUT = 30.0
# One TLS context for every client, rather than one built (and CAs loaded) per client.
_TLS = ssl.create_default_context()
# The driver shares the portal's cores: its HTTP client is aiohttp, whose parser is C
# (httpx, pure Python, cost the driver 26-34 ms of CPU per whole journey in the load
# test; aiohttp on uvloop 14-16 ms).
CONNECTION_LOST = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
# Idle connections are dropped before gunicorn's keepalive (5 s) closes them, as httpx's
# 5 s expiry did; aiohttp's default (15 s) would reuse many a closed one.
KEEPALIVE_SECONDS = 4.0


@dataclass
class Answer:
    """A response read whole: what a journey checks."""

    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> dict:
        return json.loads(self.text)


async def _read(response: aiohttp.ClientResponse) -> Answer:
    body = await response.read()
    return Answer(response.status, {k.lower(): v for k, v in response.headers.items()},
                  body.decode("utf-8", "replace"))

# The steps, in journey order; "mail" is the time from the password step's answer to
# the code's arrival in the inbox (delivery by the web process's mail thread).
STEPS = ("login_page", "login_password", "mail", "code_page", "login_code", "apps", "app_open", "authorize",
         "token", "userinfo", "logout")
HTTP_STEPS = tuple(step for step in STEPS if step != "mail")


class JourneyError(Exception):
    def __init__(self, step: str, kind: str, detail: str = "") -> None:
        super().__init__(f"{step}: {kind} {detail}".strip())
        self.step, self.kind, self.detail = step, kind, detail


# -- mail ------------------------------------------------------------------------------------


class Inbox:
    """What the portal sends: one queue of login codes per recipient."""

    def __init__(self) -> None:
        self.codes: dict[str, asyncio.Queue[tuple[str, float]]] = {}
        self.received = 0
        self.unreadable = 0

    def queue(self, address: str) -> asyncio.Queue[tuple[str, float]]:
        return self.codes.setdefault(address, asyncio.Queue())

    def forget(self, address: str) -> None:
        """Codes left over by an interrupted journey of this account."""
        queue = self.queue(address)
        while not queue.empty():
            queue.get_nowait()

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler API
        self.received += 1
        arrived = time.perf_counter()
        # The portal sends its text part as 8bit UTF-8: the code is in the raw message, and
        # parsing the whole MIME message costs the driver (sharing the portal's cores)
        # more than anything else it does per journey. Other encodings are parsed.
        match = CODE_RE_RAW.search(envelope.content)
        if match is None:
            message = message_from_bytes(envelope.content, policy=policy.default)
            body = message.get_body(preferencelist=("plain",))
            match = CODE_RE.search(body.get_content()) if body is not None else None
        if match is None:
            self.unreadable += 1
        else:
            for address in envelope.rcpt_tos:
                code = match.group(1)
                self.queue(address.lower()).put_nowait((code.decode() if isinstance(code, bytes) else code, arrived))
        return "250 Message accepted for delivery"

    async def serve(self, host: str, port: int) -> asyncio.AbstractServer:
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: SMTP(self, hostname="bench.localhost"), host, port)

    async def code_for(self, address: str) -> tuple[str, float]:
        return await asyncio.wait_for(self.queue(address).get(), MAIL_TIMEOUT)


# -- the application's back-channel logout endpoint -----------------------------------------------


@dataclass
class Backchannel:
    received: int = 0
    refused: int = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            request_line, *headers = head.decode("latin-1").split("\r\n")
            length = 0
            for header in headers:
                name, _, value = header.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
            if request_line.startswith("POST /backchannel-logout ") and b"logout_token=" in body:
                self.received += 1
                status = "200 OK"
            else:
                self.refused += 1
                status = "400 Bad Request"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
            self.refused += 1
        finally:
            writer.close()

    async def serve(self, host: str, port: int) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._handle, host, port)


# -- the application's server side ------------------------------------------------------------------


@dataclass
class RelyingParty:
    issuer: str
    client_id: str
    client_secret: str
    base_url: str
    http: aiohttp.ClientSession | None = None
    keys: object = None

    def session(self) -> aiohttp.ClientSession:
        # The application's own server: one connection pool, from 127.0.0.1; made on the
        # driver's event loop.
        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT,
                                              connector=aiohttp.TCPConnector(limit=200, ssl=_TLS,
                                                                             keepalive_timeout=KEEPALIVE_SECONDS))
        return self.http

    async def call(self, step: str, method: str, url: str, **kwargs) -> Answer:
        try:
            async with self.session().request(method, url, allow_redirects=False, **kwargs) as response:
                return await _read(response)
        except asyncio.TimeoutError:
            raise JourneyError(step, "timeout") from None
        except aiohttp.ClientError as exc:
            raise JourneyError(step, type(exc).__name__) from None

    @property
    def redirect_uri(self) -> str:
        return self.base_url + "/callback"

    async def load_keys(self) -> None:
        from joserfc.jwk import KeySet

        metadata = (await self.call("setup", "GET", self.issuer + "/.well-known/openid-configuration")).json()
        assert metadata["issuer"] == self.issuer, metadata["issuer"]
        self.keys = KeySet.import_key_set((await self.call("setup", "GET", metadata["jwks_uri"])).json())

    def authorization_request(self) -> tuple[str, dict[str, str]]:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        query = urlencode({"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
                           "scope": SCOPES, "state": state, "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        return f"{self.issuer}/oidc/authorize?{query}", {"state": state, "nonce": nonce, "verifier": verifier}

    def check_id_token(self, id_token: str, nonce: str) -> dict:
        from joserfc import jwt

        token = jwt.decode(id_token, self.keys, algorithms=["RS256", "ES256"])
        claims = token.claims
        if claims.get("iss") != self.issuer or claims.get("aud") not in (self.client_id, [self.client_id]):
            raise JourneyError("token", "id_token", f"iss/aud {claims.get('iss')} {claims.get('aud')}")
        if claims.get("nonce") != nonce or claims.get("exp", 0) < time.time():
            raise JourneyError("token", "id_token", "nonce or exp")
        return claims

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


# -- the journey ----------------------------------------------------------------------------------


Record = Callable[[str, float, float], None]  # (step, seconds, finished at perf_counter)
Mark = Callable[[str], None]  # "full_login", "sso_handoff": a milestone reached


def _csrf(step: str, html: str) -> str:
    match = CSRF_RE.search(html)
    if match is None:
        raise JourneyError(step, "no_csrf")
    return match.group(1)


def _expect(step: str, response: Answer, status: int, path: str | None = None) -> str:
    if response.status != status:
        raise JourneyError(step, f"http_{response.status}")
    if path is None:
        return ""
    location = response.headers.get("location", "")
    if not urlsplit(location).path.startswith(path):
        raise JourneyError(step, "unexpected_location", location[:200])
    return location


async def journey(portal: str, account: Account, inbox: Inbox, rp: RelyingParty, record: Record,
                  mark: Mark, sso: bool = True) -> None:
    """The whole journey of `account`; raises JourneyError at the first unexpected answer.
    Without `sso`, the login alone: it ends on the dashboard the login lands on (GET
    /apps), without opening the application or logging out."""
    # A browser of its own: its cookies, its connections, from its workstation's address.
    browser = aiohttp.ClientSession(portal, timeout=HTTP_TIMEOUT, cookie_jar=aiohttp.CookieJar(unsafe=True),
                                    connector=aiohttp.TCPConnector(local_addr=(account.address, 0), ssl=_TLS,
                                                                   keepalive_timeout=KEEPALIVE_SECONDS))

    async def send(method: str, url: str, **kwargs) -> Answer:
        async with browser.request(method, url, allow_redirects=False, **kwargs) as response:
            return await _read(response)

    async def timed(step: str, method: str, url: str, **kwargs) -> Answer:
        started = time.perf_counter()
        try:
            try:
                response = await send(method, url, **kwargs)
            except aiohttp.ClientConnectorError:
                raise  # no connection at all: an error, not a stale kept-alive one
            except CONNECTION_LOST:
                # The server closed the kept-alive connection (gunicorn's keepalive, 5 s)
                # as the request went out on it: browsers send the request again on a new
                # connection in that case, whatever its method, and so do we, once.
                mark("keepalive_retry")
                response = await send(method, url, **kwargs)
        except asyncio.TimeoutError:
            raise JourneyError(step, "timeout") from None
        except aiohttp.ClientError as exc:
            raise JourneyError(step, type(exc).__name__) from None
        finished = time.perf_counter()
        record(step, finished - started, finished)
        return response

    try:
        page = await timed("login_page", "GET", "/login")
        _expect("login_page", page, 200)
        token = _csrf("login_page", page.text)
        inbox.forget(account.email)
        response = await timed("login_password", "POST", "/login",
                               data={"csrf_token": token, "username": account.email, "password": PASSWORD,
                                     "next": ""})
        _expect("login_password", response, 303, "/login/code")
        answered = time.perf_counter()
        try:
            code, arrived = await inbox.code_for(account.email)
        except asyncio.TimeoutError:
            raise JourneyError("mail", "timeout") from None
        record("mail", max(0.0, arrived - answered), arrived)
        page = await timed("code_page", "GET", "/login/code")
        _expect("code_page", page, 200)
        response = await timed("login_code", "POST", "/login/code",
                               data={"csrf_token": _csrf("code_page", page.text), "code": code})
        _expect("login_code", response, 303, "/apps")
        mark("full_login")
        page = await timed("apps", "GET", "/apps")
        _expect("apps", page, 200)
        if f"/apps/{rp.client_id}/open" not in page.text:
            raise JourneyError("apps", "no_tile")
        if not sso:
            return
        logout_token = _csrf("apps", page.text)

        # The tile: the portal sends the browser to the application's login initiation.
        response = await timed("app_open", "GET", f"/apps/{rp.client_id}/open")
        location = _expect("app_open", response, 303, "/initiate-login")
        if not location.startswith(rp.base_url) or parse_qs(urlsplit(location).query).get("iss") != [rp.issuer]:
            raise JourneyError("app_open", "unexpected_location", location[:200])
        # The application answers with its authorization request; the browser follows it.
        url, expected = rp.authorization_request()
        response = await timed("authorize", "GET", url)
        location = _expect("authorize", response, 302, urlsplit(rp.redirect_uri).path)
        callback = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
        if callback.get("state") != expected["state"] or "code" not in callback:
            raise JourneyError("authorize", "bad_callback", str(sorted(callback)))

        # The application's server: code exchange, ID token check, userinfo.
        started = time.perf_counter()
        response = await rp.call("token", "POST", rp.issuer + "/oauth/token",
                                 auth=aiohttp.BasicAuth(rp.client_id, rp.client_secret),
                                 data={"grant_type": "authorization_code", "code": callback["code"],
                                       "redirect_uri": rp.redirect_uri, "code_verifier": expected["verifier"]})
        finished = time.perf_counter()
        record("token", finished - started, finished)
        _expect("token", response, 200)
        tokens = response.json()
        claims = rp.check_id_token(tokens["id_token"], expected["nonce"])
        started = time.perf_counter()
        response = await rp.call("userinfo", "GET", rp.issuer + "/oauth/userinfo",
                                 headers={"Authorization": f"Bearer {tokens['access_token']}"})
        finished = time.perf_counter()
        record("userinfo", finished - started, finished)
        _expect("userinfo", response, 200)
        if response.json().get("sub") != claims["sub"]:
            raise JourneyError("userinfo", "sub_mismatch")
        mark("sso_handoff")

        # Back on the portal: logging out ends the portal session (and, by back-channel, the ROR's).
        response = await timed("logout", "POST", "/logout", data={"csrf_token": logout_token})
        _expect("logout", response, 303)
        if urljoin(portal + "/", response.headers.get("location", "")).rstrip("/") != portal.rstrip("/"):
            raise JourneyError("logout", "unexpected_location", response.headers.get("location", "")[:200])
    finally:
        await browser.close()
