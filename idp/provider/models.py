"""What the OpenID Provider remembers: the applications (clients), authorization codes,
tokens, signing keys, which applications a portal session opened (for back-channel
logout) and the users' favourite applications."""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base

SCOPES = ("openid", "profile", "email", "establishments", "roles", "national_id")
DEFAULT_SCOPES = "openid profile email establishments roles national_id"
SIGNING_ALGS = ("RS256", "ES256")


# What authlib's grants and endpoints ask of a client, a code and a token. Mixins, because
# two kinds of objects answer: the ORM models, and the plain records the token endpoint
# reads with SQLAlchemy Core (idp.provider.store) to stay lean on its hottest path.

class ClientRules:
    @property
    def client_metadata(self) -> dict:
        return {"post_logout_redirect_uris": list(self.post_logout_redirect_uris),
                "redirect_uris": list(self.redirect_uris)}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # OpenID Connect makes redirect_uri mandatory: no default

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The granted scope, or None (invalid_scope) when openid is missing or a portal
        scope is asked that this client may not have. Unknown scopes are ignored, as
        OpenID Connect asks."""
        requested = list(dict.fromkeys((scope or "").split()))
        allowed = self.allowed_scopes.split()
        if "openid" not in requested or any(s in SCOPES and s not in allowed for s in requested):
            return None
        return " ".join(s for s in requested if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string match only (no prefix, no normalisation), as OAuth 2.1 requires.
        return redirect_uri in self.redirect_uris

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.is_public:
            return method == "none"
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")

    def check_client_secret(self, secret: str) -> bool:
        if self.secret_hash is None or not secret:
            return False
        return hmac.compare_digest(self.secret_hash, hashlib.sha256(secret.encode()).hexdigest())


class CodeRules:
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> str:
        return self.acr

    def get_amr(self) -> list[str]:
        return self.amr


class TokenRules:
    def get_scope(self) -> str:
        return self.scope

    def check_client(self, client) -> bool:
        return self.client_pk == client.id


class Client(ClientRules, Base):
    """An application registered by a super admin: the ROR, or any regional service."""

    __tablename__ = "oidc_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # SHA-256 of the secret: the secret is 256 random bits, so a fast hash is enough
    # (nothing to brute-force) and the token endpoint stays fast. None for public clients.
    secret_hash: Mapped[str | None] = mapped_column(sa.String(64))
    is_public: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(500), default="")
    icon: Mapped[str] = mapped_column(sa.String(32), default="application")
    redirect_uris: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    backchannel_logout_uri: Mapped[str | None] = mapped_column(sa.String(500))
    initiate_login_uri: Mapped[str | None] = mapped_column(sa.String(500))
    required_role: Mapped[str | None] = mapped_column(sa.String(32))
    allowed_scopes: Mapped[str] = mapped_column(sa.String(255), default=DEFAULT_SCOPES)
    id_token_signed_response_alg: Mapped[str] = mapped_column(sa.String(8), default="RS256")
    token_endpoint_auth_method: Mapped[str] = mapped_column(sa.String(32), default="client_secret_basic")
    # The portal's own applications: consent is implicit.
    first_party: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]


class AuthorizationCode(CodeRules, Base):
    __tablename__ = "oidc_authorization_codes"

    code_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    client_pk: Mapped[int] = mapped_column(sa.ForeignKey("oidc_clients.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(sa.ForeignKey("user_sessions.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(sa.String(500))
    scope: Mapped[str] = mapped_column(sa.String(255))
    nonce: Mapped[str | None] = mapped_column(sa.String(255))
    code_challenge: Mapped[str | None] = mapped_column(sa.String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(sa.String(8))
    auth_time: Mapped[datetime]
    acr: Mapped[str] = mapped_column(sa.String(64))
    amr: Mapped[list[str]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class Token(TokenRules, Base):
    """An access token and, usually, the refresh token issued with it. A refresh creates
    a new row in the same family; reusing a rotated refresh token revokes the family."""

    __tablename__ = "oidc_tokens"
    __table_args__ = (
        sa.Index("ix_oidc_tokens_family", "family_id"),
        sa.Index("ix_oidc_tokens_session", "session_id"),
        sa.Index("ix_oidc_tokens_code", "code_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    access_token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    refresh_token_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    client_pk: Mapped[int] = mapped_column(sa.ForeignKey("oidc_clients.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(sa.ForeignKey("user_sessions.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(sa.String(255))
    family_id: Mapped[str] = mapped_column(sa.String(32))
    code_hash: Mapped[str | None] = mapped_column(sa.String(64))
    auth_time: Mapped[datetime]
    acr: Mapped[str] = mapped_column(sa.String(64))
    amr: Mapped[list[str]] = mapped_column(sa.JSON)
    issued_at: Mapped[datetime]
    access_expires_at: Mapped[datetime]
    refresh_expires_at: Mapped[datetime | None]
    rotated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class SigningKey(Base):
    __tablename__ = "oidc_signing_keys"

    kid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(sa.String(8))
    public_jwk: Mapped[dict] = mapped_column(sa.JSON)
    # The private JWK, encrypted (Fernet) with a key derived from ENRS_SECRET_KEY.
    private_encrypted: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    # When it starts signing: a rotated-in key is published first (keys.PUBLICATION_DELAY).
    # None for keys made before this column: their created_at.
    signs_from: Mapped[datetime | None]
    # When a newer key takes over signing; the key stays published until its tokens expired.
    retired_at: Mapped[datetime | None]


class SessionClient(Base):
    """A portal session handed a code to this application: on logout, tell it."""

    __tablename__ = "oidc_session_clients"

    session_id: Mapped[str] = mapped_column(sa.ForeignKey("user_sessions.id", ondelete="CASCADE"),
                                            primary_key=True)
    client_pk: Mapped[int] = mapped_column(sa.ForeignKey("oidc_clients.id", ondelete="CASCADE"),
                                           primary_key=True)
    created_at: Mapped[datetime]


class BackchannelLogout(Base):
    """A logout token to POST to an application; kept until delivered (or given up)."""

    __tablename__ = "oidc_backchannel_logouts"
    __table_args__ = (sa.Index("ix_oidc_backchannel_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_pk: Mapped[int] = mapped_column(sa.ForeignKey("oidc_clients.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(sa.String(32))
    sid: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(500))


class FavouriteApplication(Base):
    """"Mes applications favorites", in the order the user chose."""

    __tablename__ = "favourite_applications"

    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    client_pk: Mapped[int] = mapped_column(sa.ForeignKey("oidc_clients.id", ondelete="CASCADE"),
                                           primary_key=True)
    position: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]

