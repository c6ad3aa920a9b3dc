"""Signing keys of the OpenID Provider, shared by every process through the database.

The private half is stored encrypted (Fernet) under a key derived from ENRS_SECRET_KEY,
so a database dump alone cannot sign tokens. Each process keeps the decrypted keys in
memory and looks for a newer key at most every KEY_CACHE_SECONDS: signing then costs no
database round trip. `enrs keys rotate` adds a key that signs from then on; the retired
key stays in the JWKS until every token it signed has expired.
"""
from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy.orm import Session

from idp.provider.models import SIGNING_ALGS, SigningKey
from portal.clock import now

KEY_CACHE_SECONDS = 30
# What /oauth/jwks says a cache may keep it for.
JWKS_MAX_AGE = 300
# A rotated-in key is published this long before it signs: every process has reloaded its
# keys by then, and every JWKS cached by an application or a proxy lists it; a token must
# never carry a kid its verifier cannot find. (`enrs keys rotate --now`, after a leak,
# signs at once.)
PUBLICATION_DELAY = timedelta(seconds=KEY_CACHE_SECONDS + JWKS_MAX_AGE + 30)
# The longest-lived token a key signs is an ID token (logout tokens live less); a retired
# key is published this long after it stopped signing, then dropped.
RETIRED_KEY_PUBLISHED = timedelta(days=1)


def _fernet(secret_key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"enrs oidc signing keys").derive(secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def _generate(alg: str) -> RSAKey | ECKey:
    if alg == "RS256":
        return RSAKey.generate_key(2048, private=True)
    return ECKey.generate_key("P-256", private=True)


def add_key(session: Session, alg: str, secret_key: str, delay: timedelta = timedelta(0)) -> SigningKey:
    """A new signing key for `alg`, published now and signing after `delay`, when the
    previous one of that algorithm retires."""
    key = _generate(alg)
    kid = f"{alg.lower()}-{now():%Y%m%d}-{secrets.token_hex(4)}"
    public = key.as_dict(private=False)
    public.update(kid=kid, use="sig", alg=alg)
    current = now()
    starts = current + delay
    # Every key of the algorithm still signing, or due to, stops when this one starts (a
    # rotation --now also cuts short one announced before).
    session.execute(sa.update(SigningKey)
                    .where(SigningKey.alg == alg,
                           sa.or_(SigningKey.retired_at.is_(None), SigningKey.retired_at > starts))
                    .values(retired_at=starts))
    record = SigningKey(
        kid=kid, alg=alg, public_jwk=public, created_at=current, signs_from=starts, retired_at=None,
        private_encrypted=_fernet(secret_key).encrypt(
            json.dumps(key.as_dict(private=True)).encode()).decode(),
    )
    session.add(record)
    session.flush()
    return record


def rotate(session: Session, secret_key: str, immediately: bool = False) -> list[SigningKey]:
    """New keys for every algorithm: published now, signing after PUBLICATION_DELAY (at
    once if `immediately`: a suspected leak outweighs the verifiers' caches)."""
    delay = timedelta(0) if immediately else PUBLICATION_DELAY
    added = [add_key(session, alg, secret_key, delay) for alg in SIGNING_ALGS]
    # Keys retired long enough ago signed nothing that is still valid.
    session.execute(sa.delete(SigningKey).where(SigningKey.retired_at < now() - RETIRED_KEY_PUBLISHED))
    return added


def ensure_keys(session: Session, secret_key: str) -> None:
    """One active key per algorithm; created on first use. Two processes starting at once
    may both create one: the later retires the earlier, which is harmless."""
    active = set(session.scalars(sa.select(SigningKey.alg).where(SigningKey.retired_at.is_(None))))
    for alg in SIGNING_ALGS:
        if alg not in active:
            add_key(session, alg, secret_key)


@dataclass
class KeyRing:
    signing: dict[str, tuple[str, RSAKey | ECKey]] = field(default_factory=dict)  # alg -> (kid, key)
    public: dict[str, dict] = field(default_factory=dict)  # kid -> public JWK (all published keys)
    loaded_at: float = 0.0
    key_set: KeySet | None = None

    def jwks(self) -> dict:
        return {"keys": list(self.public.values())}


_lock = threading.Lock()


def key_ring(session: Session) -> KeyRing:
    """The keys to sign and verify with, reloaded when older than KEY_CACHE_SECONDS."""
    ring: KeyRing | None = current_app.extensions.get("enrs.oidc_keys")
    if ring is not None and time.monotonic() - ring.loaded_at < KEY_CACHE_SECONDS:
        return ring
    with _lock:
        ring = current_app.extensions.get("enrs.oidc_keys")
        if ring is not None and time.monotonic() - ring.loaded_at < KEY_CACHE_SECONDS:
            return ring
        ring = _load(session, ring)
        current_app.extensions["enrs.oidc_keys"] = ring
        return ring


def forget_cached_keys() -> None:
    current_app.extensions.pop("enrs.oidc_keys", None)


def _signs_from(record: SigningKey) -> datetime:
    return record.signs_from or record.created_at


def signs_at(record: SigningKey, moment: datetime) -> bool:
    return _signs_from(record) <= moment and (record.retired_at is None or record.retired_at > moment)


def _load(session: Session, previous: KeyRing | None) -> KeyRing:
    secret_key = current_app.config["SECRET_KEY"]
    records = list(session.scalars(sa.select(SigningKey).order_by(SigningKey.created_at)))
    if not any(r.retired_at is None for r in records) or \
            {r.alg for r in records if r.retired_at is None} != set(SIGNING_ALGS):
        ensure_keys(session, secret_key)
        session.commit()
        records = list(session.scalars(sa.select(SigningKey).order_by(SigningKey.created_at)))
    ring = KeyRing(loaded_at=time.monotonic())
    fernet = _fernet(secret_key)
    known = previous.signing if previous else {}
    current = now()
    for record in records:
        ring.public[record.kid] = record.public_jwk  # published from the start, signing or not
    for alg in SIGNING_ALGS:
        # The key whose turn it is: started, not yet retired. A key only published waits.
        ours = [r for r in records if r.alg == alg]
        on_duty = [r for r in ours if signs_at(r, current)] or [r for r in ours if r.retired_at is None]
        record = max(on_duty, key=_signs_from)
        cached = known.get(alg)
        if cached and cached[0] == record.kid:
            ring.signing[alg] = cached  # decrypting and parsing again is wasted work
            continue
        data = json.loads(fernet.decrypt(record.private_encrypted.encode()))
        key_class = RSAKey if alg == "RS256" else ECKey
        ring.signing[alg] = (record.kid, key_class.import_key(data))
    ring.key_set = KeySet.import_key_set(ring.jwks())
    return ring
