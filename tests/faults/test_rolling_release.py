"""(g) A release rolled behind the proxy of docs/deploy.md, in the middle of the load.

Two `enrs serve --prod` behind Debian's nginx, configured with the guide's own block
(tests/faults/proxy.py), over HTTPS. Each process in turn is taken out of the upstream,
stopped (SIGTERM), started again and put back, as the guide's "Upgrades" says, while
professionals log in and upload and a newcomer registers, each from an address of their
own. Nobody may see an error: no 502 from nginx, no 5xx from the portal. Nothing
acknowledged is lost.

On the way, what the guide promises of the proxy: the portal sees each client's address
(X-Forwarded-For set by nginx, believed from one proxy), never the proxy's nor what a
client forged (nor the X-Forwarded-Host it forged: every form would then fail its
origin check); HSTS and a Secure `__Host-` cookie; the request id of nginx in the
portal's log line; a 12 MiB attestation passes; /metrics is refused.
"""
from __future__ import annotations

import json
import re

import pytest
import requests

from tests.faults.proxy import FORGED_HEADERS, ProxiedStack
from tests.faults.support import DATABASE, Load, Outcome, assert_none, pg_query, run_scenario

CLIENT_ADDRESS = re.compile(r"\A127\.(\d+)\.\d+\.\d+\Z")


@pytest.fixture(scope="module")
def outcome(production_stack) -> Outcome:
    with production_stack("rolling-release", ProxiedStack) as stack:
        load = Load(stack, professionals=3, registrants=1, big_uploaders=1)

        def fault(load: Load, notes: dict) -> None:
            for index in range(len(stack.backend_ports)):
                stack.release(index, notes)
                notes[f"released_{index}_at"] = round(load.now(), 2)

        yield run_scenario(stack, load, fault, warmup=3, after=4, settle=30)


def served_paths(log_text: str) -> list[str]:
    paths = []
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "status" in entry and "path" in entry:
            paths.append(entry["path"])
    return paths


def test_each_process_was_stopped_gracefully_and_started_again(outcome):
    stack: ProxiedStack = outcome.stack
    notes = outcome.notes
    assert stack.starts == [2, 2], notes
    assert notes["stopped_0_rc"] == 0 and notes["stopped_1_rc"] == 0, notes
    # Each of the four processes (two before the release, two after) served people.
    idle = [path.name for path in stack.gunicorn_logs() if "/login" not in served_paths(path.read_text())]
    assert len(stack.gunicorn_logs()) == 4 and not idle, f"processes that served no login: {idle}"


def test_nobody_saw_an_error_during_the_release(outcome):
    failed = [(round(h.at, 1), h.who, h.step, h.status, h.error, h.excerpt[:100]) for h in outcome.load.hits
              if h.step != "login_code_mail" and (h.status is None or h.status >= 500)]
    assert not failed, f"errors while the release rolled: {failed[:10]} ({outcome.describe()})"
    assert_none(outcome.page_problems(), "pages people should not see", outcome)
    assert_none(outcome.driver_errors(), "the load driver failed", outcome)
    during = outcome.statuses(outcome.notes["fault_start"], outcome.notes["fault_end"])
    assert during[303] >= 10, f"too little served while the release rolled to prove anything: {during}"


def test_nothing_acknowledged_is_lost_and_no_email_twice(outcome):
    assert_none(outcome.lost(), "acknowledged work lost or duplicated", outcome)
    assert_none(outcome.email_problems(), "emails not delivered exactly once", outcome)
    assert_none(outcome.store_problems(), "store and database disagree", outcome)


def test_the_portal_sees_each_clients_address_never_the_proxys_nor_a_forged_one(outcome):
    addresses = [row[0] for row in pg_query(DATABASE, "SELECT ip FROM audit_log WHERE action = 'login.password_ok'")]
    assert len(addresses) >= len(outcome.load.acks.logins) > 0
    wrong = sorted({ip for ip in addresses if not (CLIENT_ADDRESS.match(ip or "") and ip != "127.0.0.1")})
    assert not wrong, f"addresses the audit log should not hold (forged: {FORGED_HEADERS}): {wrong}"
    assert len(set(addresses)) > 5, "each browser of the load has an address of its own"


def test_https_as_the_guide_promises(outcome):
    stack: ProxiedStack = outcome.stack
    response = stack.get("/login")
    assert response.status_code == 200
    assert "max-age=" in response.headers.get("Strict-Transport-Security", "")
    cookie = response.headers.get("Set-Cookie", "")
    assert cookie.startswith("__Host-enrs=") and "Secure" in cookie and "HttpOnly" in cookie, cookie


def test_the_request_id_is_nginxs_and_in_the_portals_log_line(outcome):
    stack: ProxiedStack = outcome.stack
    sent = "c0ffee" * 5 + "00"  # a valid id of the client's own: nginx must replace it
    request_id = stack.get("/login", headers={"X-Request-ID": sent}).headers.get("X-Request-ID", "")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id) and request_id != sent, request_id  # $request_id
    assert any(request_id in path.read_text() for path in stack.gunicorn_logs()), \
        "nginx's request id is not in the portal's log line"


def test_the_proxy_lets_a_12_mib_attestation_through_and_refuses_metrics(outcome):
    stack: ProxiedStack = outcome.stack
    body = b"%PDF-1.7\n" + b"0" * (12 * 1024 * 1024)
    # Not logged in, no form token: the portal's own refusal of the form, not nginx's 413
    # for a body over its limit.
    upload = requests.post(stack.base_url + "/access/ror", files={"attestation": ("attestation.pdf", body)},
                           verify=stack.ca_bundle, timeout=30, allow_redirects=False)
    assert upload.status_code == 400 and "Session expirée" in upload.text, (upload.status_code, upload.text[:200])
    assert stack.get("/metrics").status_code == 403
