"""The referentials: professions (TRE_G15) and the FINESS establishments (import, search)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("referentials", __name__)
