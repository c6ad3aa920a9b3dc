"""`enrs demo`: a portal to click through on a laptop (development only)."""
from __future__ import annotations

import sqlalchemy as sa

from idp.models import ROLE_REGIONAL_ADMIN, ROLE_SUPER_ADMIN, User
from onboarding.accounts import create_admin, create_professional
from onboarding.finess import load_demo_establishments
from portal.cgu import DEFAULT_CGU_TEXT, current_cgu, publish_cgu
from portal.config import current_settings
from portal.db import db

# Known passwords are acceptable here only because demo data refuses to exist in production.
DEMO_PASSWORD = "Demo-Portail-2026!"


def seed_demo(if_empty: bool = False) -> list[str]:
    settings = current_settings()
    if not settings.is_development:
        raise ValueError("les données de démonstration ne sont disponibles qu'avec ENRS_ENV=development")
    session = db.session
    if if_empty and session.scalar(sa.select(sa.func.count()).select_from(User)):
        return ["Données de démonstration déjà présentes."]
    if current_cgu(session) is None:
        publish_cgu(session, "1.0", DEFAULT_CGU_TEXT)
    count = load_demo_establishments(session)
    superadmin = create_admin(session, email="super.admin@esante-demo.fr", first_name="Sophie", last_name="Martin",
                              role=ROLE_SUPER_ADMIN, departments=[], actor=None, password=DEMO_PASSWORD)
    regional = create_admin(session, email="admin.centre@esante-demo.fr", first_name="Paul", last_name="Bernard",
                            role=ROLE_REGIONAL_ADMIN, departments=["18", "28", "36", "37", "41", "45"], actor=None,
                            password=DEMO_PASSWORD)
    doctor = create_professional(session, email="nathalie.dupont@esante-demo.fr", password=DEMO_PASSWORD,
                                 first_name="Nathalie", last_name="Dupont", profession="10", finess="280503848")
    session.commit()
    mail = settings.mail_url.removeprefix("file://")
    return [
        f"{count} établissements de démonstration importés.",
        "Comptes de démonstration (mot de passe : " + DEMO_PASSWORD + ") :",
        f"  super administrateur      {superadmin.login}",
        f"  administrateur régional   {regional.login} (départements 18, 28, 36, 37, 41, 45)",
        f"  professionnelle (médecin) {doctor.login}",
        f"Les codes de connexion arrivent par mail : {mail}",
    ]
