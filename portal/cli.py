"""`enrs …` commands. Errors print one clear line and exit with status 1."""
from __future__ import annotations

import sys
from functools import wraps
from typing import Callable

import click
from flask import Flask

from portal.config import ConfigError


class CommandError(click.ClickException):
    """A refusal to show the operator as one line."""

    def show(self, file=None) -> None:  # noqa: D102 - click's signature
        click.echo(f"Erreur : {self.message}", err=True)


_app: Flask | None = None


def get_app() -> Flask:
    global _app
    if _app is None:
        from portal.app import create_app

        try:
            _app = create_app()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
    return _app


def with_app(func: Callable) -> Callable:
    """Run the command inside the app context, turning expected failures into one line."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        app = get_app()
        with app.app_context():
            try:
                return func(*args, **kwargs)
            except CommandError:
                raise
            except (ValueError, OSError) as exc:
                raise CommandError(str(exc)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ENRS portal: administration commands."""


# -- database ---------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_app
def db_upgrade(revision: str) -> None:
    """Create or upgrade the database schema."""
    from sqlalchemy.exc import OperationalError

    from portal.db import current_revision, db, upgrade

    try:
        upgrade(db.engine, revision)
    except OperationalError as exc:
        raise CommandError(f"base de données injoignable : {exc.orig}") from None
    click.echo(f"Base de données à jour (révision {current_revision(db.engine)}).")


@db_group.command("revision")
@click.option("-m", "--message", required=True)
@click.option("--rev-id", required=True, help="e.g. 0004_access_requests")
@with_app
def db_revision(message: str, rev_id: str) -> None:
    """(Developers) write a migration from the difference between models and database."""
    from alembic import command

    from portal.db import alembic_config, db

    command.revision(alembic_config(db.engine), message=message, autogenerate=True, rev_id=rev_id)


# -- mail -------------------------------------------------------------------------------


@main.group("mail")
def mail_group() -> None:
    """Outgoing email (outbox)."""


@mail_group.command("deliver")
@with_app
def mail_deliver() -> None:
    """Deliver every message of the outbox that is due."""
    from portal.db import db
    from portal.mail import deliver, outbox_backlog

    report = deliver()
    waiting, oldest = outbox_backlog(db.session)
    click.echo(f"Messages : {report}. En attente : {waiting}.")
    if report.failed:
        sys.exit(1)


# -- accounts ----------------------------------------------------------------------------


@main.group("admin")
def admin_group() -> None:
    """Administrators of the portal."""


@admin_group.command("create")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(["super", "regional"]), required=True)
@click.option("--departments", default="", help="for a regional admin, e.g. 28,37,45")
@click.option("--first-name", default="Administrateur")
@click.option("--last-name", default="Portail")
@click.option("--password", default=None, help="set now (else a link to choose it is emailed)")
@with_app
def admin_create(email, role, departments, first_name, last_name, password):
    """Create an administrator (prints the login identifier)."""
    from onboarding.accounts import ROLES, create_admin, parse_departments
    from portal.db import db

    user = create_admin(db.session, email=email, role=ROLES[role], departments=parse_departments(departments),
                        first_name=first_name, last_name=last_name, actor=None, password=password)
    db.session.commit()
    click.echo(user.login)


@main.group("user")
def user_group() -> None:
    """Professional accounts."""


@user_group.command("create")
@click.option("--email", required=True)
@click.option("--password", required=True)
@click.option("--first-name", required=True)
@click.option("--last-name", required=True)
@click.option("--profession", default="10", show_default=True, help="TRE_G15 code")
@click.option("--finess", default=None, help="establishment of practice (FINESS géographique)")
@with_app
def user_create(email, password, first_name, last_name, profession, finess):
    """Create an active professional, non-interactively (prints the login identifier)."""
    from onboarding.accounts import create_professional
    from portal.db import db

    user = create_professional(db.session, email=email, password=password, first_name=first_name,
                               last_name=last_name, profession=profession, finess=finess)
    db.session.commit()
    click.echo(user.login)


@main.command("demo")
@click.option("--if-empty", is_flag=True, help="keep existing accounts; only make sure the demo ROR application is registered")
@with_app
def demo(if_empty: bool) -> None:
    """Seed demo data (development only): CGU, establishments, admins, a professional with the ROR
    role, and the demo ROR application (its client secret written to the instance folder)."""
    from portal.demo import seed_demo

    for line in seed_demo(if_empty=if_empty):
        click.echo(line)


@main.group("cgu")
def cgu_group() -> None:
    """Terms of use (CGU)."""


@cgu_group.command("publish")
@click.option("--version", "version", required=True)
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False))
@with_app
def cgu_publish(version: str, path: str) -> None:
    """Publish a new CGU version: users accept it again at their next login."""
    from pathlib import Path

    from portal import audit
    from portal.cgu import publish_cgu
    from portal.db import db

    text = Path(path).read_text(encoding="utf-8").strip()
    if not text:
        raise CommandError("le fichier des CGU est vide")
    publish_cgu(db.session, version, text)
    audit.record(db.session, "cgu.publish", actor_label="cli", details={"version": version})
    try:
        db.session.commit()
    except Exception:
        raise CommandError(f"la version {version} existe déjà") from None
    click.echo(f"CGU version {version} publiée.")


# -- referentials -----------------------------------------------------------------------


def _register_optional_groups() -> None:
    """Commands owned by other packages register themselves here (dependency rule)."""
    from idp.provider.client_cli import register as register_clients
    from idp.provider.keys_cli import register as register_keys
    from onboarding.cli import register as register_onboarding
    from onboarding.models import ROLE_LABELS

    register_onboarding(main, with_app, CommandError)
    register_clients(main, with_app, CommandError, roles=ROLE_LABELS)  # the roles an application may require
    register_keys(main, with_app, CommandError)


# -- serving ----------------------------------------------------------------------------


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--prod", is_flag=True, help="gunicorn with several worker processes (see docs/deploy.md)")
@click.option("--workers", default=4, show_default=True, type=int, help="worker processes (with --prod)")
@click.option("--threads", default=8, show_default=True, type=int, help="threads per worker (with --prod)")
def serve(host: str, port: int, prod: bool, workers: int, threads: int) -> None:
    """Serve the portal: the development server, or gunicorn with --prod.

    With --prod, run `enrs worker` beside it: the web processes then leave the outbox
    and the periodic jobs to it."""
    if prod:
        _serve_with_gunicorn(host, port, workers, threads)
        return
    from portal.mail import sweep_outbox_every

    app = get_app()
    settings = app.extensions["enrs.settings"]
    sweep_outbox_every(app, 60)
    click.echo(f"{settings.portal_name} : {settings.base_url} (écoute sur http://{host}:{port})")
    if settings.mail_url.startswith("file://"):
        click.echo(f"Les mails sont écrits dans {settings.mail_url.removeprefix('file://')}")
    app.run(host=host, port=port, debug=False, use_reloader=False, threaded=True)


def _serve_with_gunicorn(host: str, port: int, workers: int, threads: int) -> None:
    from portal import huge_pages

    huge_pages.restart_with_huge_pages()  # before any work: the command may start again here

    # First: it sets PROMETHEUS_MULTIPROC_DIR, which must precede the metrics' creation.
    from portal import gunicorn_conf  # noqa: F401 - imported for that

    get_app()  # a configuration error stops here, with its one line, before any fork

    pages = " ; grandes pages mémoire pour les hachages Argon2id" if huge_pages.active() else ""
    click.echo(f"gunicorn : {workers} processus × {threads} fils sur http://{host}:{port}{pages}")
    gunicorn_application(host, port, workers, threads).run()


def gunicorn_application(host: str, port: int, workers: int, threads: int):
    """gunicorn with every setting and hook portal/gunicorn_conf.py defines (the same as
    `gunicorn -c python:portal.gunicorn_conf`), and the command line's address and counts."""
    from gunicorn.app.base import BaseApplication

    from portal import gunicorn_conf

    class Portal(BaseApplication):
        def load_config(self) -> None:
            for name in self.cfg.settings:
                if hasattr(gunicorn_conf, name) and name not in ("bind", "workers", "threads"):
                    self.cfg.set(name, getattr(gunicorn_conf, name))
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)

        def load(self):
            from portal.wsgi import app

            return app

    return Portal()


@main.command("worker")
@click.option("--interval", default=5.0, show_default=True, type=float, help="seconds between rounds")
@click.option("--once", is_flag=True, help="one round, then exit (cron)")
def worker(interval: float, once: bool) -> None:
    """Deliver the outbox and run the periodic jobs (logout notices, digests, purges)."""
    from portal import worker as background

    app = get_app()
    if once:
        click.echo(background.run_once(app))
        return
    background.run(app, interval=interval)


_register_optional_groups()


if __name__ == "__main__":  # pragma: no cover
    main()
