"""J3/J4: an authenticator app (TOTP) added through Mon compte, its recovery codes, and
the checks the login step relies on (window, no replay, one winner under concurrency)."""
from __future__ import annotations

import base64
import re
import threading
from html import unescape

import pyotp
import pytest
import sqlalchemy as sa

from tests.conftest import body_text
from tests.journeys import csrf, error_for, login

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"
KEY_RE = re.compile(r'<code id="totp-key"[^>]*>([A-Z2-7 ]+)</code>')
QR_RE = re.compile(r'<img src="(data:image/svg\+xml;base64,[A-Za-z0-9+/=]+)"')
RECOVERY_RE = re.compile(r"<li><code>([a-z2-9]{4}-[a-z2-9]{4})</code></li>")


@pytest.fixture
def portal(app):
    from onboarding.accounts import create_professional
    from portal.db import db

    with app.app_context():
        create_professional(db.session, email=EMAIL, password=PASSWORD, first_name="Nathalie", last_name="Dupont",
                            profession="10", finess=None)
        db.session.commit()
    return app


@pytest.fixture
def user_client(portal, client, mailbox):
    """Nathalie, logged in with her password and the code received by mail."""
    assert login(client, mailbox, "ndupont", PASSWORD, EMAIL).status_code == 303
    mailbox.clear()
    return client


def code_at(secret: str, clock, steps: int = 0) -> str:
    """What the phone shows, `steps` periods of 30 s away from the portal's time."""
    return pyotp.TOTP(secret).at(clock.current.timestamp() + 30 * steps)


def start_enrolment(client) -> str:
    page = client.get("/account/totp/").get_data(as_text=True)
    response = client.post("/account/totp/start", data={"csrf_token": csrf(page)})
    assert response.status_code == 303 and response.headers["Location"].endswith("/account/totp/confirm")
    return client.get("/account/totp/confirm").get_data(as_text=True)


def key_in(page: str) -> str:
    """The key typed by hand when the QR code cannot be scanned, read like a person would."""
    assert "Saisissez cette clé si vous ne pouvez pas scanner le QR code" in page
    match = KEY_RE.search(page)
    assert match, "no key for manual entry in the page"
    return match.group(1).replace(" ", "")


def confirm(client, page: str, code: str):
    return client.post("/account/totp/confirm", data={"csrf_token": csrf(page), "code": code})


def enrol(client, clock) -> tuple[str, list[str]]:
    """Add the app through the pages; the secret and the recovery codes shown once."""
    page = start_enrolment(client)
    secret = key_in(page)
    response = confirm(client, page, code_at(secret, clock))
    assert response.status_code == 200, response.get_data(as_text=True)
    return secret, RECOVERY_RE.findall(response.get_data(as_text=True))


def check(portal, function_name: str, code: str) -> bool:
    """Call a login-step check the way the login view will: its own transaction, committed."""
    from idp import totp
    from idp.models import User
    from portal.db import db

    with portal.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == EMAIL))
        accepted = getattr(totp, function_name)(db.session, user, code)
        db.session.commit()
        return accepted


def at_once(portal, function_name: str, code: str, times: int) -> list[bool]:
    """The same code submitted by several requests at the same instant."""
    barrier = threading.Barrier(times)
    results: list[bool] = []
    errors: list[BaseException] = []

    def submit():
        try:
            barrier.wait()  # before any database access: SQLite takes its write lock on the first statement
            results.append(check(portal, function_name, code))
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def audit_actions(portal) -> list[tuple[str, str]]:
    from portal.audit import AuditEntry
    from portal.db import db

    with portal.app_context():
        return [(e.action, e.outcome) for e in db.session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id))]


def stored_credential(portal):
    from idp.models import TotpCredential
    from portal.db import db

    with portal.app_context():
        return db.session.scalar(sa.select(TotpCredential))


def codes_left(portal) -> int:
    from idp.models import User
    from idp.totp import recovery_codes_left
    from portal.db import db

    with portal.app_context():
        return recovery_codes_left(db.session, db.session.scalar(sa.select(User).where(User.email == EMAIL)))


def has_totp(portal) -> bool:
    from idp.models import User
    from idp.totp import has_totp as has
    from portal.db import db

    with portal.app_context():
        return has(db.session, db.session.scalar(sa.select(User).where(User.email == EMAIL)))


# -- enrolment ----------------------------------------------------------------------------


def test_a_visitor_who_is_not_logged_in_is_sent_to_the_login_page(portal, client):
    response = client.get("/account/totp/")
    assert response.status_code == 302 and "/login?next=/account/totp/" in response.headers["Location"]


def test_professional_adds_an_authenticator_app_and_gets_ten_recovery_codes(portal, user_client, mailbox, clock):
    overview = user_client.get("/account/totp/").get_data(as_text=True)
    assert "Aucune application d'authentification n'est associée à votre compte" in overview
    assert "Ajouter une application d'authentification" in overview

    page = start_enrolment(user_client)
    assert '<label for="code">Code affiché par l\'application' in unescape(page)
    secret = key_in(page)
    assert len(secret) == 32
    assert "Nom du compte : ndupont ; émetteur : eSanté Test" in page

    response = confirm(user_client, page, code_at(secret, clock))
    assert response.status_code == 200
    shown = response.get_data(as_text=True)
    codes = RECOVERY_RE.findall(shown)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert "ils ne seront plus jamais affichés" in shown

    overview = user_client.get("/account/totp/").get_data(as_text=True)
    assert "Activée, ajoutée le 02/11/2026 à 09:30" in overview  # 08:30 UTC is 09:30 in Paris in November
    assert "10 sur 10" in overview
    assert "Retirer l'application" in overview and "Générer de nouveaux codes de secours" in overview
    assert ("totp.enrolled", "success") in audit_actions(portal)

    notice = mailbox.last(EMAIL)
    assert notice["Subject"] == "[eSanté Test] Une application d'authentification a été ajoutée à votre compte"
    text = body_text(notice)
    assert "le 02/11/2026 à 09:30" in text
    assert secret not in text and secret[:8] not in text.replace(" ", "")
    assert not any(code in text for code in codes)
    # The codes were shown once: no page of the portal shows them again.
    assert not RECOVERY_RE.search(user_client.get("/account/totp/").get_data(as_text=True))


def test_the_qr_code_is_an_svg_image_of_the_otpauth_uri_built_on_the_server(portal, user_client):
    from idp.totp import qr_data_uri

    response = user_client.get("/account/totp/confirm")
    assert response.status_code == 303  # nothing to confirm before "Ajouter"
    page = start_enrolment(user_client)
    secret = key_in(page)
    source = unescape(QR_RE.search(page).group(1))
    svg = base64.b64decode(source.split(",", 1)[1])
    assert svg.startswith(b"<svg") and b"<script" not in svg

    expected_uri = pyotp.TOTP(secret).provisioning_uri(name="ndupont", issuer_name="eSanté Test")
    assert expected_uri.startswith("otpauth://totp/eSant%C3%A9%20Test:ndupont?secret=" + secret)
    with portal.app_context():
        assert qr_data_uri(expected_uri)[0] == source

    response = user_client.get("/account/totp/confirm")
    html = response.get_data(as_text=True)
    assert "img-src 'self' data:" in response.headers["Content-Security-Policy"]
    assert " style=" not in html and "<script>" not in html
    assert response.headers["Cache-Control"] == "no-store"


def test_a_wrong_confirmation_code_is_refused_next_to_the_field_and_the_key_is_kept(portal, user_client, clock):
    page = start_enrolment(user_client)
    secret = key_in(page)
    right = code_at(secret, clock)
    wrong = "000000" if right != "000000" else "111111"

    response = confirm(user_client, page, wrong)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert error_for(html, "code").startswith("Le code saisi est incorrect.")
    assert 'aria-describedby="code-hint code-error"' in html and 'aria-invalid="true"' in html
    assert key_in(html) == secret  # the same key: the app already holds it
    assert stored_credential(portal).confirmed_at is None

    assert confirm(user_client, page, code_at(secret, clock, steps=3)).status_code == 422  # 90 s ahead
    assert confirm(user_client, page, right).status_code == 200
    assert stored_credential(portal).confirmed_at is not None


def test_the_secret_is_stored_encrypted_with_a_key_derived_from_the_secret_key(portal, user_client, clock):
    from cryptography.fernet import InvalidToken

    from idp.totp import decrypt_secret

    secret, _codes = enrol(user_client, clock)
    stored = stored_credential(portal).secret_encrypted
    assert stored != secret and secret not in stored
    with portal.app_context():
        assert decrypt_secret(stored) == secret
    original = portal.config["SECRET_KEY"]
    portal.config["SECRET_KEY"] = "another-secret-key-" + "y" * 32
    try:
        with portal.app_context():
            with pytest.raises(InvalidToken):
                decrypt_secret(stored)
        clock.advance(seconds=60)
        assert check(portal, "verify_totp", code_at(secret, clock)) is False
    finally:
        portal.config["SECRET_KEY"] = original


def test_an_unfinished_enrolment_cannot_log_in_and_expires_after_30_minutes(portal, user_client, clock):
    assert has_totp(portal) is False and check(portal, "verify_totp", "123456") is False
    page = start_enrolment(user_client)
    first = key_in(page)
    assert has_totp(portal) is False
    assert check(portal, "verify_totp", code_at(first, clock)) is False

    second = key_in(start_enrolment(user_client))  # "Ajouter" again: a new key replaces the first
    assert second != first
    assert confirm(user_client, page, code_at(first, clock)).status_code == 422

    clock.advance(minutes=20)
    assert user_client.get("/account/totp/").status_code == 200  # still logged in (idle timeout)
    clock.advance(minutes=11)
    response = user_client.get("/account/totp/confirm")
    assert response.status_code == 303 and response.headers["Location"].endswith("/account/totp/")
    assert "La clé proposée a expiré" in user_client.get("/account/totp/").get_data(as_text=True)
    assert has_totp(portal) is False


def test_a_second_app_cannot_be_added_while_one_is_enrolled(portal, user_client, clock):
    enrol(user_client, clock)
    before = stored_credential(portal)
    page = user_client.get("/account/totp/").get_data(as_text=True)
    assert "Ajouter une application d'authentification" not in page
    response = user_client.post("/account/totp/start", data={"csrf_token": csrf(page)}, follow_redirects=True)
    assert "déjà associée à votre compte" in response.get_data(as_text=True)
    after = stored_credential(portal)
    assert (after.id, after.secret_encrypted, after.confirmed_at) == (before.id, before.secret_encrypted,
                                                                      before.confirmed_at)


def test_every_form_needs_the_csrf_token(portal, user_client, clock):
    assert user_client.post("/account/totp/start").status_code == 400
    enrol(user_client, clock)
    assert user_client.post("/account/totp/remove", data={"password": PASSWORD}).status_code == 400
    assert user_client.post("/account/totp/recovery-codes", data={"password": PASSWORD}).status_code == 400
    assert has_totp(portal) is True


# -- the checks of the login step ------------------------------------------------------------


def test_codes_one_step_either_side_of_now_are_accepted(portal, user_client, clock):
    secret, _codes = enrol(user_client, clock)
    assert has_totp(portal) is True
    clock.advance(minutes=5)
    assert check(portal, "verify_totp", code_at(secret, clock, steps=-1)) is True  # the phone is 30 s late
    assert check(portal, "verify_totp", code_at(secret, clock)) is True
    assert check(portal, "verify_totp", code_at(secret, clock, steps=1)) is True  # the phone is 30 s early
    clock.advance(seconds=60)
    typed = code_at(secret, clock)
    assert check(portal, "verify_totp", f" {typed[:3]} {typed[3:]} ") is True  # spaces do not matter


def test_codes_two_steps_away_are_refused(portal, user_client, clock):
    secret, _codes = enrol(user_client, clock)
    clock.advance(minutes=5)
    assert check(portal, "verify_totp", code_at(secret, clock, steps=-2)) is False
    assert check(portal, "verify_totp", code_at(secret, clock, steps=2)) is False
    assert check(portal, "verify_totp", "12345") is False
    assert check(portal, "verify_totp", "abcdef") is False
    assert check(portal, "verify_totp", code_at(secret, clock)) is True  # the refusals consumed nothing


def test_the_same_code_is_never_accepted_twice(portal, user_client, clock):
    secret, _codes = enrol(user_client, clock)
    # The code that confirmed the enrolment is spent: it cannot log in a second later.
    assert check(portal, "verify_totp", code_at(secret, clock)) is False
    clock.advance(seconds=30)
    code = code_at(secret, clock)
    assert check(portal, "verify_totp", code) is True
    assert check(portal, "verify_totp", code) is False
    clock.advance(seconds=29)  # still inside the window of that step
    assert check(portal, "verify_totp", code) is False
    # Nor a code older than the last one accepted (still inside the window).
    clock.advance(seconds=1)
    later = code_at(secret, clock, steps=1)
    assert check(portal, "verify_totp", later) is True
    assert check(portal, "verify_totp", code_at(secret, clock)) is False


def test_one_code_submitted_by_several_requests_at_once_is_accepted_once(portal, user_client, clock):
    secret, _codes = enrol(user_client, clock)
    clock.advance(minutes=2)
    assert sorted(at_once(portal, "verify_totp", code_at(secret, clock), times=6)) == [False] * 5 + [True]


# -- recovery codes -------------------------------------------------------------------------


def test_a_recovery_code_works_once_and_the_owner_is_told(portal, user_client, mailbox, clock):
    _secret, codes = enrol(user_client, clock)
    mailbox.clear()
    typed = "  " + codes[3].upper().replace("-", " ") + " "  # case, spaces and dashes do not matter
    assert check(portal, "verify_recovery_code", typed) is True
    assert codes_left(portal) == 9

    notice = mailbox.last(EMAIL)
    assert notice["Subject"] == "[eSanté Test] Un code de secours a été utilisé"
    assert "Il vous reste 9 codes de secours." in body_text(notice)
    assert codes[3] not in body_text(notice)
    assert ("totp.recovery_code_used", "success") in audit_actions(portal)
    assert "9 sur 10" in user_client.get("/account/totp/").get_data(as_text=True)

    assert check(portal, "verify_recovery_code", codes[3]) is False
    assert len(mailbox.to(EMAIL)) == 1
    assert check(portal, "verify_recovery_code", codes[4].replace("-", "")) is True


def test_wrong_recovery_codes_are_refused_and_consume_nothing(portal, user_client, mailbox, clock):
    _secret, codes = enrol(user_client, clock)
    mailbox.clear()
    unknown = next(c for c in ("abcd-efgh", "hgfe-dcba") if c not in codes)
    for typed in (unknown, "", "abcd", codes[0] + "x", codes[0].replace(codes[0][0], "0", 1), "' OR 1=1 --"):
        assert check(portal, "verify_recovery_code", typed) is False, typed
    assert codes_left(portal) == 10
    assert mailbox.to(EMAIL) == []


def test_the_last_recovery_codes_prompt_new_ones(portal, user_client, mailbox, clock):
    warning = "Il vous reste peu de codes de secours"
    _secret, codes = enrol(user_client, clock)
    for code in codes[:6]:
        assert check(portal, "verify_recovery_code", code) is True
    assert "Il vous reste 4 codes de secours." in body_text(mailbox.last(EMAIL))
    assert "Pensez à en générer de nouveaux" not in body_text(mailbox.last(EMAIL))
    assert warning not in user_client.get("/account/totp/").get_data(as_text=True)
    assert check(portal, "verify_recovery_code", codes[6]) is True
    assert "Pensez à en générer de nouveaux" in body_text(mailbox.last(EMAIL))
    assert warning in user_client.get("/account/totp/").get_data(as_text=True)
    for code in codes[7:]:
        assert check(portal, "verify_recovery_code", code) is True
    assert "Il ne vous reste aucun code de secours." in body_text(mailbox.last(EMAIL))


def test_one_recovery_code_submitted_by_several_requests_at_once_is_accepted_once(portal, user_client, clock):
    _secret, codes = enrol(user_client, clock)
    assert sorted(at_once(portal, "verify_recovery_code", codes[0], times=6)) == [False] * 5 + [True]
    assert codes_left(portal) == 9


def test_new_recovery_codes_need_the_password_and_void_the_old_ones(portal, user_client, mailbox, clock):
    _secret, old = enrol(user_client, clock)
    assert check(portal, "verify_recovery_code", old[0]) is True
    mailbox.clear()

    page = user_client.get("/account/totp/recovery-codes").get_data(as_text=True)
    assert '<label for="password">Mot de passe actuel' in page
    refused = user_client.post("/account/totp/recovery-codes",
                               data={"csrf_token": csrf(page), "password": "Mauvais-Secret-2026"})
    assert refused.status_code == 401
    assert error_for(refused.get_data(as_text=True), "password") == "Mot de passe actuel incorrect."
    assert ("totp.recovery_codes_refused", "failure") in audit_actions(portal)
    assert codes_left(portal) == 9 and mailbox.to(EMAIL) == []

    response = user_client.post("/account/totp/recovery-codes", data={"csrf_token": csrf(page), "password": PASSWORD})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "les précédents ne fonctionnent plus" in html
    new = RECOVERY_RE.findall(html)
    assert len(new) == 10 and not set(new) & set(old)
    assert codes_left(portal) == 10
    assert check(portal, "verify_recovery_code", old[1]) is False
    assert check(portal, "verify_recovery_code", new[0]) is True
    assert ("totp.recovery_codes_renewed", "success") in audit_actions(portal)
    subjects = [m["Subject"] for m in mailbox.to(EMAIL)]
    assert "[eSanté Test] De nouveaux codes de secours ont été générés" in subjects


def test_removing_the_app_needs_the_password_and_tells_the_owner(portal, user_client, mailbox, clock):
    secret, codes = enrol(user_client, clock)
    mailbox.clear()

    page = user_client.get("/account/totp/remove").get_data(as_text=True)
    assert "<h1>Retirer l'application d'authentification</h1>" in unescape(page)
    refused = user_client.post("/account/totp/remove", data={"csrf_token": csrf(page), "password": ""})
    assert refused.status_code == 401
    assert error_for(refused.get_data(as_text=True), "password") == "Mot de passe actuel incorrect."
    assert has_totp(portal) is True and mailbox.to(EMAIL) == []
    assert ("totp.remove_refused", "failure") in audit_actions(portal)

    response = user_client.post("/account/totp/remove", data={"csrf_token": csrf(page), "password": PASSWORD})
    assert response.status_code == 303 and response.headers["Location"].endswith("/account/totp/")
    overview = user_client.get("/account/totp/").get_data(as_text=True)
    assert "L'application d'authentification a été retirée de votre compte" in unescape(overview)
    assert "Ajouter une application d'authentification" in overview
    assert has_totp(portal) is False and codes_left(portal) == 0
    assert stored_credential(portal) is None
    clock.advance(minutes=1)
    assert check(portal, "verify_totp", code_at(secret, clock)) is False
    assert check(portal, "verify_recovery_code", codes[0]) is False
    assert ("totp.removed", "success") in audit_actions(portal)
    notice = mailbox.last(EMAIL)
    assert notice["Subject"] == "[eSanté Test] L'application d'authentification a été retirée de votre compte"

    # The pages of an app that is gone lead back to the overview; a new one can be added.
    assert user_client.get("/account/totp/remove").status_code == 303
    assert user_client.get("/account/totp/recovery-codes").status_code == 303
    assert key_in(start_enrolment(user_client)) != secret


def test_notice_subjects_keep_every_space(portal, user_client, mailbox, clock):
    _secret, codes = enrol(user_client, clock)
    assert check(portal, "verify_recovery_code", codes[0]) is True
    assert mailbox.last(EMAIL)["Subject"] == "[eSanté Test] Un code de secours a été utilisé"


# -- the login step with an authenticator app ---------------------------------------------------


def password_step(portal):
    client = portal.test_client()
    page = client.get("/login").get_data(as_text=True)
    response = client.post("/login", data={"csrf_token": csrf(page), "username": "ndupont", "password": PASSWORD})
    assert response.status_code == 303
    return client


def code_step(client, code):
    page = client.get("/login/code").get_data(as_text=True)
    return client.post("/login/code", data={"csrf_token": csrf(page), "code": code})


def session_amr(portal) -> list[list[str]]:
    from idp.sessions import UserSession
    from portal.db import db

    with portal.app_context():
        return [s.amr for s in db.session.scalars(sa.select(UserSession).order_by(UserSession.created_at))]


def test_user_with_an_authenticator_app_logs_in_with_it_and_no_mail_is_sent(portal, user_client, mailbox, clock):
    secret, _ = enrol(user_client, clock)
    mailbox.clear()
    clock.advance(seconds=60)
    client = password_step(portal)
    page = unescape(client.get("/login/code").get_data(as_text=True))
    assert "Code affiché par votre application d'authentification" in page
    assert "Recevoir plutôt un code par mail" in page
    assert mailbox.to(EMAIL) == []
    assert code_step(client, code_at(secret, clock)).status_code == 303
    assert session_amr(portal)[-1] == ["pwd", "otp", "mfa"]


def test_a_colleague_without_an_app_still_gets_the_code_by_mail(portal, user_client, mailbox, clock):
    """Whether an app is enrolled is read with the account (one query): it must be this
    account's app, not anyone's."""
    from onboarding.accounts import create_professional
    from portal.db import db

    enrol(user_client, clock)
    with portal.app_context():
        create_professional(db.session, email="paul.martin@esante-test.fr", password=PASSWORD, first_name="Paul",
                            last_name="Martin", profession="10", finess=None)
        db.session.commit()
    mailbox.clear()
    client = portal.test_client()
    page = client.get("/login").get_data(as_text=True)
    response = client.post("/login", data={"csrf_token": csrf(page), "username": "paul.martin@esante-test.fr",
                                           "password": PASSWORD})
    assert response.status_code == 303 and len(mailbox.to("paul.martin@esante-test.fr")) == 1
    page = unescape(client.get("/login/code").get_data(as_text=True))
    assert "Code affiché par votre application d'authentification" not in page


def test_an_app_code_is_not_accepted_twice_at_login(portal, user_client, clock):
    secret, _ = enrol(user_client, clock)
    clock.advance(seconds=60)
    code = code_at(secret, clock)
    assert code_step(password_step(portal), code).status_code == 303
    replay = code_step(password_step(portal), code)
    assert replay.status_code == 401
    assert "Le code saisi est incorrect" in error_for(replay.get_data(as_text=True), "code")


def test_user_with_an_app_may_ask_for_an_email_code_instead(portal, user_client, mailbox, clock):
    enrol(user_client, clock)
    mailbox.clear()
    client = password_step(portal)
    page = client.get("/login/code").get_data(as_text=True)
    client.post("/login/resend", data={"csrf_token": csrf(page)})
    code = re.search(r"unique est : (\d{6})", body_text(mailbox.last(EMAIL))).group(1)
    assert "Un code vous a été envoyé par mail" in unescape(client.get("/login/code").get_data(as_text=True))
    assert code_step(client, code).status_code == 303
    assert session_amr(portal)[-1] == ["pwd", "otp", "mca"]


def test_a_recovery_code_logs_in_once(portal, user_client, clock):
    _, recovery = enrol(user_client, clock)
    assert code_step(password_step(portal), recovery[0].upper()).status_code == 303
    assert session_amr(portal)[-1] == ["pwd", "kba", "mfa"]
    assert code_step(password_step(portal), recovery[0]).status_code == 401


def test_five_wrong_app_codes_end_the_attempt(portal, user_client, clock):
    secret, _ = enrol(user_client, clock)
    clock.advance(seconds=60)
    client = password_step(portal)
    right = code_at(secret, clock)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(5):
        code_step(client, wrong)
    response = code_step(client, right)
    assert response.status_code == 401
    assert "Trop de codes incorrects" in error_for(response.get_data(as_text=True), "code")
