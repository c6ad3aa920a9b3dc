"""`enrs keys …`: the OpenID Provider's signing keys."""
from __future__ import annotations

from typing import Callable

import click


def register(main: click.Group, with_app: Callable, command_error: type[click.ClickException]) -> None:
    @main.group("keys")
    def keys_group() -> None:
        """Signing keys of ID tokens and logout tokens."""

    @keys_group.command("rotate")
    @with_app
    def keys_rotate() -> None:
        """Add new signing keys (RS256 and ES256) that sign from now on.

        The previous keys stay published in the JWKS for a day, so tokens they signed
        remain verifiable until they expire; every process picks the new keys up within
        30 seconds."""
        from flask import current_app

        from idp.provider.keys import rotate
        from portal import audit
        from portal.db import db

        added = rotate(db.session, current_app.config["SECRET_KEY"])
        audit.record(db.session, "oidc.keys_rotated", actor_label="cli", details={"kids": [k.kid for k in added]})
        db.session.commit()
        for key in added:
            click.echo(f"Nouvelle clé {key.alg} : {key.kid}")

    @keys_group.command("list")
    @with_app
    def keys_list() -> None:
        """The published keys, the signing ones first."""
        import sqlalchemy as sa

        from idp.provider.models import SigningKey
        from portal.db import db

        rows = db.session.scalars(sa.select(SigningKey).order_by(SigningKey.retired_at.is_not(None),
                                                                 SigningKey.created_at.desc()))
        for key in rows:
            state = "signe" if key.retired_at is None else f"retirée le {key.retired_at:%Y-%m-%d %H:%M}"
            click.echo(f"{key.kid}\t{key.alg}\t{state}")
