"""The Pro Santé Connect stand-in (tests/psc_sandbox) behaves like PSC: discovery under
both names, a login page on another host, scope_all claims, acr, JWT userinfo, cancel and
RP-initiated logout. Skipped only when `node` is missing."""
from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey

from tests.psc_sandbox.sandbox import (
    IDENTITIES,
    cancel_login,
    complete_login,
    complete_logout,
    node_available,
    running_sandbox,
)

pytestmark = pytest.mark.skipif(not node_available(), reason="node est absent : le bac à sable PSC ne peut pas démarrer")

CALLBACK = "http://127.0.0.1:5999/psc/callback"
LOGGED_OUT = "http://127.0.0.1:5999/psc/logged-out"


@pytest.fixture(scope="module")
def psc():
    with running_sandbox(redirect_uri=CALLBACK, post_logout_uri=LOGGED_OUT) as sandbox:
        yield sandbox


def query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def login(psc, identity: str, *, auth: str = "basic") -> dict:
    """The portal's side of a PSC login: authorize (state, nonce, PKCE, acr_values), choose
    the identity, exchange the code, read userinfo."""
    browser = requests.Session()
    state, nonce, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    authorize = psc.metadata["authorization_endpoint"] + "?" + urlencode({
        "response_type": "code", "client_id": psc.client_id, "redirect_uri": CALLBACK, "scope": "openid scope_all",
        "acr_values": "eidas1", "state": state, "nonce": nonce, "code_challenge": challenge,
        "code_challenge_method": "S256"})
    callback = complete_login(browser, authorize, identity)
    assert callback.startswith(CALLBACK + "?")
    params = query(callback)
    assert params["state"] == state and params["iss"] == psc.issuer
    form = {"grant_type": "authorization_code", "code": params["code"], "redirect_uri": CALLBACK,
            "code_verifier": verifier}
    if auth == "basic":
        response = requests.post(psc.metadata["token_endpoint"], data=form, timeout=5,
                                 auth=(psc.client_id, psc.client_secret))
    else:
        response = requests.post(psc.metadata["token_endpoint"], timeout=5,
                                 data={**form, "client_id": psc.client_id, "client_secret": psc.client_secret})
    assert response.status_code == 200, response.text
    tokens = response.json()
    keys = KeySet.import_key_set(requests.get(psc.metadata["jwks_uri"], timeout=5).json())
    id_token = jwt.decode(tokens["id_token"], keys, algorithms=["RS256"]).claims
    assert id_token["iss"] == psc.issuer and id_token["aud"] == psc.client_id and id_token["nonce"] == nonce
    userinfo = requests.get(psc.metadata["userinfo_endpoint"], timeout=5,
                            headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert userinfo.status_code == 200, userinfo.text
    return {"browser": browser, "tokens": tokens, "id_token": id_token, "keys": keys, "userinfo": userinfo}


def test_discovery_under_both_names_with_the_login_page_on_another_host(psc):
    standard = requests.get(f"{psc.issuer}/.well-known/openid-configuration", timeout=5).json()
    assert psc.metadata == standard
    assert psc.discovery_url.endswith("/auth/realms/esante-wallet/.well-known/wallet-openid-configuration")
    assert psc.metadata["issuer"] == psc.issuer
    authorize = urlsplit(psc.metadata["authorization_endpoint"])
    assert authorize.hostname == "localhost" and urlsplit(psc.issuer).hostname == "127.0.0.1"
    assert psc.metadata["end_session_endpoint"] == f"{psc.issuer}/protocol/openid-connect/logout"
    assert set(psc.metadata["scopes_supported"]) >= {"openid", "scope_all"}
    assert set(psc.metadata["acr_values_supported"]) >= {"eidas1", "eidas2"}
    assert "S256" in psc.metadata["code_challenge_methods_supported"]
    assert {"client_secret_basic", "client_secret_post"} <= set(psc.metadata["token_endpoint_auth_methods_supported"])


def test_doctor_login_returns_psc_claim_shapes(psc):
    result = login(psc, "medecin")
    assert result["id_token"]["acr"] == "eidas1"
    assert result["userinfo"].headers["Content-Type"].startswith("application/json")
    info = result["userinfo"].json()
    assert info["sub"] == result["id_token"]["sub"]
    assert info["SubjectNameID"] == "810108825463" and info["preferred_username"] == "810108825463"
    assert (info["given_name"], info["family_name"], info["email_verified"]) == ("Nathalie", "DUPONT", False)
    assert info["otherIds"] == [{"identifiant": "810108825463", "origine": "RPPS", "qualite": 1}]
    exercice = info["SubjectRefPro"]["exercices"][0]
    assert info["SubjectRefPro"]["codeCivilite"] == "MME"
    assert (exercice["codeProfession"], exercice["nomDexercice"], exercice["prenomDexercice"]) == (
        "10", "DUPONT", "Nathalie")
    assert [a["numeroFinessSite"] for a in exercice["activities"]] == ["280503848", "750100471"]
    for activity in exercice["activities"]:
        assert {"numeroFinessetablissementJuridique", "raisonSocialeSite", "codePostal"} <= set(activity)
        assert all(isinstance(value, str) for value in activity.values())  # absent values are ""


def test_midwife_comes_back_eidas2_with_a_signed_userinfo(psc):
    result = login(psc, "sage-femme", auth="post")
    assert result["id_token"]["acr"] == "eidas2"
    assert result["userinfo"].headers["Content-Type"].startswith("application/jwt")
    info = jwt.decode(result["userinfo"].text, result["keys"], algorithms=["RS256"]).claims
    assert info["iss"] == psc.issuer and info["aud"] == psc.client_id and info["sub"] == result["id_token"]["sub"]
    assert info["SubjectNameID"] == "810100345213"
    assert info["SubjectRefPro"]["exercices"][0]["codeProfession"] == "50"


def test_non_rpps_identity_spells_otherIDs(psc):
    info = login(psc, "non-rpps")["userinfo"].json()
    assert info["SubjectNameID"].startswith("3") and "otherIds" not in info
    assert info["otherIDs"][0]["identifiant"] == info["SubjectNameID"]
    assert info["SubjectRefPro"]["exercices"][0]["activities"][0]["numeroFinessSite"] == ""


def test_weak_identity_has_no_acr_and_another_has_a_different_userinfo_sub(psc):
    assert "acr" not in login(psc, "sans-acr")["id_token"]
    result = login(psc, "autre-sub")
    assert result["userinfo"].json()["sub"] != result["id_token"]["sub"]


def test_identity_is_asked_again_at_each_login(psc):
    """No silent SSO: a second authorization in the same browser shows the page again."""
    first = login(psc, "medecin")
    url = psc.metadata["authorization_endpoint"] + "?" + urlencode({
        "response_type": "code", "client_id": psc.client_id, "redirect_uri": CALLBACK, "scope": "openid scope_all",
        "state": "s", "nonce": "n"})
    assert "code" in query(complete_login(first["browser"], url, "non-rpps"))


def test_cancel_returns_access_denied(psc):
    url = psc.metadata["authorization_endpoint"] + "?" + urlencode({
        "response_type": "code", "client_id": psc.client_id, "redirect_uri": CALLBACK, "scope": "openid scope_all",
        "state": "xyz", "nonce": "n"})
    params = query(cancel_login(requests.Session(), url))
    assert params["error"] == "access_denied" and params["state"] == "xyz"


def test_rp_initiated_logout_comes_back_to_the_registered_uri(psc):
    result = login(psc, "medecin")
    logout = psc.metadata["end_session_endpoint"] + "?" + urlencode({
        "id_token_hint": result["tokens"]["id_token"], "post_logout_redirect_uri": LOGGED_OUT, "state": "bye"})
    assert complete_logout(requests.Session(), logout) == f"{LOGGED_OUT}?state=bye"
    unknown = psc.metadata["end_session_endpoint"] + "?" + urlencode({
        "id_token_hint": result["tokens"]["id_token"], "post_logout_redirect_uri": "http://evil.example/"})
    assert requests.get(unknown, timeout=5).status_code == 400


def test_hs256_id_tokens_on_request():
    with running_sandbox(redirect_uri=CALLBACK, post_logout_uri=LOGGED_OUT, id_token_alg="HS256") as psc:
        browser = requests.Session()
        url = psc.metadata["authorization_endpoint"] + "?" + urlencode({
            "response_type": "code", "client_id": psc.client_id, "redirect_uri": CALLBACK,
            "scope": "openid scope_all", "state": "s", "nonce": "n"})
        code = query(complete_login(browser, url, "medecin"))["code"]
        tokens = requests.post(psc.metadata["token_endpoint"], auth=(psc.client_id, psc.client_secret), timeout=5,
                               data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}).json()
        claims = jwt.decode(tokens["id_token"], OctKey.import_key(psc.client_secret), algorithms=["HS256"]).claims
        assert claims["acr"] == "eidas1" and claims["nonce"] == "n"


def test_identities_cover_the_portal_cases():
    assert set(IDENTITIES) >= {"medecin", "sage-femme", "non-rpps", "sans-acr", "autre-sub"}
