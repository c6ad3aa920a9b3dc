"""Onboarding's tables: captcha challenges, the referentials (FINESS establishments) and
registrations."""
from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base


class CaptchaChallenge(Base):
    """A captcha shown to someone: kept server-side so that any process can check the
    answer, and so that an answer is accepted once only."""

    __tablename__ = "captcha_challenges"
    __table_args__ = (sa.Index("ix_captcha_challenges_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(8))  # image | pow
    # image: SHA-256 of the normalised answer; pow: the challenge string the client must solve.
    secret: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class Establishment(Base):
    """A site of the FINESS referential (an "établissement géographique").

    Rows are never deleted: an establishment missing from a newer extraction is marked
    closed, because accounts and access requests keep pointing at it.
    """

    __tablename__ = "establishments"
    __table_args__ = (
        sa.Index("ix_establishments_department_code", "department_code"),
        sa.Index("ix_establishments_name_key", "name_key"),
        sa.Index("ix_establishments_long_name_key", "long_name_key"),
    )

    finess: Mapped[str] = mapped_column(sa.String(9), primary_key=True)  # nofinesset
    finess_juridique: Mapped[str | None] = mapped_column(sa.String(9))  # nofinessej
    name: Mapped[str] = mapped_column(sa.String(255))  # rs
    long_name: Mapped[str | None] = mapped_column(sa.String(255))  # rslongue
    name_complement: Mapped[str | None] = mapped_column(sa.String(255))  # complrs
    distribution_complement: Mapped[str | None] = mapped_column(sa.String(255))  # compldistrib
    street_number: Mapped[str | None] = mapped_column(sa.String(16))  # numvoie
    street_type: Mapped[str | None] = mapped_column(sa.String(16))  # typvoie
    street: Mapped[str | None] = mapped_column(sa.String(255))  # voie
    street_number_suffix: Mapped[str | None] = mapped_column(sa.String(16))  # compvoie
    locality: Mapped[str | None] = mapped_column(sa.String(255))  # lieuditbp
    routing_line: Mapped[str | None] = mapped_column(sa.String(255))  # ligneacheminement
    postal_code: Mapped[str | None] = mapped_column(sa.String(5))
    city: Mapped[str | None] = mapped_column(sa.String(255))
    commune_code: Mapped[str | None] = mapped_column(sa.String(3))  # commune (within the département)
    department_code: Mapped[str] = mapped_column(sa.String(3))
    department_name: Mapped[str | None] = mapped_column(sa.String(64))
    category_code: Mapped[str | None] = mapped_column(sa.String(8))  # categetab
    category_label: Mapped[str | None] = mapped_column(sa.String(255))
    category_group_code: Mapped[str | None] = mapped_column(sa.String(8))  # categagretab
    category_group_label: Mapped[str | None] = mapped_column(sa.String(255))
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    fax: Mapped[str | None] = mapped_column(sa.String(32))
    siret: Mapped[str | None] = mapped_column(sa.String(14))
    opened_on: Mapped[date | None]  # dateouv
    authorized_on: Mapped[date | None]  # dateautor
    finess_updated_on: Mapped[date | None]  # datemaj
    closed_at: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(sa.String(8))  # finess | demo
    # Digest of the source line: a re-import rewrites only the rows whose digest changed.
    fingerprint: Mapped[str] = mapped_column(sa.String(32))
    # The short and long names as search words (see onboarding.finess.name_key): a range
    # scan finds the names that start with what was typed.
    name_key: Mapped[str] = mapped_column(sa.String(255))
    long_name_key: Mapped[str] = mapped_column(sa.String(255))
    # Every normalised search word of the row, space-separated (the same words as its terms).
    search_text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def street_line(self) -> str | None:
        number = " ".join(p for p in (self.street_number, self.street_number_suffix) if p)
        line = " ".join(p for p in (number, self.street_type, self.street) if p)
        return line or None

    @property
    def address_lines(self) -> list[str]:
        """The postal address as the FINESS gives it, without the establishment's name."""
        lines = [self.name_complement, self.distribution_complement, self.street_line,
                 self.locality, self.routing_line]
        return [line for line in lines if line]


class EstablishmentTerm(Base):
    """One normalised word of an establishment (name, city, postal code): a prefix range
    scan on `term` finds the establishments whose words start with what was typed, on
    SQLite and PostgreSQL alike."""

    __tablename__ = "establishment_terms"
    __table_args__ = (sa.Index("ix_establishment_terms_finess_term", "finess", "term"),)

    term: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    finess: Mapped[str] = mapped_column(
        sa.String(9), sa.ForeignKey("establishments.finess", ondelete="CASCADE"), primary_key=True
    )


# -- ROR access requests (J5-J6) -------------------------------------------------------

ROLE_REFERENT_OFFRE = "ror_referent_offre"
ROLE_REFERENT_LITS = "ror_referent_lits"

# The four choices of "Quelle est votre demande", as in the seed, and the role each asks.
REQUEST_TYPES = {
    "offre_new": ("Je souhaite accéder et être référent ROR (saisie de l'offre).", ROLE_REFERENT_OFFRE),
    "offre_existing": ("Je suis déjà habilité en tant que référent ROR et je souhaite me connecter via le portail.",
                       ROLE_REFERENT_OFFRE),
    "lits_new": ("Je souhaite accéder et être référent disponibilité des lits (saisie du capacitaire).",
                 ROLE_REFERENT_LITS),
    "lits_existing": ("Je suis déjà habilité en tant que référent disponibilité des lits et je souhaite me "
                      "connecter via le portail.", ROLE_REFERENT_LITS),
}
ROLE_LABELS = {
    ROLE_REFERENT_OFFRE: "référent ROR (saisie de l'offre)",
    ROLE_REFERENT_LITS: "référent disponibilité des lits (saisie du capacitaire)",
}
REQUEST_PENDING = "pending"
REQUEST_APPROVED = "approved"
REQUEST_REJECTED = "rejected"
REQUEST_CANCELLED = "cancelled"
REQUEST_STATUS_LABELS = {
    REQUEST_PENDING: "En attente de validation",
    REQUEST_APPROVED: "Acceptée",
    REQUEST_REJECTED: "Refusée",
    REQUEST_CANCELLED: "Annulée",
}


class AccessRequest(Base):
    """A professional asks for a ROR role for one of their establishments, with the
    attestation signed and stamped by its director."""

    __tablename__ = "access_requests"
    __table_args__ = (
        sa.Index("ix_access_requests_status_created_at", "status", "created_at"),
        sa.Index("ix_access_requests_department", "department"),
        # One pending request per user, role and establishment, even under double submission.
        sa.Index("uq_access_requests_pending", "user_id", "role", "finess", unique=True,
                 sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    request_type: Mapped[str] = mapped_column(sa.String(16))
    role: Mapped[str] = mapped_column(sa.String(32))
    finess: Mapped[str] = mapped_column(sa.String(9))
    establishment_name: Mapped[str] = mapped_column(sa.String(255))
    department: Mapped[str | None] = mapped_column(sa.String(3))
    status: Mapped[str] = mapped_column(sa.String(16), default=REQUEST_PENDING)
    created_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    # The attestation: stored under a random key, never under the name it was sent with.
    attestation_key: Mapped[str] = mapped_column(sa.String(255))
    attestation_name: Mapped[str] = mapped_column(sa.String(120))
    attestation_type: Mapped[str] = mapped_column(sa.String(32))
    attestation_size: Mapped[int]
    attestation_sha256: Mapped[str] = mapped_column(sa.String(64))
    notified_admins_at: Mapped[datetime | None]

    @property
    def type_label(self) -> str:
        return REQUEST_TYPES.get(self.request_type, (self.request_type, ""))[0]

    @property
    def role_label(self) -> str:
        return ROLE_LABELS.get(self.role, self.role)

    @property
    def status_label(self) -> str:
        return REQUEST_STATUS_LABELS.get(self.status, self.status)
