"""The demo ROR application's pages and the endpoints the portal calls."""
from __future__ import annotations

import hmac
import logging
import secrets
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from authlib.integrations.base_client import OAuthError
from flask import Blueprint, Flask, current_app, jsonify, redirect, render_template, request, session
from joserfc.errors import JoseError

from examples.ror_app.config import origin_of
from examples.ror_app.labels import acr_label, amr_labels, role_label
from examples.ror_app.logout_token import LogoutTokenError, verify_logout_token

log = logging.getLogger("ror_app")
bp = Blueprint("ror", __name__)

# The claims kept in the local session: what the pages show, plus sid/sub for back-channel logout.
KEPT_CLAIMS = ("sub", "sid", "given_name", "family_name", "name", "preferred_username", "email", "profession",
               "establishments", "roles", "national_id", "national_id_type", "acr", "amr", "auth_time")


def _ror():
    return current_app.extensions["ror_app"]


def _error(title: str, text: str, status: int = 400):
    return render_template("error.html", title=title, text=text), status


def _portal_unreachable(exc: Exception):
    log.warning("portal unreachable: %s", exc)
    return _error("Portail injoignable",
                  "Le portail d'identité ne répond pas pour le moment. Réessayez dans quelques instants.", 502)


def init_app(app: Flask) -> None:
    settings = app.extensions["ror_app"].settings
    # Where forms may lead: here, and the portal (the logout form ends at its end_session_endpoint;
    # browsers apply form-action to the redirects that follow a submission).
    csp = ("default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'; "
           f"form-action 'self' {origin_of(settings.issuer)}")

    @app.after_request
    def _headers(response):
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        # /callback carries the authorization code in its URL: never hand it to another site.
        response.headers["Referrer-Policy"] = "no-referrer"
        if settings.secure_cookies:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.context_processor
    def _labels():
        return {"role_label": role_label, "acr_label": acr_label, "amr_labels": amr_labels,
                "portal_url": settings.issuer}


# -- pages ------------------------------------------------------------------------------


def _auth_time(value: object) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        zone, suffix = ZoneInfo("Europe/Paris"), ""
    except ZoneInfoNotFoundError:  # a machine without the time zone database
        zone, suffix = timezone.utc, " (UTC)"
    return datetime.fromtimestamp(value, tz=zone).strftime("%d/%m/%Y à %H:%M") + suffix


@bp.get("/")
def home():
    signed_out = False
    if request.args.get("state"):
        # Back from the portal's end_session_endpoint (RP-initiated logout).
        try:
            _ror().portal.validate_logout_response()
            signed_out = True
        except OAuthError:
            pass
    user = session.get("user")
    if user is None:
        return render_template("home.html", user=None, signed_out=signed_out)
    establishments = {e.get("finess"): e for e in user.get("establishments") or [] if isinstance(e, dict)}
    return render_template("home.html", user=user, establishments=establishments,
                           auth_time=_auth_time(user.get("auth_time")), csrf_token=session.get("csrf"))


def _start_flow(after_login: str, login_hint: str | None = None):
    """The authorization request: state, nonce and PKCE verifier kept server-side with
    the page to show once signed in."""
    ror = _ror()
    try:
        metadata = ror.portal.load_server_metadata()
    except requests.RequestException as exc:
        return _portal_unreachable(exc)
    # OpenID Connect Discovery §4.3: the document must name the issuer we were configured with.
    if metadata.get("issuer") != ror.settings.issuer:
        log.error("discovery issuer %r differs from ROR_APP_ISSUER %r", metadata.get("issuer"), ror.settings.issuer)
        return _error("Portail mal configuré", "Le portail ne s'annonce pas sous l'adresse attendue : la connexion "
                      "est refusée par sécurité. Prévenez l'administrateur de l'application.", 502)
    redirect_uri = ror.settings.base_url + "/callback"
    extra = {"login_hint": login_hint[:320]} if login_hint else {}
    created = ror.portal.create_authorization_url(redirect_uri, **extra)
    ror.portal.save_authorize_data(redirect_uri=redirect_uri, after_login=after_login, **created)
    return redirect(created["url"], code=303)


@bp.get("/login")
def login():
    return _start_flow("/")


def _own_target(target: str | None) -> str:
    """target_link_uri when it points into this application (as a local path), else home:
    the portal must not be able to send users elsewhere through us."""
    if not target or len(target) > 2000 or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if origin_of(target) != _ror().settings.origin:
        return "/"
    path = parts.path or "/"
    if not path.startswith("/") or path.startswith("//"):
        return "/"
    return urlunsplit(("", "", path, parts.query, ""))


@bp.route("/initiate-login", methods=["GET", "POST"])
def initiate_login():
    """OpenID Connect Core §4, third-party-initiated login: the portal's tile sends the
    browser here with its issuer; we start an ordinary code flow with it."""
    iss = request.values.get("iss")
    if iss != _ror().settings.issuer:
        log.warning("initiate-login refused: iss %r", (iss or "")[:200])
        return _error("Demande de connexion refusée",
                      "Cette demande de connexion ne vient pas du portail auquel l'application fait confiance. "
                      "Ouvrez l'application depuis votre portail.")
    return _start_flow(_own_target(request.values.get("target_link_uri")), request.values.get("login_hint"))


@bp.get("/callback")
def callback():
    ror = _ror()
    state = request.args.get("state")
    state_data = ror.portal.framework.get_state_data(session, state) if state else None
    if not state_data:
        # Unknown, used or expired state: maybe a forged link (login CSRF), maybe a second tab.
        return _error("Connexion interrompue",
                      "La réponse du portail ne correspond à aucune demande de connexion en cours (lien déjà utilisé, "
                      "expiré, ou ouvert dans un autre navigateur). Recommencez depuis l'accueil.")
    error = request.args.get("error")
    if error:
        ror.portal.framework.clear_state_data(session, state)
        if error == "access_denied":
            text = "Le portail n'a pas autorisé l'accès à cette application pour votre compte."
        elif error == "login_required":
            text = "Vous n'êtes pas connecté au portail."
        else:
            text = "Le portail a refusé la demande de connexion."
        return _error("Connexion impossible", f"{text} ({error[:64]})", 403 if error == "access_denied" else 400)
    try:
        token = ror.portal.authorize_access_token()
    except requests.RequestException as exc:
        return _portal_unreachable(exc)
    except (OAuthError, JoseError, ValueError) as exc:
        log.warning("code exchange or ID token refused: %s", exc)
        return _error("Connexion impossible", "La réponse du portail n'a pas pu être vérifiée. Recommencez depuis "
                      "l'accueil.")
    claims = token.get("userinfo")
    if not claims or not claims.get("sub"):
        # authlib verifies the ID token (signature against the JWKS, iss, aud, exp, nonce)
        # only when it got one for an openid request: no verified ID token, no session.
        return _error("Connexion impossible", "Le portail n'a pas fourni de jeton d'identité valide.")
    user = {name: claims[name] for name in KEPT_CLAIMS if name in claims}
    after_login = state_data.get("after_login") or "/"
    # A new local session (new id) for the signed-in user: nothing of the anonymous one is kept.
    session.clear()
    session.regenerate()
    session["user"] = user
    session["id_token"] = token["id_token"]
    session["csrf"] = secrets.token_urlsafe(32)
    log.info("signed in: sub=%s sid=%s", user.get("sub"), user.get("sid"))
    return redirect(after_login, code=303)


@bp.post("/logout")
def logout():
    """Ends the local session at once, then asks the portal to end its own (RP-initiated
    logout), which brings the browser back to our home page."""
    if "user" not in session:
        # Already ended (the portal's back-channel logout, or another tab): nothing to protect.
        return redirect("/", code=303)
    expected = session.get("csrf")
    sent = request.form.get("csrf_token", "")
    if not expected or not hmac.compare_digest(expected, sent):
        return _error("Déconnexion refusée", "Le formulaire a expiré. Revenez à l'accueil et réessayez.")
    id_token = session.get("id_token")
    session.clear()
    session.regenerate()
    ror = _ror()
    try:
        return ror.portal.logout_redirect(post_logout_redirect_uri=ror.settings.base_url + "/",
                                          id_token_hint=id_token, client_id=ror.settings.client_id)
    except requests.RequestException as exc:
        return _portal_unreachable(exc)


@bp.post("/backchannel-logout")
def backchannel_logout():
    """Called by the portal, not by a browser: OpenID Connect Back-Channel Logout §2.5."""
    ror = _ror()
    try:
        algorithms = ror.portal.load_server_metadata().get("id_token_signing_alg_values_supported")
        claims = verify_logout_token(request.form.get("logout_token"), load_keys=ror.load_keys,
                                     issuer=ror.settings.issuer, client_id=ror.settings.client_id,
                                     algorithms=algorithms)
        if not ror.store.remember_jti(claims["jti"], int(claims["exp"]) + 120):
            raise LogoutTokenError("logout token replayed (jti already seen)")
    except LogoutTokenError as exc:
        log.warning("back-channel logout refused: %s", exc)
        response = jsonify(error="invalid_request", error_description=str(exc))
        response.status_code = 400
        return response
    except requests.RequestException as exc:
        # We could not fetch the keys: not the portal's fault, let it retry later.
        log.warning("back-channel logout: JWKS unreachable: %s", exc)
        response = jsonify(error="temporarily_unavailable")
        response.status_code = 503
        return response
    ended = ror.store.end_matching(claims.get("sid"), claims.get("sub"))
    log.info("back-channel logout: sid=%s sub=%s, %d session(s) ended", claims.get("sid"), claims.get("sub"), ended)
    return "", 200
