"""libargon2 built for this CPU, side by side with PyPI's wheel: `python -m bench argon2_build`.

`make install` rebuilds argon2-cffi-bindings for x86-64-v3 where the CPU has it
(idp/argon2_build.py); PyPI's wheel is compiled for the x86-64 baseline. This measures what
that is worth (bench/side_by_side.py): the workers with the installed build, and with the
wheel first on their PYTHONPATH; and the hash rate of both cores each way, hashing as the
workers do (huge pages, the lanes in the request's thread). On a machine where the
installed build is the wheel, both variants are the same, and the gains are 1.
"""
from __future__ import annotations

from bench.load.argon2_rate import pypi_wheel
from bench.side_by_side import Variant, compare

AS_WORKERS = {"huge_pages": True, "portal_hasher": True}


def run() -> dict:
    variants = {
        "built for this CPU": Variant({}, {**AS_WORKERS, "pypi_wheel": False}),
        "PyPI's wheel": Variant({"PYTHONPATH": str(pypi_wheel())}, {**AS_WORKERS, "pypi_wheel": True}),
    }
    return compare(variants, "argon2-build")
