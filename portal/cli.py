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


# -- referentials -----------------------------------------------------------------------


def _register_optional_groups() -> None:
    """Commands owned by other packages register themselves here (dependency rule)."""
    from onboarding.cli import register as register_onboarding

    register_onboarding(main, with_app, CommandError)


# -- serving ----------------------------------------------------------------------------


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Serve the portal (development server; see docs for production)."""
    app = get_app()
    settings = app.extensions["enrs.settings"]
    click.echo(f"{settings.portal_name} : {settings.base_url} (écoute sur http://{host}:{port})")
    if settings.mail_url.startswith("file://"):
        click.echo(f"Les mails sont écrits dans {settings.mail_url.removeprefix('file://')}")
    app.run(host=host, port=port, debug=False, use_reloader=False, threaded=True)


_register_optional_groups()


if __name__ == "__main__":  # pragma: no cover
    main()
