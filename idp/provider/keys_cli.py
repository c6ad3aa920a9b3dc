"""`enrs keys …`: the OpenID Provider's signing keys."""
from __future__ import annotations

from typing import Callable

import click


def register(main: click.Group, with_app: Callable, command_error: type[click.ClickException]) -> None:
    @main.group("keys")
    def keys_group() -> None:
        """Signing keys of ID tokens and logout tokens."""

    @keys_group.command("rotate")
    @click.option("--now", "immediately", is_flag=True,
                  help="signer tout de suite avec les nouvelles clés (fuite supposée)")
    @with_app
    def keys_rotate(immediately: bool) -> None:
        """Add new signing keys (RS256 and ES256), published at once, signing a few minutes
        later (keys.PUBLICATION_DELAY), when every process and every cached JWKS lists them;
        with --now, signing at once.

        The previous keys stay published in the JWKS for a day after they stop signing, so
        tokens they signed remain verifiable until they expire."""
        from flask import current_app

        from idp.provider.keys import rotate
        from portal import audit
        from portal.db import db

        added = rotate(db.session, current_app.config["SECRET_KEY"], immediately=immediately)
        audit.record(db.session, "oidc.keys_rotated", actor_label="cli",
                     details={"kids": [k.kid for k in added], "immediately": immediately})
        db.session.commit()
        for key in added:
            click.echo(f"Nouvelle clé {key.alg} : {key.kid}, publiée, signe à partir du "
                       f"{key.signs_from:%Y-%m-%d %H:%M:%S} UTC")

    @keys_group.command("list")
    @with_app
    def keys_list() -> None:
        """The published keys, the signing ones first."""
        import sqlalchemy as sa

        from idp.provider.keys import signs_at
        from idp.provider.models import SigningKey
        from portal.clock import now
        from portal.db import db

        current = now()
        rows = db.session.scalars(sa.select(SigningKey).order_by(SigningKey.retired_at.is_not(None),
                                                                 SigningKey.created_at.desc()))
        for key in rows:
            if signs_at(key, current):
                state = "signe" + (f" jusqu'au {key.retired_at:%Y-%m-%d %H:%M}" if key.retired_at else "")
            elif key.retired_at is not None and key.retired_at <= current:
                state = f"retirée le {key.retired_at:%Y-%m-%d %H:%M}"
            else:
                state = f"publiée, signe à partir du {(key.signs_from or key.created_at):%Y-%m-%d %H:%M}"
            click.echo(f"{key.kid}\t{key.alg}\t{state}")
