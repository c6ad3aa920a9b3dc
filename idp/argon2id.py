"""Argon2id hashes computed by a chosen number of threads, in the standard encoding.

argon2-cffi's PasswordHasher runs one thread per lane: with 4 lanes, every hash starts
and joins 4 threads at each of its 32 synchronisation points (8 passes × 4 slices), 128
thread starts per login, and a lane that finishes first waits for the others. On a server
the parallelism comes from the requests themselves, and that is pure cost. Computed by
the request's own thread, the same hash takes 6–9 % less CPU; both cores verify 15 % more
hashes per second, and with the machine full the portal serves 4 % more logins at 7 %
less web CPU each (`python -m bench argon2_threads`, docs/deploy-sizing.md). The price:
on an idle machine one verification takes ~170 ms instead of ~110. The lanes, hence the
hash and what a guess costs, are unchanged: libargon2 computes the same 4 lanes one
after the other, and a hash made either way verifies either way.

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

from argon2 import PasswordHasher, Type
from argon2.exceptions import HashingError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION, core, error_to_str, ffi, lib

_ENCODED = re.compile(
    rb"\$argon2id\$v=(?P<version>\d{1,3})\$m=(?P<memory>\d{1,10}),t=(?P<time>\d{1,10}),p=(?P<lanes>\d{1,8})"
    rb"\$(?P<salt>[A-Za-z0-9+/]{11,})\$(?P<hash>[A-Za-z0-9+/]{6,})")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: bytes) -> bytes:
    return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)


def _argon2id(secret: bytes, salt: bytes, *, time_cost: int, memory_kib: int, lanes: int, threads: int,
              length: int, version: int = ARGON2_VERSION) -> bytes:
    out = ffi.new("uint8_t[]", length)
    # cffi keeps these buffers alive as long as the context that points to them.
    secret_buffer, salt_buffer = ffi.new("uint8_t[]", secret), ffi.new("uint8_t[]", salt)
    context = ffi.new("argon2_context *", {
        "out": out, "outlen": length, "pwd": secret_buffer, "pwdlen": len(secret), "salt": salt_buffer,
        "saltlen": len(salt), "secret": ffi.NULL, "secretlen": 0, "ad": ffi.NULL, "adlen": 0,
        "t_cost": time_cost, "m_cost": memory_kib, "lanes": lanes, "threads": min(threads, lanes),
        "version": version, "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL, "flags": lib.ARGON2_DEFAULT_FLAGS,
    })
    status = core(context, Type.ID.value)
    if status != lib.ARGON2_OK:
        raise HashingError(error_to_str(status))
    return bytes(ffi.buffer(out, length))


class Argon2idHasher(PasswordHasher):
    """argon2-cffi's PasswordHasher, whose Argon2id hashes run on `threads` threads."""

    def __init__(self, *, time_cost: int, memory_cost: int, parallelism: int, threads: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
        self.threads = threads

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        salt = salt or os.urandom(self.salt_len)
        digest = _argon2id(_bytes(password, self.encoding), salt, time_cost=self.time_cost,
                           memory_kib=self.memory_cost, lanes=self.parallelism, threads=self.threads,
                           length=self.hash_len)
        return (f"$argon2id$v={ARGON2_VERSION}$m={self.memory_cost},t={self.time_cost},p={self.parallelism}"
                f"${_b64encode(salt)}${_b64encode(digest)}")

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        encoded = _bytes(hash, "ascii")
        found = _ENCODED.fullmatch(encoded)
        if found is None:
            return super().verify(encoded, password)  # other types, or invalid: argon2-cffi says which
        try:
            salt, expected = _b64decode(found["salt"]), _b64decode(found["hash"])
        except binascii.Error:
            return super().verify(encoded, password)
        try:
            digest = _argon2id(_bytes(password, self.encoding), salt, time_cost=int(found["time"]),
                               memory_kib=int(found["memory"]), lanes=int(found["lanes"]), threads=self.threads,
                               length=len(expected), version=int(found["version"]))
        except HashingError as error:
            raise VerificationError(*error.args) from None
        if not hmac.compare_digest(digest, expected):
            raise VerifyMismatchError(error_to_str(lib.ARGON2_VERIFY_MISMATCH))
        return True


def _bytes(value: str | bytes, encoding: str) -> bytes:
    return value.encode(encoding) if isinstance(value, str) else value
