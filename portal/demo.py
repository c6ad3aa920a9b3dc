"""`enrs demo`: a portal to click through on a laptop (development only).

Besides the accounts, it registers the demo ROR application (examples/ror_app) as an
OpenID Connect client and writes what that application needs to reach the portal
(issuer, client id, secret, its own base URL) to instance/ror_app_client.json, so that
`make run` shows single sign-on working end to end."""
from __future__ import annotations

import json
import os
from pathlib import Path

import sqlalchemy as sa

from idp.models import ROLE_REGIONAL_ADMIN, ROLE_SUPER_ADMIN, User, UserRole
from idp.provider.clients import ClientSpec, create_client, new_secret, update_client
from idp.provider.models import Client
from onboarding.accounts import create_admin, create_professional
from onboarding.finess import load_demo_establishments
from onboarding.models import ROLE_REFERENT_LITS, ROLE_REFERENT_OFFRE
from portal.cgu import DEFAULT_CGU_TEXT, current_cgu, publish_cgu
from portal.clock import now
from portal.config import current_settings
from portal.db import db

# Known passwords are acceptable here only because demo data refuses to exist in production.
DEMO_PASSWORD = "Demo-Portail-2026!"
DOCTOR_EMAIL = "nathalie.dupont@esante-demo.fr"
DOCTOR_FINESS = "280503848"

ROR_CLIENT_ID = "ror-demo"
ROR_CONFIG_FILE = "ror_app_client.json"
# Where the demo ROR application listens; `make run` sets it from ROR_PORT.
ROR_BASE_URL_VARIABLE = "ROR_APP_BASE_URL"
ROR_DEFAULT_BASE_URL = "http://127.0.0.1:5001"


def seed_demo(if_empty: bool = False) -> list[str]:
    settings = current_settings()
    if not settings.is_development:
        raise ValueError("les données de démonstration ne sont disponibles qu'avec ENRS_ENV=development")
    session = db.session
    if if_empty and session.scalar(sa.select(sa.func.count()).select_from(User)):
        # The accounts exist; the ROR application may not (a database seeded before it
        # existed, or a lost configuration file): both steps below are idempotent.
        _grant_doctor_role(session)
        ror_config = _register_ror_demo(session)
        session.commit()
        _write_ror_config(ror_config)
        return ["Données de démonstration déjà présentes.", _ror_line(ror_config)]
    if current_cgu(session) is None:
        publish_cgu(session, "1.0", DEFAULT_CGU_TEXT)
    count = load_demo_establishments(session)
    superadmin = create_admin(session, email="super.admin@esante-demo.fr", first_name="Sophie", last_name="Martin",
                              role=ROLE_SUPER_ADMIN, departments=[], actor=None, password=DEMO_PASSWORD)
    regional = create_admin(session, email="admin.centre@esante-demo.fr", first_name="Paul", last_name="Bernard",
                            role=ROLE_REGIONAL_ADMIN, departments=["18", "28", "36", "37", "41", "45"], actor=None,
                            password=DEMO_PASSWORD)
    doctor = create_professional(session, email=DOCTOR_EMAIL, password=DEMO_PASSWORD,
                                 first_name="Nathalie", last_name="Dupont", profession="10", finess=DOCTOR_FINESS)
    _grant_doctor_role(session)
    ror_config = _register_ror_demo(session)
    session.commit()
    _write_ror_config(ror_config)
    mail = settings.mail_url.removeprefix("file://")
    return [
        f"{count} établissements de démonstration importés.",
        "Comptes de démonstration (mot de passe : " + DEMO_PASSWORD + ") :",
        f"  super administrateur      {superadmin.login}",
        f"  administrateur régional   {regional.login} (départements 18, 28, 36, 37, 41, 45)",
        f"  professionnelle (médecin) {doctor.login} (référente ROR de l'établissement {DOCTOR_FINESS})",
        _ror_line(ror_config),
        f"Les codes de connexion arrivent par mail : {mail}",
    ]


def _grant_doctor_role(session) -> None:
    """The demo doctor may open the ROR tile at once, as if an admin had approved her
    request (the role comes straight from the table the approval writes)."""
    doctor = session.scalar(sa.select(User).where(User.email == DOCTOR_EMAIL))
    if doctor is None:
        return
    held = session.scalar(sa.select(UserRole.id).where(
        UserRole.user_id == doctor.id, UserRole.role == ROLE_REFERENT_OFFRE, UserRole.finess == DOCTOR_FINESS,
        UserRole.revoked_at.is_(None)))
    if held is None:
        session.add(UserRole(user_id=doctor.id, role=ROLE_REFERENT_OFFRE, finess=DOCTOR_FINESS, granted_at=now()))
        session.flush()


def ror_base_url() -> str:
    return (os.environ.get(ROR_BASE_URL_VARIABLE) or ROR_DEFAULT_BASE_URL).strip().rstrip("/")


def ror_client_spec(base_url: str) -> ClientSpec:
    return ClientSpec(
        name="ROR Centre-Val de Loire",
        client_id=ROR_CLIENT_ID,
        description="Répertoire Opérationnel des Ressources (démonstration) : l'offre de soins de vos "
                    "établissements et la disponibilité de leurs lits.",
        icon="ror",
        redirect_uris=[f"{base_url}/callback"],
        post_logout_redirect_uris=[f"{base_url}/"],
        backchannel_logout_uri=f"{base_url}/backchannel-logout",
        initiate_login_uri=f"{base_url}/initiate-login",
        # A Client has one required role: the offer referents are the ROR's main users.
        required_role=ROLE_REFERENT_OFFRE,
    )


def _config_path() -> Path:
    return current_settings().instance_dir / ROR_CONFIG_FILE


def _read_ror_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _register_ror_demo(session) -> dict:
    """Registers the demo ROR client once (client id "ror-demo"), keeps its addresses in
    line with ROR_APP_BASE_URL (a disabled one stays disabled), and returns the configuration the ROR app reads. The
    secret is only stored as a digest, so the one in the file is kept while it still
    matches; otherwise (file lost) a new secret replaces it."""
    base_url = ror_base_url()
    spec = ror_client_spec(base_url)
    known_roles = (ROLE_REFERENT_OFFRE, ROLE_REFERENT_LITS)
    existing = _read_ror_config(_config_path())
    client = session.scalar(sa.select(Client).where(Client.client_id == ROR_CLIENT_ID))
    if client is None:
        client, secret = create_client(session, spec, known_roles)
    else:
        if client.redirect_uris != spec.redirect_uris:
            # ROR_APP_BASE_URL changed (another ROR_PORT): follow it; other edits made in the console stay.
            update_client(session, client, ClientSpec(**{
                **{name: getattr(client, name) for name in ("name", "description", "icon", "required_role",
                                                          "allowed_scopes", "id_token_signed_response_alg",
                                                          "token_endpoint_auth_method")},
                "redirect_uris": spec.redirect_uris, "post_logout_redirect_uris": spec.post_logout_redirect_uris,
                "backchannel_logout_uri": spec.backchannel_logout_uri,
                "initiate_login_uri": spec.initiate_login_uri}), known_roles)
        secret = existing.get("client_secret")
        if not isinstance(secret, str) or not client.check_client_secret(secret):
            secret = new_secret(client)
    session.flush()
    return {"issuer": current_settings().base_url.rstrip("/"), "client_id": client.client_id,
            "client_secret": secret, "base_url": base_url}


def _write_ror_config(config: dict) -> None:
    """After the commit: the file never names a secret the database does not know.
    Owner-only, written whole then renamed, since it holds the client secret."""
    path = _config_path()
    if _read_ror_config(path) == config:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)


def _ror_line(config: dict) -> str:
    return (f"Application ROR de démonstration : {config['base_url']} (client {config['client_id']}, "
            f"configuration dans {_config_path()})")
