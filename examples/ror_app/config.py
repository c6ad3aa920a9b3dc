"""The demo ROR application's settings: ROR_APP_* environment variables over the JSON
file that `enrs demo` writes when it registers the application on the portal.

The application imports nothing of the portal: it is what a third party would write,
and it must keep working when the portal is a remote server."""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

DEFAULT_PORT = 5001
CONFIG_FILE_NAME = "ror_app_client.json"


class ConfigError(ValueError):
    """A missing or wrong setting; the message is one French line for the operator."""


@dataclass(frozen=True)
class Settings:
    issuer: str
    client_id: str
    client_secret: str
    base_url: str
    secret_key: str
    instance_dir: Path
    # Absolute lifetime of a local session; the portal's back-channel logout usually ends it first.
    session_lifetime: int = 8 * 3600

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    @property
    def origin(self) -> str:
        return origin_of(self.base_url)


def origin_of(url: str) -> str:
    """scheme://host[:port], lower-cased, default ports left out: what "same origin" compares."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return ""
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _check_url(name: str, value: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{name} doit être une adresse web absolue (https://…), sans paramètres : « {value} ».")
    # Plain HTTP only on loopback: the ID token and the session cookie must not cross a network in clear.
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"{name} doit utiliser https (http n'est admis que sur 127.0.0.1 / localhost).")
    return value


def _generated_secret_key(instance_dir: Path) -> str:
    """Development only: one key per instance folder, kept so cookies survive a restart."""
    path = instance_dir / "ror_app_secret_key"
    if path.exists():
        return path.read_text().strip()
    instance_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """`env` replaces os.environ entirely (the tests pass their own), as the portal's
    create_app does."""
    env = os.environ if env is None else env
    instance_dir = Path(env.get("ROR_APP_INSTANCE_DIR") or "instance").resolve()
    config_file = Path(env.get("ROR_APP_CONFIG_FILE") or instance_dir / CONFIG_FILE_NAME)
    from_file: dict = {}
    if config_file.exists():
        try:
            from_file = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{config_file} illisible : {exc}") from None
        if not isinstance(from_file, dict):
            raise ConfigError(f"{config_file} doit contenir un objet JSON.")

    def setting(name: str, key: str) -> str:
        return (env.get(name) or str(from_file.get(key) or "")).strip()

    issuer = setting("ROR_APP_ISSUER", "issuer")
    client_id = setting("ROR_APP_CLIENT_ID", "client_id")
    client_secret = setting("ROR_APP_CLIENT_SECRET", "client_secret")
    missing = [name for name, value in (("ROR_APP_ISSUER", issuer), ("ROR_APP_CLIENT_ID", client_id),
                                        ("ROR_APP_CLIENT_SECRET", client_secret)) if not value]
    if missing:
        raise ConfigError(
            f"configuration incomplète ({', '.join(missing)}) : lancez « enrs demo » (qui enregistre l'application "
            f"et écrit {config_file}) ou définissez les variables ROR_APP_*.")
    base_url = setting("ROR_APP_BASE_URL", "base_url") or f"http://127.0.0.1:{DEFAULT_PORT}"
    secret_key = (env.get("ROR_APP_SECRET_KEY") or "").strip()
    if secret_key and len(secret_key) < 32:
        raise ConfigError("ROR_APP_SECRET_KEY doit compter au moins 32 caractères.")
    lifetime = (env.get("ROR_APP_SESSION_LIFETIME") or "").strip()
    if lifetime and not lifetime.isdigit():
        raise ConfigError("ROR_APP_SESSION_LIFETIME doit être un nombre de secondes.")
    return Settings(
        issuer=_check_url("ROR_APP_ISSUER", issuer),
        client_id=client_id,
        client_secret=client_secret,
        base_url=_check_url("ROR_APP_BASE_URL", base_url),
        secret_key=secret_key or _generated_secret_key(instance_dir),
        instance_dir=instance_dir,
        session_lifetime=int(lifetime) if lifetime else Settings.session_lifetime,
    )
