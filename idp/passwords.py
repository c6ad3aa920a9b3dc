"""Password policy, Argon2id hashing and the generator ("Générer le mot de passe
automatiquement")."""
from __future__ import annotations

import secrets
import string
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import sqlalchemy as sa
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session
from unidecode import unidecode
from wtforms import PasswordField

from idp.argon2id import Argon2idHasher
from idp.models import PasswordHistory, User, new_security_stamp
from portal.clock import now
from portal.config import ARGON2_MEMORY_KIB, ARGON2_PARALLELISM, ARGON2_THREADS, ARGON2_TIME_COST

# Argon2id with 32 MiB, 8 passes and 4 lanes by default (ENRS_ARGON2_MEMORY_KIB,
# ENRS_ARGON2_TIME_COST, ENRS_ARGON2_PARALLELISM). Against RFC 9106's "low memory" profile
# (64 MiB, 3 passes, argon2-cffi's default), a guess costs the same CPU time (measured:
# 8 passes over 32 MiB take as long as 3 over 64 MiB), on the attacker's side as on ours,
# but holds half the memory: a worker verifying a password stays under 150 MB, and a GPU
# runs about 1.5 times as many guesses per second. Still far above OWASP's floor (19 MiB,
# 2 passes, 1 lane). Hashes made with other parameters verify, and are rehashed with
# these at the next successful login. The 4 lanes are computed by the request's own thread
# (ENRS_ARGON2_THREADS, default 1; why: idp/argon2id.py), by a libargon2 built for the
# server's CPU where it can be (idp/argon2_build.py).
HASHER = Argon2idHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM,
                        threads=ARGON2_THREADS)

# Each hash holds its memory while it runs, and a verification keeps a core busy for
# ~0.1 s (~0.2 s with PyPI's build of libargon2: idp/argon2_build.py). With several
# threads per process, a Monday-morning burst would run as many hashes at once as there
# are threads: memory peaks by 32 MiB per thread, and every login in the process slows
# down together. A process runs at most this many at a time
# (ENRS_PASSWORD_HASH_CONCURRENCY, default 1); the others wait their turn, which costs
# no throughput as long as there are at least as many processes as cores.
_hash_slots = threading.BoundedSemaphore(1)


def limit_concurrent_hashes(count: int) -> None:
    global _hash_slots
    _hash_slots = threading.BoundedSemaphore(count)


def use_hash_parameters(time_cost: int, memory_kib: int, parallelism: int, threads: int = ARGON2_THREADS) -> None:
    """The parameters new hashes are made with (and the dummy one, whose cost must match),
    and the threads that compute a hash's lanes."""
    global HASHER
    if _parameters(HASHER) != (time_cost, memory_kib, parallelism) or HASHER.threads != threads:
        HASHER = Argon2idHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, threads=threads)


def _parameters(hasher: Argon2idHasher) -> tuple[int, int, int]:
    return hasher.time_cost, hasher.memory_cost, hasher.parallelism


# Verified for unknown users, so that a login for a missing account costs the same as one
# with a wrong password: one per set of parameters, as a hash of other parameters would
# cost another time. Not made at import (every import would pay a hash): the app prepares
# it in the background at start (prepare_dummy_hash), so that the first login for an
# unknown account is not the one that pays for it, which would tell.
_dummy_hashes: dict[tuple[int, int, int], str] = {}


def _dummy_hash() -> str:
    hasher = HASHER
    stored = _dummy_hashes.get(_parameters(hasher))
    if stored is None:
        with _hash_slots:
            stored = _dummy_hashes.setdefault(_parameters(hasher), hasher.hash(secrets.token_urlsafe(16)))
    return stored


def dummy_hash_ready() -> bool:
    return _parameters(HASHER) in _dummy_hashes


def prepare_dummy_hash() -> None:
    if not dummy_hash_ready():
        threading.Thread(target=_dummy_hash, name="enrs-dummy-hash", daemon=True).start()

HISTORY_SIZE = 5
SPECIALS = "!#$%&()*+,-./:;<=>?@[]^_{|}~"


@dataclass(frozen=True)
class Policy:
    min_length: int = 12
    min_lower: int = 1
    min_upper: int = 1
    min_digits: int = 1
    min_special: int = 1
    history: int = HISTORY_SIZE

    def rules(self) -> list[tuple[str, str, int]]:
        """(key, French label as in the seed, minimum) for the live checklist."""
        return [
            ("length", "Taille minimale", self.min_length),
            ("lower", "Minimum de minuscules", self.min_lower),
            ("upper", "Minimum de majuscules", self.min_upper),
            ("digit", "Minimum de chiffres", self.min_digits),
            ("special", "Minimum de caractères spéciaux", self.min_special),
        ]


DEFAULT_POLICY = Policy()


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    text = resources.files("idp").joinpath("data/common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(_fold(line) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _fold(value: str) -> str:
    return unidecode(unicodedata.normalize("NFKC", value)).lower()


def _counts(password: str) -> dict[str, int]:
    return {
        "length": len(password),
        "lower": sum(c.islower() for c in password),
        "upper": sum(c.isupper() for c in password),
        "digit": sum(c.isdigit() for c in password),
        "special": sum(not c.isalnum() and not c.isspace() for c in password),
    }


def policy_errors(
    password: str,
    *,
    policy: Policy = DEFAULT_POLICY,
    personal: tuple[str | None, ...] = (),
) -> list[str]:
    """Every rule the password breaks, each named in French (empty when it is accepted).

    `personal` holds the login, names and email: a password containing one of them
    (4 characters or more, accents and case ignored) is refused.
    """
    errors = []
    counts = _counts(password)
    for key, label, minimum in policy.rules():
        if counts[key] < minimum:
            errors.append(f"{label} : {minimum}")
    folded = _fold(password)
    for value in personal:
        if not value:
            continue
        candidates = {_fold(value)}
        if "@" in value:
            candidates.add(_fold(value.split("@", 1)[0]))
        if any(len(c) >= 4 and c in folded for c in candidates):
            errors.append("Le mot de passe ne doit contenir ni votre identifiant, ni votre nom, ni votre adresse mail")
            break
    stripped = folded.rstrip(string.digits + SPECIALS)
    if folded in _common_passwords() or stripped in _common_passwords():
        errors.append("Ce mot de passe est trop courant")
    return errors


def hash_password(password: str) -> str:
    with _hash_slots:
        return HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-cost check: an account without a password still pays for one hash."""
    stored = password_hash or _dummy_hash()
    try:
        with _hash_slots:
            return HASHER.verify(stored, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return HASHER.check_needs_rehash(password_hash)


def reused_recently(session: Session, user: User, password: str, policy: Policy = DEFAULT_POLICY) -> bool:
    hashes = session.scalars(
        sa.select(PasswordHistory.password_hash)
        .where(PasswordHistory.user_id == user.id)
        .order_by(PasswordHistory.created_at.desc(), PasswordHistory.id.desc())
        .limit(policy.history)
    ).all()
    return any(verify_password(h, password) for h in hashes)


def set_password(session: Session, user: User, password: str) -> None:
    """Store a new password (already checked against the policy) and remember it."""
    user.password_hash = hash_password(password)
    user.password_changed_at = now()
    user.security_stamp = new_security_stamp()
    session.add(PasswordHistory(user_id=user.id, password_hash=user.password_hash, created_at=now()))


def generate_password(length: int = 16) -> str:
    """A random password that satisfies the default policy (the server-side twin of the
    page's generator button, used where JavaScript is off)."""
    alphabet = string.ascii_letters + string.digits + SPECIALS
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(length))
        if not policy_errors(candidate):
            return candidate


class NewPasswordForm(FlaskForm):
    password = PasswordField("Nouveau mot de passe")
    password_confirm = PasswordField("Confirmez le mot de passe")


def check_new_password(session: Session, user: User, form: NewPasswordForm) -> dict[str, list[str]]:
    """Every reason to refuse the new password, by field, in French."""
    errors: dict[str, list[str]] = {}
    password = form.password.data or ""
    rules = policy_errors(password, personal=(user.login, user.first_name, user.last_name, user.email))
    if rules:
        errors["password"] = rules
    elif user.password_hash and reused_recently(session, user, password):
        errors["password"] = ["Ce mot de passe a déjà été utilisé récemment : choisissez-en un autre."]
    if password != (form.password_confirm.data or ""):
        errors["password_confirm"] = ["Les deux mots de passe ne sont pas identiques."]
    return errors
