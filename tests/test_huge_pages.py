"""`enrs serve --prod` runs its workers with huge pages for the memory of password hashes
(portal/huge_pages.py): fewer page faults and TLB misses per login, same memory."""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portal import huge_pages
from tests.conftest import free_port
from tests.processes import end_process, log_tail

REPO = Path(__file__).resolve().parent.parent
# Where this machine's kernel and C library let the portal ask for huge pages at all.
APPLIES_HERE = platform.libc_ver()[0] == "glibc" and huge_pages.on_request_only()


def test_the_tunable_is_added_to_those_the_operator_set_and_never_overrides_a_choice():
    assert huge_pages.tunables_with_huge_pages({}) == "glibc.malloc.hugetlb=1"
    assert huge_pages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    assert huge_pages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert huge_pages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) is None


@pytest.mark.parametrize("setting, on_request", [
    ("always [madvise] never\n", True),
    ("[always] madvise never\n", False),  # the kernel already gives them: nothing to ask
    ("always madvise [never]\n", False),
])
def test_huge_pages_are_asked_for_only_when_the_kernel_gives_them_on_request(tmp_path, setting, on_request):
    path = tmp_path / "enabled"
    path.write_text(setting)
    assert huge_pages.on_request_only(path) is on_request
    assert huge_pages.on_request_only(tmp_path / "missing") is False


_FAULTS_OF_A_VERIFICATION = """
import resource
from argon2 import PasswordHasher
hasher = PasswordHasher(time_cost=1, memory_cost=32768, parallelism=1)
stored = hasher.hash("secret")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
hasher.verify(stored, "secret")
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_a_verification(tunables: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    result = subprocess.run([sys.executable, "-c", _FAULTS_OF_A_VERIFICATION], env=env, capture_output=True,
                            text=True, check=True, timeout=60)
    return int(result.stdout)


def test_with_the_tunable_a_verification_faults_its_32_mib_in_by_huge_pages():
    pages = 32 * 1024 * 1024 // resource.getpagesize()
    assert _faults_of_a_verification(None) >= pages  # 4 KiB at a time, zero-filled by the kernel
    with_tunable = _faults_of_a_verification("glibc.malloc.hugetlb=1")
    assert (with_tunable < pages // 4) is APPLIES_HERE


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.parametrize("operator_tunables", [None, "glibc.malloc.hugetlb=0"])
def test_serve_prod_starts_its_workers_with_huge_pages_unless_the_operator_chose(app_env, tmp_path, operator_tunables):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRS_") and k != "GLIBC_TUNABLES"}
    env.update(app_env, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    if operator_tunables:
        env["GLIBC_TUNABLES"] = operator_tunables
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "portal.cli", "serve", "--prod", "--workers", "1",
                                   "--threads", "2", "--port", str(free_port())], env=env, cwd=REPO, stdout=output,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _children(server.pid) and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.1)
        workers = _children(server.pid)
        assert workers, log_tail(log)
        # The master started itself again in place: same process id, the tunable in its
        # environment, and in its workers'.
        expected = operator_tunables or ("glibc.malloc.hugetlb=1" if APPLIES_HERE else None)
        assert _environ(server.pid).get("GLIBC_TUNABLES") == expected
        assert _environ(workers[0]).get("GLIBC_TUNABLES") == expected
    finally:
        end_process(server)
