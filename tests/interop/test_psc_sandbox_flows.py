"""J8 against the real peer: the served portal (`enrs serve`, SQLite, loopback SMTP, the
demo FINESS establishments) logs in with Pro Santé Connect played by tests/psc_sandbox
(panva's oidc-provider configured like PSC: issuer under /auth/realms/esante-wallet, the
wallet-openid-configuration discovery name, its login page on another host, scope_all,
acr eidas1/eidas2, userinfo as JSON or as a signed JWT). A person's browser is played by
`requests`; the portal and the sandbox talk to each other over HTTP for real.

- "Je n'ai pas de compte": a new account pre-filled from PSC, email verified, approved by
  the regional admin, then PSC alone logs it in.
- "J'ai déjà un compte sur le Portail", unlinking with the password, and Mon compte's
  "Lier ma carte e-CPS".
- A linked identity: no emailed code, the ROR tile's application receives acr/amr saying
  PSC and the national identifier, and the portal's logout ends PSC's session too.
- What the real peer may answer that the portal must refuse, or accept as it is; PSC down.

tests/test_psc.py covers every bad input against an in-process fake; this suite checks
that the portal and a real OpenID provider set up like PSC understand each other.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import free_port, port_outside_ephemeral_range
from tests.e2e.support import SECRET_KEY, Portal
from tests.interop.psc_support import (
    PSC_BUTTON,
    ROR_NAME,
    UNAVAILABLE,
    Account,
    PscBrowser,
    ServeOnly,
    account,
    audit_actions,
    input_tag,
    jwt_claims,
    last_audit_id,
    latest_session,
    link_href,
    page_text,
    psc_env,
    register_ror,
    sandbox_log,
    selected_option,
    verification_link,
)
from tests.interop.support import ARTIFACTS, PASSWORD, query
from tests.journeys import csrf, field_value, registration_data
from tests.psc_sandbox.sandbox import (
    CLIENT_ID,
    CLIENT_SECRET,
    IDENTITIES,
    REALM,
    Sandbox,
    complete_login,
    complete_logout,
    running_sandbox,
)

SUB = {name: identity["claims"]["sub"] for name, identity in IDENTITIES.items()}
DOCTOR_EMAIL = "nathalie.dupont@ch-dreux-interop.fr"
MIDWIFE_EMAIL = "camille.moreau@ch-dreux-interop.fr"


def path_of(response) -> str:
    """Where a redirect points, as a path (the portal's Location headers are relative)."""
    assert response.status_code in (302, 303), f"{response.status_code}: {page_text(response.text)[:400]}"
    return urlsplit(response.headers["Location"]).path


@dataclass
class Served:
    portal: Portal
    sandbox: Sandbox
    ror_secret: str


@pytest.fixture(scope="module")
def psc(mail_server) -> Iterator[Served]:
    """The sandbox (its redirect URIs: this portal's /psc/callback and /psc/logged-out),
    then the portal configured with its ENRS_PSC_* values, `enrs demo`'s data (the FINESS
    establishments, the regional admin) and the ROR application."""
    if shutil.which("node") is None:
        pytest.fail("node is missing: the interop suite needs Node.js 20 or later")
    with tempfile.TemporaryDirectory(prefix="enrs-interop-psc-") as root:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with running_sandbox(redirect_uri=f"{base}/psc/callback", post_logout_uri=f"{base}/psc/logged-out") as sandbox:
            env = {
                "ENRS_ENV": "development",
                "ENRS_INSTANCE_DIR": str(Path(root) / "instance"),
                "ENRS_BASE_URL": base,
                "ENRS_MAIL_URL": mail_server.url,
                "ENRS_MAIL_FROM": "ne-pas-repondre@esante-interop.fr",
                "ENRS_SECRET_KEY": SECRET_KEY,
                "ENRS_PORTAL_NAME": "eSanté Centre-Val de Loire",
                **psc_env(sandbox),
            }
            served = Portal(name="interop-psc", env=env, port=port, log_path=ARTIFACTS / "portal-psc.log",
                            inbox=mail_server.mailbox)
            try:
                served.start()  # enrs db upgrade, enrs demo, enrs serve
                yield Served(served, sandbox, register_ror(served))
            finally:
                served.stop()
                sandbox_log(sandbox, ARTIFACTS / "psc-sandbox.log")


# -- "Je n'ai pas de compte" ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doctor(psc) -> Account:
    """Nathalie DUPONT (identity `medecin`, RPPS 10108825463, two activities: FINESS
    280503848 known to the referential, 750100471 unknown) has no account: she signs up
    from PSC's answer, verifies her address, and the regional admin approves her."""
    portal = psc.portal
    browser = PscBrowser(portal)
    assert PSC_BUTTON in browser.page("/login")
    response = browser.psc_login("medecin")
    assert path_of(response) == "/psc/choice"
    choice = browser.page("/psc/choice")
    shown = page_text(choice)
    assert "Nathalie DUPONT (identifiant national 10108825463)" in shown
    assert "J'ai déjà un compte sur le Portail" in shown and "Je n'ai pas de compte" in shown

    form_url = link_href(choice, "Créer mon compte")
    assert form_url == "/register?psc=1"
    page = browser.page(form_url)
    shown = page_text(page)
    assert "Informations transmises par Pro Santé Connect" in shown
    for name, value in (("last_name", "DUPONT"), ("first_name", "Nathalie"), ("national_id", "10108825463")):
        tag = input_tag(page, name)
        assert f'value="{value}"' in tag and 'readonly="readonly"' in tag, tag
    assert selected_option(page, "profession") == "10", "PSC's codeProfession is proposed"
    assert field_value(page, "establishments-0-finess") == "280503848", "the known FINESS is proposed"
    assert field_value(page, "establishments-0-query") == "AIRBP IRC DREUX"
    assert field_value(page, "establishments-1-finess") is None, "the unknown FINESS is not proposed…"
    assert "absent(s) du répertoire FINESS : 750100471" in shown, "… but pointed out"

    challenge = re.search(r'name="captcha_id" value="([^"]+)"', page).group(1)
    data = registration_data(
        email=DOCTOR_EMAIL, email_confirm=DOCTOR_EMAIL, specialty="Médecine d'urgence",
        # What PSC vouches for is imposed: forged values are overwritten.
        last_name="Forged", first_name="Forged", national_id="10000000008")
    since = portal.mark()
    response = browser.post("/register", {**data, "csrf_token": csrf(page), "captcha_id": challenge,
                                          "captcha_answer": portal.captcha_code(challenge).lower()})
    assert path_of(response) == "/register/sent", page_text(response.text)[:2000]
    created = account(portal, DOCTOR_EMAIL)
    assert (created.last_name, created.first_name) == ("DUPONT", "Nathalie")
    assert (created.national_id, created.national_id_type) == ("10108825463", "rpps")
    assert created.status == "email_pending", "the address is still verified"
    assert created.psc_subject == SUB["medecin"], "the new account carries the PSC identity"

    verified = browser.get(urlsplit(verification_link(portal, DOCTOR_EMAIL, since)).path)
    assert verified.status_code == 200 and "Nous étudions votre demande" in page_text(verified.text)
    assert account(portal, DOCTOR_EMAIL).status == "review_pending"

    # Approval rules unchanged: PSC does not open an account an admin has not approved.
    early = PscBrowser(portal)
    mark = last_audit_id(portal)
    response = early.psc_login("medecin")
    assert path_of(response) == "/login"
    assert "Votre compte est en attente de validation par un administrateur" in early.shown_after(response)
    assert not early.logged_in() and "psc.account_not_active" in audit_actions(portal, mark)

    admin = PscBrowser(portal)
    admin.log_in(portal.admin_login, portal.demo_password, portal.admin_email)
    queue = admin.page("/admin/accounts")
    request_url = link_href(queue, "DUPONT Nathalie")
    assert request_url == f"/admin/accounts/{created.id}"
    response = admin.submit(request_url, request_url, {"decision": "approve", "reason": ""})
    assert "Le compte de Nathalie DUPONT est validé" in admin.shown_after(response)
    approved = account(portal, DOCTOR_EMAIL)
    assert approved.status == "active" and approved.psc_subject == SUB["medecin"]
    return approved


def test_a_new_user_signs_up_through_je_nai_pas_de_compte_then_psc_logs_her_in(psc, doctor):
    portal = psc.portal
    browser = PscBrowser(portal)
    mailed = len(portal.outbox(DOCTOR_EMAIL))
    response = browser.psc_login("medecin")
    assert path_of(response) == "/apps", "a linked and approved identity goes straight in"
    assert browser.logged_in()
    assert len(portal.outbox(DOCTOR_EMAIL)) == mailed, "no code sent by mail"
    assert latest_session(portal, doctor.id) == ("eidas1", ["psc", "mfa"], True)


# -- "J'ai déjà un compte sur le Portail", unlink, Mon compte ------------------------------------------


def test_an_existing_user_links_their_ecps_unlinks_it_and_links_it_again_from_mon_compte(psc):
    """Camille MOREAU (identity `sage-femme`: acr eidas2, userinfo as a signed JWT) has an
    account made with `enrs user create`, without a national identifier."""
    assert IDENTITIES["sage-femme"]["acr"] == "eidas2" and IDENTITIES["sage-femme"]["userinfo"] == "jwt"
    portal = psc.portal
    portal.create_professional(email=MIDWIFE_EMAIL, password=PASSWORD, first_name="Camille", last_name="Moreau")
    browser = PscBrowser(portal)
    response = browser.psc_login("sage-femme")
    assert path_of(response) == "/psc/choice"
    choice = browser.page("/psc/choice")
    assert "Camille MOREAU (identifiant national 10100345213)" in page_text(choice)

    login_url = link_href(choice, "Me connecter pour lier ma carte")
    target = browser.log_in(MIDWIFE_EMAIL, PASSWORD, MIDWIFE_EMAIL, login_url=login_url)
    assert urlsplit(target).path == "/psc/confirm-link"
    confirm = browser.page("/psc/confirm-link")
    shown = page_text(confirm)
    assert "Camille MOREAU" in shown and "10100345213" in shown
    mark = last_audit_id(portal)
    response = browser.post("/psc/confirm-link", {"csrf_token": csrf(confirm)})
    assert path_of(response) == "/apps"
    assert "Votre carte e-CPS est liée à votre compte" in browser.shown_after(response)
    linked = account(portal, MIDWIFE_EMAIL)
    assert linked.psc_subject == SUB["sage-femme"]
    assert (linked.national_id, linked.national_id_type) == ("10100345213", "rpps"), "PSC vouched for it"
    assert "psc.linked" in audit_actions(portal, mark)

    # "Délier" asks for the password again.
    manage = browser.page("/psc/")
    assert "Délier ma carte e-CPS" in page_text(manage)
    wrong = browser.post("/psc/unlink", {"csrf_token": csrf(manage), "password": "Pas-le-bon-2026"})
    assert wrong.status_code == 422 and "Le mot de passe est incorrect." in page_text(wrong.text)
    assert account(portal, MIDWIFE_EMAIL).psc_subject == SUB["sage-femme"]
    response = browser.submit("/psc/", "/psc/unlink", {"password": PASSWORD})
    assert path_of(response) == "/psc/"
    assert "Votre carte e-CPS n'est plus liée à votre compte" in browser.shown_after(response)
    assert account(portal, MIDWIFE_EMAIL).psc_subject is None

    # Logged in, Mon compte: "Lier ma carte e-CPS" → PSC → linked.
    assert "Lier ma carte e-CPS" in page_text(browser.page("/account/"))
    response = browser.psc_login("sage-femme", via="link")
    assert path_of(response) == "/psc/"
    assert "Votre carte e-CPS est liée à votre compte" in browser.shown_after(response)
    assert account(portal, MIDWIFE_EMAIL).psc_subject == SUB["sage-femme"]

    # From now on PSC alone logs her in, at the level PSC vouched for.
    fresh = PscBrowser(portal)
    mailed = len(portal.outbox(MIDWIFE_EMAIL))
    assert path_of(fresh.psc_login("sage-femme")) == "/apps"
    assert fresh.logged_in() and len(portal.outbox(MIDWIFE_EMAIL)) == mailed
    assert latest_session(portal, linked.id) == ("eidas2", ["psc", "mfa"], True)


# -- a linked identity: the ROR tile, logging out of both ----------------------------------------------


def test_a_linked_user_opens_the_ror_app_with_psc_acr_and_logs_out_of_psc_too(psc, doctor):
    portal, sandbox = psc.portal, psc.sandbox
    browser = PscBrowser(portal)
    mailed = len(portal.outbox(DOCTOR_EMAIL))
    assert path_of(browser.psc_login("medecin")) == "/apps"
    apps = browser.page("/apps")
    assert ROR_NAME in page_text(apps)
    assert len(portal.outbox(DOCTOR_EMAIL)) == mailed, "no code sent by mail"

    claims = browser.open_ror(psc.ror_secret)["claims"]
    assert claims["acr"] == "eidas1"
    assert claims["amr"] == ["psc", "mfa"]
    assert claims["national_id"] == "10108825463"
    assert claims["family_name"] == "DUPONT" and claims["given_name"] == "Nathalie"

    response = browser.post("/logout", {"csrf_token": csrf(apps)})
    assert response.status_code == 303
    logout_url = response.headers["Location"]
    assert logout_url.startswith(sandbox.end_session_endpoint + "?"), logout_url
    params = query(logout_url)
    assert params["post_logout_redirect_uri"] == f"{portal.base_url}/psc/logged-out"
    hint = jwt_claims(params["id_token_hint"])
    assert (hint["iss"], hint["aud"], hint["sub"]) == (sandbox.issuer, sandbox.client_id, SUB["medecin"]), \
        "the ID token PSC issued for this login"
    assert not browser.logged_in(), "the portal's session is over"

    back = complete_logout(browser.http, logout_url)
    assert urlsplit(back)._replace(query="").geturl() == f"{portal.base_url}/psc/logged-out", back
    response = browser.get(back)
    assert path_of(response) == "/"
    assert "Vous êtes déconnecté du portail et de Pro Santé Connect." in browser.shown_after(response)


# -- what the real peer answers ---------------------------------------------------------------------------


def test_an_identity_without_acr_is_refused(psc):
    portal = psc.portal
    assert IDENTITIES["sans-acr"]["acr"] is None
    browser = PscBrowser(portal)
    mark = last_audit_id(portal)
    response = browser.psc_login("sans-acr")
    assert path_of(response) == "/login"
    shown = browser.shown_after(response)
    assert "Pro Santé Connect n'a pas confirmé une authentification assez forte (niveau eIDAS substantiel requis)." \
        in shown
    assert "Mot de passe" in shown, "the other way to log in is on the page"
    assert not browser.logged_in()
    assert "psc.refused.acr_too_weak" in audit_actions(portal, mark)


def test_a_userinfo_for_another_subject_is_refused(psc):
    portal = psc.portal
    browser = PscBrowser(portal)
    mark = last_audit_id(portal)
    response = browser.psc_login("autre-sub")
    assert path_of(response) == "/login"
    assert "La connexion avec Pro Santé Connect n'a pas pu être vérifiée." in browser.shown_after(response)
    assert not browser.logged_in()
    assert "psc.refused.userinfo_subject_mismatch" in audit_actions(portal, mark)


def test_a_non_rpps_identity_spelled_otherIDs_prefills_the_registration_as_it_is(psc):
    claims = IDENTITIES["non-rpps"]["claims"]
    assert "otherIDs" in claims and "otherIds" not in claims
    browser = PscBrowser(psc.portal)
    assert path_of(browser.psc_login("non-rpps")) == "/psc/choice"
    assert "Julien MARTIN (identifiant national 3280071135/0042)" in page_text(browser.page("/psc/choice"))
    page = browser.page("/register?psc=1")
    shown = page_text(page)
    assert "Informations transmises par Pro Santé Connect" in shown
    for name, value in (("last_name", "MARTIN"), ("first_name", "Julien"), ("national_id", "3280071135/0042")):
        tag = input_tag(page, name)
        assert f'value="{value}"' in tag and 'readonly="readonly"' in tag, tag
    assert selected_option(page, "profession") == "60"
    assert field_value(page, "establishments-0-finess") == "", "an empty numeroFinessSite means none"
    assert "absent(s) du répertoire FINESS" not in shown


def test_cancelling_at_psc_comes_back_to_the_login_page(psc):
    portal = psc.portal
    browser = PscBrowser(portal)
    mark = last_audit_id(portal)
    response = browser.psc_cancel()
    assert path_of(response) == "/login"
    assert "Connexion avec Pro Santé Connect annulée." in browser.shown_after(response)
    assert "psc.cancelled" in audit_actions(portal, mark)


def test_a_replayed_callback_is_refused(psc):
    portal = psc.portal
    browser = PscBrowser(portal)
    callback_url = complete_login(browser.http, browser.start(), "non-rpps")
    assert path_of(browser.callback(callback_url)) == "/psc/choice"
    refusal = "La réponse de Pro Santé Connect n'est pas valide ou a déjà été utilisée."
    for replaying in (browser, PscBrowser(portal)):  # the same browser, and someone who got the address
        mark = last_audit_id(portal)
        response = replaying.callback(callback_url)
        assert path_of(response) == "/login"
        assert refusal in replaying.shown_after(response)
        assert "psc.state_mismatch" in audit_actions(portal, mark)
        assert not replaying.logged_in()


@dataclass
class Outage:
    """Another `enrs serve` on the module's instance, whose PSC is a sandbox on ports
    chosen here that the test starts and stops (not running at first)."""

    portal: Portal
    sandbox_port: int
    wallet_port: int

    def psc_up(self):
        base = self.portal.base_url
        return running_sandbox(port=self.sandbox_port, wallet_port=self.wallet_port,
                               redirect_uri=f"{base}/psc/callback", post_logout_uri=f"{base}/psc/logged-out")


@pytest.fixture
def outage(psc, mail_server, request) -> Iterator[Outage]:
    # The sandbox starts later, on ports the portal already knows (and tries while it is down).
    sandbox_port, wallet_port, port = port_outside_ephemeral_range(), port_outside_ephemeral_range(), free_port()
    discovery = f"http://127.0.0.1:{sandbox_port}{REALM}/.well-known/wallet-openid-configuration"
    env = {**psc.portal.env, "ENRS_BASE_URL": f"http://127.0.0.1:{port}", "ENRS_PSC_DISCOVERY_URL": discovery,
           "ENRS_PSC_CLIENT_ID": CLIENT_ID, "ENRS_PSC_CLIENT_SECRET": CLIENT_SECRET}
    second = ServeOnly(name="interop-psc-outage", env=env, port=port, inbox=mail_server.mailbox,
                       log_path=ARTIFACTS / f"portal-psc-{request.node.name[:60]}.log")
    second.start()
    try:
        yield Outage(second, sandbox_port, wallet_port)
    finally:
        second.stop()


def test_psc_down_shows_a_french_message_and_the_password_login(outage):
    """PSC down when the portal first needs it, then up, then down between its login page
    and the portal's callback (the code cannot be exchanged)."""
    portal = outage.portal
    browser = PscBrowser(portal)
    assert PSC_BUTTON in browser.page("/login"), "configured, so offered"
    mark = last_audit_id(portal)
    response = browser.get("/psc/login")
    assert path_of(response) == "/login"
    shown = browser.shown_after(response)
    assert UNAVAILABLE in shown and "Mot de passe" in shown, "the message and the other way to log in"
    assert "psc.unavailable" in audit_actions(portal, mark)

    with outage.psc_up():
        callback_url = complete_login(browser.http, browser.start(), "medecin")
    response = browser.callback(callback_url)
    assert path_of(response) == "/login"
    assert UNAVAILABLE in browser.shown_after(response)
    assert not browser.logged_in()


def test_psc_down_after_the_portal_has_used_it_shows_the_message_too(outage):
    browser = PscBrowser(outage.portal)
    with outage.psc_up():
        browser.start()  # the portal has read PSC's metadata while PSC was up
    response = browser.get("/psc/login")
    assert path_of(response) == "/login", f"sent to {response.headers.get('Location')}"
    assert UNAVAILABLE in browser.shown_after(response)
