"""The captcha of the public forms: an image with an audio alternative, or a proof of work.

One backend is configured (ENRS_CAPTCHA): ``image`` shows distorted characters to copy,
with a French spoken version; ``pow`` shows the ALTCHA widget ("Je suis humain"), whose
browser solves a small SHA-256 puzzle. Neither sends anything to a third party.

Every challenge is a row of ``captcha_challenges`` so that any process can check an
answer and an answer is accepted once only:

- image: ``id`` is random; the characters are derived from the id with a server key
  (``code_for``), so the image and the audio of one challenge, served by any process,
  say the same thing without the code being stored; ``secret`` is an HMAC of the
  expected answer, bound to the id.
- pow: ``id`` is the ALTCHA challenge (the SHA-256 the browser must reproduce) and
  ``secret`` is the salt we issued, which carries the expiry; the challenge is signed
  with an HMAC key derived from the app's SECRET_KEY (ALTCHA protocol v1).

A challenge is issued in the caller's transaction (the page that shows it commits),
but consumed in a short transaction of its own, committed before verify() returns: an
answer must stay used even when the form it came with is then refused and rolled back.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import urllib.parse
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Mapping

import altcha
import sqlalchemy as sa
from captcha.audio import AudioCaptcha
from captcha.image import ImageCaptcha
from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    url_for,
)
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException, NotFound

from onboarding.models import CaptchaChallenge
from portal.clock import now
from portal.config import current_settings
from portal.db import db
from portal.security import limiter

log = logging.getLogger("enrs.captcha")

bp = Blueprint("captcha", __name__, url_prefix="/captcha")

# A challenge lives 10 minutes: enough to fill the registration form, short enough that
# a harvested image or proof of work is soon worthless.
CHALLENGE_TTL = timedelta(minutes=10)

# Characters that stay distinct both when distorted (no 0/O, 1/I/L, 2/Z, 5/S, 8/B, U/V)
# and when spoken in French (no B/D/P/T/V/G/C, all "…é"; no N beside M; no S beside F;
# no 6 "six" beside X "iks"; no 9 "neuf" beside F "èf"; no E, a weak "e" lost in noise).
CODE_ALPHABET = "AFHKMRUXY234578"
CODE_LENGTH = 6

# The French voice: one folder per character of CODE_ALPHABET, WAV 8 kHz 8-bit mono as
# captcha.audio expects; made with espeak-ng (see docs/captcha.md to regenerate).
VOICE_DIR = Path(__file__).resolve().parent / "data" / "captcha_voice_fr"

IMAGE_WIDTH, IMAGE_HEIGHT = 240, 80
# Dark inks on white: each above 7:1 contrast (see _ContrastedImageCaptcha).
_INKS = ((0, 43, 92, 255), (30, 30, 30, 255), (90, 20, 20, 255), (0, 70, 40, 255))

# ALTCHA v1: the browser looks for n <= maxnumber with sha256(salt + n) == challenge.
# 100,000 keeps an old phone under a second or two; the proof of work is friction for
# mass submissions, not a wall (native code solves it at once), and comes with rate limits.
DEFAULT_POW_MAX_NUMBER = 100_000
POW_ALGORITHM = "SHA-256"
MAX_PAYLOAD_LENGTH = 4096

# Rate limits per client address; Flask config keys so that tests can lower them.
DEFAULT_RATE_LIMIT = "60/minute"
DEFAULT_AUDIO_RATE_LIMIT = "20/minute"

# Old rows are deleted at most this often by each process, as a side effect of issuing.
PURGE_INTERVAL = timedelta(minutes=1)

MSG_IMAGE_MISSING = "Veuillez recopier le code de l'image."
MSG_IMAGE_WRONG = "Le code saisi ne correspond pas à l'image. Un nouveau code vous est proposé."
MSG_IMAGE_EXPIRED = "Le code a expiré, un nouveau code vous est proposé."
MSG_IMAGE_REFRESHED = "Une nouvelle image vous est proposée."
MSG_POW_MISSING = "Veuillez cocher la case « Je suis humain » et attendre la fin de la vérification."
MSG_POW_FAILED = "La vérification « Je suis humain » a échoué ou a expiré. Veuillez la refaire."

# The ALTCHA widget's texts (protocol 2.x keys); the footer link to altcha.org is hidden.
WIDGET_STRINGS = {
    "label": "Je suis humain",
    "verify": "Vérifier",
    "verifying": "Vérification en cours…",
    "verified": "Vérification réussie",
    "error": "La vérification a échoué. Cochez de nouveau la case.",
    "expired": "La vérification a expiré. Cochez de nouveau la case.",
    "verificationRequired": MSG_POW_MISSING,
    "waitAlert": "Vérification en cours, veuillez patienter.",
    "loading": "Chargement…",
    "reload": "Recommencer",
    "footer": "",
    "ariaLinkLabel": "",
    "enterCode": "Saisissez le code",
    "enterCodeAria": "Saisissez le code que vous entendez.",
    "getAudioChallenge": "Écouter le code",
}

JSON_ENDPOINTS = frozenset({"captcha.refresh", "captcha.pow_challenge"})
JSON_PATHS = frozenset({"/captcha/refresh", "/captcha/pow/challenge"})


# -- keys ---------------------------------------------------------------------------------


def _key(purpose: str) -> bytes:
    """A key of its own for each use, derived from SECRET_KEY, so that no value computed
    for the captcha can be replayed as a signature elsewhere in the portal."""
    secret = current_settings().secret_key.encode()
    return hmac.new(secret, f"enrs-captcha:{purpose}".encode(), hashlib.sha256).digest()


def _pow_max_number() -> int:
    return int(current_app.config.get("CAPTCHA_POW_MAX_NUMBER", DEFAULT_POW_MAX_NUMBER))


# -- image challenges ---------------------------------------------------------------------


def code_for(challenge_id: str) -> str:
    """The characters an image challenge shows and says: derived from its random id with
    a server key, so that no process needs the code stored to draw or speak it."""
    digest = hmac.new(_key("image-code"), challenge_id.encode(), hashlib.sha256).digest()
    number = int.from_bytes(digest, "big")  # 256 bits: the modulo bias is negligible
    chars = []
    for _ in range(CODE_LENGTH):
        number, index = divmod(number, len(CODE_ALPHABET))
        chars.append(CODE_ALPHABET[index])
    return "".join(chars)


def normalise_answer(answer: str) -> str:
    """What the user typed, as compared: no spaces anywhere, upper case."""
    return "".join(answer.split()).upper()


def _answer_digest(challenge_id: str, answer: str) -> str:
    message = f"{challenge_id}:{normalise_answer(answer)}".encode()
    return hmac.new(_key("image-answer"), message, hashlib.sha256).hexdigest()


class _ContrastedImageCaptcha(ImageCaptcha):
    # The library pastes each character through a mask made from the ink's brightness
    # (x1.97), so a dark ink comes out pale grey (about 3:1 on white at best). Any inked
    # pixel fully opaque keeps the dark inks dark: readable for people with low vision.
    lookup_table = [0] + [255] * 255


@lru_cache(maxsize=1)
def _image_generator() -> ImageCaptcha:
    return _ContrastedImageCaptcha(width=IMAGE_WIDTH, height=IMAGE_HEIGHT, font_sizes=(48, 54, 60))


@lru_cache(maxsize=1)
def _audio_generator() -> AudioCaptcha:
    generator = AudioCaptcha(voicedir=str(VOICE_DIR))
    generator.load()  # once per process: the voice files are read at the first request
    return generator


def render_image(code: str) -> bytes:
    ink = _INKS[secrets.randbelow(len(_INKS))]
    return _image_generator().generate(code, format="png", bg_color=(255, 255, 255), fg_color=ink).getvalue()


_audio_lock = threading.Lock()


def render_audio(code: str) -> bytes:
    # AudioCaptcha fills its voice cache lazily and is not documented as thread-safe.
    with _audio_lock:
        return bytes(_audio_generator().generate(code))


# -- issuing and consuming ----------------------------------------------------------------


class CaptchaUsageError(RuntimeError):
    """verify() was called while the caller's session holds a transaction."""


@contextmanager
def _own_transaction(session: Session) -> Iterator[Session]:
    """A short transaction on the caller's database, outside the caller's transaction."""
    own = Session(bind=session.get_bind(), expire_on_commit=False)
    try:
        with own.begin():
            yield own
    finally:
        own.close()


def _require_no_transaction(session: Session) -> None:
    # SQLite has a single writer and the portal's transactions take the write lock when
    # they begin (BEGIN IMMEDIATE): a transaction of our own would wait for the caller's
    # to end, which never happens while the caller waits for us. The rule is the same on
    # PostgreSQL, so that tests on either database catch a misplaced call.
    if session.in_transaction():
        raise CaptchaUsageError(
            "captcha.verify() consumes the challenge in a transaction of its own: call it "
            "before the session's first query, or commit/roll back the session first"
        )


def new_challenge(session: Session, kind: str | None = None) -> CaptchaChallenge:
    """Issue a challenge of the configured kind (or of `kind`), added to the caller's
    session: commit it before the page that shows it is sent."""
    kind = kind or current_settings().captcha
    issued = now()
    expires = issued + CHALLENGE_TTL
    if kind == "image":
        challenge_id = secrets.token_urlsafe(24)
        secret = _answer_digest(challenge_id, code_for(challenge_id))
    elif kind == "pow":
        challenge = altcha.create_challenge_v1(
            algorithm=POW_ALGORITHM,
            max_number=_pow_max_number(),
            hmac_key=_key("altcha"),
            expires=expires,
        )
        challenge_id, secret = challenge.challenge, challenge.salt
    else:
        raise ValueError(f"unknown captcha kind {kind!r}")
    row = CaptchaChallenge(id=challenge_id, kind=kind, secret=secret, created_at=issued, expires_at=expires)
    session.add(row)
    session.flush()
    return row


def _consume(session: Session, challenge_id: str, kind: str) -> str | None:
    """Mark a live challenge used and return its secret; None when it is unknown, of
    another kind, expired or already used.

    One conditional UPDATE: of two concurrent submissions only one finds used_at empty
    (PostgreSQL re-checks the condition after the other's commit; SQLite has one
    writer at a time), so exactly one wins.
    """
    at = now()
    statement = (
        sa.update(CaptchaChallenge)
        .where(
            CaptchaChallenge.id == challenge_id,
            CaptchaChallenge.kind == kind,
            CaptchaChallenge.used_at.is_(None),
            CaptchaChallenge.expires_at > at,
        )
        .values(used_at=at)
        .returning(CaptchaChallenge.secret)
        .execution_options(synchronize_session=False)
    )
    with _own_transaction(session) as own:
        return own.execute(statement).scalar_one_or_none()


def refresh_requested(form: Mapping[str, str]) -> bool:
    """The user pressed "Nouvelle image" without JavaScript: the form came back only to
    get another image. The view may then re-render without showing other errors."""
    return bool(form.get("captcha_refresh"))


def verify(session: Session, form: Mapping[str, str]) -> str | None:
    """Check the captcha part of a submitted form: None when passed, else the French
    message to show next to the field (then render the form with a new_challenge()).

    The challenge is consumed in a transaction of its own, committed before this returns,
    whatever the outcome: an answer works once, even if the rest of the form is refused.
    Call it while `session` holds no transaction (before its first query, or after a
    commit or rollback); CaptchaUsageError says so otherwise.
    """
    _require_no_transaction(session)
    try:
        if current_settings().captcha == "pow":
            return _verify_pow(session, form)
        return _verify_image(session, form)
    finally:
        _purge_now_and_then(session, now())


def _verify_image(session: Session, form: Mapping[str, str]) -> str | None:
    challenge_id = (form.get("captcha_id") or "").strip()
    answer = normalise_answer(form.get("captcha_answer") or "")
    if not challenge_id or len(challenge_id) > 64:
        return MSG_IMAGE_EXPIRED if answer else MSG_IMAGE_MISSING
    # Consumed before comparing: a wrong answer burns the image too, so each image
    # allows one guess, and the user is shown another one.
    secret = _consume(session, challenge_id, "image")
    if secret is None:
        return MSG_IMAGE_EXPIRED
    if refresh_requested(form):
        return MSG_IMAGE_REFRESHED
    if not answer:
        return MSG_IMAGE_MISSING
    if not hmac.compare_digest(secret, _answer_digest(challenge_id, answer)):
        return MSG_IMAGE_WRONG
    return None


def _decode_payload(raw: str) -> dict | None:
    if len(raw) > MAX_PAYLOAD_LENGTH:
        return None
    try:
        data = json.loads(base64.b64decode(raw, validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    fields = ("algorithm", "challenge", "number", "salt", "signature")
    if not all(isinstance(data.get(name), str) for name in fields if name != "number"):
        return None
    if not isinstance(data.get("number"), int) or isinstance(data.get("number"), bool):
        return None
    return data


def _salt_expiry(salt: str) -> int | None:
    query = salt.split("?", 1)[1] if "?" in salt else ""
    values = urllib.parse.parse_qs(query).get("expires")
    if not values or len(values) != 1 or not values[0].isdigit():
        return None
    return int(values[0])


def _verify_pow(session: Session, form: Mapping[str, str]) -> str | None:
    raw = (form.get("altcha") or "").strip()
    if not raw:
        return MSG_POW_MISSING
    payload = _decode_payload(raw)
    if payload is None or payload["algorithm"] != POW_ALGORITHM:
        return MSG_POW_FAILED
    # The signature proves we issued this challenge; the library's own expiry check
    # reads the system time, ours reads portal.clock so that tests can move time.
    valid, _ = altcha.verify_solution_v1(payload, _key("altcha"), check_expires=False)
    if not valid:
        return MSG_POW_FAILED
    expiry = _salt_expiry(payload["salt"])
    if expiry is None or expiry <= now().timestamp():
        return MSG_POW_FAILED
    issued_salt = _consume(session, payload["challenge"], "pow")
    if issued_salt is None or not hmac.compare_digest(issued_salt, payload["salt"]):
        return MSG_POW_FAILED
    return None


def pow_challenge_json(challenge: CaptchaChallenge) -> dict:
    """The challenge as the ALTCHA widget fetches it (altcha-lib's v1 JSON)."""
    signature = altcha.hmac_hex(POW_ALGORITHM, challenge.id.encode(), _key("altcha"))
    return altcha.ChallengeV1(
        algorithm=POW_ALGORITHM,
        challenge=challenge.id,
        max_number=_pow_max_number(),
        salt=challenge.secret,
        signature=signature,
    ).to_dict()


# -- purge --------------------------------------------------------------------------------


def purge_expired(session: Session) -> int:
    """Delete expired challenges in the caller's transaction (the caller commits);
    returns how many. A used challenge stays refused until then by its used_at, and
    after that by its absence."""
    result = session.execute(
        sa.delete(CaptchaChallenge)
        .where(CaptchaChallenge.expires_at <= now())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


_last_purge: datetime | None = None
_purge_lock = threading.Lock()


def _purge_now_and_then(session: Session, at: datetime) -> None:
    """Keep the table small without a worker: checking an answer also deletes expired
    challenges, at most once a minute per process, in a transaction of its own (never
    in the caller's: concurrent purges may wait for each other). Failing to purge must
    not fail the form."""
    global _last_purge
    with _purge_lock:
        # A clock that went back (tests, or a corrected host clock) also makes it due.
        if _last_purge is not None and _last_purge <= at < _last_purge + PURGE_INTERVAL:
            return
        _last_purge = at
    try:
        with _own_transaction(session) as own:
            purge_expired(own)
    except sa.exc.DBAPIError:
        log.warning("captcha purge skipped", exc_info=True)


# -- views ----------------------------------------------------------------------------------


def _rate_limit() -> str:
    return current_app.config.get("CAPTCHA_RATE_LIMIT", DEFAULT_RATE_LIMIT)


def _audio_rate_limit() -> str:
    return current_app.config.get("CAPTCHA_AUDIO_RATE_LIMIT", DEFAULT_AUDIO_RATE_LIMIT)


def _live_image_challenge(challenge_id: str) -> CaptchaChallenge:
    challenge = db.session.get(CaptchaChallenge, challenge_id) if len(challenge_id) <= 64 else None
    if (challenge is None or challenge.kind != "image" or challenge.used_at is not None
            or challenge.expires_at <= now()):
        raise NotFound()
    return challenge


def _no_store(response: Response) -> Response:
    # The picture and the sound are an answer in disguise: never keep them in a cache.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.get("/image/<challenge_id>.png")
@limiter.limit(_rate_limit)
def image(challenge_id: str):
    challenge = _live_image_challenge(challenge_id)
    return _no_store(Response(render_image(code_for(challenge.id)), mimetype="image/png"))


@bp.get("/audio/<challenge_id>.wav")
@limiter.limit(_audio_rate_limit)
def audio(challenge_id: str):
    challenge = _live_image_challenge(challenge_id)
    response = Response(render_audio(code_for(challenge.id)), mimetype="audio/wav")
    response.headers["Content-Disposition"] = 'inline; filename="code.wav"'
    return _no_store(response)


@bp.get("/refresh")
@limiter.limit(_rate_limit)
def refresh():
    """A new image for the field's script ("Nouvelle image" with JavaScript); without
    JavaScript the button submits the form, which comes back with a new image."""
    if current_settings().captcha != "image":
        raise NotFound()
    challenge = new_challenge(db.session, "image")
    db.session.commit()
    return _no_store(jsonify(
        id=challenge.id,
        image_url=url_for("captcha.image", challenge_id=challenge.id),
        audio_url=url_for("captcha.audio", challenge_id=challenge.id),
    ))


@bp.get("/pow/challenge")
@limiter.limit(_rate_limit)
def pow_challenge():
    """The ALTCHA challenge the widget fetches when the user ticks "Je suis humain"."""
    if current_settings().captcha != "pow":
        raise NotFound()
    challenge = new_challenge(db.session, "pow")
    db.session.commit()
    return _no_store(jsonify(pow_challenge_json(challenge)))


def is_json_path(path: str) -> bool:
    """For the app's error pages: routing errors (wrong method) happen before a blueprint
    is known, so the app asks whether a path is one of our JSON endpoints."""
    return path in JSON_PATHS


def _error(code: int):
    from portal.app import (
        ERROR_PAGES,  # the app's French texts; imported late: app imports us
    )

    title, text = ERROR_PAGES.get(code) or ERROR_PAGES[500 if code >= 500 else 400]
    if request.endpoint in JSON_ENDPOINTS:
        return jsonify(error=title, message=text), code
    return render_template("errors/error.html", code=code, title=title, text=text), code


@bp.errorhandler(429)  # code-specific: the app's own 429 page would win over a class handler
def _too_many(exc: HTTPException):
    return _error(429)


@bp.errorhandler(Exception)
def _failed(exc: Exception):
    if isinstance(exc, HTTPException):
        return _error(exc.code or 500)
    log.exception("captcha endpoint failed on %s %s", request.method, request.path)
    db.session.rollback()
    return _error(500)


@bp.app_context_processor
def _widget_strings() -> dict:
    return {"captcha_widget_strings": WIDGET_STRINGS}
