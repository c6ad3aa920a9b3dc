"""The portal as the OpenID Provider of an application built on panva's openid-client
(OpenID Certified relying party library): discovery, the code flow with PKCE, state and
nonce and a real login, then userinfo, refresh rotation, revocation, introspection and
RP-initiated logout. openid-client does every check an application does; a test fails
when it refuses something the portal sends."""
from __future__ import annotations

from tests.interop.support import (
    ALL_SCOPES,
    CALLBACK,
    LOGGED_OUT,
    NATHALIE,
    ROR_ROLE,
    discover,
    query,
)


def sign_in(rp, browser, client: str = "basic", scope: str = ALL_SCOPES, **params) -> dict:
    """The authorization URL openid-client builds, followed in the browser, then the
    callback handed back to openid-client: the validated token response."""
    flow = rp.call("authorize", client=client, params={"scope": scope, "redirect_uri": CALLBACK, **params})
    callback = browser.follow(flow["url"])
    assert callback.startswith(CALLBACK + "?"), callback
    assert query(callback)["state"] == flow["state"]
    tokens = rp.call("callback", flow=flow["flow"], url=callback)
    tokens["flow"] = flow
    return tokens


def test_discovery_gives_openid_client_what_it_needs(portal, rp):
    metadata = discover(rp, portal, "discovery-check", portal.applications["basic"])
    base = portal.base_url
    assert metadata["issuer"] == base, "openid-client only accepts an issuer equal to the discovery URL"
    assert metadata["authorization_endpoint"] == f"{base}/oidc/authorize"
    assert metadata["token_endpoint"] == f"{base}/oauth/token"
    assert metadata["jwks_uri"] == f"{base}/oauth/jwks"
    assert metadata["end_session_endpoint"] == f"{base}/oidc/logout"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert set(metadata["id_token_signing_alg_values_supported"]) == {"RS256", "ES256"}


def test_code_flow_with_pkce_and_a_real_login_gives_a_valid_id_token_and_userinfo(portal, rp, browser):
    tokens = sign_in(rp, browser)
    claims, header = tokens["claims"], tokens["id_token_header"]
    # openid-client has verified the signature against the JWKS, iss, aud, azp, exp, iat and nonce.
    assert claims["iss"] == portal.base_url and claims["aud"] == "interop-basic"
    assert claims["nonce"] == tokens["flow"]["nonce"]
    assert header["alg"] == "RS256" and header["kid"]
    assert claims["at_hash"] == tokens["at_hash_of_access_token"]
    assert claims["acr"] == "urn:enrs:acr:pwd-otp-email" and claims["sid"] and claims["auth_time"]
    assert claims["roles"] == [{"role": ROR_ROLE, "finess": NATHALIE.finess}]
    assert claims["national_id"] == NATHALIE.national_id
    assert tokens["token_type"].lower() == "bearer" and tokens["refresh_token"]
    assert 0 < tokens["expires_in"] <= 300
    assert set(tokens["scope"].split()) == set(ALL_SCOPES.split())

    # fetchUserInfo checks the answer's sub against the ID token's.
    info = rp.call("userinfo", client="basic", access_token=tokens["access_token"], sub=claims["sub"])
    assert info["roles"] == [{"role": ROR_ROLE, "finess": NATHALIE.finess}]
    assert info["national_id"] == NATHALIE.national_id and info["national_id_type"] == "rpps"
    assert [e["finess"] for e in info["establishments"]] == [NATHALIE.finess]
    assert info["email"] == NATHALIE.email and info["email_verified"] is True
    assert info["given_name"] == NATHALIE.first_name and info["family_name"] == NATHALIE.last_name.upper()


def test_refresh_tokens_rotate_and_a_replayed_one_is_refused(rp, browser):
    first = sign_in(rp, browser)
    second = rp.call("refresh", client="basic", refresh_token=first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    # OIDC Core §12.2: same iss, sub, aud and auth_time; openid-client validated it again.
    refreshed, original = second["claims"], first["claims"]
    assert refreshed["sub"] == original["sub"] and refreshed["auth_time"] == original["auth_time"]
    assert refreshed["aud"] == original["aud"] and refreshed["iat"] >= original["iat"]
    info = rp.call("userinfo", client="basic", access_token=second["access_token"], sub=refreshed["sub"])
    assert info["sub"] == refreshed["sub"]

    replayed = rp.fails("refresh", client="basic", refresh_token=first["refresh_token"])
    assert replayed["error"] == "invalid_grant" and replayed["status"] == 400
    # The replay revoked the whole family (OAuth 2.0 Security BCP §4.14.2).
    after = rp.fails("refresh", client="basic", refresh_token=second["refresh_token"])
    assert after["error"] == "invalid_grant"
    refused = rp.fails("userinfo", client="basic", access_token=second["access_token"], sub=refreshed["sub"])
    assert refused["status"] == 401


def test_introspection_then_revocation(rp, browser):
    tokens = sign_in(rp, browser)
    access = rp.call("introspect", client="basic", token=tokens["access_token"])
    assert access["active"] is True and access["client_id"] == "interop-basic"
    assert access["sub"] == tokens["claims"]["sub"] and access["token_type"] == "Bearer"
    assert set(access["scope"].split()) == set(ALL_SCOPES.split())
    refresh = rp.call("introspect", client="basic", token=tokens["refresh_token"], hint="refresh_token")
    assert refresh["active"] is True and refresh["token_type"] == "refresh_token"

    assert rp.call("revoke", client="basic", token=tokens["refresh_token"], hint="refresh_token") is None
    # RFC 7009 §2.1: revoking the refresh token ends the access tokens of its grant.
    assert rp.call("introspect", client="basic", token=tokens["access_token"]) == {"active": False}
    assert rp.call("introspect", client="basic", token=tokens["refresh_token"]) == {"active": False}
    assert rp.fails("refresh", client="basic", refresh_token=tokens["refresh_token"])["error"] == "invalid_grant"
    assert rp.fails("userinfo", client="basic", access_token=tokens["access_token"],
                    sub=tokens["claims"]["sub"])["status"] == 401
    # RFC 7009 §2.2: an unknown or already revoked token is no error.
    assert rp.call("revoke", client="basic", token=tokens["access_token"]) is None
    assert rp.call("introspect", client="basic", token="not-a-token") == {"active": False}


def test_client_secret_post_and_es256_id_tokens(rp, browser):
    tokens = sign_in(rp, browser, client="post")
    # openid-client was told id_token_signed_response_alg ES256: it accepts nothing else.
    assert tokens["id_token_header"]["alg"] == "ES256"
    assert tokens["claims"]["aud"] == "interop-post"
    assert tokens["claims"]["at_hash"] == tokens["at_hash_of_access_token"]
    info = rp.call("userinfo", client="post", access_token=tokens["access_token"], sub=tokens["claims"]["sub"])
    assert info["email"] == NATHALIE.email
    assert rp.call("introspect", client="post", token=tokens["access_token"])["active"] is True
    refreshed = rp.call("refresh", client="post", refresh_token=tokens["refresh_token"])
    assert refreshed["id_token_header"]["alg"] == "ES256"
    assert rp.call("revoke", client="post", token=refreshed["refresh_token"]) is None


def test_public_client_with_pkce_and_no_secret(rp, browser):
    tokens = sign_in(rp, browser, client="public", scope="openid profile")
    assert tokens["claims"]["aud"] == "interop-public" and "roles" not in tokens["claims"]
    info = rp.call("userinfo", client="public", access_token=tokens["access_token"], sub=tokens["claims"]["sub"])
    assert set(info) == {"sub", "given_name", "family_name", "name", "preferred_username", "profession"}
    refreshed = rp.call("refresh", client="public", refresh_token=tokens["refresh_token"])
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    assert rp.call("revoke", client="public", token=refreshed["refresh_token"]) is None
    assert rp.fails("refresh", client="public", refresh_token=refreshed["refresh_token"])["error"] == "invalid_grant"


def test_rp_initiated_logout_returns_to_the_application_and_ends_the_portal_session(rp, new_browser):
    person = new_browser()
    tokens = sign_in(rp, person)
    url = rp.call("end_session", client="basic", params={
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": LOGGED_OUT, "state": "bye-123"})
    response = person.get(url)
    assert response.status_code in (302, 303), response.text[:300]
    assert response.headers["Location"] == f"{LOGGED_OUT}?state=bye-123"
    assert not person.logged_in(), "the portal session is over"
    assert rp.call("introspect", client="basic", token=tokens["access_token"]) == {"active": False}
    assert rp.fails("refresh", client="basic", refresh_token=tokens["refresh_token"])["error"] == "invalid_grant"
    # An application asking silently now learns that a login is needed.
    flow = rp.call("authorize", client="basic", params={"scope": "openid", "redirect_uri": CALLBACK,
                                                        "prompt": "none"})
    callback = person.follow(flow["url"], log_in=False)
    assert query(callback)["error"] == "login_required"
