"""Huge pages for the hash's memory, side by side: `python -m bench huge_pages`.

`enrs serve --prod` runs its workers with glibc's `glibc.malloc.hugetlb=1` tunable
(portal/huge_pages.py). This measures what that is worth (bench/side_by_side.py): the
workers with huge pages and without (`GLIBC_TUNABLES=glibc.malloc.hugetlb=0`, which `enrs
serve --prod` respects), and the hash rate with the tunable and without, hashing as the
workers do.
"""
from __future__ import annotations

from bench.side_by_side import Variant, compare

AS_WORKERS = {"portal_hasher": True, "pypi_wheel": False}
VARIANTS = {
    "huge pages": Variant({}, {"huge_pages": True, **AS_WORKERS}),
    "without": Variant({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {"huge_pages": False, **AS_WORKERS}),
}


def run() -> dict:
    return compare(VARIANTS, "huge-pages")
