"""Web hygiene: security headers and CSP, CSRF, rate limits, safe redirects."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, abort, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()

# Limits are declared on the views; storage is memory per process, or Redis when
# ENRS_REDIS_URL is set so that every process counts the same attempts.
limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)

MAX_PLAIN_FORM_BYTES = 256 * 1024

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "media-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def init_security(app: Flask, *, hsts: bool) -> None:
    app.config.setdefault("ENRS_LARGE_BODY_ENDPOINTS", {})

    # Registered before CSRF protection, which reads the form (and so hits the size limit)
    # before any blueprint hook runs: an upload page must get the chance to answer an
    # over-size file with its own form and a French message.
    @app.before_request
    def _body_limits():
        limit = app.config["ENRS_LARGE_BODY_ENDPOINTS"].get(request.endpoint)
        if limit:
            request.max_content_length = limit

    csrf.init_app(app)
    limiter.init_app(app)

    @app.before_request
    def _small_plain_forms():
        # Only multipart forms carry files; a plain form has no business being larger
        # than this, and refusing it early keeps megabytes out of parsing and templates.
        if (request.mimetype == "application/x-www-form-urlencoded"
                and (request.content_length or 0) > MAX_PLAIN_FORM_BYTES):
            abort(413)

    @app.after_request
    def _headers(response: Response) -> Response:
        headers = response.headers
        # A view may set a stricter policy (attestation previews); never a looser one.
        headers.setdefault("Content-Security-Policy", _policy(app))
        headers.setdefault("X-Frame-Options", "DENY")
        headers["X-Content-Type-Options"] = "nosniff"
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if hsts:
            headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        if request.endpoint != "static" and "Cache-Control" not in headers:
            headers["Cache-Control"] = "no-store"
        return response


def _policy(app: Flask) -> str:
    """The CSP of this response. Browsers apply form-action to the redirects that follow
    a form's submission too: a login whose next step sends the user back to an
    application, or a logout that ends a Pro Santé Connect session, must name those
    origins (app.config["ENRS_FORM_ACTION_ORIGINS"] always; g.form_action_origins for
    this response)."""
    from flask import g

    extra = list(app.config.get("ENRS_FORM_ACTION_ORIGINS", ())) + list(g.get("form_action_origins", ()))
    if not extra:
        return CONTENT_SECURITY_POLICY
    origins = " ".join(sorted(set(extra)))
    return CONTENT_SECURITY_POLICY.replace("form-action 'self'", f"form-action 'self' {origins}")


def origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def safe_next(target: str | None, default: str = "/") -> str:
    """A same-origin path to go to after a step, or the default.

    Only relative paths are kept: no scheme, no host, no "//" or "\\" tricks that
    browsers read as another host.
    """
    if not target:
        return default
    target = target.strip()
    if any(ord(c) < 32 for c in target) or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    return target


def external_url(endpoint: str, **values: object) -> str:
    """An absolute URL on the configured ENRS_BASE_URL, for emails and redirects to apps.

    Never built from the request's Host header: a forged Host must not end up in a
    password or activation link sent to a real mailbox.
    """
    from flask import current_app
    from werkzeug.routing import MapAdapter

    adapter: MapAdapter | None = current_app.extensions.get("enrs.url_adapter")
    if adapter is None:
        base = urlsplit(current_app.extensions["enrs.settings"].base_url)
        adapter = current_app.url_map.bind(base.netloc, script_name=base.path or "/", url_scheme=base.scheme)
        current_app.extensions["enrs.url_adapter"] = adapter
    return adapter.build(endpoint, values, force_external=True)
