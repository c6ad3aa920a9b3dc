"""`enrs client …`: register, list and remove the applications that trust the portal,
for operators and deployment scripts (the super admin console does the same).
Registered by portal.cli."""
from __future__ import annotations

import json
from typing import Callable, Mapping

import click

# The command-line option that carries each field of idp.provider.clients.ClientSpec,
# so that a refusal names what the operator typed.
OPTIONS = {
    "name": "--name",
    "description": "--description",
    "icon": "--icon",
    "client_id": "--client-id",
    "redirect_uris": "--redirect-uri",
    "post_logout_redirect_uris": "--post-logout-uri",
    "backchannel_logout_uri": "--backchannel-logout-uri",
    "initiate_login_uri": "--initiate-login-uri",
    "required_role": "--role",
    "allowed_scopes": "--scope",
    "id_token_signed_response_alg": "--alg",
    "token_endpoint_auth_method": "--auth-method",
}


def register(main: click.Group, with_app: Callable, command_error: type[click.ClickException],
             roles: Mapping[str, str] | None = None) -> None:
    """Attach `enrs client` to the `enrs` group. `roles` (role → label) are the roles an
    application may require; idp does not know them itself (they belong to onboarding)."""
    known_roles = tuple(roles) if roles is not None else None

    def refused(exc) -> click.ClickException:
        option = OPTIONS.get(exc.field)
        return command_error(f"{option} : {exc}" if option else str(exc))

    @main.group("client")
    def client_group() -> None:
        """Applications that trust the portal (OpenID Connect clients)."""

    @client_group.command("add")
    @click.option("--name", default="", help="the name on the tile")
    @click.option("--redirect-uri", "redirect_uris", multiple=True, help="repeatable; https (http on localhost only)")
    @click.option("--post-logout-uri", "post_logout_uris", multiple=True, help="repeatable")
    @click.option("--backchannel-logout-uri", default=None)
    @click.option("--initiate-login-uri", default=None, help="where the tile sends the user (iss, target_link_uri)")
    @click.option("--role", default=None, help="the role the application requires"
                  + (f" ({', '.join(roles)})" if roles else ""))
    @click.option("--public", is_flag=True, help="no secret (mobile or single-page application)")
    @click.option("--client-id", default=None, help="chosen identifier (default: random)")
    @click.option("--description", default="")
    @click.option("--icon", default="application", show_default=True)
    @click.option("--scope", "scopes", multiple=True, help='allowed scopes, e.g. "openid profile email"')
    @click.option("--alg", default="RS256", show_default=True, help="ID token signature: RS256 or ES256")
    @click.option("--auth-method", default="client_secret_basic", show_default=True,
                  help="client_secret_basic or client_secret_post")
    @click.option("--json", "as_json", is_flag=True, help='print {"client_id": …, "client_secret": …} only')
    @with_app
    def client_add(name, redirect_uris, post_logout_uris, backchannel_logout_uri, initiate_login_uri, role, public,
                   client_id, description, icon, scopes, alg, auth_method, as_json):
        """Register an application; prints its client id and, once, its secret."""
        from idp.provider.clients import ClientError, ClientSpec, create_client
        from idp.provider.models import DEFAULT_SCOPES
        from portal import audit
        from portal.db import db

        spec = ClientSpec(
            name=name, redirect_uris=list(redirect_uris), description=description, icon=icon,
            post_logout_redirect_uris=list(post_logout_uris), backchannel_logout_uri=backchannel_logout_uri,
            initiate_login_uri=initiate_login_uri, required_role=role, is_public=public,
            allowed_scopes=" ".join(scopes) if scopes else DEFAULT_SCOPES, id_token_signed_response_alg=alg,
            token_endpoint_auth_method=auth_method, client_id=client_id,
        )
        session = db.session
        try:
            client, secret = create_client(session, spec, known_roles)
        except ClientError as exc:
            session.rollback()
            raise refused(exc) from None
        audit.record(session, "app.created", actor_label="cli", target_type="application",
                     target_id=client.client_id,
                     details={"name": client.name, "public": client.is_public, "redirect_uris": client.redirect_uris,
                              "required_role": client.required_role})
        session.commit()
        if as_json:
            click.echo(json.dumps({"client_id": client.client_id, "client_secret": secret}))
            return
        click.echo(f"Application « {client.name} » enregistrée.")
        click.echo(f"client_id     : {client.client_id}")
        if secret is None:
            click.echo("client_secret : aucun (application publique)")
        else:
            click.echo(f"client_secret : {secret}")
            click.echo("Copiez ce secret maintenant : il ne sera plus affiché.")

    @client_group.command("list")
    @with_app
    def client_list() -> None:
        """The registered applications, one per line."""
        from idp.provider.clients import list_clients
        from portal.db import db

        clients = list_clients(db.session)
        if not clients:
            click.echo("Aucune application enregistrée.")
            return
        rows = [("CLIENT_ID", "NOM", "TYPE", "RÔLE", "REDIRECT URIS")]
        for c in clients:
            rows.append((c.client_id, c.name + (" (désactivée)" if c.disabled_at else ""),
                         "publique" if c.is_public else "confidentielle", c.required_role or "-",
                         " ".join(c.redirect_uris)))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            click.echo("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[4]]).rstrip())

    @client_group.command("remove")
    @click.argument("client_id")
    @with_app
    def client_remove(client_id: str) -> None:
        """Remove an application with its tokens and its place in favourites."""
        import sqlalchemy as sa

        from idp.provider.clients import remove_client
        from idp.provider.models import Client
        from portal import audit
        from portal.db import db

        session = db.session
        client = session.scalar(sa.select(Client).where(Client.client_id == client_id))
        if client is None:
            raise command_error(f"application inconnue : {client_id}")
        name = client.name
        audit.record(session, "app.removed", actor_label="cli", target_type="application",
                     target_id=client.client_id, details={"name": name})
        remove_client(session, client)
        session.commit()
        click.echo(f"Application « {name} » ({client_id}) supprimée.")
