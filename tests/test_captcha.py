"""J1 captcha: the image code (with its audio alternative) and the "Je suis humain" proof
of work, through a small form that uses the field the way the registration form does."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import re
import shutil
import subprocess
import threading
import wave
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "static" / "vendor" / "altcha"

CODE = "HK4M7R"
ID_RE = re.compile(r'name="captcha_id" value="([^"]+)"')
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')

FORM_PAGE = """{% extends "base.html" %}{% block content %}
<form method="post" action="/formulaire-test">
  <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
  {% include "captcha/field.html" %}
  <button type="submit" name="action" value="submit">Envoyer</button>
</form>{% endblock %}"""


def _form_view():
    """What a public form does with the captcha: check it first, then show a new one."""
    from flask import render_template_string, request

    from onboarding import captcha
    from portal.db import db

    error = None
    if request.method == "POST" and not captcha.refresh_requested(request.form):
        error = captcha.verify(db.session, request.form)
        if error is None:
            return "Demande reçue"
    challenge = captcha.new_challenge(db.session)
    db.session.commit()
    return render_template_string(FORM_PAGE, captcha=challenge, captcha_error=error), 422 if error else 200


@pytest.fixture
def captcha_app(app):
    from onboarding.captcha import bp

    if "captcha" not in app.blueprints:  # portal/app.py may register it already
        app.register_blueprint(bp)
    app.add_url_rule("/formulaire-test", "test_form", _form_view, methods=["GET", "POST"])
    app.config["CAPTCHA_POW_MAX_NUMBER"] = 5000
    return app


@pytest.fixture
def web(captcha_app):
    return captcha_app.test_client()


@pytest.fixture
def pow_app(app_env, request):
    app_env["ENRS_CAPTCHA"] = "pow"
    return request.getfixturevalue("captcha_app")


@pytest.fixture
def pow_web(pow_app):
    return pow_app.test_client()


@pytest.fixture
def known_code(monkeypatch):
    """Every image shows CODE, as if the test read the picture."""
    from onboarding import captcha

    monkeypatch.setattr(captcha, "code_for", lambda challenge_id: CODE)
    return CODE


def open_form(client) -> tuple[str, str, str]:
    """The form page: (html, csrf token, captcha id)."""
    response = client.get("/formulaire-test")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    return html, CSRF_RE.search(html).group(1), ID_RE.search(html).group(1)


def send_image_answer(client, answer: str, *, challenge_id: str | None = None, **extra: str):
    _, token, shown_id = open_form(client)
    data = {"csrf_token": token, "captcha_id": challenge_id or shown_id, "captcha_answer": answer, **extra}
    return client.post("/formulaire-test", data=data)


def row(app, challenge_id: str):
    from onboarding.models import CaptchaChallenge
    from portal.db import db

    with app.app_context():
        return db.session.get(CaptchaChallenge, challenge_id)


def verify_in_context(app, form: dict[str, str]) -> str | None:
    from onboarding.captcha import verify
    from portal.db import db

    with app.app_context():
        return verify(db.session, form)


# -- image: the journey ---------------------------------------------------------------------


def test_visitor_copies_the_code_from_the_image_and_passes(web, known_code):
    html, token, challenge_id = open_form(web)
    assert "Quel code est dissimulé dans l'image ?" in html
    image = web.get(f"/captcha/image/{challenge_id}.png")
    assert image.status_code == 200 and image.data.startswith(b"\x89PNG\r\n\x1a\n")

    response = web.post("/formulaire-test", data={"csrf_token": token, "captcha_id": challenge_id,
                                                  "captcha_answer": CODE})
    assert response.get_data(as_text=True) == "Demande reçue"


def test_the_code_is_read_without_regard_to_case_or_spaces(web, known_code):
    response = send_image_answer(web, "  hk4 m7r ")
    assert response.get_data(as_text=True) == "Demande reçue"


def test_a_wrong_code_burns_the_image_and_a_new_one_is_shown(captcha_app, web, known_code):
    html, token, first_id = open_form(web)
    response = web.post("/formulaire-test", data={"csrf_token": token, "captcha_id": first_id,
                                                  "captcha_answer": "AAAAAA"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Le code saisi ne correspond pas à l&#39;image. Un nouveau code vous est proposé." in page
    second_id = ID_RE.search(page).group(1)
    assert second_id != first_id
    assert row(captcha_app, first_id).used_at is not None
    assert web.get(f"/captcha/image/{first_id}.png").status_code == 404

    # The burnt image does not take a second guess, even the right one.
    retry = web.post("/formulaire-test", data={"csrf_token": token, "captcha_id": first_id,
                                               "captcha_answer": CODE})
    assert "Le code a expiré, un nouveau code vous est proposé." in retry.get_data(as_text=True)
    assert web.post("/formulaire-test", data={"csrf_token": token, "captcha_id": second_id,
                                              "captcha_answer": CODE}).get_data(as_text=True) == "Demande reçue"


def test_an_empty_answer_asks_to_copy_the_code(web, known_code):
    response = send_image_answer(web, "   ")
    assert response.status_code == 422
    assert "Veuillez recopier le code de l&#39;image." in response.get_data(as_text=True)


def test_the_code_expires_after_ten_minutes(captcha_app, web, clock, known_code):
    _, token, answered_in_time = open_form(web)
    _, _, answered_too_late = open_form(web)
    clock.advance(minutes=9, seconds=59)
    assert web.post("/formulaire-test", data={"csrf_token": token, "captcha_id": answered_in_time,
                                              "captcha_answer": CODE}).get_data(as_text=True) == "Demande reçue"
    clock.advance(seconds=1)
    response = web.post("/formulaire-test", data={"csrf_token": token, "captcha_id": answered_too_late,
                                                  "captcha_answer": CODE})
    assert "Le code a expiré, un nouveau code vous est proposé." in response.get_data(as_text=True)
    assert web.get(f"/captcha/image/{answered_too_late}.png").status_code == 404


def test_a_code_works_once(web, known_code):
    html, token, challenge_id = open_form(web)
    data = {"csrf_token": token, "captcha_id": challenge_id, "captcha_answer": CODE}
    assert web.post("/formulaire-test", data=data).get_data(as_text=True) == "Demande reçue"
    replay = web.post("/formulaire-test", data=data)
    assert replay.status_code == 422
    assert "Le code a expiré, un nouveau code vous est proposé." in replay.get_data(as_text=True)


def test_an_unknown_or_missing_challenge_is_refused(web, known_code):
    unknown = send_image_answer(web, CODE, challenge_id="n-existe-pas")
    assert "Le code a expiré, un nouveau code vous est proposé." in unknown.get_data(as_text=True)
    oversized = send_image_answer(web, CODE, challenge_id="x" * 500)
    assert "Le code a expiré, un nouveau code vous est proposé." in oversized.get_data(as_text=True)
    assert web.get("/captcha/image/n-existe-pas.png").status_code == 404
    assert web.get("/captcha/audio/n-existe-pas.wav").status_code == 404


def test_a_pow_challenge_id_is_not_an_image(pow_app, known_code):
    from onboarding.captcha import _verify_image, new_challenge
    from portal.db import db

    with pow_app.app_context():
        challenge = new_challenge(db.session, "pow")
        db.session.commit()
        assert _verify_image(db.session, {"captcha_id": challenge.id, "captcha_answer": CODE}) is not None
    assert pow_app.test_client().get(f"/captcha/image/{challenge.id}.png").status_code == 404


# -- image: picture, sound, refresh ---------------------------------------------------------


def test_image_and_audio_are_served_fresh_and_never_cached(web):
    _, _, challenge_id = open_form(web)
    image = web.get(f"/captcha/image/{challenge_id}.png")
    assert image.mimetype == "image/png"
    assert image.headers["Cache-Control"] == "no-store"
    from PIL import Image

    picture = Image.open(io.BytesIO(image.data))
    assert picture.format == "PNG" and picture.size == (240, 80)

    audio = web.get(f"/captcha/audio/{challenge_id}.wav")
    assert audio.status_code == 200
    assert audio.mimetype == "audio/wav"
    assert audio.headers["Cache-Control"] == "no-store"
    assert audio.headers["Content-Disposition"].startswith("inline")
    with wave.open(io.BytesIO(audio.data)) as sound:
        assert (sound.getnchannels(), sound.getsampwidth(), sound.getframerate()) == (1, 1, 8000)
        seconds = sound.getnframes() / sound.getframerate()
    # Six characters, each spoken with a pause of one to three seconds after it.
    assert 6 < seconds < 30


def test_every_character_of_the_code_has_a_french_voice():
    from onboarding.captcha import CODE_ALPHABET, VOICE_DIR

    for char in CODE_ALPHABET:
        recordings = sorted((VOICE_DIR / char).glob("*.wav"))
        assert recordings, f"no voice for {char}"
        for recording in recordings:
            with wave.open(str(recording)) as sound:
                assert (sound.getnchannels(), sound.getsampwidth(), sound.getframerate()) == (1, 1, 8000)
                assert 0.1 < sound.getnframes() / 8000 < 1.5
    assert sorted(p.name for p in VOICE_DIR.iterdir() if p.is_dir()) == sorted(CODE_ALPHABET)


def test_nouvelle_image_with_javascript_gets_a_new_challenge_as_json(captcha_app, web):
    _, _, old_id = open_form(web)
    response = web.get("/captcha/refresh")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    data = response.get_json()
    assert data["id"] != old_id
    assert data["image_url"] == f"/captcha/image/{data['id']}.png"
    assert data["audio_url"] == f"/captcha/audio/{data['id']}.wav"
    assert web.get(data["image_url"]).status_code == 200
    assert row(captcha_app, data["id"]).kind == "image"


def test_nouvelle_image_without_javascript_sends_the_form_back_for_another_image(captcha_app, web, known_code):
    html, token, old_id = open_form(web)
    assert re.search(r'<button type="submit"[^>]*name="captcha_refresh" value="1" formnovalidate', html)
    response = web.post("/formulaire-test", data={"csrf_token": token, "captcha_id": old_id,
                                                  "captcha_answer": "", "captcha_refresh": "1"})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert ID_RE.search(page).group(1) != old_id
    assert 'class="error-message"' not in page


def test_a_form_that_ignores_the_refresh_button_gets_a_refresh_message(captcha_app, known_code):
    from onboarding.captcha import MSG_IMAGE_REFRESHED, new_challenge
    from portal.db import db

    with captcha_app.app_context():
        challenge = new_challenge(db.session)
        db.session.commit()
    form = {"captcha_id": challenge.id, "captcha_answer": CODE, "captcha_refresh": "1"}
    assert verify_in_context(captcha_app, form) == MSG_IMAGE_REFRESHED
    assert row(captcha_app, challenge.id).used_at is not None


# -- image: what is stored -------------------------------------------------------------------


def test_the_code_is_derived_from_the_id_with_the_server_key(captcha_app):
    from onboarding.captcha import CODE_ALPHABET, CODE_LENGTH, code_for

    with captcha_app.app_context():
        codes = {code_for(f"challenge-{n}") for n in range(200)}
        again = code_for("challenge-1")
        settings = captcha_app.extensions["enrs.settings"]
        captcha_app.extensions["enrs.settings"] = dataclasses.replace(settings, secret_key="another-key-" + "y" * 32)
        other_key = code_for("challenge-1")
        captcha_app.extensions["enrs.settings"] = settings
    assert all(len(code) == CODE_LENGTH and set(code) <= set(CODE_ALPHABET) for code in codes)
    assert len(codes) > 190  # distinct ids give distinct codes (collisions are rare)
    assert again in codes and other_key != again
    assert set("".join(codes)) == set(CODE_ALPHABET)


def test_the_answer_is_stored_as_a_keyed_digest_bound_to_the_challenge(captcha_app, known_code):
    from onboarding.captcha import new_challenge
    from portal.db import db

    with captcha_app.app_context():
        first, second = new_challenge(db.session), new_challenge(db.session)
        db.session.commit()
    for challenge in (first, second):
        assert re.fullmatch(r"[0-9a-f]{64}", challenge.secret)
        assert challenge.secret != hashlib.sha256(CODE.encode()).hexdigest()
        assert challenge.expires_at - challenge.created_at == timedelta(minutes=10)
    # Same code, different digests: an answer cannot be moved onto another challenge.
    assert first.secret != second.secret


# -- transactions -----------------------------------------------------------------------------


def test_a_used_answer_stays_used_when_the_form_is_then_refused(captcha_app, known_code):
    from onboarding.captcha import new_challenge, verify
    from portal.audit import record
    from portal.db import db

    with captcha_app.app_context():
        challenge_id = new_challenge(db.session).id
        db.session.commit()
        assert verify(db.session, {"captcha_id": challenge_id, "captcha_answer": CODE}) is None
        # The rest of the form is refused: the caller writes, then rolls everything back.
        record(db.session, "registration.refused")
        db.session.rollback()
    assert row(captcha_app, challenge_id).used_at is not None
    assert verify_in_context(captcha_app, {"captcha_id": challenge_id, "captcha_answer": CODE}) is not None


def test_verify_refuses_to_run_inside_the_callers_transaction(captcha_app, known_code):
    from onboarding.captcha import CaptchaUsageError, new_challenge, verify
    from portal.db import db

    with captcha_app.app_context():
        form = {"captcha_id": new_challenge(db.session).id, "captcha_answer": CODE}
        db.session.commit()
        db.session.execute(sa.text("SELECT 1"))
        with pytest.raises(CaptchaUsageError):
            verify(db.session, form)
        db.session.rollback()
        assert verify(db.session, form) is None


def test_a_new_challenge_is_part_of_the_callers_transaction(captcha_app):
    from onboarding.captcha import new_challenge
    from portal.db import db

    with captcha_app.app_context():
        challenge_id = new_challenge(db.session).id
        db.session.rollback()
    assert row(captcha_app, challenge_id) is None


def _race(app, form: dict[str, str], contenders: int = 2) -> list[str | None]:
    from onboarding.captcha import verify
    from portal.db import db

    barrier = threading.Barrier(contenders)
    results: list[str | None] = []
    lock = threading.Lock()

    def contender():
        with app.app_context():
            barrier.wait()
            outcome = verify(db.session, form)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=contender) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_simultaneous_submissions_of_one_code_let_exactly_one_through(captcha_app, known_code):
    from onboarding.captcha import new_challenge
    from portal.db import db

    with captcha_app.app_context():
        challenge = new_challenge(db.session)
        db.session.commit()
    results = _race(captcha_app, {"captcha_id": challenge.id, "captcha_answer": CODE}, contenders=4)
    assert results.count(None) == 1
    assert len(results) == 4


# -- purge ---------------------------------------------------------------------------------


def empty_the_table() -> None:
    """Counts below are exact: start from an empty table whatever ran before."""
    from onboarding.models import CaptchaChallenge
    from portal.db import db

    db.session.execute(sa.delete(CaptchaChallenge))
    db.session.commit()


def test_expired_challenges_are_purged(captcha_app, clock):
    from onboarding.captcha import new_challenge, purge_expired
    from onboarding.models import CaptchaChallenge
    from portal.db import db

    with captcha_app.app_context():
        empty_the_table()
        new_challenge(db.session, "image"), new_challenge(db.session, "pow")
        db.session.commit()
        clock.advance(minutes=10)
        fresh = new_challenge(db.session).id
        db.session.commit()
        assert purge_expired(db.session) == 2
        db.session.commit()
        remaining = set(db.session.scalars(sa.select(CaptchaChallenge.id)))
    assert remaining == {fresh}


def test_checking_an_answer_also_purges_old_challenges_now_and_then(captcha_app, clock, monkeypatch):
    from onboarding import captcha
    from onboarding.models import CaptchaChallenge
    from portal.db import db

    def check_and_list() -> set[str]:
        captcha.verify(db.session, {"captcha_id": "n-existe-pas", "captcha_answer": "X"})
        ids = set(db.session.scalars(sa.select(CaptchaChallenge.id)))
        db.session.rollback()
        return ids

    monkeypatch.setattr(captcha, "_last_purge", None)
    with captcha_app.app_context():
        empty_the_table()
        first = captcha.new_challenge(db.session).id
        db.session.commit()
        clock.advance(minutes=9, seconds=30)
        second = captcha.new_challenge(db.session).id
        db.session.commit()
        clock.advance(minutes=9, seconds=30)
        assert check_and_list() == {second}  # the first expired: purged
        clock.advance(seconds=40)
        assert check_and_list() == {second}  # the second expired, but the last purge is recent
        clock.advance(seconds=30)
        assert check_and_list() == set()
    assert first != second


# -- the field as rendered -------------------------------------------------------------------


def _field(html: str) -> str:
    start = html.index('<div class="field captcha-field')
    end = html.index("js/captcha.js")
    return html[start:end]


def test_the_image_field_is_labelled_and_its_error_is_tied_to_the_input(captcha_app, web, known_code):
    html = send_image_answer(web, "AAAAAA").get_data(as_text=True)
    field = _field(html)
    assert '<label for="captcha_answer">Quel code est dissimulé dans l\'image ? <span class="required" aria-hidden="true">*</span></label>' in field
    assert '<span class="hint" id="captcha-hint">Saisir les caractères affichés dans l\'image.</span>' in field
    assert 'id="captcha-error"' in field and "ne correspond pas" in field
    answer = re.search(r'<input type="text" id="captcha_answer"[^>]*>', field).group(0)
    assert 'name="captcha_answer"' in answer and 'autocomplete="off"' in answer
    assert 'aria-describedby="captcha-hint captcha-error"' in answer and 'aria-invalid="true"' in answer
    assert re.search(r'<input type="hidden" name="captcha_id" value="[^"]+"', field)
    alt = re.search(r'alt="([^"]+)"', field).group(1)
    assert "code de sécurité" in alt and CODE not in alt
    assert re.search(r'<a href="/captcha/audio/[^"]+\.wav"[^>]*>Écouter le code', field)
    assert ">Nouvelle image</button>" in field
    assert 'data-captcha-refresh="/captcha/refresh"' in field


@pytest.mark.parametrize("kind", ["image", "pow"])
def test_the_fields_obey_the_content_security_policy(captcha_app, kind):
    """No inline script or style: the portal's CSP (script-src/style-src 'self') would
    block them."""
    from flask import render_template

    from onboarding.captcha import new_challenge
    from portal.db import db

    with captcha_app.test_request_context("/formulaire-test"):
        challenge = new_challenge(db.session, kind)
        html = render_template("captcha/field.html", captcha=challenge, captcha_error="Erreur")
        db.session.rollback()
    assert f'data-captcha="{kind}"' in html
    assert "style=" not in html and "<style" not in html
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts and all('src="/static/' in script for script in scripts)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    assert "http://" not in html and "https://" not in html  # nothing from a third party


def test_vendored_widget_files_are_served_from_the_portal(web):
    for name, mimetype in [("altcha.js", "text/javascript"), ("worker.js", "text/javascript"),
                           ("altcha.css", "text/css")]:
        response = web.get(f"/static/vendor/altcha/{name}")
        assert response.status_code == 200, name
        assert response.mimetype == mimetype, name
        response.close()
    assert "MIT License" in (VENDOR / "LICENSE.txt").read_text()


# -- proof of work -------------------------------------------------------------------------


def solve(challenge: dict) -> str:
    """What the widget does in the browser: find n with sha256(salt + n) == challenge,
    then post the base64 JSON payload in the `altcha` field."""
    for number in range(challenge["maxNumber"] + 1):
        if hashlib.sha256(f"{challenge['salt']}{number}".encode()).hexdigest() == challenge["challenge"]:
            payload = {"algorithm": challenge["algorithm"], "challenge": challenge["challenge"], "number": number,
                       "salt": challenge["salt"], "signature": challenge["signature"], "took": 42}
            return encode(payload)
    raise AssertionError("no solution within maxnumber")


def encode(payload: dict) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


def decode(payload: str) -> dict:
    return json.loads(base64.b64decode(payload))


def send_pow(client, payload: str | None):
    _, token, _ = open_pow_form(client)
    data = {"csrf_token": token}
    if payload is not None:
        data["altcha"] = payload
    return client.post("/formulaire-test", data=data)


def open_pow_form(client) -> tuple[str, str, None]:
    response = client.get("/formulaire-test")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    return html, CSRF_RE.search(html).group(1), None


def fetch_challenge(client) -> dict:
    response = client.get("/captcha/pow/challenge")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_the_pow_field_shows_the_widget_in_french_served_by_the_portal(pow_web):
    html, _, _ = open_pow_form(pow_web)
    field = _field(html)
    widget = re.search(r"<altcha-widget[^>]*>", field).group(0)
    assert 'name="altcha"' in widget
    assert 'challengeurl="/captcha/pow/challenge"' in widget
    assert 'workerurl="/static/vendor/altcha/worker.js"' in widget
    assert 'hidefooter="true"' in widget and 'hidelogo="true"' in widget
    assert "floating" not in widget and "verifyurl" not in widget and "sentinel" not in widget
    strings = json.loads(re.search(r"strings='([^']+)'", widget).group(1))
    assert strings["label"] == "Je suis humain" and strings["footer"] == ""
    assert '<script type="module" src="/static/vendor/altcha/altcha.js"></script>' in html
    assert 'href="/static/vendor/altcha/altcha.css"' in html
    noscript = re.search(r"<noscript>(.*?)</noscript>", field, re.S).group(1)
    assert "JavaScript" in noscript and "Je suis humain" in noscript
    assert 'name="captcha_answer"' not in field


def test_the_pow_challenge_is_signed_expires_with_the_portal_clock_and_is_stored(pow_app, pow_web, clock):
    challenge = fetch_challenge(pow_web)
    assert set(challenge) == {"algorithm", "challenge", "maxNumber", "salt", "signature"}
    assert challenge["algorithm"] == "SHA-256" and challenge["maxNumber"] == 5000
    # The widget refuses challenges shorter than these (its own checks).
    assert len(challenge["challenge"]) >= 40 and len(challenge["salt"]) >= 10
    expires = re.search(r"\?expires=(\d+)&$", challenge["salt"]).group(1)
    assert int(expires) == int((clock() + timedelta(minutes=10)).timestamp())
    stored = row(pow_app, challenge["challenge"])
    assert stored.kind == "pow" and stored.secret == challenge["salt"] and stored.used_at is None


def test_the_production_difficulty_is_sensible(pow_app):
    from onboarding.captcha import DEFAULT_POW_MAX_NUMBER

    assert 100_000 <= DEFAULT_POW_MAX_NUMBER <= 250_000
    del pow_app.config["CAPTCHA_POW_MAX_NUMBER"]
    assert pow_app.test_client().get("/captcha/pow/challenge").get_json()["maxNumber"] == DEFAULT_POW_MAX_NUMBER


def test_a_browser_that_solves_the_challenge_passes(pow_web):
    payload = solve(fetch_challenge(pow_web))
    assert send_pow(pow_web, payload).get_data(as_text=True) == "Demande reçue"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_vendored_widget_worker_solves_our_challenge(pow_web, tmp_path):
    """The real solver we ship (static/vendor/altcha/worker.js, run in Node) and the
    Python altcha package agree on the payload format (ALTCHA v1)."""
    challenge = fetch_challenge(pow_web)
    harness = tmp_path / "harness.js"
    harness.write_text(
        "const fs = require('fs'), vm = require('vm');\n"
        "globalThis.self = globalThis; globalThis.onmessage = null;\n"
        "globalThis.postMessage = (m) => { process.stdout.write(JSON.stringify(m)); };\n"
        "vm.runInThisContext(fs.readFileSync(process.argv[2], 'utf8'));\n"
        "const challenge = JSON.parse(process.argv[3]);\n"
        "onmessage({data: {type: 'work', payload: challenge, start: 0, max: challenge.maxNumber}});\n"
    )
    found = subprocess.run(["node", str(harness), str(VENDOR / "worker.js"), json.dumps(challenge)],
                           capture_output=True, text=True, timeout=120, check=True)
    solution = json.loads(found.stdout)
    assert solution["worker"] is True
    # The payload the widget builds from a worker's solution (altcha.js, Zt()).
    payload = encode({"algorithm": challenge["algorithm"], "challenge": challenge["challenge"],
                      "number": solution["number"], "salt": challenge["salt"],
                      "signature": challenge["signature"], "took": solution["took"]})
    assert send_pow(pow_web, payload).get_data(as_text=True) == "Demande reçue"


def test_without_the_check_the_form_asks_for_it(pow_web):
    response = send_pow(pow_web, None)
    assert response.status_code == 422
    assert "Veuillez cocher la case « Je suis humain »" in response.get_data(as_text=True)


@pytest.mark.parametrize("tamper", ["number", "signature", "salt", "challenge", "algorithm", "garbage", "not-a-dict"])
def test_a_tampered_payload_is_refused(pow_web, tamper):
    payload = decode(solve(fetch_challenge(pow_web)))
    if tamper == "number":
        payload["number"] += 1
    elif tamper == "signature":
        payload["signature"] = "0" * 64
    elif tamper == "salt":  # a later expiry
        payload["salt"] = re.sub(r"expires=\d+", "expires=9999999999", payload["salt"])
    elif tamper == "challenge":
        payload["challenge"] = hashlib.sha256(f"{payload['salt']}{payload['number']}".encode()).hexdigest()[::-1]
    elif tamper == "algorithm":
        payload["algorithm"] = "SHA-1"
    raw = {"garbage": "pas du base64 !", "not-a-dict": encode([1, 2])}.get(tamper) or encode(payload)
    response = send_pow(pow_web, raw)
    assert response.status_code == 422
    assert "La vérification « Je suis humain » a échoué ou a expiré. Veuillez la refaire." in response.get_data(as_text=True)


def test_a_challenge_signed_with_another_key_is_refused(pow_app, pow_web, clock):
    """Only challenges we issued count, even if well formed and solved."""
    import altcha

    forged = altcha.create_challenge_v1(algorithm="SHA-256", max_number=50, hmac_key=b"not-our-key",
                                        expires=clock() + timedelta(minutes=5))
    response = send_pow(pow_web, solve(forged.to_dict()))
    assert "a échoué ou a expiré" in response.get_data(as_text=True)


def test_an_expired_proof_of_work_is_refused(pow_web, clock):
    early = solve(fetch_challenge(pow_web))
    late = solve(fetch_challenge(pow_web))
    clock.advance(minutes=9, seconds=59)
    assert send_pow(pow_web, early).get_data(as_text=True) == "Demande reçue"
    clock.advance(seconds=1)
    assert "a échoué ou a expiré" in send_pow(pow_web, late).get_data(as_text=True)


def test_a_proof_of_work_works_once(pow_app, pow_web):
    payload = solve(fetch_challenge(pow_web))
    assert send_pow(pow_web, payload).get_data(as_text=True) == "Demande reçue"
    replay = send_pow(pow_web, payload)
    assert replay.status_code == 422
    assert "a échoué ou a expiré" in replay.get_data(as_text=True)
    assert row(pow_app, decode(payload)["challenge"]).used_at is not None


def test_two_simultaneous_uses_of_one_proof_of_work_let_exactly_one_through(pow_app, pow_web):
    payload = solve(fetch_challenge(pow_web))
    results = _race(pow_app, {"altcha": payload}, contenders=4)
    assert results.count(None) == 1 and len(results) == 4


# -- JSON endpoints answer JSON -------------------------------------------------------------


def assert_json_404(response) -> None:
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.get_json() == {"error": "Page introuvable",
                                    "message": "La page demandée n'existe pas ou a été déplacée."}


def test_no_pow_challenge_when_the_image_is_configured_json_404(web):
    assert_json_404(web.get("/captcha/pow/challenge"))


def test_no_image_refresh_when_the_pow_is_configured_json_404(pow_web):
    assert_json_404(pow_web.get("/captcha/refresh"))


def test_too_many_challenges_get_a_json_429(captcha_app, web):
    captcha_app.config["CAPTCHA_RATE_LIMIT"] = "2/minute"
    assert [web.get("/captcha/refresh").status_code for _ in range(2)] == [200, 200]
    response = web.get("/captcha/refresh")
    assert response.status_code == 429
    assert response.get_json()["error"] == "Trop de tentatives"


def test_an_unexpected_failure_answers_json(captcha_app, web, monkeypatch):
    from onboarding import captcha

    def broken(*args, **kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(captcha, "new_challenge", broken)
    response = web.get("/captcha/refresh")
    assert response.status_code == 500
    assert response.get_json()["error"] == "Erreur interne"
    assert "database gone" not in response.get_data(as_text=True)


def test_a_missing_image_gets_the_french_error_page_not_json(web):
    response = web.get("/captcha/image/n-existe-pas.png")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "Page introuvable" in response.get_data(as_text=True)


def test_the_app_can_tell_our_json_paths_for_routing_errors():
    from onboarding.captcha import is_json_path

    assert is_json_path("/captcha/refresh") and is_json_path("/captcha/pow/challenge")
    assert not is_json_path("/captcha/image/abc.png")
