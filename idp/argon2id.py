"""Argon2id hashes computed by a chosen number of threads, in the standard encoding.

argon2-cffi's PasswordHasher runs one thread per lane: with 4 lanes, every hash starts
and joins 4 threads at each of its 32 synchronisation points (8 passes × 4 slices), 128
thread starts per login, and a lane that finishes first waits for the others. On a server
the parallelism comes from the requests themselves, and that is pure cost. Computed by
the request's own thread, the same hash takes 6–10 % less CPU; both cores verify 13–15 % more
hashes per second, and with the machine full the portal serves 4 % more logins at 6–7 %
less web CPU each (`python -m bench argon2_threads`); in full load runs, logins alone
reached 0.75–0.84 × the bare hash rate against 0.70–0.74 (docs/deploy-sizing.md; all
measured with PyPI's build of libargon2). The price: on an idle machine one verification
takes the wall time of its CPU (~230 ms on the machine measured with PyPI's build, ~100–130
with one built for the CPU, idp/argon2_build.py; against ~150 ms with the lanes of PyPI's
build spread over two cores). The lanes, hence the hash and what a guess costs, are
unchanged: libargon2 computes the same 4 lanes one after the other, and a hash made
either way verifies either way.

argon2-cffi's high-level API ties threads to lanes; its low-level binding `core` (libargon2's
`argon2_ctx`) does not. This module builds that call's context and encodes the result as
libargon2's `argon2_hash` does ($argon2id$v=19$m=…,t=…,p=…$salt$hash, base64 without
padding). Anything else than an Argon2id hash in that form is left to argon2-cffi.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import HashingError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION, core, error_to_str, ffi, lib

# libargon2's own decoder is strict, and so is this one: decimal numbers without leading
# zeros, canonical base64 (see _b64decode). A hash it does not take goes to argon2-cffi,
# whose answer (an error, mostly) is then the portal's.
_NUMBER = rb"(?:0|[1-9][0-9]{0,9})"
_ENCODED = re.compile(
    rb"\$argon2id\$v=(?P<version>%(n)s)\$m=(?P<memory>%(n)s),t=(?P<time>%(n)s),p=(?P<lanes>%(n)s)"
    rb"\$(?P<salt>[A-Za-z0-9+/]{11,})\$(?P<hash>[A-Za-z0-9+/]{6,})" % {b"n": _NUMBER})
_UINT32 = 0xFFFFFFFF


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: bytes) -> bytes:
    """Unpadded base64 as libargon2 writes it, and only that: Python's decoder ignores the
    unused bits of the last character, which would let several spellings of one hash
    verify where libargon2 refuses all but one."""
    data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    if _b64encode(data).encode("ascii") != text:
        raise binascii.Error("non-canonical base64")
    return data


def argon2id_raw(password: bytes, salt: bytes, *, time_cost: int, memory_kib: int, lanes: int, threads: int,
                 length: int, version: int = ARGON2_VERSION, key: bytes = b"", data: bytes = b"") -> bytes:
    """Argon2id's raw tag through libargon2's context call. `key` and `data` are RFC 9106's
    secret and associated data: the portal hashes without them; its known-answer check
    (idp/argon2_build.py) needs them for the RFC's vector."""
    # The context's pointers do not keep what they point to alive: these names do, until
    # the call returns. Keep them named.
    out = ffi.new("uint8_t[]", length)
    password_buffer, salt_buffer = ffi.new("uint8_t[]", password), ffi.new("uint8_t[]", salt)
    key_buffer = ffi.new("uint8_t[]", key) if key else ffi.NULL
    data_buffer = ffi.new("uint8_t[]", data) if data else ffi.NULL
    context = ffi.new("argon2_context *", {
        "out": out, "outlen": length, "pwd": password_buffer, "pwdlen": len(password), "salt": salt_buffer,
        "saltlen": len(salt), "secret": key_buffer, "secretlen": len(key), "ad": data_buffer, "adlen": len(data),
        "t_cost": time_cost, "m_cost": memory_kib, "lanes": lanes, "threads": min(threads, lanes),
        "version": version, "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL, "flags": lib.ARGON2_DEFAULT_FLAGS,
    })
    status = core(context, Type.ID.value)
    if status != lib.ARGON2_OK:
        raise HashingError(error_to_str(status))
    return bytes(ffi.buffer(out, length))


class Argon2idHasher(PasswordHasher):
    """argon2-cffi's PasswordHasher, whose Argon2id hashes run on `threads` threads."""

    def __init__(self, *, threads: int = 1, **parameters: Any) -> None:
        super().__init__(**parameters)
        self.threads = threads

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        if self.type is not Type.ID:
            return super().hash(password, salt=salt)
        salt = salt or os.urandom(self.salt_len)
        digest = argon2id_raw(_bytes(password, self.encoding), salt, time_cost=self.time_cost,
                              memory_kib=self.memory_cost, lanes=self.parallelism, threads=self.threads,
                              length=self.hash_len)
        return (f"$argon2id$v={ARGON2_VERSION}$m={self.memory_cost},t={self.time_cost},p={self.parallelism}"
                f"${_b64encode(salt)}${_b64encode(digest)}")

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        encoded = _bytes(hash, "ascii")
        found = _ENCODED.fullmatch(encoded)
        numbers = [int(found[name]) for name in ("version", "memory", "time", "lanes")] if found else []
        if found is None or max(numbers) > _UINT32:
            return super().verify(encoded, password)  # other types, or invalid: argon2-cffi says which
        try:
            salt, expected = _b64decode(found["salt"]), _b64decode(found["hash"])
        except binascii.Error:
            return super().verify(encoded, password)
        version, memory_kib, time_cost, lanes = numbers
        try:
            digest = argon2id_raw(_bytes(password, self.encoding), salt, time_cost=time_cost, memory_kib=memory_kib,
                                  lanes=lanes, threads=self.threads, length=len(expected), version=version)
        except HashingError as error:
            raise VerificationError(*error.args) from None
        if not hmac.compare_digest(digest, expected):
            raise VerifyMismatchError(error_to_str(lib.ARGON2_VERIFY_MISMATCH))
        return True


def _bytes(value: str | bytes, encoding: str) -> bytes:
    return value.encode(encoding) if isinstance(value, str) else value
