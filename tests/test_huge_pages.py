"""`enrs serve --prod` runs its workers with huge pages for the memory of password hashes
(portal/huge_pages.py): fewer page faults and TLB misses per login, same memory."""
from __future__ import annotations

import os
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
APPLIES_HERE = huge_pages.glibc_has_the_tunable() and huge_pages.on_request_only()


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


@pytest.mark.parametrize("libc, knows", [
    (("glibc", "2.36"), True), (("glibc", "2.35"), True), (("glibc", "2.31"), False),  # Debian 11
    (("glibc", ""), False), (("", ""), False),  # musl, macOS
])
def test_only_a_glibc_that_knows_the_tunable_gets_it(libc, knows):
    assert huge_pages.glibc_has_the_tunable(libc) is knows


class Exec:
    """os.execve's stand-in: records what would have replaced the process."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, list[str], dict[str, str]]] = []
        self.error = error

    def __call__(self, path, argv, env):
        self.calls.append((path, list(argv), dict(env)))
        if self.error:
            raise self.error


COMMAND = ["/srv/enrs/.venv/bin/python", "-X", "utf8", "/srv/enrs/.venv/bin/enrs", "serve", "--prod", "--port", "8000"]


@pytest.fixture
def restart(monkeypatch):
    """restart_with_huge_pages as `enrs serve --prod` runs it, on a machine where it applies."""
    execve = Exec()
    monkeypatch.setattr(huge_pages.os, "execve", execve)
    monkeypatch.setattr(huge_pages.sys, "orig_argv", COMMAND)
    monkeypatch.setattr(huge_pages, "glibc_has_the_tunable", lambda: True)
    monkeypatch.setattr(huge_pages, "on_request_only", lambda: True)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(huge_pages.RESTARTED_MARKER, raising=False)
    return execve


def test_serve_prod_runs_itself_again_with_the_same_arguments_and_the_tunable(restart, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    huge_pages.restart_with_huge_pages()
    [(path, argv, env)] = restart.calls
    assert path == sys.executable and argv == COMMAND  # interpreter flags and all
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env[huge_pages.RESTARTED_MARKER] == "1"


def test_it_tries_once_even_if_the_tunable_did_not_survive_the_restart(restart, monkeypatch):
    # glibc drops tunables in secure mode (an interpreter with file capabilities): without
    # the marker the restarted command would restart again, forever.
    monkeypatch.setenv(huge_pages.RESTARTED_MARKER, "1")
    huge_pages.restart_with_huge_pages()
    assert restart.calls == []


def test_the_operators_choice_of_allocator_is_kept(restart, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    huge_pages.restart_with_huge_pages()
    assert restart.calls == []


def test_another_program_calling_the_command_is_not_replaced(restart, monkeypatch):
    monkeypatch.setattr(huge_pages.sys, "orig_argv", [sys.executable, "-m", "pytest", "tests"])
    huge_pages.restart_with_huge_pages()
    assert restart.calls == []


@pytest.mark.parametrize("missing", ["glibc_has_the_tunable", "on_request_only"])
def test_nothing_is_restarted_where_huge_pages_would_not_come(restart, monkeypatch, missing):
    monkeypatch.setattr(huge_pages, missing, lambda: False)
    huge_pages.restart_with_huge_pages()
    assert restart.calls == []


def test_a_failed_restart_serves_with_the_default_allocator(monkeypatch, restart):
    failing = Exec(PermissionError("noexec"))
    monkeypatch.setattr(huge_pages.os, "execve", failing)
    huge_pages.restart_with_huge_pages()  # returns: the caller goes on serving
    assert len(failing.calls) == 1


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


@pytest.mark.skipif(not APPLIES_HERE, reason="needs glibc >= 2.35 and transparent huge pages on request")
def test_with_the_tunable_a_verification_faults_its_32_mib_in_by_huge_pages():
    pages = 32 * 1024 * 1024 // resource.getpagesize()
    assert _faults_of_a_verification(None) > 0.9 * pages  # 4 KiB at a time, zero-filled by the kernel
    assert _faults_of_a_verification("glibc.malloc.hugetlb=1") < pages // 4


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
        for pid in (server.pid, workers[0]):
            try:
                assert _environ(pid).get("GLIBC_TUNABLES") == expected, log_tail(log)
            except FileNotFoundError:
                pytest.fail(f"process {pid} of `enrs serve --prod` is gone:\n{log_tail(log)}")
        if expected == "glibc.malloc.hugetlb=1":
            assert "grandes pages mémoire pour les hachages Argon2id" in log.read_text()
    finally:
        end_process(server)
