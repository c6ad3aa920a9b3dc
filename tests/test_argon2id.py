"""Argon2id hashes computed in the request's own thread (idp/argon2id.py): the same hashes
as argon2-cffi's, verified either way, at less CPU per login."""
from __future__ import annotations

import sys
import threading
import time

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from idp.argon2id import Argon2idHasher

PASSWORD = "Hopital-Dreux-2026"
# Cheap parameters: what is checked here does not depend on the cost.
CHEAP = {"time_cost": 2, "memory_cost": 4096, "parallelism": 4}
SALT = bytes(range(16))


@pytest.mark.parametrize("threads", [1, 4])
def test_a_hash_is_the_one_argon2_cffi_makes_with_the_same_salt(threads):
    ours = Argon2idHasher(**CHEAP, threads=threads).hash(PASSWORD, salt=SALT)
    assert ours == PasswordHasher(**CHEAP).hash(PASSWORD, salt=SALT)
    assert ours.startswith("$argon2id$v=19$m=4096,t=2,p=4$")


def test_hashes_made_by_either_verify_with_the_other():
    ours, library = Argon2idHasher(**CHEAP), PasswordHasher(**CHEAP)
    assert library.verify(ours.hash(PASSWORD), PASSWORD)
    assert ours.verify(library.hash(PASSWORD), PASSWORD)


def test_a_wrong_password_is_a_mismatch():
    hasher = Argon2idHasher(**CHEAP)
    stored = hasher.hash(PASSWORD)
    with pytest.raises(VerifyMismatchError):
        hasher.verify(stored, "Hopital-Dreux-2025")
    # One changed character of the stored hash is a mismatch too, not a pass.
    tampered = stored[:-2] + ("A" if stored[-2] != "A" else "B") + stored[-1]
    with pytest.raises(VerifyMismatchError):
        hasher.verify(tampered, PASSWORD)


def test_hashes_of_other_parameters_and_versions_verify_with_their_own():
    # Accounts hashed before a change of parameters, or by another tool, keep logging in.
    hasher = Argon2idHasher(**CHEAP)
    former = PasswordHasher(time_cost=3, memory_cost=8192, parallelism=2, hash_len=16, salt_len=8).hash(PASSWORD)
    assert hasher.verify(former, PASSWORD)
    assert hasher.check_needs_rehash(former)
    from argon2.low_level import Type, hash_secret

    version_16 = hash_secret(PASSWORD.encode(), SALT, 2, 4096, 4, 32, Type.ID, version=0x10).decode()
    assert "$v=16$" in version_16
    assert hasher.verify(version_16, PASSWORD)
    with pytest.raises(VerifyMismatchError):
        hasher.verify(version_16, "autre")


def test_other_argon2_types_are_left_to_argon2_cffi():
    argon2i = PasswordHasher(**CHEAP, type=__import__("argon2").Type.I).hash(PASSWORD)
    hasher = Argon2idHasher(**CHEAP)
    assert hasher.verify(argon2i, PASSWORD)
    with pytest.raises(VerifyMismatchError):
        hasher.verify(argon2i, "autre")


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _last_character_bits_set(text: str) -> str:
    # The last character of unpadded base64 carries unused low bits: libargon2 refuses
    # them set, Python's decoder ignores them.
    return text[:-1] + _B64[_B64.index(text[-1]) | 1]


def _tampered(part: str):
    def change(stored: str) -> str:
        fields = stored.split("$")
        index = {"salt": 4, "hash": 5}[part]
        fields[index] = _last_character_bits_set(fields[index])
        return "$".join(fields)
    return change


@pytest.mark.parametrize("make", [
    lambda stored: "", lambda stored: "plaintext", lambda stored: "$2b$12$abcdefghijklmnopqrstuv",  # not Argon2
    lambda stored: stored.rsplit("$", 1)[0] + "$",  # no hash
    lambda stored: stored.rsplit("$", 1)[0] + "$!!!notbase64!!!",
    lambda stored: stored.replace("$" + stored.split("$")[4], "$c2FsdA"),  # salt too short
    lambda stored: stored.replace(",t=2,", ",t=0,"),  # no pass
    lambda stored: stored.replace("$m=4096,", "$m=04096,"),  # a leading zero
    lambda stored: stored.replace("$m=4096,", "$m=4294967296,"),  # beyond 32 bits
    lambda stored: stored.replace(",t=2,", ",t=9999999999,"),
    _tampered("hash"), _tampered("salt"),
])
def test_a_malformed_hash_is_refused_as_libargon2_refuses_it(make):
    # Even with the right password: a hash this module parses itself must be refused
    # wherever libargon2 refuses it, and with the same error (a mismatch is not an error).
    stored = make(PasswordHasher(**CHEAP).hash(PASSWORD, salt=SALT))
    with pytest.raises((InvalidHashError, VerificationError)) as library:
        PasswordHasher(**CHEAP).verify(stored, PASSWORD)
    with pytest.raises((InvalidHashError, VerificationError)) as ours:
        Argon2idHasher(**CHEAP).verify(stored, PASSWORD)
    assert type(ours.value) is type(library.value)
    assert not isinstance(ours.value, VerifyMismatchError) or isinstance(library.value, VerifyMismatchError)


def _cpu_of_one_hash(hasher: Argon2idHasher) -> tuple[float, float]:
    for thread in threading.enumerate():  # an app of an earlier test may still prepare its dummy hash
        if thread.name == "enrs-dummy-hash":
            thread.join(30)
    stored = hasher.hash(PASSWORD)
    thread_started, process_started = time.thread_time(), time.process_time()
    hasher.verify(stored, PASSWORD)
    return time.thread_time() - thread_started, time.process_time() - process_started


def test_with_one_thread_the_lanes_are_computed_by_the_calling_thread():
    # The point of the module: no thread started per hash, the whole hash's CPU is the
    # caller's. With 4 threads, libargon2 computes the lanes in threads of its own.
    parameters = {"time_cost": 4, "memory_cost": 16384, "parallelism": 4}
    own, whole = _cpu_of_one_hash(Argon2idHasher(**parameters, threads=1))
    assert own >= 0.9 * whole
    own, whole = _cpu_of_one_hash(Argon2idHasher(**parameters, threads=4))
    assert own < 0.5 * whole


def test_other_requests_of_the_process_go_on_while_a_hash_runs():
    # A login's 0.2 s of Argon2 must not stop the worker's other threads: the hash runs
    # with the GIL released. With a switch interval far longer than the hash, a thread
    # that keeps the GIL is never made to give it up while hashing, so the counting
    # thread moves on during the hash only if the hash let go of it.
    hasher = Argon2idHasher(time_cost=4, memory_cost=16384, parallelism=4)
    stored = hasher.hash(PASSWORD)
    stop, counted = threading.Event(), [0]

    def count() -> None:
        while not stop.is_set():
            counted[0] += 1

    interval = sys.getswitchinterval()
    counter = threading.Thread(target=count)
    sys.setswitchinterval(0.5)
    try:
        counter.start()
        before = counted[0]
        hasher.verify(stored, PASSWORD)
        during = counted[0] - before
    finally:
        stop.set()
        counter.join()
        sys.setswitchinterval(interval)
    assert during > 0


def test_a_hasher_is_made_from_the_parameters_of_a_hash():
    # argon2-cffi's from_parameters, as a tool migrating hashes would use it.
    from argon2 import extract_parameters

    stored = PasswordHasher(**CHEAP).hash(PASSWORD)
    hasher = Argon2idHasher.from_parameters(extract_parameters(stored))
    assert hasher.threads == 1
    assert hasher.verify(stored, PASSWORD) and not hasher.check_needs_rehash(stored)


def test_the_operator_may_give_a_hash_a_thread_per_lane(app_env):
    # On a machine with idle cores and few logins, a thread per lane shortens each login
    # (at more CPU per login): ENRS_ARGON2_THREADS, 1 by default.
    from idp import passwords
    from portal.app import create_app

    create_app({**app_env, "ENRS_ARGON2_THREADS": "4"})
    assert passwords.HASHER.threads == 4
    create_app(app_env)
    assert passwords.HASHER.threads == 1
