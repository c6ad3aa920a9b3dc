"""What operators rely on: health and readiness probes, metrics kept from the public,
one JSON line per request with its id, and no secret in any of it."""
from __future__ import annotations

import json
import logging

import pytest

from tests.journeys import login, seed_doctor

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"


@pytest.fixture
def portal(app):
    seed_doctor(app, EMAIL, PASSWORD)
    return app


def test_health_and_readiness_say_what_answers(portal):
    client = portal.test_client()
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"
    assert {check["name"] for check in ready.json["checks"]} == {"database", "storage"}
    assert "postgresql" not in ready.get_data(as_text=True) and "sqlite" not in ready.get_data(as_text=True)


def test_readiness_says_degraded_when_the_store_is_not_writable(portal, tmp_path):
    from portal.storage import FileStore

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    portal.extensions["enrs.storage"] = FileStore(blocked / "attestations")
    ready = portal.test_client().get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "degraded", "uploads fail, the rest works"
    assert [c for c in ready.json["checks"] if c["name"] == "storage"][0]["ok"] is False


def test_readiness_says_degraded_when_redis_is_unreachable(app_env, clock):
    from portal.app import create_app

    app = create_app({**app_env, "ENRS_REDIS_URL": "redis://127.0.0.1:1/0"}, clock=clock)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "degraded"
    assert [c for c in ready.json["checks"] if c["name"] == "redis"][0]["ok"] is False
    app.extensions["enrs.db"]["engine"].dispose()


def test_metrics_are_for_the_internal_network_or_the_token(app_env, clock):
    from portal.app import create_app

    token = "t" * 32
    app = create_app({**app_env, "ENRS_METRICS_ALLOW": "10.0.0.0/8", "ENRS_METRICS_TOKEN": token}, clock=clock)
    client = app.test_client()
    assert client.get("/metrics").status_code == 404, "loopback is not in the allowed networks here"
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    body = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).get_data(as_text=True)
    assert "enrs_outbox_backlog" in body and 'enrs_pending_requests{queue="accounts"}' in body
    # The build of libargon2 this process hashes with (idp/argon2_build.py), as operators see it.
    from idp import argon2_build

    version = argon2_build.installed_version()
    assert (f'enrs_argon2_build_info{{build="{argon2_build.built_for(version)}",version="{version}"}} 1.0'
            in body)
    app.extensions["enrs.db"]["engine"].dispose()


def test_logins_and_requests_are_counted(portal, mailbox):
    client = portal.test_client()
    login(client, mailbox, EMAIL, PASSWORD, EMAIL)
    client.post("/login", data={"username": EMAIL, "password": "wrong"})  # CSRF refusal counts as a request
    body = client.get("/metrics").get_data(as_text=True)
    assert 'enrs_logins_total{method="email_code",outcome="success"}' in body
    assert 'enrs_http_requests_total{endpoint="login.login",method="GET",status="200"}' in body
    assert "enrs_login_codes_queued_total" in body and 'enrs_mail_deliveries_total{outcome="sent"}' in body


def test_each_request_logs_one_json_line_without_secrets(portal, mailbox, caplog):
    from portal.observability import JsonFormatter

    client = portal.test_client()
    with caplog.at_level(logging.INFO, logger="enrs.access"):
        response = client.get("/login?next=/apps&code=123456", headers={"X-Request-ID": "proxy-abc-123456"})
    assert response.headers["X-Request-ID"] == "proxy-abc-123456"
    records = [r for r in caplog.records if r.name == "enrs.access"]
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["request_id"] == "proxy-abc-123456" and line["route"] == "login.login" and line["status"] == 200
    assert line["path"] == "/login" and "123456" not in json.dumps({k: v for k, v in line.items() if k != "request_id"})
    assert isinstance(line["duration_ms"], float)
    # The CPU this request's thread used: what it cost beyond waiting, never more than its duration.
    assert isinstance(line["cpu_ms"], float) and 0 <= line["cpu_ms"] <= line["duration_ms"] + 0.1
    odd = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert odd.headers["X-Request-ID"] != "bad id <script>" and len(odd.headers["X-Request-ID"]) == 32


def test_forwarded_headers_are_trusted_only_when_configured(app_env, clock):
    from portal.app import create_app

    seen = {}
    for proxies in ("0", "1"):
        app = create_app({**app_env, "ENRS_TRUSTED_PROXIES": proxies}, clock=clock)

        @app.get("/_seen")
        def _seen():
            from flask import request

            return f"{request.remote_addr} {request.scheme} {request.host}"

        seen[proxies] = app.test_client().get("/_seen", headers={
            "Host": "portail.esante-region.fr", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
            # What a client may send through a proxy that does not overwrite them (deploy.md's
            # nginx block sets Host, not these): never believed.
            "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "8443"}).get_data(as_text=True)
        app.extensions["enrs.db"]["engine"].dispose()
    assert seen == {"0": "127.0.0.1 http portail.esante-region.fr",
                    "1": "203.0.113.9 https portail.esante-region.fr"}


def test_with_redis_down_logins_go_on_and_limits_fall_back_to_memory(app_env, clock):
    """Redis unreachable: no error page; each process limits on its own until it is back."""
    from portal.app import create_app

    app = create_app({**app_env, "ENRS_REDIS_URL": "redis://127.0.0.1:1/0"}, clock=clock)
    app.config.update(WTF_CSRF_ENABLED=False)
    client = app.test_client()
    statuses = [client.post("/login", data={"username": "nobody@esante-test.fr", "password": "x"}).status_code
                for _ in range(25)]
    assert 500 not in statuses and statuses[0] == 401
    assert 429 in statuses, "the per-address limit still applies, from memory"
    app.extensions["enrs.db"]["engine"].dispose()


def test_losing_the_database_mid_request_shows_the_french_503_page_even_logged_in(portal, mailbox):
    from sqlalchemy.exc import OperationalError

    portal.config["PROPAGATE_EXCEPTIONS"] = False

    @portal.get("/_db_gone")
    def _db_gone():
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    client = portal.test_client()
    login(client, mailbox, EMAIL, PASSWORD, EMAIL)
    response = client.get("/_db_gone")
    page = response.get_data(as_text=True)
    assert response.status_code == 503 and response.headers["Retry-After"] == "10"
    assert "Service momentanément indisponible" in page and "Traceback" not in page
