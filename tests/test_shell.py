"""The portal shell: home page, layout, error pages and security headers."""
from __future__ import annotations


def test_newcomer_sees_a_french_home_page_with_login_and_registration(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert '<html lang="fr">' in page
    assert "eSanté Test" in page
    assert 'href="/login">Se connecter</a>' in page
    assert 'href="/register">Créer un compte</a>' in page
    assert "Mentions légales" in page and "Conditions générales d'utilisation" in page and "Contact" in page
    assert 'href="#contenu"' in page and 'id="contenu"' in page


def test_every_page_carries_the_security_headers(client):
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    # Development over http: no HSTS (it would pin a laptop's localhost to https).
    assert "Strict-Transport-Security" not in response.headers


def test_https_deployment_sends_hsts_and_secure_cookie_name(app_env):
    from portal.app import create_app

    app = create_app({**app_env, "ENRS_ENV": "production", "ENRS_BASE_URL": "https://portail.esante-test.fr",
                      "ENRS_MAIL_URL": "smtp://127.0.0.1:2525"})
    response = app.test_client().get("/")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_NAME"] == "__Host-enrs"


def test_unknown_page_gets_a_french_404(client):
    response = client.get("/nulle-part")
    assert response.status_code == 404
    assert "Page introuvable" in response.get_data(as_text=True)


def test_wrong_method_gets_a_french_405(client):
    response = client.post("/mentions-legales")
    # CSRF protection answers first for an unsafe method without a token.
    assert response.status_code in (400, 405)
    assert "<html lang=\"fr\">" in response.get_data(as_text=True)


def test_oversized_form_gets_a_french_413(app):
    @app.post("/upload-test")
    def upload_test():
        return "reçu"

    big = b"x" * (13 * 1024 * 1024)
    response = app.test_client().post("/upload-test", data={"attestation": (__import__("io").BytesIO(big), "a.pdf")})
    assert response.status_code == 413
    assert "Fichier trop volumineux" in response.get_data(as_text=True)


def test_unexpected_error_shows_a_french_500_without_trace(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    app.config["TESTING"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert "Erreur interne" in page and "secret internals" not in page and "Traceback" not in page


def test_a_page_already_answered_survives_its_database_connection_dying_at_the_end(app):
    """PostgreSQL restarted after the view read what it needed: closing the request's
    session rolls back on a dead connection, which must not turn the page into a 500."""
    import sqlalchemy as sa

    from portal.db import db

    @app.get("/read-then-lose-the-database")
    def read_then_lose_the_database():
        connection = db.session.connection()
        if connection.dialect.name == "postgresql":
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            admin = sa.create_engine(connection.engine.url)
            with admin.begin() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            admin.dispose()
        else:
            connection.connection.dbapi_connection.close()
        return "lu"

    response = app.test_client().get("/read-then-lose-the-database")
    assert (response.status_code, response.get_data(as_text=True)) == (200, "lu")
    assert app.test_client().get("/").status_code == 200  # the dead connection left the pool


def _take_the_database_away(engine) -> None:
    """From now on every new connection is refused, as by a PostgreSQL shutting down."""
    import sqlalchemy as sa

    def refuse(dialect, _record, _cargs, _params):
        raise dialect.loaded_dbapi.OperationalError("the database system is shutting down")

    sa.event.listen(engine, "do_connect", refuse)
    engine.dispose()


def _logged_in_doctor(app, mailbox):
    from tests.journeys import login, seed_doctor

    seed_doctor(app)
    client = app.test_client()
    assert login(client, mailbox, "nathalie.dupont@esante-test.fr", "Hopital-Dreux-2026",
                 "nathalie.dupont@esante-test.fr").status_code == 303
    return client


def test_a_committed_request_keeps_its_answer_when_the_database_goes_away_before_the_end(app, mailbox, caplog):
    """A request acknowledged after its commit (an access request whose admin digest then
    failed): the access log and the end of the request need nothing from the database."""
    import sqlalchemy as sa
    from flask import redirect

    from portal.db import db

    @app.post("/commit-then-lose-the-database")
    def commit_then_lose_the_database():
        db.session.commit()
        _take_the_database_away(db.engine)
        try:  # a follow-up (the admin digest) fails; the user's row is expired by the rollback
            db.session.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError:
            db.session.rollback()
        return redirect("/merci", code=303)

    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False, WTF_CSRF_ENABLED=False)
    client = _logged_in_doctor(app, mailbox)
    caplog.set_level("INFO", logger="enrs.access")
    response = client.post("/commit-then-lose-the-database")
    assert (response.status_code, response.headers["Location"]) == (303, "/merci")
    logged = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("route") == "commit_then_lose_the_database"]
    assert logged and logged[0]["status"] == 303 and logged[0]["user_id"] is not None


def test_a_failure_after_the_view_while_the_database_is_away_shows_the_french_error_page(app, mailbox):
    """What fails after the view (here a hook reading the user's row) reaches Flask's last
    handler; its page must not need the database either."""
    from flask import g, request

    from portal.db import db

    @app.get("/lose-the-database")
    def lose_the_database():
        db.session.commit()
        _take_the_database_away(db.engine)
        db.session.expire_all()  # the user's row must be read again, and cannot be
        return "perdu"

    @app.after_request
    def read_the_user(response):
        if request.path == "/lose-the-database":
            response.headers["X-Email"] = g.user.email
        return response

    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)
    client = _logged_in_doctor(app, mailbox)
    response = client.get("/lose-the-database")
    page = response.get_data(as_text=True)
    assert response.status_code == 503 and response.headers["Retry-After"] == "10"
    assert 'lang="fr"' in page and "indisponible" in page.lower() and "Traceback" not in page


def test_legal_pages_exist(client):
    for path, title in [("/mentions-legales", "Mentions légales"), ("/contact", "Contact"),
                        ("/accessibilite", "Déclaration d'accessibilité")]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert title in response.get_data(as_text=True)
