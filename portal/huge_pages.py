"""Transparent huge pages for the memory of password hashes, in production serving.

Each Argon2id verification allocates its 32 MiB afresh. glibc maps a block that large
with mmap, and the kernel then faults it in 4 KiB page by 4 KiB page: 8,192 faults per
login, a tenth of the hash's CPU spent in the kernel, and argon2's pseudo-random walk over
the block misses the TLB all along. With glibc's `glibc.malloc.hugetlb=1` tunable, malloc
asks for transparent huge pages (madvise) on such blocks: about 500 faults instead, and
2 MiB pages under the hash. Measured side by side in one run (`python -m bench huge_pages`,
2 vCPUs): 12.4 verifications/s against 11.1 on both cores; with the machine full, the
portal served 7.52 logins/s against 6.58, at 219 ms of web CPU per login against 262.
Nothing is kept between logins: a worker's memory stays the same (136-138 MiB at most
under load, as before).

glibc reads its tunables once, when the program starts, so `enrs serve --prod` runs itself
again with the variable set (same process id, same arguments). It does so only where it
helps: glibc, and a kernel whose transparent huge pages are on request ("madvise"; with
"always" they already apply, with "never" there are none). An operator who sets
GLIBC_TUNABLES with any glibc.malloc.hugetlb value keeps that choice.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def on_request_only(setting: Path = THP_SETTING) -> bool:
    """Whether the kernel gives huge pages to the memory a program asks them for, and only to it."""
    try:
        return "[madvise]" in setting.read_text()
    except OSError:
        return False


def tunables_with_huge_pages(environ: dict[str, str] | os._Environ) -> str | None:
    """GLIBC_TUNABLES with huge pages asked for, or None if nothing is to change."""
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    return ":".join(filter(None, [current, f"{TUNABLE}=1"]))


def restart_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set (see the module's
    docstring); return without doing anything where it does not apply."""
    tunables = tunables_with_huge_pages(os.environ)
    if tunables is None or platform.libc_ver()[0] != "glibc" or not on_request_only():
        return
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": tunables})
    except OSError:
        return  # serve with the default allocator rather than not at all


def active() -> bool:
    return f"{TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "")
