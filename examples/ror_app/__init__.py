"""A small stand-in for the ROR (Répertoire Opérationnel des Ressources) that trusts the
portal through OpenID Connect: code flow with PKCE and nonce, third-party-initiated
login from the portal's tiles, RP-initiated and back-channel logout.

    python -m examples.ror_app --port 5001

It imports nothing of the portal: it is written as a region's application would be,
against docs/oidc-client.md.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from authlib.integrations.flask_client import OAuth
from flask import Flask

from examples.ror_app.config import ConfigError, Settings, load_settings
from examples.ror_app.store import ServerSessionInterface, SessionStore

__all__ = ["ConfigError", "Settings", "create_app"]

SCOPES = "openid profile email establishments roles national_id"
# A token naming an unknown key makes us fetch the JWKS again, at most this often: forged
# tokens with random kids must not turn the application into a load on the portal.
JWKS_REFRESH_SECONDS = 60


@dataclass
class RorApp:
    """What the views need, kept on app.extensions["ror_app"]."""

    settings: Settings
    oauth: OAuth
    store: SessionStore
    jwks_lock: threading.Lock = field(default_factory=threading.Lock)
    jwks_fetched_at: float = 0.0

    @property
    def portal(self):
        return self.oauth.portal

    def load_keys(self, force: bool = False) -> dict:
        with self.jwks_lock:
            if force and time.monotonic() - self.jwks_fetched_at < JWKS_REFRESH_SECONDS:
                force = False
            if force or "jwks" not in self.portal.server_metadata:
                self.jwks_fetched_at = time.monotonic()
            return self.portal.fetch_jwk_set(force=force)


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """`config` holds ROR_APP_* values and replaces the environment (tests); None reads
    os.environ and the JSON file `enrs demo` writes."""
    settings = load_settings(config)
    app = Flask(__name__, instance_path=str(settings.instance_dir))
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        # Behind the portal's redirects the host and scheme come from the configured base URL, never the request.
        PREFERRED_URL_SCHEME="https" if settings.secure_cookies else "http",
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    store = SessionStore(Path(settings.instance_dir) / "ror_app_sessions.db", settings.session_lifetime)
    app.session_interface = ServerSessionInterface(store)

    oauth = OAuth(app)
    oauth.register(
        "portal",
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
        client_kwargs={
            "scope": SCOPES,
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": "client_secret_basic",
            "default_timeout": 10,
        },
    )
    app.extensions["ror_app"] = RorApp(settings=settings, oauth=oauth, store=store)

    from examples.ror_app import views

    app.register_blueprint(views.bp)
    views.init_app(app)
    return app
