"""The portal as a relying party of Pro Santé Connect (PSC).

PSC publishes its metadata under a non-standard name (…/wallet-openid-configuration),
serves its login page from another host than its issuer, signs ID tokens with its JWKS
(or HS256 with the client secret), may answer userinfo as JSON or as a signed JWT, and
spells some claims two ways. Everything PSC says is checked here before the flows in
views.py trust it; every refusal is a PscError whose `reason` goes to the audit log and
whose message is shown in French.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlencode

import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey

from portal.clock import now
from portal.config import Settings

HTTP_TIMEOUT_SECONDS = 8
METADATA_CACHE_SECONDS = 3600
# Starting a login re-reads the discovery document (one small GET per login start, a
# user's click, not a hot path): PSC unreachable then shows as a French message instead
# of a browser error on PSC's own page.
LIVENESS_SECONDS = 0
CLOCK_SKEW_SECONDS = 60
ACCEPTED_ACR = ("eidas1", "eidas2", "eidas3")
ASYMMETRIC_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
SCOPE = "openid scope_all"

UNAVAILABLE = ("Pro Santé Connect est momentanément indisponible. Vous pouvez vous connecter avec votre "
               "identifiant et votre mot de passe.")


class PscError(Exception):
    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message or ("La connexion avec Pro Santé Connect n'a pas pu être vérifiée. "
                                   "Réessayez, ou connectez-vous avec votre identifiant et votre mot de passe.")


@dataclass
class PscIdentity:
    """What the portal keeps of a PSC login: only claims PSC vouched for."""

    subject: str
    subject_name_id: str
    national_id: str | None
    national_id_type: str | None  # "rpps", "adeli", or None for identities of another kind
    given_name: str | None
    family_name: str | None
    profession_code: str | None
    finess_sites: list[str] = field(default_factory=list)
    acr: str = "eidas1"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PscIdentity:
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__ if key in data})


def _present(value: object) -> str | None:
    """PSC sends empty strings for absent values."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def national_identifier(subject_name_id: str, other_ids: object) -> tuple[str | None, str | None]:
    """(identifier, type): the RPPS from otherIds (origine RPPS) or from SubjectNameID's
    prefix 8; ADELI from prefix 0; other test identities are kept as they are."""
    if isinstance(other_ids, list):
        for entry in other_ids:
            if not isinstance(entry, dict):
                continue  # malformed entries are ignored: SubjectNameID remains authoritative
            origin = (_present(entry.get("origine")) or "").upper()
            value = _present(entry.get("identifiant"))
            if origin == "RPPS" and value and value.isdigit() and len(value) == 11:
                return value, "rpps"
    if subject_name_id.startswith("8") and len(subject_name_id) == 12 and subject_name_id[1:].isdigit():
        return subject_name_id[1:], "rpps"
    if subject_name_id.startswith("0") and len(subject_name_id) == 10 and subject_name_id[1:].isdigit():
        return subject_name_id[1:], "adeli"
    return subject_name_id, None


def identity_from_claims(id_claims: dict, userinfo: dict) -> PscIdentity:
    subject = _present(id_claims.get("sub"))
    if _present(userinfo.get("sub")) != subject:
        raise PscError("userinfo_subject_mismatch")
    subject_name_id = _present(userinfo.get("SubjectNameID")) or _present(id_claims.get("SubjectNameID"))
    if not subject_name_id:
        raise PscError("missing_subject_name_id",
                       "Pro Santé Connect n'a pas transmis votre identifiant national : la connexion est impossible.")
    other_ids = userinfo.get("otherIds", userinfo.get("otherIDs"))
    national_id, id_type = national_identifier(subject_name_id, other_ids)
    ref = userinfo.get("SubjectRefPro")
    exercices = ref.get("exercices") if isinstance(ref, dict) else None
    exercices = [e for e in exercices if isinstance(e, dict)] if isinstance(exercices, list) else []
    profession = next((_present(e.get("codeProfession")) for e in exercices if _present(e.get("codeProfession"))),
                      None)
    first = exercices[0] if exercices else {}
    sites: list[str] = []
    for exercice in exercices:
        activities = exercice.get("activities")
        for activity in activities if isinstance(activities, list) else []:
            finess = _present(activity.get("numeroFinessSite")) if isinstance(activity, dict) else None
            if finess and finess not in sites:
                sites.append(finess)
    return PscIdentity(
        subject=subject, subject_name_id=subject_name_id, national_id=national_id, national_id_type=id_type,
        given_name=_present(userinfo.get("given_name")) or _present(first.get("prenomDexercice")),
        family_name=_present(userinfo.get("family_name")) or _present(first.get("nomDexercice")),
        profession_code=profession, finess_sites=sites, acr=id_claims.get("acr") or "eidas1",
    )


def _header(token: str) -> dict:
    try:
        segment = token.split(".")[0]
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, IndexError):
        raise PscError("malformed_token") from None


class PscClient:
    """One per app; metadata and keys are cached, HTTP calls time out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client_id = settings.psc_client_id or ""
        self._metadata: tuple[float, dict] | None = None
        self._keys: tuple[float, KeySet] | None = None
        self._lock = threading.Lock()
        self.http = requests.Session()
        if settings.psc_auth_method == "tls_client_auth":
            self.http.cert = (settings.psc_client_cert, settings.psc_client_key)

    # -- metadata and keys --------------------------------------------------------------

    def metadata(self, max_age: float = METADATA_CACHE_SECONDS) -> dict:
        """PSC's discovery document. The flows use the long-lived copy; the start of a
        login asks for a fresh one (max_age) so that an outage shows at once."""
        cached = self._metadata
        if cached and time.monotonic() - cached[0] < max_age:
            return cached[1]
        try:
            response = self.http.get(self.settings.psc_discovery_url, timeout=HTTP_TIMEOUT_SECONDS)
            response.raise_for_status()
            data = response.json()
        except (requests.RequestException, ValueError):
            raise PscError("discovery_unavailable", UNAVAILABLE) from None
        for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(data.get(name), str):
                raise PscError("discovery_invalid", UNAVAILABLE)
        self._metadata = (time.monotonic(), data)
        return data

    def _key_set(self, refresh: bool = False) -> KeySet:
        cached = self._keys
        if cached and not refresh and time.monotonic() - cached[0] < METADATA_CACHE_SECONDS:
            return cached[1]
        try:
            response = self.http.get(self.metadata()["jwks_uri"], timeout=HTTP_TIMEOUT_SECONDS)
            response.raise_for_status()
            keys = KeySet.import_key_set(response.json())
        except (requests.RequestException, ValueError, JoseError):
            raise PscError("jwks_unavailable", UNAVAILABLE) from None
        self._keys = (time.monotonic(), keys)
        return keys

    def _verification_key(self, token: str):
        header = _header(token)
        alg = header.get("alg")
        if alg in ("HS256", "HS384", "HS512"):
            if not self.settings.psc_client_secret:
                raise PscError("unexpected_alg")
            return OctKey.import_key(self.settings.psc_client_secret.encode()), [alg]
        if alg not in ASYMMETRIC_ALGS:
            raise PscError("unexpected_alg")  # "none" and anything unknown
        keys = self._key_set()
        kid = header.get("kid")
        if kid is not None and not any(key.kid == kid for key in keys.keys):
            keys = self._key_set(refresh=True)  # PSC rotated its keys
            if not any(key.kid == kid for key in keys.keys):
                raise PscError("unknown_kid")
        return keys, [alg]

    def _decode(self, token: str) -> dict:
        key, algorithms = self._verification_key(token)
        try:
            return jwt.decode(token, key, algorithms=algorithms).claims
        except (JoseError, ValueError):
            raise PscError("bad_signature") from None

    # -- the flow -----------------------------------------------------------------------

    def authorization_url(self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str) -> str:
        params = {"response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
                  "scope": SCOPE, "acr_values": "eidas1", "state": state, "nonce": nonce,
                  "code_challenge": code_challenge, "code_challenge_method": "S256"}
        endpoint = self.metadata(max_age=LIVENESS_SECONDS)["authorization_endpoint"]
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    def exchange(self, *, code: str, redirect_uri: str, code_verifier: str) -> dict:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": code_verifier}
        auth = None
        method = self.settings.psc_auth_method
        if method == "client_secret_basic":
            auth = (self.client_id, self.settings.psc_client_secret or "")
        else:
            form["client_id"] = self.client_id
            if method == "client_secret_post":
                form["client_secret"] = self.settings.psc_client_secret or ""
        try:
            response = self.http.post(self.metadata()["token_endpoint"], data=form, auth=auth,
                                      timeout=HTTP_TIMEOUT_SECONDS, headers={"Accept": "application/json"})
        except requests.RequestException:
            raise PscError("token_unavailable", UNAVAILABLE) from None
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code != 200 or not isinstance(data.get("id_token"), str) or \
                not isinstance(data.get("access_token"), str):
            raise PscError(f"token_refused:{data.get('error', response.status_code)}")
        return data

    def verify_id_token(self, id_token: str, *, nonce: str) -> dict:
        claims = self._decode(id_token)
        issuer = self.metadata()["issuer"]
        current = now().timestamp()
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if claims.get("iss") != issuer:
            raise PscError("wrong_issuer")
        if self.client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != self.client_id):
            raise PscError("wrong_audience")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] + CLOCK_SKEW_SECONDS < current:
            raise PscError("expired")
        for name in ("iat", "nbf"):
            if isinstance(claims.get(name), int | float) and claims[name] - CLOCK_SKEW_SECONDS > current:
                raise PscError("not_yet_valid")
        if not isinstance(claims.get("iat"), int | float):
            raise PscError("malformed_token")
        if claims.get("nonce") != nonce:
            raise PscError("nonce_mismatch")
        if claims.get("acr") not in ACCEPTED_ACR:
            raise PscError("acr_too_weak", "Pro Santé Connect n'a pas confirmé une authentification assez forte "
                                           "(niveau eIDAS substantiel requis).")
        if not _present(claims.get("sub")):
            raise PscError("missing_subject")
        return claims

    def userinfo(self, access_token: str) -> dict:
        endpoint = self.metadata().get("userinfo_endpoint")
        if not endpoint:
            raise PscError("userinfo_unavailable", UNAVAILABLE)
        try:
            response = self.http.get(endpoint, headers={"Authorization": f"Bearer {access_token}"},
                                     timeout=HTTP_TIMEOUT_SECONDS)
        except requests.RequestException:
            raise PscError("userinfo_unavailable", UNAVAILABLE) from None
        if response.status_code != 200:
            raise PscError(f"userinfo_refused:{response.status_code}")
        if response.headers.get("Content-Type", "").split(";")[0].strip() == "application/jwt":
            claims = self._decode(response.text.strip())
            if claims.get("iss", self.metadata()["issuer"]) != self.metadata()["issuer"]:
                raise PscError("wrong_issuer")
            return claims
        try:
            data = response.json()
        except ValueError:
            raise PscError("userinfo_malformed") from None
        if not isinstance(data, dict):
            raise PscError("userinfo_malformed")
        return data

    def end_session_url(self, *, id_token: str, post_logout_redirect_uri: str) -> str | None:
        try:
            metadata = self.metadata()
        except PscError:
            return None
        endpoint = metadata.get("end_session_endpoint") or (metadata["issuer"].rstrip("/")
                                                             + "/protocol/openid-connect/logout")
        params = urlencode({"id_token_hint": id_token, "post_logout_redirect_uri": post_logout_redirect_uri})
        return endpoint + ("&" if "?" in endpoint else "?") + params


def psc_client() -> PscClient | None:
    """The app's client, or None when Pro Santé Connect is not configured."""
    from flask import current_app

    settings: Settings = current_app.extensions["enrs.settings"]
    if not settings.psc_discovery_url:
        return None
    client = current_app.extensions.get("enrs.psc_client")
    if client is None:
        client = current_app.extensions["enrs.psc_client"] = PscClient(settings)
    return client
