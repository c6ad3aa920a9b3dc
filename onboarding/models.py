"""Onboarding's tables: captcha challenges, the referentials (FINESS establishments) and
registrations."""
from __future__ import annotations

from datetime import datetime

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
