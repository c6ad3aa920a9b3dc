"""create_app(): settings, extensions, blueprints and error pages."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Mapping

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from portal.clock import Clock
from portal.config import Settings, load_settings
from portal.db import db
from portal.security import init_security, limiter

ROOT = Path(__file__).resolve().parent.parent

# French titles and explanations of the error pages; the status code stays the real one.
ERROR_PAGES = {
    400: ("Requête invalide", "La demande envoyée au portail n'a pas pu être comprise. Revenez à la page précédente et réessayez."),
    403: ("Accès refusé", "Vous n'avez pas les droits nécessaires pour accéder à cette page."),
    404: ("Page introuvable", "La page demandée n'existe pas ou a été déplacée."),
    405: ("Méthode non autorisée", "Cette action n'est pas possible sur cette page."),
    413: ("Fichier trop volumineux", "Le fichier ou le formulaire envoyé dépasse la taille autorisée (12 Mo pour un fichier)."),
    429: ("Trop de tentatives", "Vous avez effectué trop de tentatives. Patientez quelques minutes avant de réessayer."),
    500: ("Erreur interne", "Une erreur inattendue est survenue. L'équipe du portail a été prévenue ; réessayez dans quelques instants."),
    503: ("Service momentanément indisponible", "Le portail ne peut pas traiter votre demande pour le moment. Réessayez dans quelques instants : ce que vous avez déjà envoyé et qui a été confirmé est conservé."),
}

# An attestation may be 12 MiB; the rest of the multipart form needs a little room.
MAX_ATTESTATION_BYTES = 12 * 1024 * 1024
MAX_REQUEST_BYTES = MAX_ATTESTATION_BYTES + 512 * 1024


def create_app(env: Mapping[str, str] | None = None, *, clock: Clock | None = None) -> Flask:
    settings = load_settings(env)
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=str(settings.instance_dir),
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
        SESSION_COOKIE_NAME="__Host-enrs" if settings.secure_cookies else "enrs",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PREFERRED_URL_SCHEME="https" if settings.secure_cookies else "http",
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        RATELIMIT_STORAGE_URI=settings.redis_url or "memory://",
        RATELIMIT_STRATEGY="moving-window",
        RATELIMIT_KEY_PREFIX="enrs",
        # Redis down: the limits go on per process in memory (still limiting, not shared)
        # rather than failing the request; back to Redis once it answers again.
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_STORAGE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1},
        TEMPLATES_AUTO_RELOAD=settings.is_development,
        JSON_SORT_KEYS=False,
    )
    app.json.ensure_ascii = False
    app.extensions["enrs.settings"] = settings
    from idp import argon2_build

    # Before anything hashes (the dummy hash, below): a build for a level this CPU lacks
    # would die of an illegal instruction, a miscompiled one store unverifiable hashes.
    app.extensions["enrs.argon2_build"] = {"build": argon2_build.require_cpu_support(),
                                           "version": argon2_build.installed_version()}
    argon2_build.self_test()
    from idp import passwords

    passwords.limit_concurrent_hashes(settings.password_hash_concurrency)
    passwords.use_hash_parameters(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism,
                                  settings.argon2_threads)
    passwords.prepare_dummy_hash()
    if clock is not None:
        app.extensions["enrs.clock"] = clock

    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # X-Forwarded-* are believed only from the configured number of proxies in front:
        # the client address for rate limits and the audit, the scheme for cookies. Not
        # X-Forwarded-Host nor -Port: the proxy passes the Host header on (deploy.md) and
        # may let a client's own X-Forwarded-Host through, which would then be believed.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    if settings.psc_discovery_url:
        from portal.security import origin_of

        # The logout button of every page may end in Pro Santé Connect's logout (issuer host).
        app.config["ENRS_FORM_ACTION_ORIGINS"] = [origin_of(settings.psc_discovery_url)]
    db.init_app(app, settings.database_url)
    init_security(app, hsts=settings.secure_cookies)
    from portal import mail, observability, storage

    observability.init_app(app)
    mail.init_app(app)
    storage.init_app(app)

    _register_blueprints(app)
    _register_error_pages(app)
    _register_template_globals(app, settings)
    return app


def _register_blueprints(app: Flask) -> None:
    from idp import sessions
    from idp.account import bp as account_bp
    from idp.login import bp as login_bp
    from idp.provider import backchannel
    from idp.provider.server import init_provider
    from idp.provider.views import bp as oidc_bp
    from idp.psc.views import bp as psc_bp
    from idp.reset import bp as reset_bp
    from idp.totp import bp as totp_bp
    from onboarding.access import bp as access_bp
    from onboarding.approval import bp as activation_bp
    from onboarding.captcha import bp as captcha_bp
    from onboarding.profile import bp as establishments_bp
    from onboarding.referentials import bp as referentials_bp
    from onboarding.referentials import profession_label
    from onboarding.registration import bp as registration_bp
    from portal.admin import bp as admin_bp
    from portal.admin.applications import bp as applications_bp
    from portal.admin.audit_log import bp as audit_log_bp
    from portal.cgu import bp as cgu_bp
    from portal.dashboard import bp as dashboard_bp
    from portal.views import bp as portal_bp

    sessions.init_app(app)
    # The provider's claims name professions; the referential lives in onboarding.
    app.extensions["enrs.profession_label"] = profession_label
    init_provider(app)
    backchannel.init_app(app)
    app.extensions["enrs.admin_queues"] = _admin_queues()
    _register_purges(app)
    for blueprint in (portal_bp, cgu_bp, referentials_bp, captcha_bp, registration_bp, activation_bp,
                      login_bp, reset_bp, account_bp, totp_bp, establishments_bp, access_bp, admin_bp,
                      audit_log_bp, oidc_bp, psc_bp, dashboard_bp, applications_bp):
        app.register_blueprint(blueprint)


def _register_purges(app: Flask) -> None:
    """Each package forgets what it no longer needs; run hourly by the worker (or the
    sweep of `enrs serve`)."""
    from idp import maintenance as idp_maintenance
    from onboarding import maintenance as onboarding_maintenance
    from portal import audit
    from portal.db import db
    from portal.worker import every

    retention = app.extensions["enrs.settings"].audit_retention_days

    def purge_all() -> None:
        from portal.storage import store_for

        counts = {**idp_maintenance.purge(db.session), **onboarding_maintenance.purge(db.session),
                  "audit_entries": audit.purge_older_than(db.session, retention),
                  "orphan_files": onboarding_maintenance.sweep_orphan_attestations(db.session, store_for(app))}
        db.session.commit()
        if any(counts.values()):
            logging.getLogger("enrs.worker").info("purge", extra={"fields": {"event": "purge", **counts}})

    def end_lapsed_sessions() -> None:
        if idp_maintenance.end_lapsed_sessions(db.session, app.extensions["enrs.settings"].session_idle_timeout):
            db.session.commit()

    app.extensions.setdefault("enrs.periodic", []).extend([every(3600, purge_all), every(60, end_lapsed_sessions)])


def _admin_queues() -> dict:
    """How many requests wait in each admin queue, for the metrics."""
    import sqlalchemy as sa

    from idp.models import STATUS_REVIEW_PENDING, User
    from onboarding.models import REQUEST_PENDING, AccessRequest

    def count(model, condition):
        return lambda session: session.scalar(sa.select(sa.func.count()).select_from(model).where(condition))

    return {"accounts": count(User, User.status == STATUS_REVIEW_PENDING),
            "ror_access": count(AccessRequest, AccessRequest.status == REQUEST_PENDING)}


def _wants_json() -> bool:
    from onboarding.captcha import is_json_path

    return request.path.startswith(("/api/", "/oauth/")) or is_json_path(request.path)


def _register_error_pages(app: Flask) -> None:
    def render_error(code: int, description: str | None = None):
        title, text = ERROR_PAGES.get(code, ERROR_PAGES[500] if code >= 500 else ERROR_PAGES[400])
        if _wants_json():
            return jsonify(error=title, message=description or text), code
        return _error_page(code, title, text), code

    @app.errorhandler(413)
    def _too_large(exc: HTTPException):
        # An upload page gets its form back with the message rather than an error page
        # (the body was not read, so the fields cannot be kept past this size).
        if request.endpoint in app.config.get("ENRS_LARGE_BODY_ENDPOINTS", {}) and not _wants_json():
            from flask import flash, redirect

            flash("Le fichier dépasse 12 Mo.", "error")
            return redirect(request.path, code=303)
        return render_error(413)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = render_error(exc.code or 500)
        if exc.code == 405 and exc.valid_methods:
            body, code = response
            return body, code, {"Allow": ", ".join(exc.valid_methods)}
        return response

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):
        title = "Session expirée"
        text = ("Le formulaire a expiré ou n'a pas été envoyé depuis le portail. "
                "Rechargez la page et renvoyez-le.")
        if _wants_json():
            return jsonify(error=title, message=text), 400
        return _error_page(400, title, text), 400

    def server_error(exc: BaseException):
        unavailable = _is_connection_error(exc)
        # The page must render without the database: no user menu, no console counts
        # (the rollback expires the user, whose attributes would need the database).
        _forget_request_user()
        body, status = render_error(503 if unavailable else 500)
        return (body, status, {"Retry-After": "10"}) if unavailable else (body, status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return server_error(exc)

    @app.errorhandler(InternalServerError)
    def _internal(exc: InternalServerError):
        # Flask comes here (having logged it) for what failed outside the view's own
        # handling: an after-request hook, an error handler; also abort(500).
        return server_error(exc.original_exception or exc)

    @app.errorhandler(429)
    def _too_many(exc: HTTPException):
        return render_error(429)


def _error_page(code: int, title: str, text: str) -> str:
    """The French error page. Its layout may need the database (the user's menu, the
    console's counts); when that fails too, the page is drawn again without the user,
    and as bare HTML at worst: never the server's own English page."""
    try:
        return render_template("errors/error.html", code=code, title=title, text=text)
    except Exception:
        logging.getLogger("enrs.errors").warning("error page %s drawn without the user", code, exc_info=True)
        _forget_request_user()
    try:
        return render_template("errors/error.html", code=code, title=title, text=text)
    except Exception:
        return (f'<!doctype html><html lang="fr"><meta charset="utf-8"><title>{title}</title>'
                f'<h1 id="titre-erreur">{title}</h1><p>{text}</p><p>Code d\'erreur : {code}</p>')


def _forget_request_user() -> None:
    from flask import g

    # If the connection is gone the rollback fails too; closing the session at the end drops it.
    with contextlib.suppress(Exception):
        db.session.rollback()
    g.user = None
    g.user_session = None


def _is_connection_error(exc: BaseException) -> bool:
    """The database is unreachable or went away (restart, failover): a 503, not a bug."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _register_template_globals(app: Flask, settings: Settings) -> None:
    from onboarding.referentials import profession_label

    app.add_template_filter(profession_label, "profession_label")

    @app.context_processor
    def _globals():
        return {"portal_name": settings.portal_name, "settings": settings, "url_endpoints": app.view_functions}


def settings_of(app: Flask) -> Settings:
    return app.extensions["enrs.settings"]


__all__ = ["create_app", "settings_of", "limiter", "MAX_ATTESTATION_BYTES"]
