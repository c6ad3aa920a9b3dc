"""The portal's own pages: home and the legal pages linked from every footer."""
from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("portal", __name__)


@bp.get("/")
def home():
    return render_template("portal/home.html")


@bp.get("/mentions-legales")
def legal_notice():
    return render_template("portal/legal_notice.html")


@bp.get("/contact")
def contact():
    return render_template("portal/contact.html")


@bp.get("/accessibilite")
def accessibility():
    return render_template("portal/accessibility.html")
