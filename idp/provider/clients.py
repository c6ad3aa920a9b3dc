"""Registering the applications that trust the portal (super admin console and CLI)."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from idp.provider.models import DEFAULT_SCOPES, SCOPES, SIGNING_ALGS, Client
from idp.provider.server import forget_application_origins
from portal.clock import now

AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# The tiles' pictures, vendored under static/img/apps/<icon>.svg.
ICONS = ("application", "ror", "agenda", "annuaire", "messagerie", "teleconsultation")


class ClientError(ValueError):
    """An invalid registration; `field` names the form field, the message is French."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(client: Client, secret: str | None) -> bool:
    return client.check_client_secret(secret or "")


def check_uri(value: str, field_name: str, *, allow_http_loopback: bool = True) -> str:
    """Redirect-type URIs: absolute, https (http only on loopback, for development and
    tests), no fragment, no credentials."""
    value = (value or "").strip()
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or any(c.isspace() for c in value):
        raise ClientError(field_name, f"« {value} » n'est pas une adresse web absolue (https://…).")
    if parts.fragment or "#" in value:
        raise ClientError(field_name, f"« {value} » ne doit pas contenir de fragment (#…).")
    if parts.username or parts.password:
        raise ClientError(field_name, f"« {value} » ne doit pas contenir d'identifiants.")
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme == "http" and not (allow_http_loopback and loopback):
        raise ClientError(field_name, f"« {value} » doit utiliser https (http n'est admis qu'en local).")
    return value


@dataclass
class ClientSpec:
    name: str
    redirect_uris: list[str]
    description: str = ""
    icon: str = "application"
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    backchannel_logout_uri: str | None = None
    initiate_login_uri: str | None = None
    required_role: str | None = None
    is_public: bool = False
    allowed_scopes: str = DEFAULT_SCOPES
    id_token_signed_response_alg: str = "RS256"
    token_endpoint_auth_method: str = "client_secret_basic"
    client_id: str | None = None


def validate(spec: ClientSpec, known_roles: tuple[str, ...] | None = None) -> ClientSpec:
    name = (spec.name or "").strip()
    if not name or len(name) > 100:
        raise ClientError("name", "Indiquez le nom de l'application (100 caractères au plus).")
    if len(spec.description or "") > 500:
        raise ClientError("description", "La description ne doit pas dépasser 500 caractères.")
    if spec.icon not in ICONS:
        raise ClientError("icon", "Choisissez une icône dans la liste.")
    if not spec.redirect_uris:
        raise ClientError("redirect_uris", "Indiquez au moins une adresse de retour (redirect URI).")
    redirect_uris = [check_uri(uri, "redirect_uris") for uri in spec.redirect_uris]
    logout_uris = [check_uri(uri, "post_logout_redirect_uris") for uri in spec.post_logout_redirect_uris]
    backchannel = check_uri(spec.backchannel_logout_uri, "backchannel_logout_uri") \
        if spec.backchannel_logout_uri else None
    initiate = check_uri(spec.initiate_login_uri, "initiate_login_uri") if spec.initiate_login_uri else None
    scopes = (spec.allowed_scopes or "").split()
    if "openid" not in scopes or any(scope not in SCOPES for scope in scopes):
        raise ClientError("allowed_scopes", "Les scopes autorisés doivent inclure openid et être parmi : "
                          + ", ".join(SCOPES) + ".")
    if spec.id_token_signed_response_alg not in SIGNING_ALGS:
        raise ClientError("id_token_signed_response_alg", "Algorithme de signature inconnu (RS256 ou ES256).")
    if spec.token_endpoint_auth_method not in AUTH_METHODS and not spec.is_public:
        raise ClientError("token_endpoint_auth_method", "Méthode d'authentification inconnue.")
    role = (spec.required_role or "").strip() or None
    if role is not None and known_roles is not None and role not in known_roles:
        raise ClientError("required_role", f"Rôle inconnu : {role}.")
    client_id = (spec.client_id or "").strip() or None
    if client_id is not None and (len(client_id) > 64 or not all(c.isalnum() or c in "-_." for c in client_id)):
        raise ClientError("client_id", "L'identifiant ne peut contenir que des lettres, chiffres, - _ et . (64 au plus).")
    return ClientSpec(
        name=name, redirect_uris=redirect_uris, description=(spec.description or "").strip(), icon=spec.icon,
        post_logout_redirect_uris=logout_uris, backchannel_logout_uri=backchannel, initiate_login_uri=initiate,
        required_role=role, is_public=spec.is_public, allowed_scopes=" ".join(dict.fromkeys(scopes)),
        id_token_signed_response_alg=spec.id_token_signed_response_alg,
        token_endpoint_auth_method="none" if spec.is_public else spec.token_endpoint_auth_method,
        client_id=client_id,
    )


def create_client(session: Session, spec: ClientSpec, known_roles: tuple[str, ...] | None = None,
                  secret: str | None = None) -> tuple[Client, str | None]:
    """Registers the application; returns it with its secret (None for a public client).
    The secret is shown once: only its digest is stored. `secret` lets the demo set a known one."""
    spec = validate(spec, known_roles)
    client_id = spec.client_id or secrets.token_urlsafe(16)
    if session.scalar(sa.select(Client.id).where(Client.client_id == client_id)) is not None:
        raise ClientError("client_id", f"L'identifiant « {client_id} » est déjà utilisé.")
    if not spec.is_public:
        secret = secret or secrets.token_urlsafe(32)
    else:
        secret = None
    client = Client(
        client_id=client_id, secret_hash=secret_digest(secret) if secret else None, is_public=spec.is_public,
        name=spec.name, description=spec.description, icon=spec.icon, redirect_uris=spec.redirect_uris,
        post_logout_redirect_uris=spec.post_logout_redirect_uris,
        backchannel_logout_uri=spec.backchannel_logout_uri, initiate_login_uri=spec.initiate_login_uri,
        required_role=spec.required_role, allowed_scopes=spec.allowed_scopes,
        id_token_signed_response_alg=spec.id_token_signed_response_alg,
        token_endpoint_auth_method=spec.token_endpoint_auth_method, first_party=True, created_at=now(),
    )
    session.add(client)
    session.flush()
    forget_application_origins()
    return client, secret


def update_client(session: Session, client: Client, spec: ClientSpec,
                  known_roles: tuple[str, ...] | None = None) -> Client:
    """Changes everything but the client id, the secret and public/confidential."""
    spec = validate(ClientSpec(**{**spec.__dict__, "is_public": client.is_public, "client_id": None}), known_roles)
    for name in ("name", "description", "icon", "redirect_uris", "post_logout_redirect_uris",
                 "backchannel_logout_uri", "initiate_login_uri", "required_role", "allowed_scopes",
                 "id_token_signed_response_alg"):
        setattr(client, name, getattr(spec, name))
    if not client.is_public:
        client.token_endpoint_auth_method = spec.token_endpoint_auth_method
    forget_application_origins()
    return client


def new_secret(client: Client) -> str:
    """A new secret (the old one stops working at once); shown once."""
    if client.is_public:
        raise ClientError("client_secret", "Une application publique n'a pas de secret.")
    secret = secrets.token_urlsafe(32)
    client.secret_hash = secret_digest(secret)
    return secret


def find_client(session: Session, client_id: str) -> Client | None:
    if not client_id or len(client_id) > 64:
        return None
    return session.scalar(sa.select(Client).where(Client.client_id == client_id, Client.disabled_at.is_(None)))


def remove_client(session: Session, client: Client) -> None:
    """Removes the application with its codes, tokens and favourites (cascade)."""
    session.delete(client)
    forget_application_origins()


def list_clients(session: Session) -> list[Client]:
    return list(session.scalars(sa.select(Client).order_by(Client.name)))
