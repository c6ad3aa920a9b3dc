"""Authenticator apps (TOTP, RFC 6238) and recovery codes (J3, J4).

Pages under /account/totp/ let a logged-in user add an app (QR code or key typed by
hand, proved by a first code), remove it, and renew the recovery codes; removal and
renewal ask for the current password again. The login's second step calls
`has_totp`, `verify_totp`, `verify_recovery_code` and `recovery_codes_left`.

What is stored: the shared secret, encrypted with Fernet under a key derived from the
portal's SECRET_KEY (HKDF-SHA256, purpose label), the last accepted time step (so no
code is accepted twice), and an HMAC-SHA256 of each recovery code (they are random and
long enough that a keyed hash needs no slow hashing). Changing ENRS_SECRET_KEY voids
every enrolment and every recovery code.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import re
import secrets
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import pyotp
import segno
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from wtforms import PasswordField, StringField

from idp.models import RecoveryCode, TotpCredential, User
from idp.passwords import verify_password
from idp.sessions import current_user, login_required
from portal import audit
from portal.clock import now
from portal.config import current_settings
from portal.db import db
from portal.mail import queue_mail
from portal.security import limiter

log = logging.getLogger("enrs.totp")

bp = Blueprint("totp", __name__, url_prefix="/account/totp")

# Distinct HKDF labels: the same SECRET_KEY never yields the same key for two uses.
PURPOSE_SECRET = b"enrs/totp-secret/v1"
PURPOSE_RECOVERY = b"enrs/recovery-code/v1"

# The app settings every authenticator understands by default (RFC 6238, SHA-1).
DIGITS = 6
INTERVAL = 30
# One step either side tolerates a phone clock a little off and a code typed as it changes.
VALID_WINDOW = 1
# A secret shown on screen but never proved is not kept usable forever.
PENDING_ENROLMENT_LIFETIME = timedelta(minutes=30)

RECOVERY_CODE_COUNT = 10
# No 0/o, 1/l/i: a code copied by hand from paper must not be ambiguous.
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
RECOVERY_CODE_LENGTH = 8  # shown as xxxx-xxxx; 31^8 ≈ 2^39.6
LOW_RECOVERY_CODES = 3

PARIS = ZoneInfo("Europe/Paris")

WRONG_CODE = ("Le code saisi est incorrect. Vérifiez que l'heure de votre téléphone est juste, "
              "puis saisissez le code affiché actuellement par l'application.")
WRONG_PASSWORD = "Mot de passe actuel incorrect."


# -- keys and storage ---------------------------------------------------------------------


@lru_cache(maxsize=8)
def _derive(secret_key: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret_key.encode())


def _key(purpose: bytes) -> bytes:
    return _derive(current_app.config["SECRET_KEY"], purpose)


def encrypt_secret(secret: str) -> str:
    return Fernet(base64.urlsafe_b64encode(_key(PURPOSE_SECRET))).encrypt(secret.encode()).decode("ascii")


def decrypt_secret(token: str) -> str:
    """Raises cryptography.fernet.InvalidToken when SECRET_KEY is not the one that encrypted it."""
    return Fernet(base64.urlsafe_b64encode(_key(PURPOSE_SECRET))).decrypt(token.encode("ascii")).decode()


def _recovery_digest(user_id: int, normalised: str) -> str:
    # Bound to the account: a code (or its hash) is worth nothing on another account.
    return hmac.new(_key(PURPOSE_RECOVERY), f"{user_id}:{normalised}".encode(), hashlib.sha256).hexdigest()


def normalise_recovery_code(code: str) -> str | None:
    """Case, spaces and dashes do not matter; None when it cannot be a recovery code."""
    cleaned = re.sub(r"[\s\-‐‑–—]", "", (code or "")[:64]).lower()
    if len(cleaned) != RECOVERY_CODE_LENGTH or any(c not in RECOVERY_ALPHABET for c in cleaned):
        return None
    return cleaned


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
    return f"{raw[:4]}-{raw[4:]}"


def _replace_recovery_codes(session: Session, user: User) -> list[str]:
    """Void every previous code and store new ones; the plain codes are returned once."""
    session.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes: list[str] = []
    while len(codes) < RECOVERY_CODE_COUNT:
        code = _new_recovery_code()
        if code not in codes:  # two equal rows would be consumed together
            codes.append(code)
    created = now()
    for code in codes:
        session.add(RecoveryCode(user_id=user.id, code_hash=_recovery_digest(user.id, normalise_recovery_code(code)),
                                 created_at=created))
    return codes


def _matching_step(secret: str, code: str, at: datetime) -> int | None:
    """The time step whose code this is, within the window around `at`; else None.

    pyotp's verify() only says yes or no; the replay check needs the step itself. Every
    candidate is compared in constant time, and the latest match wins so that a replay
    check on it is the strictest.
    """
    cleaned = re.sub(r"\s", "", (code or "")[:32])
    if not re.fullmatch(r"[0-9]{%d}" % DIGITS, cleaned):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL)
    current_step = totp.timecode(at)
    matched = None
    for offset in range(-VALID_WINDOW, VALID_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(current_step + offset), cleaned):
            matched = current_step + offset
    return matched


def _claim_step(session: Session, credential_id: int, step: int) -> bool:
    """Record `step` as used unless it (or a later one) already was: one winner, ever.

    The conditional UPDATE is the arbiter: two submissions of one code, even at the same
    instant, cannot both see an older last_used_step once the first has written.
    """
    table = TotpCredential.__table__
    result = session.execute(
        table.update()
        .where(table.c.id == credential_id,
               sa.or_(table.c.last_used_step.is_(None), table.c.last_used_step < step))
        .values(last_used_step=step)
    )
    return result.rowcount == 1


def _confirmed_credential(session: Session, user: User, *, lock: bool = False) -> TotpCredential | None:
    query = sa.select(TotpCredential).where(TotpCredential.user_id == user.id,
                                            TotpCredential.confirmed_at.is_not(None))
    if lock:
        # Serialises the account's removal and renewals on PostgreSQL (SQLite already
        # holds the write lock from the first statement of the transaction).
        query = query.with_for_update()
    return session.scalar(query.execution_options(populate_existing=True))


def _pending_credential(session: Session, user: User) -> TotpCredential | None:
    return session.scalar(
        sa.select(TotpCredential)
        .where(TotpCredential.user_id == user.id, TotpCredential.confirmed_at.is_(None),
               TotpCredential.created_at > now() - PENDING_ENROLMENT_LIFETIME)
        .execution_options(populate_existing=True)
    )


def paris_time(value: datetime) -> str:
    return value.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")


def _subject(text: str) -> str:
    return f"[{current_settings().portal_name}] {text}"


# -- what the login step calls ------------------------------------------------------------


def app_enrolled(user_id: sa.ColumnElement[int]) -> sa.Exists:
    """`has_totp` as an SQL expression, for the login steps to read it in the same round
    trip as the row they load anyway."""
    return sa.exists().where(TotpCredential.user_id == user_id, TotpCredential.confirmed_at.is_not(None))


_HAS_TOTP = sa.select(app_enrolled(sa.bindparam("user_id")))


def has_totp(session: Session, user: User) -> bool:
    """An app was enrolled and confirmed (a pending enrolment does not count). Read only."""
    return bool(session.scalar(_HAS_TOTP, {"user_id": user.id}))


def verify_totp(session: Session, user: User, code: str) -> bool:
    """True when `code` is the app's code for now ±1 step and that step was never used.

    Writes last_used_step in the caller's transaction and does not commit: the caller
    commits (on PostgreSQL the row stays locked until then, so commit promptly).
    Attempts are not counted here: the caller limits them.
    """
    row = session.execute(
        sa.select(TotpCredential.id, TotpCredential.secret_encrypted)
        .where(TotpCredential.user_id == user.id, TotpCredential.confirmed_at.is_not(None))
    ).first()
    if row is None:
        return False
    try:
        secret = decrypt_secret(row.secret_encrypted)
    except InvalidToken:
        log.error("TOTP secret of user %s cannot be decrypted (was ENRS_SECRET_KEY changed?)", user.id)
        return False
    step = _matching_step(secret, code, now())
    if step is None:
        return False
    return _claim_step(session, row.id, step)


def recovery_codes_left(session: Session, user: User) -> int:
    """Unused recovery codes of the account. Read only."""
    return session.scalar(sa.select(sa.func.count(RecoveryCode.id))
                          .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))) or 0


def verify_recovery_code(session: Session, user: User, code: str) -> bool:
    """Consume one recovery code, once, atomically; True when it was valid and unused.

    On success it adds an audit entry and queues the notice email in the caller's
    transaction, without committing: the caller commits (the email leaves only then).
    A refusal writes nothing: the caller records it with its own context.
    """
    normalised = normalise_recovery_code(code)
    if normalised is None:
        return False
    table = RecoveryCode.__table__
    # Looking the hash up by equality leaks no timing worth having: it is keyed.
    consumed = session.execute(
        table.update()
        .where(table.c.user_id == user.id, table.c.code_hash == _recovery_digest(user.id, normalised),
               table.c.used_at.is_(None))
        .values(used_at=now())
    ).rowcount
    if consumed < 1:
        return False
    left = recovery_codes_left(session, user)
    audit.record(session, "totp.recovery_code_used", actor_id=user.id, actor_label=user.login,
                 target_type="user", target_id=user.id, details={"left": left})
    queue_mail(session, user.email, _subject("Un code de secours a été utilisé"), "totp_recovery_code_used",
               user=user, left=left, when=paris_time(now()), low=LOW_RECOVERY_CODES)
    return True


def remove_totp(session: Session, user: User, *, actor: User) -> bool:
    """Remove the app and its recovery codes, audit it and tell the owner; no commit.

    `actor` is the user themselves here; an admin console may call it for a user who lost
    both the phone and the codes. False when there was nothing to remove.
    """
    credential = _confirmed_credential(session, user, lock=True)
    if credential is None:
        return False
    session.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    session.delete(credential)
    audit.record(session, "totp.removed", actor_id=actor.id, actor_label=actor.login, target_type="user",
                 target_id=user.id)
    queue_mail(session, user.email, _subject("L'application d'authentification a été retirée de votre compte"),
               "totp_removed", user=user, when=paris_time(now()))
    return True


# -- QR code --------------------------------------------------------------------------------


def provisioning_uri(secret: str, user: User) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).provisioning_uri(
        name=user.login or user.email, issuer_name=current_settings().portal_name)


def qr_data_uri(uri: str) -> tuple[str, int]:
    """The QR code as an SVG data: URI (the CSP allows data: images, not inline SVG
    styles or a third-party QR service), and its size in pixels."""
    qr = segno.make(uri, error="m")
    scale = 5
    buffer = io.BytesIO()
    # A white background keeps the code readable by phone cameras on a dark theme.
    qr.save(buffer, kind="svg", scale=scale, dark="#000000", light="#ffffff", xmldecl=False,
            title="QR code de l'application d'authentification")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/svg+xml;base64,{encoded}", qr.symbol_size(scale=scale)[0]


def grouped(secret: str) -> str:
    """ABCD EFGH …: a long key is easier to copy in groups of 4."""
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


# -- pages ------------------------------------------------------------------------------------


class ConfirmForm(FlaskForm):
    code = StringField("Code affiché par l'application")


class PasswordForm(FlaskForm):
    password = PasswordField("Mot de passe actuel")


@bp.get("/")
@login_required
def overview():
    session = db.session
    user = current_user()
    credential = _confirmed_credential(session, user)
    return render_template(
        "idp/totp_overview.html",
        credential=credential,
        enrolled_at=paris_time(credential.confirmed_at) if credential else None,
        codes_left=recovery_codes_left(session, user) if credential else 0,
        total=RECOVERY_CODE_COUNT,
        low=LOW_RECOVERY_CODES,
    )


@bp.post("/start")
@limiter.limit("10 per minute")
@login_required
def start():
    session = db.session
    user = current_user()
    if has_totp(session, user):
        flash("Une application d'authentification est déjà associée à votre compte. "
              "Retirez-la d'abord pour en ajouter une autre.", "error")
        return redirect(url_for("totp.overview"), code=303)
    # One row per account: a new enrolment replaces one left unfinished.
    session.execute(sa.delete(TotpCredential).where(TotpCredential.user_id == user.id,
                                                    TotpCredential.confirmed_at.is_(None)))
    session.add(TotpCredential(user_id=user.id, secret_encrypted=encrypt_secret(pyotp.random_base32()),
                               created_at=now()))
    try:
        session.commit()
    except IntegrityError:
        # A double click: the other request created the row; its secret is the one shown.
        session.rollback()
    return redirect(url_for("totp.confirm"), code=303)


@bp.route("/confirm", methods=["GET", "POST"])
@limiter.limit("20 per minute", methods=["POST"])
@login_required
def confirm():
    session = db.session
    user = current_user()
    pending = _pending_credential(session, user)
    secret = None
    if pending is not None:
        try:
            secret = decrypt_secret(pending.secret_encrypted)
        except InvalidToken:
            secret = None
    if secret is None:
        if has_totp(session, user):
            return redirect(url_for("totp.overview"), code=303)
        flash("La clé proposée a expiré ou n'existe plus. Recommencez l'ajout de l'application.", "error")
        return redirect(url_for("totp.overview"), code=303)

    form = ConfirmForm()
    error = None
    if request.method == "POST" and form.validate():
        step = _matching_step(secret, form.code.data or "", now())
        if step is None:
            error = WRONG_CODE
        else:
            table = TotpCredential.__table__
            # Confirms the very secret that was checked, once, even if a new enrolment
            # or a second submission raced this one.
            won = session.execute(
                table.update()
                .where(table.c.id == pending.id, table.c.confirmed_at.is_(None),
                       table.c.secret_encrypted == pending.secret_encrypted)
                .values(confirmed_at=now(), last_used_step=step)
            ).rowcount
            if won != 1:
                session.rollback()
                return redirect(url_for("totp.overview"), code=303)
            codes = _replace_recovery_codes(session, user)
            audit.record(session, "totp.enrolled", actor_id=user.id, actor_label=user.login,
                         target_type="user", target_id=user.id, details={"recovery_codes": len(codes)})
            queue_mail(session, user.email,
                       _subject("Une application d'authentification a été ajoutée à votre compte"),
                       "totp_added", user=user, when=paris_time(now()))
            session.commit()
            # Shown in this response only: the codes are stored nowhere in clear, not
            # even in the session cookie for a redirect.
            return render_template("idp/totp_recovery_codes.html", codes=codes, enrolled=True)
        form.code.data = ""
    qr, qr_size = qr_data_uri(provisioning_uri(secret, user))
    return render_template(
        "idp/totp_enrol.html", form=form, error=error, qr=qr, qr_size=qr_size, key=grouped(secret),
        account=user.login or user.email, issuer=current_settings().portal_name,
        digits=DIGITS, interval=INTERVAL,
    ), (422 if error else 200)


def _password_page(form: PasswordForm, *, action: str, error: str | None, status: int = 200):
    return render_template("idp/totp_password.html", form=form, action=action, error=error), status


def _check_password(session: Session, user: User, form: PasswordForm, action: str) -> bool:
    if verify_password(user.password_hash, form.password.data or ""):
        return True
    audit.record(session, f"totp.{action}_refused", outcome="failure", actor_id=user.id, actor_label=user.login,
                 target_type="user", target_id=user.id, reason="wrong password")
    session.commit()
    return False


def _with_password(action: str, audit_action: str, change):
    """A change to an enrolled app, after the user typed their password again: the form on
    GET, a French error on a wrong password, else `change(session, user)`'s response."""
    session = db.session
    user = current_user()
    if not has_totp(session, user):
        return redirect(url_for("totp.overview"), code=303)
    form = PasswordForm()
    if request.method == "POST" and form.validate():
        if not _check_password(session, user, form, audit_action):
            return _password_page(form, action=action, error=WRONG_PASSWORD, status=401)
        return change(session, user)
    return _password_page(form, action=action, error=None)


def _remove(session: Session, user: User):
    remove_totp(session, user, actor=user)
    session.commit()
    flash("L'application d'authentification a été retirée de votre compte, ainsi que vos codes de secours. "
          "Vous recevrez désormais un code par mail pour vous connecter.", "success")
    return redirect(url_for("totp.overview"), code=303)


def _renew_recovery_codes(session: Session, user: User):
    if _confirmed_credential(session, user, lock=True) is None:  # removed meanwhile
        return redirect(url_for("totp.overview"), code=303)
    codes = _replace_recovery_codes(session, user)
    audit.record(session, "totp.recovery_codes_renewed", actor_id=user.id, actor_label=user.login,
                 target_type="user", target_id=user.id, details={"recovery_codes": len(codes)})
    queue_mail(session, user.email, _subject("De nouveaux codes de secours ont été générés"),
               "totp_recovery_codes_renewed", user=user, when=paris_time(now()))
    session.commit()
    return render_template("idp/totp_recovery_codes.html", codes=codes, enrolled=False)


@bp.route("/remove", methods=["GET", "POST"])
@limiter.limit("10 per minute", methods=["POST"])
@login_required
def remove():
    return _with_password("remove", "remove", _remove)


@bp.route("/recovery-codes", methods=["GET", "POST"])
@limiter.limit("10 per minute", methods=["POST"])
@login_required
def regenerate():
    return _with_password("regenerate", "recovery_codes", _renew_recovery_codes)
