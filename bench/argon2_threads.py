"""A hash's lanes in the request's thread, side by side with a thread per lane:
`python -m bench argon2_threads`.

The portal computes the 4 lanes of an Argon2id hash in the thread that asks for it
(ENRS_ARGON2_THREADS=1, idp/argon2id.py) where argon2-cffi starts a thread per lane. This
measures what that is worth (bench/side_by_side.py): the workers (with huge pages, as
they run) each way, and the hash rate of both cores each way.
"""
from __future__ import annotations

from bench.side_by_side import Variant, compare

VARIANTS = {
    "lanes in the request's thread": Variant({"ENRS_ARGON2_THREADS": "1"}, {"huge_pages": True, "portal_hasher": True, "pypi_wheel": False}),
    "a thread per lane": Variant({"ENRS_ARGON2_THREADS": "4"}, {"huge_pages": True, "portal_hasher": False, "pypi_wheel": False}),
}


def run() -> dict:
    return compare(VARIANTS, "argon2-threads")
