"""Onboarding's `enrs` commands, registered by portal.cli."""
from __future__ import annotations

from typing import Callable

import click

SHOWN_REJECTIONS = 20


def register(main: click.Group, with_app: Callable, command_error: type[click.ClickException]) -> None:
    """Attach onboarding's commands to the `enrs` group."""

    @main.group("finess")
    def finess_group() -> None:
        """FINESS referential of establishments."""

    @finess_group.command("import")
    @click.argument("file")
    @click.option("--allow-mass-closure", is_flag=True,
                  help="close the absent establishments even if they are more than 5% of the referential")
    @with_app
    def finess_import(file: str, allow_mass_closure: bool) -> None:
        """Import the official FINESS extraction (etalab-cs1100507-stock-*.csv).

        Creates and updates establishments, closes those absent from the file (unless the
        file is cut short, or would close more than 5% of the referential), prints a
        summary and the first rejected lines. Exit status 1 when the file is refused or
        incomplete."""
        from onboarding.finess import FinessFileError, import_finess
        from portal.db import db

        try:
            report = import_finess(db.session, file, allow_mass_closure=allow_mass_closure)
        except FinessFileError as exc:
            raise command_error(f"{exc} ; rien n'a été importé") from None
        except FileNotFoundError:
            raise command_error(f"fichier introuvable : {file}") from None
        except OSError as exc:
            raise command_error(f"impossible de lire {file} : {exc.strerror or exc}") from None
        click.echo(report.summary())
        for rejection in report.rejections[:SHOWN_REJECTIONS]:
            click.echo(f"  {rejection}")
        if report.rejected > SHOWN_REJECTIONS:
            click.echo(f"  … et {report.rejected - SHOWN_REJECTIONS} autres lignes rejetées")
        if report.error():
            raise command_error(report.error())

    @main.group("access")
    def access_group() -> None:
        """ROR access requests."""

    @access_group.command("digest")
    @with_app
    def access_digest() -> None:
        """Email the admins whose scope has new requests (at most once an hour each); for cron
        or a worker when `enrs serve` is not the server."""
        from onboarding.access import send_admin_digests
        from portal.db import db

        click.echo(f"{send_admin_digests(db.session)} administrateur(s) prévenu(s).")

    @access_group.command("sweep")
    @click.option("--older-than", default=3600, show_default=True, type=int,
                  help="seconds: files younger than this may belong to an upload in progress")
    @with_app
    def access_sweep(older_than: int) -> None:
        """Remove attestation files no request refers to (left by a process killed mid-upload).
        The worker does it hourly for files older than an hour."""
        from datetime import datetime, timedelta, timezone

        from onboarding.maintenance import sweep_orphan_attestations
        from portal.db import db
        from portal.storage import store_for

        removed = sweep_orphan_attestations(db.session, store_for(),
                                            datetime.now(timezone.utc) - timedelta(seconds=older_than))
        db.session.commit()
        click.echo(f"{removed} fichier(s) orphelin(s) supprimé(s).")
