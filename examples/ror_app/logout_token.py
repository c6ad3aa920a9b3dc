"""Checking a back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.6).

Kept apart from the views so that each rule is tested on its own: a token that passes
here ends sessions, so every refusal below is a way someone could log a user out (or
replay an old logout) without the portal."""
from __future__ import annotations

import time
from typing import Any, Callable

from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

EVENT = "http://schemas.openid.net/event/backchannel-logout"
# Asymmetric only: the token must be the portal's, not something signed with our own client secret.
ALLOWED_ALGORITHMS = ("RS256", "ES256", "PS256", "RS384", "ES384", "RS512", "ES512")
LEEWAY_SECONDS = 60
MAX_TOKEN_LENGTH = 8192


class LogoutTokenError(ValueError):
    """Why a logout token is refused (English, for the log and the 400 answer)."""


def verify_logout_token(value: str | None, *, load_keys: Callable[[bool], dict], issuer: str, client_id: str,
                        algorithms: list[str] | None = None, now: int | None = None) -> dict[str, Any]:
    """The token's claims when it is the portal's logout token for this application.

    `load_keys(force)` returns the portal's JWKS; it is called again with force=True when
    the token names a key we do not know (the portal rotated its keys)."""
    if not value or len(value) > MAX_TOKEN_LENGTH:
        raise LogoutTokenError("missing or oversized logout_token")
    allowed = [alg for alg in (algorithms or ALLOWED_ALGORITHMS) if alg in ALLOWED_ALGORITHMS]
    try:
        try:
            token = jwt.decode(value, KeySet.import_key_set(load_keys(False)), algorithms=allowed)
        except InvalidKeyIdError:
            token = jwt.decode(value, KeySet.import_key_set(load_keys(True)), algorithms=allowed)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise LogoutTokenError(f"signature not verified: {type(exc).__name__}") from None

    # The "typ" header tells a logout token from an ID token (§2.4); when present it must say so.
    typ = token.header.get("typ")
    if typ is not None and str(typ).lower() not in ("logout+jwt", "application/logout+jwt", "jwt"):
        raise LogoutTokenError(f"unexpected typ header {typ!r}")

    claims = token.claims
    current = int(time.time()) if now is None else now
    registry = jwt.JWTClaimsRegistry(
        now=current, leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        iat={"essential": True},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise LogoutTokenError(f"claims refused: {exc}") from None

    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(EVENT), dict):
        raise LogoutTokenError("events claim without the back-channel logout event")
    # A nonce would make it an ID token: one must never be accepted as the other (§2.4).
    if "nonce" in claims:
        raise LogoutTokenError("a logout token must not contain a nonce")
    sid, sub = claims.get("sid"), claims.get("sub")
    if not (isinstance(sid, str) and sid) and not (isinstance(sub, str) and sub):
        raise LogoutTokenError("neither sid nor sub")
    for name in ("sid", "sub"):
        if name in claims and not isinstance(claims[name], str):
            raise LogoutTokenError(f"{name} must be a string")
    return claims
