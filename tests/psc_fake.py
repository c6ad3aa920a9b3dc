"""An in-process stand-in for Pro Santé Connect, served over real HTTP on loopback, for
the fast tests of the PSC flows. It behaves like PSC (wallet-openid-configuration, the
authorization endpoint on another host name, scope_all claims, eidas acr) and lets a test
bend any answer: another audience, an expired token, alg none, an unknown key, a slow or
failing userinfo. The interop suite runs the same flows against panva's oidc-provider."""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from flask import Flask, jsonify, request
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import make_server

REALM = "/auth/realms/esante-wallet"

DOCTOR = {
    "sub": "f:550dc1c8-d97b-4b1e-ac8c-8eb4471cf9dd:810108825463",
    "SubjectNameID": "810108825463",
    "preferred_username": "810108825463",
    "given_name": "Nathalie",
    "family_name": "DUPONT",
    "email_verified": "",
    "otherIds": [{"identifiant": "10108825463", "origine": "RPPS", "qualite": 1}],
    "SubjectRefPro": {"codeCivilite": "MME", "exercices": [{
        "codeProfession": "10", "codeCategorieProfessionnelle": "C", "codeSavoirFaire": "", "nomDexercice": "DUPONT",
        "prenomDexercice": "Nathalie",
        "activities": [
            {"numeroFinessSite": "280503848", "numeroFinessetablissementJuridique": "", "raisonSocialeSite": "CH DREUX",
             "codePostal": "28100"},
            {"numeroFinessSite": "", "numeroFinessetablissementJuridique": "", "raisonSocialeSite": "Cabinet",
             "codePostal": "28000"},
            {"numeroFinessSite": "750000012", "raisonSocialeSite": "Clinique inconnue", "codePostal": "75001"},
        ]}]},
}


@dataclass
class FakePsc:
    clock: Callable
    client_id: str = "portail-enrs"
    client_secret: str = "psc-secret-" + "p" * 24
    identities: dict[str, dict] = field(default_factory=lambda: {"doctor": DOCTOR})
    # What the next token/userinfo answers look like; tests change them.
    acr: str | None = "eidas1"
    id_token_overrides: dict = field(default_factory=dict)
    header_overrides: dict = field(default_factory=dict)
    userinfo_overrides: dict = field(default_factory=dict)
    userinfo_as_jwt: bool = False
    userinfo_status: int = 200
    userinfo_delay: float = 0.0
    fail_discovery: bool = False
    token_requests: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = RSAKey.generate_key(2048, private=True, parameters={"kid": "psc-key-1", "use": "sig"})
        self.other_key = RSAKey.generate_key(2048, private=True, parameters={"kid": "psc-key-x"})
        self.codes: dict[str, dict] = {}
        self.access_tokens: dict[str, dict] = {}
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self.server.server_port
        self.issuer = f"http://127.0.0.1:{self.port}{REALM}"
        # PSC's login page lives on another host than its issuer.
        self.authorize_url = f"http://localhost:{self.port}/auth"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/wallet-openid-configuration"

    def env(self) -> dict[str, str]:
        return {"ENRS_PSC_DISCOVERY_URL": self.discovery_url, "ENRS_PSC_CLIENT_ID": self.client_id,
                "ENRS_PSC_CLIENT_SECRET": self.client_secret}

    def close(self) -> None:
        self.server.shutdown()

    # -- what a test does in PSC's place --------------------------------------------------

    def approve(self, authorize_params: dict, identity: str = "doctor") -> str:
        """The user authenticates with their e-CPS: a code for the portal's callback."""
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"params": authorize_params, "identity": identity}
        return code

    def sign(self, claims: dict, key=None, header: dict | None = None) -> str:
        key = key or self.key
        header = {"alg": "RS256", "kid": key.kid, **(header or {})}
        if header.get("alg") == "none":
            import base64
            import json

            def part(data: dict) -> str:
                return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
            return f"{part(header)}.{part(claims)}."
        return jwt.encode(header, claims, key, algorithms=[header["alg"]])

    # -- the HTTP side -----------------------------------------------------------------

    def _build(self) -> Flask:
        app = Flask("fake_psc")
        fake = self

        @app.get(f"{REALM}/.well-known/wallet-openid-configuration")
        def discovery():
            if fake.fail_discovery:
                return "unavailable", 503
            return jsonify({
                "issuer": fake.issuer, "authorization_endpoint": fake.authorize_url,
                "token_endpoint": f"{fake.issuer}/protocol/openid-connect/token",
                "userinfo_endpoint": f"{fake.issuer}/protocol/openid-connect/userinfo",
                "jwks_uri": f"{fake.issuer}/protocol/openid-connect/certs",
                "end_session_endpoint": f"{fake.issuer}/protocol/openid-connect/logout",
                "scopes_supported": ["openid", "scope_all"], "acr_values_supported": ["eidas1", "eidas2"],
            })

        @app.get(f"{REALM}/protocol/openid-connect/certs")
        def certs():
            return jsonify(KeySet([fake.key]).as_dict(private=False))

        @app.post(f"{REALM}/protocol/openid-connect/token")
        def token():
            form = request.form.to_dict()
            fake.token_requests.append({**form, "authorization": request.headers.get("Authorization")})
            auth = request.authorization
            client_id, secret = (auth.username, auth.password) if auth else (form.get("client_id"),
                                                                           form.get("client_secret"))
            if client_id != fake.client_id or secret != fake.client_secret:
                return jsonify(error="invalid_client"), 401
            entry = fake.codes.pop(form.get("code", ""), None)
            if entry is None:
                return jsonify(error="invalid_grant"), 400
            identity = fake.identities[entry["identity"]]
            issued = int(fake.clock().timestamp())
            claims = {"iss": fake.issuer, "aud": fake.client_id, "sub": identity["sub"], "iat": issued,
                      "exp": issued + 120, "nonce": entry["params"].get("nonce"), "azp": fake.client_id,
                      "SubjectNameID": identity.get("SubjectNameID"), "preferred_username": identity.get("sub")}
            if fake.acr is not None:
                claims["acr"] = fake.acr
            claims.update(fake.id_token_overrides)
            claims = {k: v for k, v in claims.items() if v is not None}
            access = secrets.token_urlsafe(24)
            fake.access_tokens[access] = identity
            header = dict(fake.header_overrides)
            key = fake.other_key if header.pop("use_other_key", False) else None
            return jsonify(access_token=access, token_type="Bearer", expires_in=120,
                           id_token=fake.sign(claims, key=key, header=header))

        @app.get(f"{REALM}/protocol/openid-connect/userinfo")
        def userinfo():
            if fake.userinfo_delay:
                time.sleep(fake.userinfo_delay)
            if fake.userinfo_status != 200:
                return jsonify(error="server_error"), fake.userinfo_status
            token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
            identity = fake.access_tokens.get(token)
            if identity is None:
                return jsonify(error="invalid_token"), 401
            claims = {**identity, **fake.userinfo_overrides}
            if fake.userinfo_as_jwt:
                return fake.sign({"iss": fake.issuer, "aud": fake.client_id, **claims}), 200, {
                    "Content-Type": "application/jwt"}
            return jsonify(claims)

        return app
