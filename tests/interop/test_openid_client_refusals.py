"""What the OpenID conformance suite's Basic OP plan tries, seen from openid-client: the
portal must refuse (redirect_uri, code reuse, client authentication, PKCE), answer in
the protocol (prompt=none, max_age) and let openid-client's own checks (state, nonce,
auth_time) do their work."""
from __future__ import annotations

import secrets
import time

import pytest

from tests.interop.support import ALL_SCOPES, CALLBACK, RP_BASE, Application, discover, query, text_of


def authorize(rp, client: str = "basic", **params) -> dict:
    return rp.call("authorize", client=client, params={"scope": ALL_SCOPES, "redirect_uri": CALLBACK, **params})


def code_for(rp, browser, client: str = "basic", **params) -> tuple[dict, str]:
    """A flow and the callback address carrying its code (not exchanged yet)."""
    flow = authorize(rp, client, **params)
    callback = browser.follow(flow["url"])
    assert "code" in query(callback), callback
    return flow, callback


@pytest.mark.parametrize("redirect_uri", [
    f"{RP_BASE}/evil", f"{CALLBACK}/more", f"{CALLBACK}?extra=1", "http://127.0.0.1/interop/callback",
    "https://evil.example/interop/callback",
])
def test_an_unregistered_redirect_uri_gets_a_page_never_a_redirect(rp, browser, redirect_uri):
    flow = authorize(rp, redirect_uri=redirect_uri)
    response = browser.get(flow["url"])
    # OIDC Core §3.1.2.6 / RFC 6749 §4.1.2.1: never redirect to an unverified address.
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Adresse de retour non autorisée" in text_of(response)


def test_a_code_works_once_and_its_reuse_revokes_what_it_gave(rp, browser):
    flow, callback = code_for(rp, browser)
    tokens = rp.call("callback", flow=flow["flow"], url=callback)
    again = rp.fails("callback", flow=flow["flow"], url=callback)
    assert again["error"] == "invalid_grant" and again["status"] == 400
    # RFC 6749 §4.1.2: the tokens issued from a reused code SHOULD be revoked.
    assert rp.call("introspect", client="basic", token=tokens["access_token"]) == {"active": False}
    assert rp.fails("refresh", client="basic", refresh_token=tokens["refresh_token"])["error"] == "invalid_grant"


@pytest.mark.parametrize("client", ["basic", "post"])
def test_a_wrong_client_secret_is_invalid_client_and_does_not_burn_the_code(portal, rp, browser, client):
    registered: Application = portal.applications[client]
    wrong = Application(**{**registered.__dict__, "secret": "not-the-secret-" + "x" * 30})
    discover(rp, portal, f"{client}-wrong-secret", wrong)
    flow, callback = code_for(rp, browser, client)
    refused = rp.fails("callback", flow=flow["flow"], url=callback, **{"as": f"{client}-wrong-secret"})
    # RFC 6749 §5.2: invalid_client (the portal answers 401 with a WWW-Authenticate challenge).
    assert refused["error"] == "invalid_client" and refused["status"] == 401
    assert rp.call("callback", flow=flow["flow"], url=callback)["claims"]["aud"] == registered.client_id
    assert rp.fails("introspect", client=f"{client}-wrong-secret", token="anything")["error"] == "invalid_client"


def test_the_registered_authentication_method_is_the_only_one_accepted(portal, rp, browser):
    registered = portal.applications["post"]
    discover(rp, portal, "post-as-basic", Application(**{**registered.__dict__, "auth": "client_secret_basic"}))
    flow, callback = code_for(rp, browser, "post")
    refused = rp.fails("callback", flow=flow["flow"], url=callback, **{"as": "post-as-basic"})
    assert refused["error"] == "invalid_client"


def test_pkce_a_missing_or_wrong_verifier_is_refused(rp, browser):
    flow, callback = code_for(rp, browser)
    missing = rp.fails("callback", flow=flow["flow"], url=callback, omit_verifier=True)
    assert missing["error"] in ("invalid_request", "invalid_grant") and missing["status"] == 400
    flow, callback = code_for(rp, browser)
    wrong = rp.fails("callback", flow=flow["flow"], url=callback,
                     checks={"pkceCodeVerifier": secrets.token_urlsafe(48)})
    # RFC 7636 §4.6: a verifier that does not match is invalid_grant.
    assert wrong["error"] == "invalid_grant" and wrong["status"] == 400


def test_the_nonce_is_echoed_and_openid_client_refuses_another_one(rp, browser):
    flow, callback = code_for(rp, browser)
    mismatch = rp.fails("callback", flow=flow["flow"], url=callback, checks={"expectedNonce": "another-nonce"})
    assert mismatch["code"] == "OAUTH_JWT_CLAIM_COMPARISON_FAILED"
    assert '"nonce" claim' in mismatch["cause"]["message"]
    # Without a nonce in the request, the ID token carries none (openid-client expects none).
    flow = rp.call("authorize", client="basic", params={"scope": "openid", "redirect_uri": CALLBACK})
    url = flow["url"].replace(f"&nonce={flow['nonce']}", "")
    assert "nonce=" not in url
    callback = browser.follow(url)
    tokens = rp.call("callback", flow=flow["flow"], url=callback, checks={"expectedNonce": None})
    assert "nonce" not in tokens["claims"]


def test_the_state_comes_back_and_openid_client_refuses_another_one(rp, browser):
    flow, callback = code_for(rp, browser)
    mismatch = rp.fails("callback", flow=flow["flow"], url=callback, checks={"expectedState": "another-state"})
    assert mismatch["code"] == "OAUTH_INVALID_RESPONSE" and '"state"' in mismatch["cause"]["message"]
    # openid-client stopped before the token endpoint: the code is still good.
    assert rp.call("callback", flow=flow["flow"], url=callback)["claims"]["nonce"] == flow["nonce"]


def test_prompt_none_without_a_session_answers_login_required(rp, new_browser):
    stranger = new_browser()
    flow = authorize(rp, prompt="none")
    callback = stranger.follow(flow["url"], log_in=False)
    answer = query(callback)
    assert answer["error"] == "login_required" and answer["state"] == flow["state"]
    assert "code" not in answer
    # openid-client checks the state of the error response and reports the error.
    refused = rp.fails("callback", flow=flow["flow"], url=callback)
    assert refused["code"] == "OAUTH_AUTHORIZATION_RESPONSE_ERROR" and refused["error"] == "login_required"


def test_prompt_none_with_a_session_answers_at_once(rp, browser):
    flow = authorize(rp, prompt="none")
    callback = browser.follow(flow["url"], log_in=False)
    assert rp.call("callback", flow=flow["flow"], url=callback)["claims"]["sub"]


@pytest.mark.parametrize("asked", [{"max_age": 0}, {"prompt": "login"}], ids=["max_age=0", "prompt=login"])
def test_a_forced_login_is_asked_once_and_gives_a_fresh_auth_time(portal, rp, new_browser, asked):
    person = new_browser()
    flow, callback = code_for(rp, person)  # logs in
    first = rp.call("callback", flow=flow["flow"], url=callback)["claims"]
    time.sleep(1.1)  # auth_time counts whole seconds

    if "max_age" in asked:
        # An application that asked max_age=0 and got the old session back would refuse it:
        # openid-client compares auth_time with maxAge (here without its 30 s tolerance).
        discover(rp, portal, "basic-strict-clock", portal.applications["basic"], clock_tolerance=0)
        flow, callback = code_for(rp, person)
        stale = rp.fails("callback", flow=flow["flow"], url=callback, checks={"maxAge": 0},
                         **{"as": "basic-strict-clock"})
        assert stale["code"] == "OAUTH_JWT_TIMESTAMP_CHECK_FAILED"
        assert "since the last End-User authentication" in stale["cause"]["message"], stale

    # The portal sends the logged-in person to the login form again (reauth=1)...
    prompt = {"prompt": asked["prompt"]} if "prompt" in asked else {}
    flow = rp.call("authorize", client="basic", max_age=asked.get("max_age"),
                   params={"scope": "openid", "redirect_uri": CALLBACK, **prompt})
    response = person.get(flow["url"])
    assert response.status_code == 303, (response.status_code, response.headers.get("Location"))
    assert response.headers["Location"].startswith("/login?") and "reauth=1" in response.headers["Location"]
    # ... once: after that login the browser comes back with a code (no loop), whose
    # auth_time openid-client accepts for max_age=0 (it checks it when maxAge is given).
    callback = person.follow(response.headers["Location"])
    renewed = rp.call("callback", flow=flow["flow"], url=callback)["claims"]
    assert renewed["auth_time"] > first["auth_time"] and renewed["sid"] != first["sid"]
    assert renewed["auth_time"] >= int(time.time()) - 30


def test_a_person_without_the_required_role_gets_a_page_or_access_denied(portal, rp, new_person):
    paul = new_person("Paul", "Girard")
    paul.log_in()
    flow = authorize(rp, "basic")  # the application requires the ROR role, Paul lacks it
    response = paul.get(flow["url"])
    assert response.status_code == 403 and "Location" not in response.headers
    flow = authorize(rp, "basic", prompt="none")
    callback = paul.follow(flow["url"], log_in=False)
    assert query(callback)["error"] == "access_denied" and query(callback)["state"] == flow["state"]
    refused = rp.fails("callback", flow=flow["flow"], url=callback)
    assert refused["code"] == "OAUTH_AUTHORIZATION_RESPONSE_ERROR" and refused["error"] == "access_denied"
    # An application that needs no role opens for him.
    flow, callback = code_for(rp, paul, "post")
    assert rp.call("callback", flow=flow["flow"], url=callback)["claims"]["family_name"] == "GIRARD"


def test_prompt_none_for_a_person_who_must_accept_new_terms_answers_interaction_required(rp, new_person):
    claire = new_person("Claire", "Moreau")
    claire.log_in(accept_cgu=False)  # logged in, the terms of use not yet accepted
    flow = authorize(rp, "post", prompt="none")
    response = claire.get(flow["url"])
    assert response.status_code == 302, response.status_code
    location = response.headers["Location"]
    assert location.startswith(CALLBACK + "?"), f"prompt=none answered with a page: {location}"
    assert query(location)["error"] in ("interaction_required", "consent_required")
    assert query(location)["state"] == flow["state"]
