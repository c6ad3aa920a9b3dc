"""Accounts and what proves who they are: users, their establishments, admin scopes,
password history."""
from __future__ import annotations

import secrets
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.db import Base

# Account life cycle (J1–J2): registered → email verified → approved by an admin.
STATUS_EMAIL_PENDING = "email_pending"
STATUS_REVIEW_PENDING = "review_pending"
STATUS_ACTIVE = "active"
STATUS_REJECTED = "rejected"
STATUS_DISABLED = "disabled"
STATUS_LABELS = {
    STATUS_EMAIL_PENDING: "Adresse mail à valider",
    STATUS_REVIEW_PENDING: "En attente de validation",
    STATUS_ACTIVE: "Actif",
    STATUS_REJECTED: "Refusé",
    STATUS_DISABLED: "Désactivé",
}

ROLE_PROFESSIONAL = "professional"
ROLE_REGIONAL_ADMIN = "regional_admin"
ROLE_SUPER_ADMIN = "super_admin"

CIVILITIES = {"M": "Monsieur", "MME": "Madame"}


def new_public_id() -> str:
    return secrets.token_hex(16)


def new_security_stamp() -> str:
    return secrets.token_urlsafe(16)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        sa.Index("ix_users_status_created_at", "status", "created_at"),
        sa.Index("ix_users_names", "last_name", "first_name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The `sub` the applications see: opaque, stable, never the row id or the email.
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True, default=new_public_id)
    login: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    contact_email: Mapped[str | None] = mapped_column(sa.String(320))
    status: Mapped[str] = mapped_column(sa.String(16), default=STATUS_EMAIL_PENDING)
    role: Mapped[str] = mapped_column(sa.String(16), default=ROLE_PROFESSIONAL)

    civility: Mapped[str | None] = mapped_column(sa.String(8))
    first_name: Mapped[str] = mapped_column(sa.String(100))
    last_name: Mapped[str] = mapped_column(sa.String(100))
    profession_code: Mapped[str | None] = mapped_column(sa.String(16))
    profession_other: Mapped[str | None] = mapped_column(sa.String(100))
    specialty: Mapped[str | None] = mapped_column(sa.String(100))
    national_id: Mapped[str | None] = mapped_column(sa.String(16))
    national_id_type: Mapped[str | None] = mapped_column(sa.String(8))  # rpps | adeli
    phone_pro: Mapped[str | None] = mapped_column(sa.String(32))
    phone_mobile: Mapped[str | None] = mapped_column(sa.String(32))

    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    password_changed_at: Mapped[datetime | None]
    # Rotated whenever a link is consumed or the password changes: every signed link
    # carries the stamp it was issued with, so used or outdated links stop working.
    security_stamp: Mapped[str] = mapped_column(sa.String(32), default=new_security_stamp)

    # Brute-force protection (J3): consecutive password failures and the temporary lock.
    failed_logins: Mapped[int] = mapped_column(default=0, server_default="0")
    last_failed_login_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]

    # Admins: when they were last told by email that access requests wait (batched), and
    # the newest request that email covered (ids only grow, timestamps may tie).
    access_digest_sent_at: Mapped[datetime | None]
    access_digest_last_request_id: Mapped[int | None]

    cgu_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cgu_versions.id"))
    cgu_accepted_at: Mapped[datetime | None]

    created_at: Mapped[datetime]
    email_verified_at: Mapped[datetime | None]
    reviewed_at: Mapped[datetime | None]
    reviewed_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    review_reason: Mapped[str | None] = mapped_column(sa.Text)

    establishments: Mapped[list[UserEstablishment]] = relationship(
        back_populates="user", order_by="UserEstablishment.position", cascade="all, delete-orphan"
    )
    admin_departments: Mapped[list[AdminDepartment]] = relationship(
        cascade="all, delete-orphan", order_by="AdminDepartment.department"
    )

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)

    @property
    def is_admin(self) -> bool:
        return self.role in (ROLE_REGIONAL_ADMIN, ROLE_SUPER_ADMIN)

    @property
    def is_super_admin(self) -> bool:
        return self.role == ROLE_SUPER_ADMIN

    @property
    def departments(self) -> list[str]:
        return [scope.department for scope in self.admin_departments]


class UserEstablishment(Base):
    """Where a professional works: a FINESS establishment, or one typed in by hand
    ("Mon établissement n'est pas référencé dans la liste"), flagged for the admin."""

    __tablename__ = "user_establishments"
    __table_args__ = (sa.Index("ix_user_establishments_department", "department"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(default=0)
    # A copy of the referential at registration time: the referential may change later.
    finess: Mapped[str | None] = mapped_column(sa.String(9), index=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    postal_code: Mapped[str | None] = mapped_column(sa.String(10))
    city: Mapped[str | None] = mapped_column(sa.String(100))
    department: Mapped[str | None] = mapped_column(sa.String(3))
    function_type: Mapped[str] = mapped_column(sa.String(100))
    service: Mapped[str] = mapped_column(sa.String(150))
    not_listed: Mapped[bool] = mapped_column(default=False)

    user: Mapped[User] = relationship(back_populates="establishments")


class AdminDepartment(Base):
    """The départements a regional admin reviews (their scope)."""

    __tablename__ = "admin_departments"

    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    department: Mapped[str] = mapped_column(sa.String(3), primary_key=True)


class PasswordHistory(Base):
    """Previous password hashes, so that none of the last ones is reused."""

    __tablename__ = "password_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime]


class TotpCredential(Base):
    """An authenticator app (TOTP) enrolled by the user; the shared secret is stored
    encrypted with a key derived from ENRS_SECRET_KEY."""

    __tablename__ = "totp_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    secret_encrypted: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]  # set once the first code proved the enrolment
    # The last time step accepted: a code is never accepted twice (no replay).
    last_used_step: Mapped[int | None] = mapped_column(sa.BigInteger)


class RecoveryCode(Base):
    """Single-use codes to log in when the authenticator app is lost (shown once)."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class UserRole(Base):
    """A role granted for one establishment (e.g. référent ROR of FINESS 280503848), which
    the applications receive in their claims. Revoked roles are kept for the record."""

    __tablename__ = "user_roles"
    __table_args__ = (
        sa.Index("uq_user_roles_active", "user_id", "role", "finess", unique=True,
                 sqlite_where=sa.text("revoked_at IS NULL"), postgresql_where=sa.text("revoked_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(sa.String(32))
    finess: Mapped[str] = mapped_column(sa.String(9))
    granted_at: Mapped[datetime]
    granted_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    request_id: Mapped[int | None]
    revoked_at: Mapped[datetime | None]
    revoked_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    revoke_reason: Mapped[str | None] = mapped_column(sa.Text)
