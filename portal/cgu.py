"""The terms of use (CGU): versions published by a super admin, the current one shown
at /cgu and accepted at registration (and again at login when a newer one exists)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from flask import Blueprint, abort, render_template
from sqlalchemy.orm import Mapped, Session, mapped_column

from portal.clock import now
from portal.db import Base, db

bp = Blueprint("cgu", __name__)


class CguVersion(Base):
    __tablename__ = "cgu_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(sa.String(32), unique=True)
    text: Mapped[str] = mapped_column(sa.Text)
    published_at: Mapped[datetime]
    published_by_id: Mapped[int | None]


def current_cgu(session: Session) -> CguVersion | None:
    return session.scalars(
        sa.select(CguVersion).order_by(CguVersion.published_at.desc(), CguVersion.id.desc()).limit(1)
    ).first()


def publish_cgu(session: Session, version: str, text: str, published_by_id: int | None = None) -> CguVersion:
    cgu = CguVersion(version=version, text=text, published_at=now(), published_by_id=published_by_id)
    session.add(cgu)
    session.flush()
    return cgu


@bp.get("/cgu")
def show_current():
    cgu = current_cgu(db.session)
    if cgu is None:
        abort(404)
    return render_template("portal/cgu.html", cgu=cgu)


DEFAULT_CGU_TEXT = """\
Article 1 – Objet
Les présentes conditions générales d'utilisation (CGU) encadrent l'accès au portail et aux services numériques régionaux de santé qu'il propose aux professionnels.

Article 2 – Accès au service
L'accès est réservé aux professionnels exerçant dans la région. Le compte est personnel : l'adresse mail d'authentification doit être individuelle ; les adresses MSSanté et les adresses génériques ne sont pas acceptées pour l'authentification.

Article 3 – Identifiants et sécurité
Vous êtes responsable de la confidentialité de votre mot de passe et des codes à usage unique qui vous sont envoyés. Signalez sans délai toute utilisation frauduleuse de votre compte.

Article 4 – Habilitations
L'accès à certaines applications (ROR) nécessite une habilitation délivrée par l'équipe régionale au vu d'une attestation signée par le directeur de l'établissement.

Article 5 – Données personnelles
Les données recueillies servent à la gestion de votre compte et de vos habilitations. Vous disposez d'un droit d'accès, de rectification et d'effacement auprès du délégué à la protection des données.

Article 6 – Traçabilité
Les actions de sécurité (connexions, décisions d'habilitation) sont enregistrées dans un journal d'audit.
"""
