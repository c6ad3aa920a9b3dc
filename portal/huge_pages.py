"""Transparent huge pages for the memory of password hashes, in production serving.

Each Argon2id verification allocates its 32 MiB afresh. glibc maps a block that large
with mmap, and the kernel then faults it in 4 KiB page by 4 KiB page: 8,192 faults per
login, a tenth of the hash's CPU spent in the kernel, and argon2's pseudo-random walk over
the block misses the TLB all along. With glibc's `glibc.malloc.hugetlb=1` tunable (glibc
2.35 and later), malloc asks for transparent huge pages (madvise) on such blocks: about
500 faults instead, and 2 MiB pages under the hash. Measured side by side in one run
(`python -m bench huge_pages`, 2 vCPUs): 12.4 verifications/s against 11.1 on both
cores; with the machine full, the portal served 7.52 logins/s against 6.58, at 219 ms of
web CPU per login against 262. Nothing is kept between logins: a worker's memory stays
the same (136-138 MiB at most under load, as before).

glibc reads its tunables once, when the program starts, so `enrs serve --prod` runs itself
again with the variable set (same process id, same arguments), once: a marker variable
stops a second try (glibc drops tunables in secure mode, e.g. an interpreter given file
capabilities, and the restarted process would otherwise never see it). It does so only
where it helps: glibc 2.35 or later, and a kernel whose transparent huge pages are on
request ("madvise"; with "always" they already apply, with "never" there are none). An
operator who sets GLIBC_TUNABLES with any glibc.malloc.hugetlb value keeps that choice.
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Set in the environment of the restarted command. Not ENRS_*: the portal refuses unknown
# settings of its own prefix.
RESTARTED_MARKER = "PORTAL_HUGE_PAGES_RESTARTED"
FIRST_GLIBC = (2, 35)


def on_request_only(setting: Path = THP_SETTING) -> bool:
    """Whether the kernel gives huge pages to the memory a program asks them for, and only to it."""
    try:
        return "[madvise]" in setting.read_text()
    except OSError:
        return False


def _kernel_gives_them(setting: Path = THP_SETTING) -> bool:
    try:
        return "[never]" not in setting.read_text()
    except OSError:
        return False


def glibc_has_the_tunable(libc: tuple[str, str] | None = None) -> bool:
    name, version = libc or platform.libc_ver()
    if name != "glibc":
        return False
    try:
        return tuple(int(part) for part in version.split(".")[:2]) >= FIRST_GLIBC
    except ValueError:
        return False


def tunables_with_huge_pages(environ: Mapping[str, str]) -> str | None:
    """GLIBC_TUNABLES with huge pages asked for, or None if nothing is to change."""
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    return ":".join(filter(None, [current, f"{TUNABLE}=1"]))


def restart_with_huge_pages(run_as: Sequence[str] = ("serve", "--prod")) -> None:
    """Replace this process by the same command with the tunable set (see the module's
    docstring); return without doing anything where it does not apply, or when this
    process is not the command itself (`run_as` missing from its arguments: called from a
    test runner or another program, whose command line must not be run again)."""
    tunables = tunables_with_huge_pages(os.environ)
    if tunables is None or os.environ.get(RESTARTED_MARKER):
        return
    argv = list(getattr(sys, "orig_argv", []) or [])
    if not sys.executable or not argv or not all(arg in argv for arg in run_as):
        return
    if not glibc_has_the_tunable() or not on_request_only():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, {**os.environ, "GLIBC_TUNABLES": tunables, RESTARTED_MARKER: "1"})
    except (OSError, ValueError, TypeError):
        return  # serve with the default allocator rather than not at all


def active() -> bool:
    """Whether this process's large blocks get huge pages: the tunable asked for, a glibc
    that knows it, a kernel that gives them."""
    return (f"{TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "").split(":")
            and glibc_has_the_tunable() and _kernel_gives_them())
