"""The super admin's "Applications": register the applications that trust the portal
(OpenID Connect clients) and their tiles in "Mes applications".

A secret is shown once, in the answer to the request that made it (creation or "Générer
un nouveau secret"); only its digest is stored. Every change is in the audit log."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import Field, StringField, TextAreaField

from idp.provider.clients import (
    AUTH_METHODS,
    ICONS,
    ClientError,
    ClientSpec,
    create_client,
    list_clients,
    new_secret,
    remove_client,
    update_client,
)
from idp.provider.models import DEFAULT_SCOPES, SIGNING_ALGS, Client
from idp.provider.server import forget_application_origins
from idp.sessions import super_admin_required
from onboarding.models import ROLE_LABELS
from portal import audit
from portal.clock import now
from portal.dashboard import ICON_LABELS, issuer
from portal.db import db

bp = Blueprint("applications", __name__, url_prefix="/admin/applications")

CLIENT_TYPES = [
    ("confidential", "Confidentielle : l'application a un serveur qui garde un secret"),
    ("public", "Publique : sans secret (application mobile ou monopage)"),
]
AUTH_METHOD_LABELS = {
    "client_secret_basic": "client_secret_basic (en-tête Authorization)",
    "client_secret_post": "client_secret_post (dans le corps de la requête)",
}
SCOPE_LABELS = {
    "profile": "profile : nom, prénom, identifiant, profession",
    "email": "email : adresse mail",
    "establishments": "establishments : établissements (FINESS, service, fonction)",
    "roles": "roles : rôles (référent ROR…)",
    "national_id": "national_id : identifiant national (RPPS ou ADELI)",
}
# Field labels, for the error summary ("Adresses de retour : …").
FIELD_LABELS = {
    "name": "Nom de l'application",
    "description": "Description",
    "icon": "Icône",
    "client_id": "Identifiant (client_id)",
    "client_type": "Type d'application",
    "redirect_uris": "Adresses de retour",
    "post_logout_redirect_uris": "Adresses après déconnexion",
    "backchannel_logout_uri": "Déconnexion back-channel",
    "initiate_login_uri": "Connexion initiée par le portail",
    "required_role": "Rôle requis",
    "allowed_scopes": "Scopes autorisés",
    "id_token_signed_response_alg": "Signature du jeton d'identité",
    "token_endpoint_auth_method": "Authentification de l'application",
    "client_secret": "Secret",
}
# The columns compared for the audit entry of an edit.
EDITABLE = ("name", "description", "icon", "redirect_uris", "post_logout_redirect_uris", "backchannel_logout_uri",
            "initiate_login_uri", "required_role", "allowed_scopes", "id_token_signed_response_alg",
            "token_endpoint_auth_method")


def known_roles() -> tuple[str, ...]:
    return tuple(ROLE_LABELS)


def role_choices() -> list[tuple[str, str]]:
    return [("", "Aucun : toute personne connectée"),
            *((role, label[:1].upper() + label[1:]) for role, label in ROLE_LABELS.items())]


class ChoiceField(StringField):
    """A value offered as a <select> or radio buttons: the value sent is kept as typed and
    judged by idp.provider.clients.validate, whose message goes next to the field."""

    def __init__(self, label: str, choices: list[tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(label, **kwargs)
        self.choices = list(choices or [])


class MultiChoiceField(Field):
    """Checkboxes sharing one name: every value sent, in order (judged by validate too)."""

    def process_formdata(self, valuelist: list[str]) -> None:
        self.data = list(valuelist)


class ApplicationForm(FlaskForm):
    name = StringField(FIELD_LABELS["name"])
    description = TextAreaField("Description (affichée sur la tuile)")
    icon = ChoiceField(FIELD_LABELS["icon"], choices=[(icon, ICON_LABELS.get(icon, icon)) for icon in ICONS])
    client_id = StringField(FIELD_LABELS["client_id"])
    client_type = ChoiceField(FIELD_LABELS["client_type"], choices=CLIENT_TYPES)
    redirect_uris = TextAreaField("Adresses de retour (redirect URI), une par ligne")
    post_logout_redirect_uris = TextAreaField("Adresses après déconnexion (post-logout redirect URI), une par ligne")
    backchannel_logout_uri = StringField("Adresse de déconnexion back-channel (backchannel_logout_uri)")
    initiate_login_uri = StringField("Adresse de connexion initiée par le portail (initiate_login_uri)")
    required_role = ChoiceField("Rôle requis pour ouvrir l'application", choices=role_choices())
    allowed_scopes = MultiChoiceField(FIELD_LABELS["allowed_scopes"])
    id_token_signed_response_alg = ChoiceField("Algorithme de signature du jeton d'identité",
                                               choices=[(alg, alg) for alg in SIGNING_ALGS])
    token_endpoint_auth_method = ChoiceField("Authentification de l'application au point de jeton",
                                             choices=list(AUTH_METHOD_LABELS.items()))


def lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def spec_from(form: ApplicationForm) -> ClientSpec:
    scopes = ["openid", *(s for s in (form.allowed_scopes.data or []) if s != "openid")]
    return ClientSpec(
        name=form.name.data or "",
        description=form.description.data or "",
        icon=form.icon.data or "",
        redirect_uris=lines(form.redirect_uris.data),
        post_logout_redirect_uris=lines(form.post_logout_redirect_uris.data),
        backchannel_logout_uri=(form.backchannel_logout_uri.data or "").strip() or None,
        initiate_login_uri=(form.initiate_login_uri.data or "").strip() or None,
        required_role=form.required_role.data or None,
        is_public=form.client_type.data == "public",
        allowed_scopes=" ".join(scopes),
        id_token_signed_response_alg=form.id_token_signed_response_alg.data or "",
        token_endpoint_auth_method=form.token_endpoint_auth_method.data or "",
        client_id=form.client_id.data or None,
    )


def form_data_of(client: Client) -> dict[str, Any]:
    return {
        "name": client.name, "description": client.description, "icon": client.icon, "client_id": client.client_id,
        "client_type": "public" if client.is_public else "confidential",
        "redirect_uris": "\n".join(client.redirect_uris),
        "post_logout_redirect_uris": "\n".join(client.post_logout_redirect_uris),
        "backchannel_logout_uri": client.backchannel_logout_uri or "",
        "initiate_login_uri": client.initiate_login_uri or "", "required_role": client.required_role or "",
        "allowed_scopes": client.allowed_scopes.split(),
        "id_token_signed_response_alg": client.id_token_signed_response_alg,
        "token_endpoint_auth_method": (client.token_endpoint_auth_method if not client.is_public
                                       else AUTH_METHODS[0]),
    }


NEW_DEFAULTS = {"icon": "application", "client_type": "confidential", "allowed_scopes": DEFAULT_SCOPES.split(),
                "id_token_signed_response_alg": "RS256", "token_endpoint_auth_method": AUTH_METHODS[0],
                "required_role": ""}


def _audit(action: str, client: Client, details: dict[str, Any] | None = None) -> None:
    audit.record(db.session, action, actor_id=g.user.id, actor_label=g.user.login, target_type="application",
                 target_id=client.client_id, details={"name": client.name, **(details or {})})


def _client_or_404(app_id: int) -> Client:
    client = db.session.get(Client, app_id)
    if client is None:
        abort(404)
    return client


def _secret_page(client: Client, secret: str | None, *, created: bool):
    return render_template("admin/applications_secret.html", client=client, secret=secret, created=created,
                           issuer=issuer(), role_labels=ROLE_LABELS)


def _form_page(form: ApplicationForm, errors: dict[str, str], client: Client | None):
    return render_template("admin/applications_form.html", form=form, errors=errors, client=client,
                           field_labels=FIELD_LABELS, scope_labels=SCOPE_LABELS), 422 if errors else 200


@bp.get("/")
@super_admin_required
def index():
    return render_template("admin/applications.html", clients=list_clients(db.session), role_labels=ROLE_LABELS,
                           icon_labels=ICON_LABELS)


@bp.route("/new", methods=["GET", "POST"])
@super_admin_required
def create():
    form = ApplicationForm(data=NEW_DEFAULTS)
    errors: dict[str, str] = {}
    if request.method == "POST":
        if not form.validate():  # only the CSRF token: the rules are clients.validate's
            abort(400)
        if form.client_type.data not in dict(CLIENT_TYPES):
            errors["client_type"] = "Choisissez le type d'application."
        else:
            try:
                client, secret = create_client(db.session, spec_from(form), known_roles())
            except ClientError as exc:
                db.session.rollback()
                errors[exc.field] = str(exc)
            else:
                _audit("app.created", client, {"public": client.is_public, "redirect_uris": client.redirect_uris,
                                               "required_role": client.required_role})
                db.session.commit()
                forget_application_origins()  # after the commit: a reload in between would see the old list
                # The secret is in this answer only (never stored, never in a redirect).
                return _secret_page(client, secret, created=True)
    return _form_page(form, errors, None)


@bp.route("/<int:app_id>", methods=["GET", "POST"])
@super_admin_required
def edit(app_id: int):
    client = _client_or_404(app_id)
    form = ApplicationForm(data=form_data_of(client))
    errors: dict[str, str] = {}
    if request.method == "POST":
        if not form.validate():
            abort(400)
        before = {name: getattr(client, name) for name in EDITABLE}
        spec = spec_from(form)
        spec.is_public = client.is_public
        try:
            update_client(db.session, client, spec, known_roles())
        except ClientError as exc:  # raised before any attribute changed
            errors[exc.field] = str(exc)
        else:
            changed = sorted(name for name in EDITABLE if getattr(client, name) != before[name])
            if changed:
                _audit("app.updated", client, {"changed": changed})
            db.session.commit()
            forget_application_origins()  # after the commit: a reload in between would see the old list
            flash(f"L'application « {client.name} » est enregistrée." if changed
                  else f"Aucune modification de « {client.name} ».", "success")
            return redirect(url_for(".index"), code=303)
    # The identifier and the type do not change after creation: shown, not submitted.
    form.client_id.data = client.client_id
    form.client_type.data = "public" if client.is_public else "confidential"
    return _form_page(form, errors, client)


@bp.route("/<int:app_id>/secret", methods=["GET", "POST"])
@super_admin_required
def rotate_secret(app_id: int):
    client = _client_or_404(app_id)
    if client.is_public:
        flash("Une application publique n'a pas de secret.", "error")
        return redirect(url_for(".edit", app_id=client.id), code=303)
    if request.method == "POST":
        if not FlaskForm().validate():
            abort(400)
        secret = new_secret(client)
        _audit("app.secret_rotated", client)
        db.session.commit()
        return _secret_page(client, secret, created=False)
    return render_template(
        "admin/applications_confirm.html", client=client, title="Générer un nouveau secret",
        text=(f"Un nouveau secret remplacera celui de « {client.name} » : l'ancien cessera de fonctionner "
              "immédiatement. L'application devra être configurée avec le nouveau secret."),
        action=url_for(".rotate_secret", app_id=client.id), button="Générer un nouveau secret", danger=False)


@bp.post("/<int:app_id>/disable")
@super_admin_required
def disable(app_id: int):
    client = _client_or_404(app_id)
    if not FlaskForm().validate():
        abort(400)
    if client.disabled_at is None:
        client.disabled_at = now()
        _audit("app.disabled", client)
        db.session.commit()
        forget_application_origins()
    flash(f"L'application « {client.name} » est désactivée : sa tuile n'est plus affichée et elle ne peut "
          "plus obtenir de jetons.", "success")
    return redirect(url_for(".index"), code=303)


@bp.post("/<int:app_id>/enable")
@super_admin_required
def enable(app_id: int):
    client = _client_or_404(app_id)
    if not FlaskForm().validate():
        abort(400)
    if client.disabled_at is not None:
        client.disabled_at = None
        _audit("app.enabled", client)
        db.session.commit()
        forget_application_origins()
    flash(f"L'application « {client.name} » est réactivée.", "success")
    return redirect(url_for(".index"), code=303)


@bp.route("/<int:app_id>/remove", methods=["GET", "POST"])
@super_admin_required
def remove(app_id: int):
    client = _client_or_404(app_id)
    if request.method == "POST":
        if not FlaskForm().validate():
            abort(400)
        name = client.name
        _audit("app.removed", client)
        remove_client(db.session, client)
        db.session.commit()
        forget_application_origins()  # after the commit: a reload in between would see the old list
        flash(f"L'application « {name} » est supprimée.", "success")
        return redirect(url_for(".index"), code=303)
    return render_template(
        "admin/applications_confirm.html", client=client, title="Supprimer l'application",
        text=(f"« {client.name} » ({client.client_id}) sera supprimée avec ses jetons et sa place dans les favoris "
              "des utilisateurs. Cette action est définitive ; pour la suspendre seulement, désactivez-la."),
        action=url_for(".remove", app_id=client.id), button="Supprimer définitivement", danger=True)


@bp.context_processor
def _console_counts():
    """The navigation of the console shows the same counts here as on its other pages."""
    from onboarding import access, approval

    user = g.get("user")
    if user is None or not user.is_admin:
        return {}
    return {"console_counts": {"accounts": approval.pending_count(db.session, user),
                               "requests": access.pending_count(db.session, user)}}

