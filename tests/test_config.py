"""Settings: validated once, one clear line naming the variable on a mistake."""
from __future__ import annotations

import pytest

from portal.config import ConfigError, load_settings

PROD = {
    "ENRS_ENV": "production",
    "ENRS_SECRET_KEY": "k" * 40,
    "ENRS_BASE_URL": "https://portail.esante-test.fr",
    "ENRS_MAIL_URL": "smtp+starttls://relay:secret@smtp.esante-test.fr:587",
    "ENRS_DATABASE_URL": "postgresql+psycopg://enrs@db/enrs",
}


def test_production_settings_are_read_from_the_environment():
    settings = load_settings(PROD)
    assert settings.env == "production" and not settings.is_development
    assert settings.base_url == "https://portail.esante-test.fr"
    assert settings.captcha == "image" and settings.account_approval == "required"
    assert settings.email_code_ttl == 1200
    assert "contact" in settings.generic_mailboxes


def test_development_generates_and_keeps_a_secret_key(tmp_path):
    env = {"ENRS_ENV": "development", "ENRS_INSTANCE_DIR": str(tmp_path)}
    first = load_settings(env)
    second = load_settings(env)
    assert first.secret_key_generated and first.secret_key == second.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert first.mail_url == f"file://{tmp_path / 'mail'}"
    assert first.database_url == f"sqlite:///{tmp_path / 'enrs.db'}"


@pytest.mark.parametrize("change, variable", [
    ({"ENRS_SECRET_KEY": ""}, "ENRS_SECRET_KEY"),
    ({"ENRS_SECRET_KEY": "short"}, "ENRS_SECRET_KEY"),
    ({"ENRS_BASE_URL": "http://portail.esante-test.fr"}, "ENRS_BASE_URL"),
    ({"ENRS_BASE_URL": "http://127.0.0.1:5000"}, "ENRS_BASE_URL"),
    ({"ENRS_BASE_URL": "portail"}, "ENRS_BASE_URL"),
    ({"ENRS_MAIL_URL": "file:///tmp/mail"}, "ENRS_MAIL_URL"),
    ({"ENRS_MAIL_URL": "ftp://x"}, "ENRS_MAIL_URL"),
    ({"ENRS_CAPTCHA": "recaptcha"}, "ENRS_CAPTCHA"),
    ({"ENRS_ACCOUNT_APPROVAL": "maybe"}, "ENRS_ACCOUNT_APPROVAL"),
    ({"ENRS_ENV": "staging"}, "ENRS_ENV"),
    ({"ENRS_EMAIL_CODE_TTL": "douze"}, "ENRS_EMAIL_CODE_TTL"),
    ({"ENRS_EMAIL_CODE_TTL": "5"}, "ENRS_EMAIL_CODE_TTL"),
    ({"ENRS_DATABASE_URL": "mysql://x/y"}, "ENRS_DATABASE_URL"),
    ({"ENRS_REDIS_URL": "http://redis"}, "ENRS_REDIS_URL"),
    ({"ENRS_STORAGE_URL": "ftp://bucket"}, "ENRS_STORAGE_URL"),
    ({"ENRS_PSC_DISCOVERY_URL": "https://psc/.well-known/wallet-openid-configuration"}, "ENRS_PSC_CLIENT_ID"),
    ({"ENRS_MAIL_FROM": "pas une adresse"}, "ENRS_MAIL_FROM"),
    ({"ENRS_CAPTHCA": "pow"}, "ENRS_CAPTHCA"),
    ({"ENRS_PASSWORD_HASH_CONCURRENCY": "0"}, "ENRS_PASSWORD_HASH_CONCURRENCY"),
    # Below OWASP's floor for Argon2id (19 MiB, 2 passes), or no lane at all.
    ({"ENRS_ARGON2_MEMORY_KIB": "8192"}, "ENRS_ARGON2_MEMORY_KIB"),
    ({"ENRS_ARGON2_TIME_COST": "1"}, "ENRS_ARGON2_TIME_COST"),
    ({"ENRS_ARGON2_PARALLELISM": "0"}, "ENRS_ARGON2_PARALLELISM"),
    ({"ENRS_ARGON2_THREADS": "0"}, "ENRS_ARGON2_THREADS"),
])
def test_a_wrong_value_is_refused_with_one_line_naming_the_variable(change, variable):
    with pytest.raises(ConfigError) as info:
        load_settings({**PROD, **change})
    message = str(info.value)
    assert variable in message and "\n" not in message


def test_development_allows_plain_http_on_loopback_only(tmp_path):
    dev = {"ENRS_ENV": "development", "ENRS_INSTANCE_DIR": str(tmp_path)}
    assert load_settings({**dev, "ENRS_BASE_URL": "http://localhost:5000"}).base_url == "http://localhost:5000"
    with pytest.raises(ConfigError, match="ENRS_BASE_URL"):
        load_settings({**dev, "ENRS_BASE_URL": "http://portail.esante-test.fr"})


def test_test_variables_are_not_settings():
    assert load_settings({**PROD, "ENRS_TEST_DATABASE_URL": "postgresql://x"}).env == "production"


def test_cli_reports_a_config_error_in_one_line_with_status_1(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "portal.cli", "db", "upgrade"],
        env={"PATH": "/usr/bin:/bin", "ENRS_ENV": "production", "HOME": str(tmp_path)},
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "ENRS_" in result.stderr and "Traceback" not in result.stderr
