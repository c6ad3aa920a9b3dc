"""Settings from ENRS_* environment variables, validated once at start-up.

A wrong value raises ConfigError with one line naming the variable; the CLI prints it
and exits 1, so an operator never sees a traceback for a typo.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


ENVIRONMENTS = ("production", "development")
CAPTCHA_BACKENDS = ("image", "pow")
APPROVAL_MODES = ("required", "none")
MAIL_SCHEMES = ("smtp", "smtps", "smtp+starttls", "file")
STORAGE_SCHEMES = ("file", "s3")
PSC_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "tls_client_auth")

# Variables only read by the test suite and the CI script; the portal ignores them.
_TEST_PREFIX = "ENRS_TEST_"

DEFAULT_GENERIC_MAILBOXES = (
    "contact", "accueil", "secretariat", "secretariat-medical", "direction", "info",
    "infos", "admin", "administration", "standard", "rh", "service", "no-reply",
    "noreply", "bureau", "cabinet", "pharmacie", "courrier", "support", "compta",
)


@dataclass(frozen=True)
class Settings:
    env: str
    instance_dir: Path
    secret_key: str
    secret_key_generated: bool
    base_url: str
    database_url: str
    mail_url: str
    mail_from: str
    redis_url: str | None
    storage_url: str
    s3_endpoint_url: str | None
    captcha: str
    account_approval: str
    psc_discovery_url: str | None
    psc_client_id: str | None
    psc_client_secret: str | None
    psc_auth_method: str
    psc_client_cert: str | None
    psc_client_key: str | None
    portal_name: str
    clamd_socket: str | None
    generic_mailboxes: tuple[str, ...]
    email_code_ttl: int
    session_idle_timeout: int
    session_lifetime: int
    log_format: str
    metrics_allow: tuple
    metrics_token: str | None
    trusted_proxies: int
    audit_retention_days: int
    password_hash_concurrency: int
    argon2_time_cost: int
    argon2_memory_kib: int
    argon2_parallelism: int
    argon2_threads: int

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")


# name -> help text; the README's configuration table is written from the same facts.
KNOWN_VARIABLES: dict[str, str] = {
    "ENRS_ENV": "production (default) or development",
    "ENRS_INSTANCE_DIR": "folder for the SQLite database, dev secret key, mail and files (default ./instance)",
    "ENRS_SECRET_KEY": "secret for signatures and key encryption (required in production)",
    "ENRS_BASE_URL": "public URL of the portal, the OIDC issuer (https in production)",
    "ENRS_DATABASE_URL": "SQLAlchemy URL (default SQLite in the instance folder)",
    "ENRS_MAIL_URL": "smtp://, smtps://, smtp+starttls:// (user:password@ optional) or file://DIR",
    "ENRS_MAIL_FROM": "sender address of the portal's emails",
    "ENRS_REDIS_URL": "redis:// URL for rate limits shared between processes (optional)",
    "ENRS_STORAGE_URL": "file://DIR (default) or s3://bucket/prefix for attestations",
    "ENRS_S3_ENDPOINT_URL": "endpoint of an S3-compatible store for s3:// storage (optional; AWS when unset)",
    "ENRS_CAPTCHA": "image (default) or pow",
    "ENRS_ACCOUNT_APPROVAL": "required (default) or none",
    "ENRS_PSC_DISCOVERY_URL": "Pro Santé Connect discovery URL (optional)",
    "ENRS_PSC_CLIENT_ID": "Pro Santé Connect client id",
    "ENRS_PSC_CLIENT_SECRET": "Pro Santé Connect client secret",
    "ENRS_PSC_AUTH_METHOD": "client_secret_basic (default), client_secret_post or tls_client_auth",
    "ENRS_PSC_CLIENT_CERT": "PEM certificate file for tls_client_auth with Pro Santé Connect",
    "ENRS_PSC_CLIENT_KEY": "PEM private key file of that certificate",
    "ENRS_PORTAL_NAME": "the region's brand, shown in pages and emails",
    "ENRS_CLAMD_SOCKET": "path of clamd's socket to scan uploads (optional)",
    "ENRS_GENERIC_MAILBOXES": "comma-separated local parts refused for the authentication email",
    "ENRS_EMAIL_CODE_TTL": "validity of emailed login codes in seconds (default 1200)",
    "ENRS_SESSION_IDLE_TIMEOUT": "idle timeout of a portal session in seconds (default 1800)",
    "ENRS_SESSION_LIFETIME": "absolute lifetime of a portal session in seconds (default 43200)",
    "ENRS_LOG_FORMAT": "json (default in production: one JSON line per request) or text",
    "ENRS_METRICS_ALLOW": "addresses/networks allowed to read /metrics (default 127.0.0.1/32,::1/128)",
    "ENRS_METRICS_TOKEN": "bearer token that also opens /metrics (optional)",
    "ENRS_TRUSTED_PROXIES": "number of reverse proxies whose X-Forwarded-* headers are trusted (default 0)",
    "ENRS_AUDIT_RETENTION_DAYS": "audit entries older than this are purged by the worker (default 365)",
    "ENRS_PASSWORD_HASH_CONCURRENCY": "Argon2id hashes one process runs at a time (default 1; 32 MiB each)",
    "ENRS_ARGON2_MEMORY_KIB": "Argon2id memory per hash in KiB (default 32768; at least 19456)",
    "ENRS_ARGON2_TIME_COST": "Argon2id passes over that memory (default 8; at least 2)",
    "ENRS_ARGON2_PARALLELISM": "Argon2id lanes (default 4)",
    "ENRS_ARGON2_THREADS": "threads computing one hash's lanes (default 1: the request's own; more shortens "
                           "a login on an idle machine but costs more CPU)",
}


# Argon2id's default parameters (why these: idp/passwords.py).
ARGON2_MEMORY_KIB = 32 * 1024
ARGON2_TIME_COST = 8
ARGON2_PARALLELISM = 4
ARGON2_THREADS = 1  # why: idp/argon2id.py


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is invalid: expected one of {', '.join(choices)}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is invalid: expected a whole number") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range ({minimum}..{maximum})")
    return value


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ConfigError(f"{name}={value!r} is invalid: the scheme must be one of {', '.join(schemes)}")
    if parts.scheme != "file" and not parts.netloc:
        raise ConfigError(f"{name}={value!r} is invalid: a host is required")
    if parts.scheme == "file" and not parts.path:
        raise ConfigError(f"{name}={value!r} is invalid: a folder path is required")
    return value


def _dev_secret_key(instance_dir: Path) -> str:
    path = instance_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # Written owner-only; the dev key is as sensitive as a production one on that laptop.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    unknown = sorted(
        name for name in env
        if name.startswith("ENRS_") and not name.startswith(_TEST_PREFIX) and name not in KNOWN_VARIABLES
    )
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a known setting (see the README's configuration table)")

    mode = _choice(env, "ENRS_ENV", ENVIRONMENTS, "production")
    development = mode == "development"
    instance_dir = Path(env.get("ENRS_INSTANCE_DIR") or Path.cwd() / "instance").resolve()

    base_url = (env.get("ENRS_BASE_URL") or ("http://127.0.0.1:5000" if development else "")).rstrip("/")
    if not base_url:
        raise ConfigError("ENRS_BASE_URL is required in production (the portal's public https URL)")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"ENRS_BASE_URL={base_url!r} is invalid: expected http(s)://host[:port][/path]")
    if parts.scheme == "http" and not (development and _is_loopback_url(base_url)):
        raise ConfigError("ENRS_BASE_URL must use https (plain http is only allowed on loopback in development)")
    if parts.query or parts.fragment:
        raise ConfigError("ENRS_BASE_URL must not have a query or fragment")

    raw_key = env.get("ENRS_SECRET_KEY", "").strip()
    generated = False
    if raw_key:
        if len(raw_key) < 32:
            raise ConfigError("ENRS_SECRET_KEY is too short: use at least 32 random characters")
        secret_key = raw_key
    elif development:
        secret_key = _dev_secret_key(instance_dir)
        generated = True
    else:
        raise ConfigError("ENRS_SECRET_KEY is required in production (32+ random characters)")

    database_url = env.get("ENRS_DATABASE_URL") or f"sqlite:///{instance_dir / 'enrs.db'}"
    if not (database_url.startswith("sqlite") or database_url.startswith("postgresql")):
        raise ConfigError("ENRS_DATABASE_URL is invalid: only sqlite:// and postgresql+psycopg:// are supported")

    mail_url = env.get("ENRS_MAIL_URL") or (f"file://{instance_dir / 'mail'}" if development else "")
    if not mail_url:
        raise ConfigError("ENRS_MAIL_URL is required in production (smtp://, smtps:// or smtp+starttls://)")
    _check_url("ENRS_MAIL_URL", mail_url, MAIL_SCHEMES)
    if mail_url.startswith("file:") and not development:
        raise ConfigError("ENRS_MAIL_URL=file://… is only allowed in development: configure an SMTP relay")

    mail_from = env.get("ENRS_MAIL_FROM", "ne-pas-repondre@enrs.localhost").strip()
    if "@" not in mail_from or any(c in mail_from for c in "\r\n"):
        raise ConfigError(f"ENRS_MAIL_FROM={mail_from!r} is not an email address")

    redis_url = env.get("ENRS_REDIS_URL") or None
    if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"ENRS_REDIS_URL={redis_url!r} is invalid: expected redis://host:port/db")

    storage_url = env.get("ENRS_STORAGE_URL") or f"file://{instance_dir / 'attestations'}"
    _check_url("ENRS_STORAGE_URL", storage_url, STORAGE_SCHEMES)
    s3_endpoint_url = env.get("ENRS_S3_ENDPOINT_URL") or None
    if s3_endpoint_url:
        _check_url("ENRS_S3_ENDPOINT_URL", s3_endpoint_url, ("https", "http"))

    psc = {k: (env.get(k) or None) for k in ("ENRS_PSC_DISCOVERY_URL", "ENRS_PSC_CLIENT_ID", "ENRS_PSC_CLIENT_SECRET")}
    if psc["ENRS_PSC_DISCOVERY_URL"] and not psc["ENRS_PSC_CLIENT_ID"]:
        raise ConfigError("ENRS_PSC_CLIENT_ID is required when ENRS_PSC_DISCOVERY_URL is set")
    psc_auth_method = _choice(env, "ENRS_PSC_AUTH_METHOD", PSC_AUTH_METHODS, "client_secret_basic")
    psc_cert, psc_key = env.get("ENRS_PSC_CLIENT_CERT") or None, env.get("ENRS_PSC_CLIENT_KEY") or None
    if psc["ENRS_PSC_DISCOVERY_URL"]:
        _check_url("ENRS_PSC_DISCOVERY_URL", psc["ENRS_PSC_DISCOVERY_URL"], ("https", "http"))
        if psc_auth_method == "tls_client_auth":
            for name, path in (("ENRS_PSC_CLIENT_CERT", psc_cert), ("ENRS_PSC_CLIENT_KEY", psc_key)):
                if not path or not Path(path).is_file():
                    raise ConfigError(f"{name} must name a readable PEM file for tls_client_auth")
        elif not psc["ENRS_PSC_CLIENT_SECRET"]:
            raise ConfigError(f"ENRS_PSC_CLIENT_SECRET is required with ENRS_PSC_AUTH_METHOD={psc_auth_method}")
        if not development and not psc["ENRS_PSC_DISCOVERY_URL"].startswith("https://"):
            raise ConfigError("ENRS_PSC_DISCOVERY_URL must use https in production")

    networks = []
    for item in (env.get("ENRS_METRICS_ALLOW") or "127.0.0.1/32,::1/128").split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"ENRS_METRICS_ALLOW: {item.strip()!r} is not an address or network") from None
    metrics_token = env.get("ENRS_METRICS_TOKEN") or None
    if metrics_token and len(metrics_token) < 24:
        raise ConfigError("ENRS_METRICS_TOKEN is too short: use at least 24 random characters")

    generic = env.get("ENRS_GENERIC_MAILBOXES")
    generic_mailboxes = (
        tuple(sorted({p.strip().lower() for p in generic.split(",") if p.strip()}))
        if generic else DEFAULT_GENERIC_MAILBOXES
    )

    return Settings(
        env=mode,
        instance_dir=instance_dir,
        secret_key=secret_key,
        secret_key_generated=generated,
        base_url=base_url,
        database_url=database_url,
        mail_url=mail_url,
        mail_from=mail_from,
        redis_url=redis_url,
        storage_url=storage_url,
        s3_endpoint_url=s3_endpoint_url,
        captcha=_choice(env, "ENRS_CAPTCHA", CAPTCHA_BACKENDS, "image"),
        account_approval=_choice(env, "ENRS_ACCOUNT_APPROVAL", APPROVAL_MODES, "required"),
        psc_discovery_url=psc["ENRS_PSC_DISCOVERY_URL"],
        psc_client_id=psc["ENRS_PSC_CLIENT_ID"],
        psc_client_secret=psc["ENRS_PSC_CLIENT_SECRET"],
        psc_auth_method=psc_auth_method,
        psc_client_cert=psc_cert,
        psc_client_key=psc_key,
        portal_name=(env.get("ENRS_PORTAL_NAME") or "Portail ENRS").strip(),
        clamd_socket=env.get("ENRS_CLAMD_SOCKET") or None,
        generic_mailboxes=generic_mailboxes,
        email_code_ttl=_int(env, "ENRS_EMAIL_CODE_TTL", 1200, 60, 86400),
        session_idle_timeout=_int(env, "ENRS_SESSION_IDLE_TIMEOUT", 1800, 60, 86400),
        session_lifetime=_int(env, "ENRS_SESSION_LIFETIME", 43200, 300, 30 * 86400),
        log_format=_choice(env, "ENRS_LOG_FORMAT", ("json", "text"), "text" if development else "json"),
        metrics_allow=tuple(networks),
        metrics_token=metrics_token,
        trusted_proxies=_int(env, "ENRS_TRUSTED_PROXIES", 0, 0, 5),
        audit_retention_days=_int(env, "ENRS_AUDIT_RETENTION_DAYS", 365, 30, 3650),
        password_hash_concurrency=_int(env, "ENRS_PASSWORD_HASH_CONCURRENCY", 1, 1, 64),
        # The floors are OWASP's minimum for Argon2id (19 MiB, 2 passes): below them a stolen
        # database would be cheap to attack, whatever the operator meant to save.
        argon2_time_cost=_int(env, "ENRS_ARGON2_TIME_COST", ARGON2_TIME_COST, 2, 20),
        argon2_memory_kib=_int(env, "ENRS_ARGON2_MEMORY_KIB", ARGON2_MEMORY_KIB, 19456, 1024 * 1024),
        argon2_parallelism=_int(env, "ENRS_ARGON2_PARALLELISM", ARGON2_PARALLELISM, 1, 16),
        argon2_threads=_int(env, "ENRS_ARGON2_THREADS", ARGON2_THREADS, 1, 16),
    )


def current_settings() -> Settings:
    """The settings of the app serving the current request or command."""
    from flask import current_app

    return current_app.extensions["enrs.settings"]
