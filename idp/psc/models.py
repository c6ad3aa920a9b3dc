"""What the portal keeps of Pro Santé Connect identities."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base


class PscLink(Base):
    """One PSC identity is linked to at most one account, and an account to one identity."""

    __tablename__ = "psc_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    # PSC's `sub` (stable per professional) and the national identifier it vouched for.
    psc_subject: Mapped[str] = mapped_column(sa.String(255), unique=True)
    national_id: Mapped[str | None] = mapped_column(sa.String(32))
    linked_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class PscPending(Base):
    """A PSC identity waiting for the user's choice (link to an existing account, or
    create one). Kept server-side: the browser only holds a random reference."""

    __tablename__ = "psc_pending"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # sha256 of the cookie reference
    identity: Mapped[dict] = mapped_column(sa.JSON)
    id_token: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
