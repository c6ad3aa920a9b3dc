"""`enrs client add|list|remove`: what a deployment script relies on (the secret printed
once, `--json` exactly {"client_id", "client_secret"}) and one clear line on refusal."""
from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

ROR = ["--name", "ROR Centre-Val de Loire", "--redirect-uri", "https://ror.esante-test.fr/oidc/callback"]


@pytest.fixture
def enrs(app, monkeypatch):
    import portal.cli

    monkeypatch.setattr(portal.cli, "_app", app)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(portal.cli.main, list(args))
    return run


def clients(app):
    from idp.provider.models import Client
    from portal.db import db

    with app.app_context():
        return db.session.scalars(sa.select(Client).order_by(Client.id)).all()


def audit_actions(app):
    from portal.audit import AuditEntry
    from portal.db import db

    with app.app_context():
        return [(e.action, e.target_id, e.actor_label) for e in db.session.scalars(
            sa.select(AuditEntry).where(AuditEntry.action.like("app.%")).order_by(AuditEntry.id))]


def test_add_prints_the_client_id_and_the_secret_once(enrs, app):
    result = enrs("client", "add", *ROR, "--redirect-uri", "http://127.0.0.1:5001/oidc/callback",
                  "--post-logout-uri", "https://ror.esante-test.fr/", "--post-logout-uri", "http://localhost:5001/",
                  "--backchannel-logout-uri", "https://ror.esante-test.fr/oidc/backchannel",
                  "--initiate-login-uri", "https://ror.esante-test.fr/oidc/initiate",
                  "--role", "ror_referent_offre", "--client-id", "ror-cvl", "--description", "Le ROR",
                  "--icon", "ror", "--scope", "openid profile roles", "--alg", "ES256")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Application « ROR Centre-Val de Loire » enregistrée."
    assert lines[1] == "client_id     : ror-cvl"
    secret = lines[2].removeprefix("client_secret : ")
    assert len(secret) >= 40 and "Copiez ce secret maintenant : il ne sera plus affiché." in result.output
    [client] = clients(app)
    assert client.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert client.redirect_uris == ["https://ror.esante-test.fr/oidc/callback", "http://127.0.0.1:5001/oidc/callback"]
    assert client.post_logout_redirect_uris == ["https://ror.esante-test.fr/", "http://localhost:5001/"]
    assert (client.backchannel_logout_uri, client.initiate_login_uri) == (
        "https://ror.esante-test.fr/oidc/backchannel", "https://ror.esante-test.fr/oidc/initiate")
    assert (client.required_role, client.description, client.icon, client.allowed_scopes) == (
        "ror_referent_offre", "Le ROR", "ror", "openid profile roles")
    assert (client.id_token_signed_response_alg, client.token_endpoint_auth_method, client.is_public) == (
        "ES256", "client_secret_basic", False)
    assert audit_actions(app) == [("app.created", "ror-cvl", "cli")]


def test_json_prints_exactly_the_id_and_the_secret(enrs, app):
    result = enrs("client", "add", *ROR, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert list(printed) == ["client_id", "client_secret"] and result.output.count("\n") == 1
    [client] = clients(app)
    assert printed["client_id"] == client.client_id
    assert hashlib.sha256(printed["client_secret"].encode()).hexdigest() == client.secret_hash
    # Defaults: every portal scope, RS256, client_secret_basic, the generic icon.
    assert (client.allowed_scopes, client.id_token_signed_response_alg, client.icon) == (
        "openid profile email establishments roles national_id", "RS256", "application")


def test_a_public_application_gets_a_null_secret(enrs, app):
    result = enrs("client", "add", *ROR, "--public", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["client_secret"] is None
    [client] = clients(app)
    assert (client.is_public, client.secret_hash, client.token_endpoint_auth_method) == (True, None, "none")
    plain = enrs("client", "add", *ROR, "--public")
    assert "client_secret : aucun (application publique)" in plain.output and "Copiez" not in plain.output


@pytest.mark.parametrize("args, message", [
    (["--redirect-uri", "https://ror.esante-test.fr/cb"], "--name : Indiquez le nom de l'application"),
    (["--name", "ROR"], "--redirect-uri : Indiquez au moins une adresse de retour"),
    ([*ROR, "--redirect-uri", "http://ror.esante-test.fr/cb"],
     "--redirect-uri : « http://ror.esante-test.fr/cb » doit utiliser https"),
    ([*ROR, "--redirect-uri", "https://ror.esante-test.fr/cb#x"], "--redirect-uri : « https://ror.esante-test.fr/cb#x » "
                                                                  "ne doit pas contenir de fragment"),
    ([*ROR, "--post-logout-uri", "/fin"], "--post-logout-uri : « /fin » n'est pas une adresse web absolue"),
    ([*ROR, "--backchannel-logout-uri", "http://ror.esante-test.fr/bc"], "--backchannel-logout-uri : "),
    ([*ROR, "--initiate-login-uri", "javascript:alert(1)"], "--initiate-login-uri : "),
    ([*ROR, "--role", "super_admin"], "--role : Rôle inconnu : super_admin."),
    ([*ROR, "--icon", "licorne"], "--icon : Choisissez une icône dans la liste."),
    ([*ROR, "--scope", "profile email"], "--scope : Les scopes autorisés doivent inclure openid"),
    ([*ROR, "--alg", "HS256"], "--alg : Algorithme de signature inconnu (RS256 ou ES256)."),
    ([*ROR, "--auth-method", "private_key_jwt"], "--auth-method : Méthode d'authentification inconnue."),
    ([*ROR, "--client-id", "ror cvl"], "--client-id : L'identifiant ne peut contenir que"),
])
def test_add_refuses_bad_input_in_one_line(enrs, app, args, message):
    result = enrs("client", "add", *args)
    assert result.exit_code == 1
    assert result.output.startswith("Erreur : ") and message in result.output, result.output
    assert result.output.count("\n") == 1
    assert clients(app) == [] and audit_actions(app) == []


def test_a_taken_client_id_is_refused(enrs, app):
    assert enrs("client", "add", *ROR, "--client-id", "ror-cvl").exit_code == 0
    result = enrs("client", "add", *ROR, "--client-id", "ror-cvl")
    assert result.exit_code == 1
    assert result.output == "Erreur : --client-id : L'identifiant « ror-cvl » est déjà utilisé.\n"
    assert len(clients(app)) == 1


def test_list_shows_a_table_of_the_applications(enrs, app):
    assert enrs("client", "list").output == "Aucune application enregistrée.\n"
    enrs("client", "add", *ROR, "--client-id", "ror-cvl", "--role", "ror_referent_offre",
         "--redirect-uri", "https://ror.esante-test.fr/cb2")
    enrs("client", "add", "--name", "Agenda", "--redirect-uri", "https://agenda.esante-test.fr/cb",
         "--client-id", "agenda", "--public")
    result = enrs("client", "list")
    assert result.exit_code == 0, result.output
    header, agenda, ror = result.output.splitlines()
    assert header.split() == ["CLIENT_ID", "NOM", "TYPE", "RÔLE", "REDIRECT", "URIS"]
    assert agenda.split() == ["agenda", "Agenda", "publique", "-", "https://agenda.esante-test.fr/cb"]
    assert ror.startswith("ror-cvl ") and "ROR Centre-Val de Loire" in ror and "confidentielle" in ror
    assert ror.split()[-3:] == ["ror_referent_offre", "https://ror.esante-test.fr/oidc/callback",
                                "https://ror.esante-test.fr/cb2"]
    # The columns line up.
    assert header.index("NOM") == agenda.index("Agenda") == ror.index("ROR")
    assert "secret" not in result.output.lower()


def test_remove_deletes_the_application_and_an_unknown_one_is_one_line(enrs, app):
    enrs("client", "add", *ROR, "--client-id", "ror-cvl")
    result = enrs("client", "remove", "ror-cvl")
    assert result.exit_code == 0, result.output
    assert result.output == "Application « ROR Centre-Val de Loire » (ror-cvl) supprimée.\n"
    assert clients(app) == []
    assert audit_actions(app) == [("app.created", "ror-cvl", "cli"), ("app.removed", "ror-cvl", "cli")]
    again = enrs("client", "remove", "ror-cvl")
    assert again.exit_code == 1 and again.output == "Erreur : application inconnue : ror-cvl\n"


def test_the_client_commands_are_listed(enrs):
    result = enrs("client", "--help")
    assert result.exit_code == 0
    for command in ("add", "list", "remove"):
        assert command in result.output
