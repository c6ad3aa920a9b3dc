"""authlib's authorization server, wired to the portal's tables.

Grants: authorization code (+ PKCE, + OpenID Connect ID token) and rotating refresh
tokens. Endpoints: revocation (RFC 7009), introspection (RFC 7662), RP-initiated logout.
The views in `idp.provider.views` drive it; this module holds what the grants need to
read and write, and the few rules the portal adds:

- a code is claimed by a conditional UPDATE, so of many concurrent exchanges one wins;
  a code presented again revokes what was issued from it;
- a refresh token is rotated the same way; presenting a rotated one revokes its family;
- every token stays tied to the portal session it came from: when the session ends
  (logout, admin, expiry), its tokens stop working at once.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.grants.util import create_half_hash
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import Flask, current_app, g, has_app_context
from joserfc import jwt

from idp.models import STATUS_ACTIVE, User
from idp.provider import store
from idp.provider.claims import has_role, user_claims
from idp.provider.keys import key_ring
from idp.provider.models import AuthorizationCode, Client, SessionClient, Token
from idp.provider.store import ClientRecord, CodeRecord, SessionRecord, TokenRecord
from idp.sessions import TOUCH_INTERVAL, UserSession
from portal import audit
from portal.clock import now
from portal.db import db

CODE_LIFETIME = timedelta(seconds=60)
ACCESS_TOKEN_SECONDS = 300
ID_TOKEN_SECONDS = 300


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def issuer() -> str:
    return current_app.extensions["enrs.settings"].base_url.rstrip("/")


@dataclass
class Principal:
    """The resource owner as authlib carries it: the user and the portal session that
    vouches for them (for `sid`, `auth_time`, `acr`, `amr`)."""

    user: User
    session: UserSession

    def get_user_id(self) -> int:
        return self.user.id


def _connection():
    """The session's connection, in its transaction: Core statements on the token path.
    Kept for the request while its transaction lasts (asking the ORM session each time
    cost more than some statements)."""
    session = db.session
    transaction = session.get_transaction()
    cached = g.get("oidc_connection")
    if cached is not None and cached[0] is transaction and transaction.is_active:
        return cached[1]
    connection = session.connection()
    g.oidc_connection = (session.get_transaction(), connection)
    return connection


def query_client(client_id: str) -> ClientRecord | None:
    # authlib asks several times per request; clients change rarely but must take effect
    # at once (disabled, new secret), so the cache lives for one request only.
    if not client_id or not isinstance(client_id, str) or len(client_id) > 64:
        return None
    cache = g.setdefault("oidc_clients", {})
    if client_id not in cache:
        cache[client_id] = store.client_by_id(_connection(), client_id)
    return cache[client_id]


def _session_alive(record: UserSession | SessionRecord | None, current: datetime) -> bool:
    idle = timedelta(seconds=current_app.extensions["enrs.settings"].session_idle_timeout)
    return (record is not None and record.revoked_at is None and record.expires_at > current
            and record.last_seen_at + idle > current and record.user.status == STATUS_ACTIVE)


def save_token(token: dict, request) -> None:
    """Stores the digests of what the grant generated, with the session it belongs to."""
    current = now()
    origin: CodeRecord | TokenRecord = request.authorization_code or request.refresh_token
    principal: Principal = request.user
    family = origin.family_id if isinstance(origin, TokenRecord) else secrets.token_hex(16)
    refresh = token.get("refresh_token")
    store.insert_token(_connection(), dict(
        access_token_hash=digest(token["access_token"]),
        refresh_token_hash=digest(refresh) if refresh else None,
        client_pk=request.client.id, user_id=principal.user.id, session_id=principal.session.id,
        scope=token.get("scope") or origin.scope, family_id=family, code_hash=origin.code_hash,
        auth_time=origin.auth_time, acr=origin.acr, amr=origin.amr, issued_at=current,
        access_expires_at=current + timedelta(seconds=int(token.get("expires_in", ACCESS_TOKEN_SECONDS))),
        refresh_expires_at=principal.session.expires_at if refresh else None, rotated_at=None, revoked_at=None,
    ))


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def generate_authorization_code(self) -> str:
        return _random_token()

    def save_authorization_code(self, code: str, request) -> None:
        principal: Principal = request.user
        payload = request.payload
        current = now()
        db.session.add(AuthorizationCode(
            code_hash=digest(code), client_pk=request.client.id, user_id=principal.user.id,
            session_id=principal.session.id, redirect_uri=payload.redirect_uri, scope=request.scope,
            nonce=payload.data.get("nonce"), code_challenge=payload.data.get("code_challenge"),
            code_challenge_method=payload.data.get("code_challenge_method") if payload.data.get("code_challenge")
            else None,
            auth_time=principal.session.created_at, acr=principal.session.acr, amr=principal.session.amr,
            created_at=current, expires_at=current + CODE_LIFETIME,
        ))
        # Remembered for back-channel logout: this session opened this application.
        if db.session.get(SessionClient, (principal.session.id, request.client.id)) is None:
            db.session.add(SessionClient(session_id=principal.session.id, client_pk=request.client.id,
                                         created_at=current))

    def query_authorization_code(self, code: str, client: ClientRecord) -> CodeRecord | None:
        if not isinstance(code, str) or len(code) > 128:
            return None
        code_hash = digest(code)
        current = now()
        table = AuthorizationCode.__table__
        claimed = store.claim_code(_connection(), code_hash, client.id, current)
        if claimed is not None:
            return claimed
        used = db.session.scalar(sa.select(table.c.used_at).where(table.c.code_hash == code_hash,
                                                                  table.c.client_pk == client.id))
        if used is not None:
            # RFC 6749 §4.1.2: a code used twice was probably stolen; what it gave is revoked.
            revoked = db.session.execute(
                sa.update(Token).where(Token.code_hash == code_hash, Token.revoked_at.is_(None))
                .values(revoked_at=current)
            ).rowcount
            audit.record(db.session, "oidc.code_reused", outcome="failure", target_type="application",
                         target_id=client.client_id, details={"tokens_revoked": revoked})
            db.session.commit()
        return None

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        pass  # already marked used when claimed; kept for reuse detection until purged

    def authenticate_user(self, authorization_code: CodeRecord) -> Principal | None:
        record = store.session_with_user(_connection(), authorization_code.session_id)
        if not _session_alive(record, now()):
            return None
        return Principal(record.user, record)


class S256Challenge(CodeChallenge):
    """PKCE with S256 only: required of public clients, honoured for confidential ones."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri) -> None:
        data = grant.request.payload.data
        if grant.request.client.is_public and not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'.")
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class RotatingRefreshGrant(RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        if not isinstance(refresh_token, str) or len(refresh_token) > 128:
            return None
        refresh_hash = digest(refresh_token)
        client = self.request.client
        current = now()
        # The usual case in one round trip: this client's live token, rotated as it is read.
        # Anything refused afterwards rolls the rotation back with the request. Two refreshes
        # of one token at the same instant: the second waits for the first's row lock, then
        # finds it rotated and revokes the family, as for any replay (RFC 9700 §4.14.2: the
        # server cannot tell the legitimate client from an attacker; both must log in again).
        row = store.rotate_refresh_token(_connection(), refresh_hash, client.id, current)
        if row is not None:
            record = store.session_with_user(_connection(), row.session_id)
            if not _session_alive(record, current):
                return None  # the portal session ended: so did the application's right to refresh
            self._portal_session = record  # authenticate_user needs it next: no second load
            return row
        owner = store.refresh_token_owner(_connection(), refresh_hash)
        if owner is not None and owner.client_pk == client.id and owner.rotated_at is not None:
            # A rotated token presented again was probably stolen: its family is revoked.
            revoked = db.session.execute(
                sa.update(Token).where(Token.family_id == owner.family_id, Token.revoked_at.is_(None))
                .values(revoked_at=current)
            ).rowcount
            audit.record(db.session, "oidc.refresh_reused", outcome="failure", actor_id=owner.user_id,
                         target_type="application", target_id=client.client_id, details={"tokens_revoked": revoked})
            db.session.commit()
        return None  # unknown, another client's (not even burned), revoked or expired

    def authenticate_user(self, refresh_token: TokenRecord) -> Principal | None:
        record: SessionRecord = self._portal_session
        required = self.request.client.required_role
        if required is not None and not has_role(db.session, record.user.id, required):
            # The role was withdrawn since the login: the application's access ends with it,
            # as its next authorization request would be refused.
            raise InvalidGrantError("The user no longer holds the role this application requires.")
        current = now()
        # Using an application keeps the portal session alive, as browsing the portal does.
        if current - record.last_seen_at >= TOUCH_INTERVAL:
            store.touch_session(_connection(), record.id, current)
        return Principal(record.user, record)

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        pass  # marked rotated when claimed


class PortalOpenIDCode(OpenIDCode):
    """ID tokens: signed with the client's algorithm by the current key of the ring,
    times from the portal's clock, `sid` of the portal session."""

    def exists_nonce(self, nonce: str, request) -> bool:
        # A nonce protects the client against replayed ID tokens; the client checks it.
        # The portal only echoes it, as panva's oidc-provider does.
        return False

    def generate_user_info(self, user: Principal, scope: str) -> dict:
        return user_claims(db.session, user.user, scope)

    def encode_id_token(self, token: dict, request) -> str:
        return id_token_for(token, request.client, request.user,
                            request.authorization_code or request.refresh_token)

    def __call__(self, grant) -> None:
        super().__call__(grant)


def id_token_for(token: dict, client: ClientRecord, principal: Principal, origin: CodeRecord | TokenRecord) -> str:
    alg = client.id_token_signed_response_alg
    kid, key = key_ring(db.session).signing[alg]
    issued = int(now().timestamp())
    claims = {
        "iss": issuer(), "aud": client.client_id, "iat": issued, "exp": issued + ID_TOKEN_SECONDS,
        "auth_time": int(principal.session.created_at.timestamp()), "acr": principal.session.acr,
        "amr": principal.session.amr, "sid": principal.session.public_id, "azp": client.client_id,
    }
    if isinstance(origin, CodeRecord) and origin.nonce:
        claims["nonce"] = origin.nonce
    at_hash = create_half_hash(token["access_token"], alg)
    if at_hash is not None:
        claims["at_hash"] = at_hash.decode()
    claims.update(user_claims(db.session, principal.user, token.get("scope") or origin.scope))
    return jwt.encode({"alg": alg, "kid": kid, "typ": "JWT"}, claims, key, algorithms=[alg])


class RefreshIDToken:
    """Refreshing also returns a fresh ID token (without nonce), as OpenID Connect allows."""

    def __call__(self, grant) -> None:
        grant.register_hook("after_create_token_response", self.process_token)

    def process_token(self, grant, response) -> None:
        _, token, _ = response
        if "openid" in (token.get("scope") or "").split():
            token["id_token"] = id_token_for(token, grant.request.client, grant.request.user,
                                             grant.request.refresh_token)


def find_token(token_string: str, hint: str | None = None) -> Token | None:
    if not isinstance(token_string, str) or not token_string or len(token_string) > 128:
        return None
    value = digest(token_string)
    columns = [Token.access_token_hash, Token.refresh_token_hash]
    if hint == "refresh_token":
        columns.reverse()
    for column in columns:
        row = db.session.scalar(sa.select(Token).where(column == value))
        if row is not None:
            row.presented_as = "refresh_token" if column is Token.refresh_token_hash else "access_token"
            return row
    return None


def token_active(row: Token, current: datetime) -> bool:
    if row.revoked_at is not None:
        return False
    if getattr(row, "presented_as", "access_token") == "refresh_token":
        alive = row.rotated_at is None and row.refresh_expires_at is not None and row.refresh_expires_at > current
    else:
        alive = row.access_expires_at > current
    return alive and _session_alive(db.session.get(UserSession, row.session_id), current)


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return find_token(token_string, token_type_hint)

    def revoke_token(self, token: Token, request) -> None:
        current = now()
        if getattr(token, "presented_as", "") == "refresh_token":
            # RFC 7009 §2.1: revoking a refresh token also ends the access tokens of its grant.
            db.session.execute(sa.update(Token).where(Token.family_id == token.family_id,
                                                      Token.revoked_at.is_(None)).values(revoked_at=current))
        else:
            token.revoked_at = current
        audit.record(db.session, "oidc.token_revoked", actor_id=token.user_id, target_type="application",
                     target_id=request.client.client_id,
                     details={"type": getattr(token, "presented_as", "access_token")})
        db.session.commit()


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return find_token(token_string, token_type_hint)

    def check_permission(self, token: Token, client: Client, request) -> bool:
        # An application's back end learns about its own tokens only.
        return token.client_pk == client.id

    def create_introspection_payload(self, token: Token | None) -> dict:
        # Activity depends on the portal session too, which introspect_token checks.
        return self.introspect_token(token) if token is not None else {"active": False}

    def introspect_token(self, token: Token) -> dict:
        current = now()
        if not token_active(token, current):
            return {"active": False}
        user = db.session.get(User, token.user_id)
        record = db.session.get(UserSession, token.session_id)
        refresh = getattr(token, "presented_as", "") == "refresh_token"
        expires = token.refresh_expires_at if refresh else token.access_expires_at
        return {
            "active": True, "scope": token.scope, "client_id": self.server.query_client_id(token),
            "token_type": "refresh_token" if refresh else "Bearer", "sub": user.public_id,
            "exp": int(expires.timestamp()), "iat": int(token.issued_at.timestamp()), "iss": issuer(),
            "aud": self.server.query_client_id(token), "sid": record.public_id, "acr": token.acr,
            "amr": token.amr, "auth_time": int(token.auth_time.timestamp()),
        }


class EndSession(EndSessionEndpoint):
    """RP-initiated logout: the ID token hint is checked against the portal's own keys;
    the redirect goes only to a registered post-logout URI of the hinted client."""

    def get_server_jwks(self):
        return key_ring(db.session).key_set

    def get_algorithms(self) -> list[str]:
        return ["RS256", "ES256"]

    def resolve_client_from_id_token_claims(self, claims: dict) -> Client | None:
        aud = claims.get("aud")
        return query_client(aud[0] if isinstance(aud, list) and aud else aud)

    def is_post_logout_redirect_uri_legitimate(self, request, post_logout_redirect_uri, client, logout_hint):
        return False  # without an ID token hint, no redirect: the user stays on the portal

    def end_session(self, end_session_request) -> None:
        from idp.sessions import end_session

        record = g.get("user_session")
        if record is not None:
            end_session(db.session, record)
            db.session.commit()


class PortalAuthorizationServer(AuthorizationServer):
    def query_client_id(self, token: Token) -> str:
        client = db.session.get(Client, token.client_pk)
        return client.client_id if client else ""


class SessionBoundBearer(BearerTokenValidator):
    """A bearer access token is good while it is unexpired, unrevoked and its portal
    session is alive: logging out of the portal ends what the apps can read at once.
    Read with its session and user in one Core query (userinfo follows every login)."""

    def authenticate_token(self, token_string: str) -> TokenRecord | None:
        if not isinstance(token_string, str) or not token_string or len(token_string) > 128:
            return None
        return store.access_token(_connection(), digest(token_string))

    def validate_token(self, token: TokenRecord | None, scopes, request) -> None:
        from authlib.oauth2.rfc6750 import InsufficientScopeError, InvalidTokenError

        current = now()
        if (token is None or token.revoked_at is not None or token.access_expires_at <= current
                or not _session_alive(token.portal_session, current)):
            raise InvalidTokenError(realm=self.realm)
        if self.scope_insufficient(token.get_scope(), scopes):
            raise InsufficientScopeError()


def _expires_in(client, grant_type: str) -> int:
    return ACCESS_TOKEN_SECONDS


def _random_token(*_args, **_kwargs) -> str:
    # 256 bits from the OS in one call (authlib's default draws one character at a time).
    return secrets.token_urlsafe(32)


def init_provider(app: Flask) -> PortalAuthorizationServer:
    app.config.setdefault("OAUTH2_ACCESS_TOKEN_GENERATOR", _random_token)
    app.config.setdefault("OAUTH2_REFRESH_TOKEN_GENERATOR", _random_token)
    app.config.setdefault("OAUTH2_TOKEN_EXPIRES_IN", {"authorization_code": ACCESS_TOKEN_SECONDS,
                                                      "refresh_token": ACCESS_TOKEN_SECONDS})
    server = PortalAuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_grant(CodeGrant, [S256Challenge(required=True), PortalOpenIDCode(require_nonce=False)])
    server.register_grant(RotatingRefreshGrant, [RefreshIDToken()])
    server.register_endpoint(Revocation)
    server.register_endpoint(Introspection)
    server.register_endpoint(EndSession)
    protector = ResourceProtector()
    protector.register_token_validator(SessionBoundBearer())
    app.extensions["enrs.oidc_server"] = server
    app.extensions["enrs.oidc_protector"] = protector
    app.after_request(_allow_forms_to_lead_to_applications)
    return server


# Pages whose form, once submitted, may end in a redirect to an application: the login
# steps and the CGU acceptance (then /oidc/authorize answers with the app's callback),
# and the logout confirmation (then the app's post-logout address).
FORMS_LEADING_TO_APPLICATIONS = {"login.login", "login.code", "account.accept_cgu", "oidc.end_session"}


# Every login page names the applications' origins: read once per process and kept a
# short while (registering or changing an application here forgets them at once; other
# processes see the change within this delay).
APPLICATION_ORIGINS_SECONDS = 30
_APPLICATION_URIS = (sa.select(Client.__table__.c.redirect_uris, Client.__table__.c.post_logout_redirect_uris)
                     .where(Client.__table__.c.disabled_at.is_(None)))


def _application_origins() -> list[str]:
    from portal.security import origin_of

    cached = current_app.extensions.get("enrs.application_origins")
    if cached is not None and time.monotonic() - cached[1] < APPLICATION_ORIGINS_SECONDS:
        return cached[0]
    rows = db.session.connection().execute(_APPLICATION_URIS).all()
    origins = {origin_of(uri) for redirects, logouts in rows for uri in [*redirects, *logouts]}
    cached = (sorted(o for o in origins if o), time.monotonic())
    current_app.extensions["enrs.application_origins"] = cached
    return cached[0]


def forget_application_origins() -> None:
    if has_app_context():
        current_app.extensions.pop("enrs.application_origins", None)


def _allow_forms_to_lead_to_applications(response):
    from flask import request

    if (request.endpoint in FORMS_LEADING_TO_APPLICATIONS and response.mimetype == "text/html"
            and response.status_code < 500):
        try:
            g.form_action_origins = _application_origins()
        except sa.exc.SQLAlchemyError:
            return response  # the database is away: the strict policy stands
    return response


def server() -> PortalAuthorizationServer:
    return current_app.extensions["enrs.oidc_server"]


def protector() -> ResourceProtector:
    return current_app.extensions["enrs.oidc_protector"]


__all__ = ["init_provider", "server", "protector", "Principal", "InvalidGrantError"]
