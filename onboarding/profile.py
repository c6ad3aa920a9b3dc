""""Mes établissements" in Mon compte: the establishments where a professional works,
checked against the FINESS referential like at registration."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import FieldList, FormField

from idp.models import User, UserEstablishment
from idp.sessions import login_required
from onboarding.referentials import search_establishments
from onboarding.registration import (
    MAX_ESTABLISHMENTS,
    EstablishmentForm,
    Registration,
    apply_search_choices,
    check_establishment,
    chosen_establishments,
    row_index,
)
from portal import audit
from portal.db import db

bp = Blueprint("establishments", __name__, url_prefix="/account/establishments")


class AddEstablishmentForm(FlaskForm):
    # One row named like the registration's (establishments-0-…), so that the same
    # autocomplete script and no-JavaScript search step work here too.
    establishments = FieldList(FormField(EstablishmentForm), min_entries=1, max_entries=1)


@bp.route("/", methods=["GET", "POST"])
@login_required
def manage():
    user: User = g.user
    session = db.session
    form = AddEstablishmentForm()
    errors: dict[str, str] = {}
    search_results: dict[int, list] = {}
    if request.method == "POST":
        apply_search_choices(form)
        action = request.form.get("action") or "submit"
        if action.startswith("search-") and row_index(action, 1) == 0:
            search_results[0] = search_establishments(session, form.establishments[0].form.query.data or "", 10)
        elif len(user.establishments) >= MAX_ESTABLISHMENTS:
            errors[form.establishments[0].form.query.id] = (
                f"Vous avez déjà {MAX_ESTABLISHMENTS} établissements : retirez-en un avant d'en ajouter un autre.")
        else:
            form.validate()
            reg = Registration()
            values = check_establishment(session, reg, form.establishments[0].form)
            if values.get("finess") and any(e.finess == values["finess"] for e in user.establishments):
                reg.errors[form.establishments[0].form.finess.id] = "Cet établissement figure déjà dans votre liste."
            errors = reg.errors
            if not errors:
                user.establishments.append(UserEstablishment(position=len(user.establishments), **values))
                audit.record(session, "account.establishment_added", actor_id=user.id, actor_label=user.login,
                             target_type="user", target_id=user.id,
                             details={"finess": values.get("finess"), "name": values.get("name")})
                session.commit()
                flash(f"L'établissement {values['name']} est ajouté.", "success")
                return redirect(url_for("establishments.manage"), code=303)
    return render_template(
        "onboarding/establishments.html", user=user, form=form, errors=errors, search_results=search_results,
        chosen=chosen_establishments(session, form), max_establishments=MAX_ESTABLISHMENTS,
    ), (422 if errors else 200)


@bp.post("/<int:establishment_id>/remove")
@login_required
def remove(establishment_id: int):
    user: User = g.user
    session = db.session
    row = session.scalar(sa.select(UserEstablishment).where(
        UserEstablishment.id == establishment_id, UserEstablishment.user_id == user.id))
    if row is None:
        abort(404)
    if len(user.establishments) <= 1:
        flash("Vous devez garder au moins un établissement d'exercice.", "error")
        return redirect(url_for("establishments.manage"), code=303)
    user.establishments.remove(row)
    for position, remaining in enumerate(user.establishments):
        remaining.position = position
    audit.record(session, "account.establishment_removed", actor_id=user.id, actor_label=user.login,
                 target_type="user", target_id=user.id, details={"finess": row.finess, "name": row.name})
    session.commit()
    flash(f"L'établissement {row.name} est retiré de votre liste.", "success")
    return redirect(url_for("establishments.manage"), code=303)
