"""Onboarding's tables: the referentials (FINESS establishments) and, later, registrations."""
from __future__ import annotations
