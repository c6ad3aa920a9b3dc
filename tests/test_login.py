"""J3: identifier + password, then the code received by mail; logout; password reset."""
from __future__ import annotations

import re
import threading

import pytest
import sqlalchemy as sa

from tests.conftest import body_text
from tests.journeys import csrf, error_for, field_value, link_in, login, path_of

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"


@pytest.fixture
def portal(app):
    from onboarding.accounts import create_professional
    from portal.db import db

    with app.app_context():
        create_professional(db.session, email=EMAIL, password=PASSWORD, first_name="Nathalie", last_name="Dupont",
                            profession="10", finess=None)
        db.session.commit()
    return app


def post_password(client, username, password, next_url=""):
    page = client.get("/login").get_data(as_text=True)
    return client.post("/login", data={"csrf_token": csrf(page), "username": username, "password": password,
                                       "next": next_url})


def code_from(mailbox) -> str:
    return re.search(r"Votre code d'authentification unique est : (\d{6})", body_text(mailbox.last(EMAIL))).group(1)


def post_code(client, code):
    page = client.get("/login/code").get_data(as_text=True)
    return client.post("/login/code", data={"csrf_token": csrf(page), "code": code})


def test_professional_logs_in_with_the_code_received_by_mail(portal, client, mailbox):
    response = post_password(client, "ndupont", PASSWORD)
    assert response.status_code == 303 and response.headers["Location"].endswith("/login/code")
    message = mailbox.last(EMAIL)
    assert message["Subject"] == "[eSanté Test] Code d'authentification"
    assert "Il expire dans : 1200 secondes." in body_text(message)
    page = client.get("/login/code").get_data(as_text=True)
    assert "Un code vous a été envoyé par mail, entrez-le ici" in page
    assert "Renvoyer un code" in page and "Annuler" in page
    response = post_code(client, code_from(mailbox))
    assert response.status_code == 303
    home = client.get("/").get_data(as_text=True)
    assert "Se déconnecter" in home


def test_login_with_the_authentication_email_works_too(portal, client, mailbox):
    assert post_password(client, "Nathalie.Dupont@esante-test.fr", PASSWORD).status_code == 303


@pytest.mark.parametrize("username, password", [
    ("ndupont", "Mauvais-Mot-De-Passe-1"),
    ("inconnu", PASSWORD),
    ("inconnu@esante-test.fr", PASSWORD),
    ("", ""),
])
def test_failed_login_never_says_whether_the_account_exists(portal, client, mailbox, username, password):
    response = post_password(client, username, password)
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert "Identifiant ou mot de passe incorrect." in html
    assert field_value(html, "username") == username or username == ""
    assert mailbox.messages == []


@pytest.mark.parametrize("status", ["email_pending", "review_pending", "rejected", "disabled"])
def test_accounts_not_active_get_the_same_message(portal, client, mailbox, status):
    from idp.models import User
    from portal.db import db

    with portal.app_context():
        db.session.execute(sa.update(User).values(status=status))
        db.session.commit()
    response = post_password(client, "ndupont", PASSWORD)
    assert response.status_code == 401
    assert "Identifiant ou mot de passe incorrect." in response.get_data(as_text=True)


def test_code_step_cannot_be_reached_without_the_password_step(portal, client):
    response = client.get("/login/code")
    assert response.status_code == 303 and response.headers["Location"].endswith("/login")


def test_wrong_codes_count_down_then_void_the_code(portal, client, mailbox):
    post_password(client, "ndupont", PASSWORD)
    right = code_from(mailbox)
    wrong = "000000" if right != "000000" else "111111"
    for left in (4, 3, 2, 1):
        response = post_code(client, wrong)
        assert response.status_code == 401
        assert f"Il vous reste {left} essai" in error_for(response.get_data(as_text=True), "code")
    response = post_code(client, wrong)
    assert "Trop de codes incorrects" in error_for(response.get_data(as_text=True), "code")
    response = post_code(client, right)
    assert response.status_code == 401  # the right code is void now too


def test_code_expires_after_1200_seconds(portal, client, mailbox, clock):
    post_password(client, "ndupont", PASSWORD)
    code = code_from(mailbox)
    clock.advance(seconds=1201)
    response = post_code(client, code)
    assert response.status_code == 401
    assert error_for(response.get_data(as_text=True), "code") == "Ce code a expiré. Demandez un nouveau code."


def test_resend_is_throttled_and_voids_the_previous_code(portal, client, mailbox, clock):
    post_password(client, "ndupont", PASSWORD)
    first = code_from(mailbox)
    page = client.get("/login/code").get_data(as_text=True)
    response = client.post("/login/resend", data={"csrf_token": csrf(page)}, follow_redirects=True)
    assert "Vous pourrez en demander un nouveau dans" in response.get_data(as_text=True)
    assert len(mailbox.to(EMAIL)) == 1
    clock.advance(seconds=61)
    client.post("/login/resend", data={"csrf_token": csrf(page)})
    second = code_from(mailbox)
    assert len(mailbox.to(EMAIL)) == 2
    if first != second:
        assert post_code(client, first).status_code == 401
    assert post_code(client, second).status_code == 303


def test_a_code_works_once_even_submitted_twice_at_once(portal, mailbox):
    client = portal.test_client()
    post_password(client, "ndupont", PASSWORD)
    code = code_from(mailbox)
    page = client.get("/login/code").get_data(as_text=True)
    token = csrf(page)
    cookie = client.get_cookie("enrs").value
    statuses = []

    def submit():
        other = portal.test_client()
        other.set_cookie("enrs", cookie)
        statuses.append(other.post("/login/code", data={"csrf_token": token, "code": code}).status_code)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [303, 303]  # the loser is sent back to the login page
    from idp.sessions import UserSession
    from portal.db import db

    with portal.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(UserSession)) == 1


@pytest.mark.parametrize("target, expected", [
    ("/admin/", "/admin/"),
    ("https://evil.example/", "/apps"),
    ("//evil.example/x", "/apps"),
    ("/\\evil.example", "/apps"),
    ("javascript:alert(1)", "/apps"),
])
def test_next_only_leads_to_a_page_of_the_portal(portal, mailbox, target, expected):
    client = portal.test_client()
    post_password(client, "ndupont", PASSWORD, next_url=target)
    response = post_code(client, code_from(mailbox))
    assert response.headers["Location"] == expected


def test_logout_really_ends_the_session(portal, client, mailbox):
    assert login(client, mailbox, "ndupont", PASSWORD, EMAIL).status_code == 303
    cookie = client.get_cookie("enrs").value
    page = client.get("/").get_data(as_text=True)
    client.post("/logout", data={"csrf_token": csrf(page)})
    replay = portal.test_client()
    replay.set_cookie("enrs", cookie)  # an old copy of the cookie is worth nothing
    assert "Se déconnecter" not in replay.get("/").get_data(as_text=True)


def test_session_ends_after_the_idle_timeout(portal, client, mailbox, clock):
    login(client, mailbox, "ndupont", PASSWORD, EMAIL)
    clock.advance(minutes=29)
    assert "Se déconnecter" in client.get("/").get_data(as_text=True)
    clock.advance(minutes=31)
    assert "Se déconnecter" not in client.get("/").get_data(as_text=True)


def test_password_reset_answers_the_same_and_ends_every_session(portal, client, mailbox):
    other_device = portal.test_client()
    login(other_device, mailbox, "ndupont", PASSWORD, EMAIL)
    mailbox.clear()

    page = client.get("/password/reset").get_data(as_text=True)
    unknown = client.post("/password/reset", data={"csrf_token": csrf(page), "email": "x@esante-test.fr"},
                          follow_redirects=True).get_data(as_text=True)
    known = client.post("/password/reset", data={"csrf_token": csrf(page), "email": EMAIL},
                        follow_redirects=True).get_data(as_text=True)
    assert "Si un compte actif correspond à cette adresse" in unknown and "Si un compte actif" in known
    link = path_of(link_in(mailbox.last(EMAIL), "/password/reset/"))
    assert len(mailbox.messages) == 1

    page = client.get(link).get_data(as_text=True)
    weak = client.post(link, data={"csrf_token": csrf(page), "password": "faible", "password_confirm": "faible"})
    assert weak.status_code == 422
    reused = client.post(link, data={"csrf_token": csrf(page), "password": PASSWORD, "password_confirm": PASSWORD})
    assert "déjà été utilisé récemment" in error_for(reused.get_data(as_text=True), "password")
    done = client.post(link, data={"csrf_token": csrf(page), "password": "Nouveau-Secret-2027",
                                   "password_confirm": "Nouveau-Secret-2027"})
    assert done.status_code == 303
    assert client.get(link).status_code == 400  # single use
    assert "Se déconnecter" not in other_device.get("/").get_data(as_text=True)
    assert "modifié" in mailbox.last(EMAIL)["Subject"]
    assert login(portal.test_client(), mailbox, "ndupont", "Nouveau-Secret-2027", EMAIL).status_code == 303


def test_reset_link_dies_when_the_password_changes_otherwise_and_after_an_hour(portal, client, mailbox, clock):
    page = client.get("/password/reset").get_data(as_text=True)
    client.post("/password/reset", data={"csrf_token": csrf(page), "email": EMAIL})
    first = path_of(link_in(mailbox.last(EMAIL), "/password/reset/"))
    client.post("/password/reset", data={"csrf_token": csrf(page), "email": EMAIL})
    second = path_of(link_in(mailbox.last(EMAIL), "/password/reset/"))
    page = client.get(second).get_data(as_text=True)
    client.post(second, data={"csrf_token": csrf(page), "password": "Nouveau-Secret-2027",
                              "password_confirm": "Nouveau-Secret-2027"})
    assert client.get(first).status_code == 400

    client.post("/password/reset", data={"csrf_token": csrf(page), "email": EMAIL})
    third = path_of(link_in(mailbox.last(EMAIL), "/password/reset/"))
    clock.advance(minutes=61)
    response = client.get(third)
    assert response.status_code == 400 and "Ce lien a expiré" in response.get_data(as_text=True)


def test_argon2id_hash_is_stored_never_the_password(portal):
    from idp.models import User
    from portal.db import db

    with portal.app_context():
        user = db.session.scalar(sa.select(User))
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash


class BlockingHasher:
    """Stands for argon2's hasher: each verification waits until the test lets it finish."""

    def __init__(self):
        self.running = threading.Event()
        self.finish = threading.Event()

    def verify(self, stored, password):
        self.running.set()
        assert self.finish.wait(10)
        return True


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_process_runs_only_its_share_of_password_hashes_at_once(app_env, monkeypatch, concurrency):
    # Each Argon2id hash holds 32 MiB: a burst of logins on a threaded worker must not
    # run one per thread (ENRS_PASSWORD_HASH_CONCURRENCY, default 1).
    from idp import passwords
    from portal.app import create_app

    create_app({**app_env, **({"ENRS_PASSWORD_HASH_CONCURRENCY": str(concurrency)} if concurrency > 1 else {})})
    passwords._dummy_hash()  # the app prepares it in the background: done before the real hasher goes
    hasher = BlockingHasher()
    monkeypatch.setattr(passwords, "HASHER", hasher)
    login_in_progress = threading.Thread(target=passwords.verify_password, args=("$argon2id$stored", PASSWORD))
    login_in_progress.start()
    try:
        assert hasher.running.wait(10)
        # One hash is running: another caller gets a slot only if the process allows two.
        extra_slot = passwords._hash_slots.acquire(blocking=False)
        assert extra_slot is (concurrency > 1)
        if extra_slot:
            passwords._hash_slots.release()
    finally:
        hasher.finish.set()
        login_in_progress.join(10)
    assert passwords._hash_slots.acquire(blocking=False)  # free again once the hash is done
    passwords._hash_slots.release()


def test_the_hash_for_unknown_accounts_is_ready_before_the_first_login_asks(app_env):
    # Made at the first login for an unknown account, it would make that login twice as
    # slow as a wrong password: a timing tell. The app prepares it when it starts.
    from idp import passwords
    from portal.app import create_app

    passwords._dummy_hashes.clear()
    create_app(app_env)
    for thread in threading.enumerate():
        if thread.name == "enrs-dummy-hash":
            thread.join(30)
    assert passwords.dummy_hash_ready()
    assert passwords._dummy_hash().startswith("$argon2id$")


def _argon2_parameters(password_hash: str) -> tuple[int, int, int]:
    from argon2 import extract_parameters

    parameters = extract_parameters(password_hash)
    return parameters.memory_cost, parameters.time_cost, parameters.parallelism


def test_a_password_hashed_with_the_former_parameters_is_rehashed_at_the_next_login(portal, mailbox):
    # Accounts created before the change of parameters (RFC 9106's "low memory" profile,
    # 64 MiB and 3 passes) keep logging in, and move to the portal's parameters then.
    from argon2 import PasswordHasher

    from idp.models import User
    from portal.db import db

    former = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4).hash(PASSWORD)
    with portal.app_context():
        db.session.execute(sa.update(User).where(User.email == EMAIL).values(password_hash=former))
        db.session.commit()
    response = login(portal.test_client(), mailbox, "ndupont", PASSWORD, EMAIL)
    assert response.status_code == 303
    with portal.app_context():
        stored = db.session.scalar(sa.select(User.password_hash).where(User.email == EMAIL))
    assert _argon2_parameters(stored) == (32 * 1024, 8, 4)
    assert login(portal.test_client(), mailbox, "ndupont", PASSWORD, EMAIL).status_code == 303


def test_the_operator_sets_the_argon2_parameters_of_new_hashes_and_of_the_unknown_account_check(app_env, mailbox):
    from idp import passwords
    from idp.models import User
    from onboarding.accounts import create_professional
    from portal.app import create_app
    from portal.db import db

    app = create_app({**app_env, "ENRS_ARGON2_MEMORY_KIB": "19456", "ENRS_ARGON2_TIME_COST": "2",
                      "ENRS_ARGON2_PARALLELISM": "1"})
    with app.app_context():
        create_professional(db.session, email=EMAIL, password=PASSWORD, first_name="Nathalie", last_name="Dupont",
                            profession="10", finess=None)
        db.session.commit()
        stored = db.session.scalar(sa.select(User.password_hash).where(User.email == EMAIL))
    assert _argon2_parameters(stored) == (19456, 2, 1)
    # An unknown identifier is checked against a hash of the same cost, or its answer
    # would come faster than a wrong password's.
    assert _argon2_parameters(passwords._dummy_hash()) == (19456, 2, 1)
    assert login(app.test_client(), mailbox, "ndupont", PASSWORD, EMAIL).status_code == 303


def test_repeated_failures_slow_down_then_lock_the_account_with_the_same_answer(portal, mailbox, clock):
    from idp.lockout import POLICY

    client = portal.test_client()
    for attempt in range(1, POLICY.max_failures + 1):
        response = post_password(client, "ndupont", f"Mauvais-{attempt}-Secret")
        assert response.status_code == 401
        if attempt < POLICY.max_failures:  # an attacker patient enough to wait out each delay
            clock.advance((POLICY.wait_after(attempt) or __import__("datetime").timedelta()).total_seconds() + 1)
    # Locked: even the right password gets the very same answer, and the owner is told.
    response = post_password(client, "ndupont", PASSWORD)
    assert response.status_code == 401
    assert "Identifiant ou mot de passe incorrect." in response.get_data(as_text=True)
    assert "bloquée" in mailbox.last(EMAIL)["Subject"]
    assert len(mailbox.to(EMAIL)) == 1
    clock.advance(minutes=16)
    assert post_password(client, "ndupont", PASSWORD).status_code == 303


def test_the_third_failure_imposes_a_wait(portal, clock):
    client = portal.test_client()
    for attempt in range(3):
        post_password(client, "ndupont", f"Mauvais-{attempt}-Secret")
    assert post_password(client, "ndupont", PASSWORD).status_code == 401
    clock.advance(seconds=31)
    assert post_password(client, "ndupont", PASSWORD).status_code == 303


def test_a_success_and_a_quiet_period_forget_the_failures(portal, clock):
    from idp.models import User
    from portal.db import db

    client = portal.test_client()
    post_password(client, "ndupont", "Mauvais-Secret-1")
    post_password(client, "ndupont", "Mauvais-Secret-2")
    assert post_password(client, "ndupont", PASSWORD).status_code == 303
    with portal.app_context():
        assert db.session.scalar(sa.select(User.failed_logins)) == 0
    post_password(client, "ndupont", "Mauvais-Secret-3")
    clock.advance(hours=13)
    post_password(client, "ndupont", "Mauvais-Secret-4")
    with portal.app_context():
        assert db.session.scalar(sa.select(User.failed_logins)) == 1


def test_failed_logins_from_one_address_are_rate_limited(portal):
    client = portal.test_client()
    statuses = [post_password(client, f"inconnu{i}", "Mauvais-Secret-1").status_code for i in range(21)]
    assert statuses[:20] == [401] * 20 and statuses[20] == 429
    page = post_password(client, "inconnu", "x")
    assert "Trop de tentatives" in page.get_data(as_text=True)


REDIS_URL = __import__("os").environ.get("ENRS_TEST_REDIS_URL")


@pytest.mark.skipif(not REDIS_URL, reason="set ENRS_TEST_REDIS_URL for the Redis-backed limits")
def test_redis_shares_the_failed_login_limit_between_processes(app_env, clock, mailbox):
    import redis

    from portal.app import create_app

    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {**app_env, "ENRS_REDIS_URL": REDIS_URL}
    first, second = create_app(env, clock=clock), create_app(env, clock=clock)  # two worker processes
    statuses = []
    for i in range(21):
        client = (first if i % 2 else second).test_client()
        statuses.append(post_password(client, f"inconnu{i}", "Mauvais-Secret-1").status_code)
    assert statuses[:20] == [401] * 20 and statuses[20] == 429


def test_a_one_megabyte_form_body_is_refused_in_french(portal, client):
    page = client.get("/login").get_data(as_text=True)
    response = client.post("/login", data={"csrf_token": csrf(page), "username": "x" * (1024 * 1024 + 10),
                                           "password": "y"})
    assert response.status_code == 413
    assert "Fichier trop volumineux" in response.get_data(as_text=True)


def test_non_utf8_form_input_gets_the_generic_answer(portal, client):
    page = client.get("/login").get_data(as_text=True)
    body = f"csrf_token={csrf(page)}&username=%FF%FEndupont&password=%C3%28".encode()
    response = client.post("/login", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 401
    assert "Identifiant ou mot de passe incorrect." in response.get_data(as_text=True)


def test_session_ends_after_its_absolute_lifetime_even_when_active(portal, client, mailbox, clock):
    login(client, mailbox, "ndupont", PASSWORD, EMAIL)
    for _ in range(24):  # active every 25 minutes for 10 hours
        clock.advance(minutes=25)
        assert "Se déconnecter" in client.get("/").get_data(as_text=True)
    clock.advance(hours=2, minutes=1)
    assert "Se déconnecter" not in client.get("/").get_data(as_text=True)


def test_a_code_entered_after_the_pending_login_expired_is_refused(portal, client, mailbox, clock):
    post_password(client, "ndupont", PASSWORD)
    code = code_from(mailbox)
    token = csrf(client.get("/login/code").get_data(as_text=True))
    clock.advance(minutes=31)
    response = client.post("/login/code", data={"csrf_token": token, "code": code})
    assert response.status_code == 303 and response.headers["Location"].endswith("/login")
    assert "Votre demande de connexion a expiré" in client.get("/login").get_data(as_text=True)


def test_another_users_code_does_not_open_this_account(portal, client, mailbox):
    from onboarding.accounts import create_professional
    from portal.db import db

    with portal.app_context():
        create_professional(db.session, email="autre@esante-test.fr", password="Un-Secret-Solide-1",
                            first_name="Anne", last_name="Leroy", profession="60", finess=None)
        db.session.commit()
    other = portal.test_client()
    page = other.get("/login").get_data(as_text=True)
    other.post("/login", data={"csrf_token": csrf(page), "username": "aleroy", "password": "Un-Secret-Solide-1"})
    their_code = re.search(r"unique est : (\d{6})", body_text(mailbox.last("autre@esante-test.fr"))).group(1)
    post_password(client, "ndupont", PASSWORD)
    if their_code != code_from(mailbox):
        assert post_code(client, their_code).status_code == 401


def test_login_without_csrf_token_is_refused(portal, client, mailbox):
    client.get("/login")
    response = client.post("/login", data={"username": "ndupont", "password": PASSWORD})
    assert response.status_code == 400 and "Session expirée" in response.get_data(as_text=True)
    assert mailbox.messages == []


def test_a_login_by_emailed_code_costs_fifteen_database_statements(portal, client, mailbox):
    """A Monday-morning login is mostly its hash; what remains is round trips to the
    database, each costing CPU on both sides. The second-step pages read the pending
    login, its user and whether an authenticator app is enrolled in one query; the code
    is set before the pending login is first written; the outbox claims and reads its row
    in one UPDATE … RETURNING. Adding a statement to this path should be a decision."""
    from portal.db import db

    def log_in() -> None:
        post_password(client, "ndupont", PASSWORD)
        assert portal.extensions["enrs.mail.thread"].drain(30)
        assert post_code(client, code_from(mailbox)).status_code == 303
        assert client.get("/apps").status_code == 200

    log_in()  # a process's first requests fill its caches (CGU version, client list)
    client.post("/logout", data={"csrf_token": csrf(client.get("/apps").get_data(as_text=True))})
    statements: list[str] = []
    with portal.app_context():
        engine = db.engine
    record = lambda _conn, _cursor, statement, *_args: statements.append(statement.split(None, 1)[0])  # noqa: E731
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        log_in()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    # SQLite's BEGIN is how its driver opens a transaction (psycopg's is not a statement).
    assert len([s for s in statements if s != "BEGIN"]) == 15, statements
