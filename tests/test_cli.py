"""`enrs` commands an operator runs: one clear line on refusal, exit status 1."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner


@pytest.fixture
def enrs(app, monkeypatch):
    import portal.cli

    monkeypatch.setattr(portal.cli, "_app", app)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(portal.cli.main, list(args))
    return run


def test_demo_seeds_admins_establishments_and_a_professional_once(enrs, app):
    from idp.models import User
    from portal.db import db

    result = enrs("demo", "--if-empty")
    assert result.exit_code == 0, result.output
    assert "smartin" in result.output and "pbernard" in result.output and "ndupont" in result.output
    again = enrs("demo", "--if-empty")
    assert again.exit_code == 0 and "déjà présentes" in again.output
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 3


def test_demo_is_refused_in_production(app_env, monkeypatch):
    import portal.cli
    from portal.app import create_app

    app = create_app({**app_env, "ENRS_ENV": "production", "ENRS_BASE_URL": "https://portail.esante-test.fr"})
    monkeypatch.setattr(portal.cli, "_app", app)
    result = CliRunner().invoke(portal.cli.main, ["demo"])
    assert result.exit_code == 1
    assert "ENRS_ENV=development" in result.output


def test_user_create_prints_the_login_of_an_active_professional(enrs, app, mailbox):
    from tests.journeys import login

    enrs("demo")
    result = enrs("user", "create", "--email", "Marie.Curie@esante-test.fr", "--password", "Radium-Polonium-1898",
                  "--first-name", "Marie", "--last-name", "Curie", "--profession", "21", "--finess", "280503848")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "mcurie"
    client = app.test_client()
    assert login(client, mailbox, "mcurie", "Radium-Polonium-1898", "marie.curie@esante-test.fr").status_code == 303


@pytest.mark.parametrize("args, message", [
    (["--password", "court"], "mot de passe refusé : Taille minimale : 12"),
    (["--profession", "999"], "profession inconnue"),
    (["--finess", "280503849"], "numéro FINESS invalide"),
    (["--finess", "280000068"], "absent du répertoire FINESS"),
])
def test_user_create_refuses_bad_input_in_one_line(enrs, args, message):
    base = {"--email": "x.y@esante-test.fr", "--password": "Un-Secret-Solide-1", "--first-name": "X",
            "--last-name": "Y"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = enrs("user", "create", *[item for pair in base.items() for item in pair])
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1


def test_admin_create_with_departements_and_a_duplicate_refused(enrs, mailbox):
    result = enrs("admin", "create", "--email", "claire.durand@esante-test.fr", "--role", "regional",
                  "--departments", "45,41", "--first-name", "Claire", "--last-name", "Durand")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "cdurand"
    assert "vos identifiants" in mailbox.last("claire.durand@esante-test.fr")["Subject"]
    again = enrs("admin", "create", "--email", "claire.durand@esante-test.fr", "--role", "super")
    assert again.exit_code == 1 and "existe déjà" in again.output
    bad = enrs("admin", "create", "--email", "z@esante-test.fr", "--role", "regional", "--departments", "99")
    assert bad.exit_code == 1 and "n'est pas un code de département" in bad.output


def test_cgu_publish_makes_the_new_version_current(enrs, app, client, tmp_path):
    text = tmp_path / "cgu.txt"
    text.write_text("Article 1 – Objet\nNouvelles conditions.\n", encoding="utf-8")
    assert enrs("cgu", "publish", "--version", "2.0", "--file", str(text)).exit_code == 0
    page = client.get("/cgu").get_data(as_text=True)
    assert "Version 2.0" in page and "Nouvelles conditions." in page
    assert enrs("cgu", "publish", "--version", "2.0", "--file", str(text)).exit_code == 1
