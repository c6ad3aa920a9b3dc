"""The OpenID Provider's endpoints: discovery, JWKS, authorize, token, userinfo,
revocation, introspection and RP-initiated logout.

/oidc/… are pages a browser visits (French HTML when something is wrong); /oauth/… are
called by applications and always answer JSON.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlencode

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError
from authlib.oidc.core.errors import LoginRequiredError
from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, url_for
from flask import session as cookie
from flask_wtf.csrf import CSRFError, validate_csrf

from idp.provider import server as op
from idp.provider.claims import may_open, user_claims
from idp.provider.keys import JWKS_MAX_AGE, key_ring
from idp.provider.models import SCOPES, SIGNING_ALGS
from portal import audit
from portal.clock import now
from portal.db import db
from portal.security import csrf, external_url, limiter

bp = Blueprint("oidc", __name__)

# Parameters an authorization request may carry at most once (RFC 6749 §3.1, OIDC §3.1.2.1).
SINGLE_PARAMETERS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "prompt",
                     "max_age", "login_hint", "acr_values", "code_challenge", "code_challenge_method",
                     "response_mode", "id_token_hint", "ui_locales", "display", "claims")
# Set when the portal sends the user to log in again for an application (prompt=login,
# max_age): a session that started after it satisfies the request, so no loop.
REAUTH_KEY = "oidc_reauth_after"
# How long a forced login (prompt=login, max_age) may take: the password, the code, back.
REAUTH_WINDOW = timedelta(minutes=10)
# Password + emailed code, password + authenticator app, Pro Santé Connect (eIDAS levels).
ACR_VALUES = ["urn:enrs:acr:pwd-otp-email", "urn:enrs:acr:pwd-otp-app", "eidas1", "eidas2"]


def _json_no_store(payload: dict, status: int = 200) -> Response:
    response = jsonify(payload)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/.well-known/openid-configuration")
def discovery():
    issuer = op.issuer()
    response = jsonify({
        "issuer": issuer,
        "authorization_endpoint": external_url("oidc.authorize"),
        "token_endpoint": external_url("oidc.token"),
        "userinfo_endpoint": external_url("oidc.userinfo"),
        "jwks_uri": external_url("oidc.jwks"),
        "revocation_endpoint": external_url("oidc.revoke"),
        "introspection_endpoint": external_url("oidc.introspect"),
        "end_session_endpoint": external_url("oidc.end_session"),
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(SIGNING_ALGS),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid",
                             "azp", "at_hash", "given_name", "family_name", "name", "preferred_username",
                             "profession", "email", "email_verified", "national_id", "national_id_type",
                             "establishments", "roles"],
        "acr_values_supported": ACR_VALUES,
        "prompt_values_supported": ["none", "login"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
        "ui_locales_supported": ["fr-FR"],
    })
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.get("/oauth/jwks")
def jwks():
    response = jsonify(key_ring(db.session).jwks())
    # A rotated-in key is listed here PUBLICATION_DELAY before it signs, longer than this.
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


# -- authorization ----------------------------------------------------------------------

def _error_page(title: str, text: str, status: int = 400):
    return render_template("errors/error.html", code=status, title=title, text=text), status


def _redirect_error(error: OAuth2Error):
    if not error.redirect_uri:
        return _error_page("Demande de connexion invalide",
                           "La demande de l'application n'a pas pu être traitée "
                           f"({error.error}). Revenez à l'application et réessayez.")
    return op.server().handle_error_response(None, error)


def _login_redirect(prompt_login: bool, client_id: str):
    """To the login page, back here afterwards; a forced login records when it was asked,
    and by which application."""
    if prompt_login:
        cookie[REAUTH_KEY] = {"asked_at": now().isoformat(), "client_id": client_id}
    # From the parameters, not the URL: an application may send its request as a form
    # (OIDC Core §3.1.2.1), and the login page brings the browser back here by GET.
    query = urlencode(list(request.values.items(multi=True)))
    params = {"next": f"{request.path}?{query}" if query else request.path}
    if prompt_login:
        params["reauth"] = "1"
    hint = request.values.get("login_hint")
    if hint:
        params["login_hint"] = hint[:320]
    return redirect(url_for("login.login") + "?" + urlencode(params), code=303)


def _fresh_enough(started: datetime, client_id: str) -> bool:
    """Whether the session began after the portal asked this application's user for a new
    login, a few minutes ago at most: a forced login left halfway must not excuse a later
    one, nor another application's."""
    mark = cookie.get(REAUTH_KEY)
    if not isinstance(mark, dict) or mark.get("client_id") != client_id:
        return False
    try:
        asked = datetime.fromisoformat(mark["asked_at"])
    except (KeyError, TypeError, ValueError):
        return False
    return started >= asked and now() - asked <= REAUTH_WINDOW


@bp.route("/oidc/authorize", methods=["GET", "POST"])
@csrf.exempt  # an application's auto-submitted form (OIDC §3.1.2.1 allows POST) has no portal token
@limiter.limit("120 per minute")
def authorize():
    for name in SINGLE_PARAMETERS:
        if len(request.values.getlist(name)) > 1:
            return _invalid_request(f"Multiple '{name}' parameters.")
    client = op.query_client(request.values.get("client_id", ""))
    redirect_uri = request.values.get("redirect_uri")
    if client is None:
        return _error_page("Application inconnue",
                           "L'application qui vous a envoyé ici n'est pas enregistrée sur le portail. "
                           "Revenez à l'application et réessayez, ou contactez son support.")
    if not redirect_uri or not client.check_redirect_uri(redirect_uri):
        audit.record(db.session, "oidc.redirect_uri_refused", outcome="failure", target_type="application",
                     target_id=client.client_id, details={"redirect_uri": (redirect_uri or "")[:300]})
        db.session.commit()
        return _error_page("Adresse de retour non autorisée",
                           f"L'application « {client.name} » a demandé un retour vers une adresse qui n'est pas "
                           "enregistrée. Pour votre sécurité, le portail ne vous y renvoie pas.")
    user = g.get("user")
    record = g.get("user_session")
    try:
        grant = op.server().get_consent_grant(end_user=op.Principal(user, record) if user else None)
    except OAuth2Error as error:
        return _redirect_error(error)
    prompts = (request.values.get("prompt") or "").split()
    max_age = request.values.get("max_age")
    if max_age is not None:
        if not max_age.isdigit() or len(max_age) > 9:
            return _redirect_error(InvalidRequestError("Invalid 'max_age'.", redirect_uri=redirect_uri,
                                                       state=request.values.get("state")))
    needs_login = user is None or "login" in prompts or (
        max_age is not None and now() - record.created_at > timedelta(seconds=int(max_age)))
    if needs_login and user is not None and _fresh_enough(record.created_at, client.client_id):
        needs_login = False
    if needs_login:
        if "none" in prompts:
            return _redirect_error(LoginRequiredError(redirect_uri=redirect_uri, state=request.values.get("state")))
        return _login_redirect(prompt_login=user is not None, client_id=client.client_id)
    cookie.pop(REAUTH_KEY, None)
    if g.get("cgu_outdated"):
        # Only reached with prompt=none (otherwise the CGU page came first): OIDC Core
        # §3.1.2.6, the user must interact before a code can be issued.
        from authlib.oidc.core.errors import InteractionRequiredError

        return _redirect_error(InteractionRequiredError(redirect_uri=redirect_uri, state=request.values.get("state")))
    if not may_open(db.session, user, client):
        audit.record(db.session, "oidc.role_missing", outcome="failure", actor_id=user.id,
                     target_type="application", target_id=client.client_id, details={"role": client.required_role})
        db.session.commit()
        if "none" in prompts:
            return _redirect_error(AccessDeniedError(redirect_uri=redirect_uri, state=request.values.get("state")))
        return render_template("oidc/role_missing.html", client=client), 403
    response = op.server().create_authorization_response(grant=grant, grant_user=op.Principal(user, record))
    if response.status_code == 302 and "code=" in response.headers.get("Location", ""):
        audit.record(db.session, "oidc.code_issued", actor_id=user.id, target_type="application",
                     target_id=client.client_id, details={"sid": record.public_id})
        db.session.commit()
    else:
        db.session.rollback()
    return response


def _invalid_request(description: str):
    """A malformed request: back to the application when its address is known to be
    registered, else a French page (never a redirect to an unchecked address)."""
    client_ids = request.values.getlist("client_id")
    redirect_uris = request.values.getlist("redirect_uri")
    if len(client_ids) == 1 and len(redirect_uris) == 1:
        client = op.query_client(client_ids[0])
        if client is not None and client.check_redirect_uri(redirect_uris[0]):
            states = request.values.getlist("state")
            return _redirect_error(InvalidRequestError(description, redirect_uri=redirect_uris[0],
                                                       state=states[0] if len(states) == 1 else None))
    return _error_page("Demande de connexion invalide",
                       "La demande de l'application est incomplète ou mal formée. Revenez à l'application et "
                       "réessayez.")


# -- token, userinfo, revocation, introspection ------------------------------------------

def _client_auth_failed(response: Response) -> bool:
    return response.status_code == 401


@bp.post("/oauth/token")
@csrf.exempt
@limiter.exempt
# No per-address limit here: client secrets, codes and refresh tokens are 256-bit random
# values (nothing to guess), the callers are a few application back ends sharing
# addresses, and this is the provider's hottest endpoint (exempt: the limiter would still
# resolve its rules on every call). Floods are the proxy's job.
def token():
    response = op.server().create_token_response()
    if response.status_code == 200:
        db.session.commit()
    else:
        db.session.rollback()
    return response


@bp.route("/oauth/userinfo", methods=["GET", "POST"])
@csrf.exempt
def userinfo():
    try:
        row = op.protector().acquire_token(["openid"])
    except OAuth2Error as error:
        # RFC 6750 §3: the challenge says why in WWW-Authenticate.
        status, body, headers = error()
        response = _json_no_store(dict(body), status)
        for name, value in headers:
            if name.lower() == "www-authenticate":
                response.headers[name] = value
        return response
    return _json_no_store(user_claims(db.session, row.portal_session.user, row.scope))


@bp.post("/oauth/revoke")
@csrf.exempt
@limiter.limit("60 per minute", deduct_when=_client_auth_failed)
def revoke():
    response = op.server().create_endpoint_response("revocation")
    db.session.commit()
    return response


@bp.post("/oauth/introspect")
@csrf.exempt
@limiter.limit("60 per minute", deduct_when=_client_auth_failed)
def introspect():
    response = op.server().create_endpoint_response("introspection")
    db.session.rollback()
    return response


# -- RP-initiated logout ------------------------------------------------------------------

@bp.route("/oidc/logout", methods=["GET", "POST"])
@csrf.exempt  # applications send the browser here with GET or POST; the confirmation form checks its own token
def end_session():
    try:
        end_request = op.server().validate_endpoint_request("end_session")
    except OAuth2Error as error:
        return _error_page("Déconnexion impossible",
                           "La demande de déconnexion de l'application n'est pas valide (jeton expiré ou d'un autre "
                           f"portail). Vous pouvez vous déconnecter depuis le portail. ({error.error})")
    record = g.get("user_session")
    hinted_sid = (end_request.id_token_claims or {}).get("sid")
    confirmed = False
    if request.method == "POST" and request.form.get("confirm") == "1":
        try:
            validate_csrf(request.form.get("csrf_token"))
            confirmed = True
        except (CSRFError, Exception):
            confirmed = False
    # Without a hint naming this very session, a link could log anyone out: ask first.
    if record is not None and not confirmed and (end_request.needs_confirmation or hinted_sid != record.public_id):
        return render_template("oidc/logout_confirm.html", client=end_request.client,
                               params=request.values.to_dict(flat=True))
    result = op.server().create_endpoint_response("end_session", end_request)
    cookie.clear()
    if result is not None and result.status_code == 302:
        return result
    return render_template("oidc/logged_out.html", client=end_request.client)
