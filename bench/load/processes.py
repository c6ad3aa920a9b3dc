"""The served portal (`enrs serve --prod`, gunicorn) and `enrs worker` as processes of
their own, and what `ps` would tell about them: resident memory and CPU time, read from
/proc (Linux) so that sampling every second costs nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.load.setup import REPO, enrs_command, process_env

READY_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
    except OSError:
        pass
    return sorted(set(found))


def rss_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB: the resident set now, and its peak over the process's life."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if line.startswith(("VmRSS", "VmHWM")))
    except OSError:
        return None
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def pss_kib(pid: int) -> int | None:
    """Proportional set size in KiB: the pages only this process uses, plus its share of
    those it shares (the Python interpreter, libcrypto, libpq... mapped by every worker).
    Summed over the workers it is the memory they take together, which RSS overstates."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _stat_cpu_seconds(path: str) -> float | None:
    """User + system CPU time from a /proc stat file (a process's or one thread's)."""
    try:
        with open(path) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads)."""
    return _stat_cpu_seconds(f"/proc/{pid}/stat")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time of each live thread of a process, by thread id. Threads that ended are
    not there: in a web worker, those are Argon2's lane threads (libargon2 starts one per
    lane for each slice of a hash), so the process's CPU minus its live threads' is the
    hash's lanes, and the live threads' is the portal's own (requests, mail, gunicorn).
    Lanes still running when it is read count as the portal's: a bias of at most the
    slice in progress, a few milliseconds per window. With ENRS_ARGON2_THREADS=1 (the
    default) no lane thread is started: the hash is in the request's thread."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    found = {int(task): _stat_cpu_seconds(f"/proc/{pid}/task/{task}/stat") for task in tasks}
    return {tid: value for tid, value in found.items() if value is not None}


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds of all cores, wall seconds × cores) since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user … steal; guest time is already counted in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class Served:
    """`enrs serve --prod` and `enrs worker`, logs in `log_dir`."""

    env: dict[str, str]
    port: int
    workers: int
    threads: int
    log_dir: Path
    server: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    _logs: list = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.env["ENRS_BASE_URL"]

    @property
    def server_log(self) -> Path:
        return self.log_dir / "portal.log"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = process_env(self.env)
        server_log = self.server_log.open("w")
        worker_log = (self.log_dir / "worker.log").open("w")
        self._logs = [server_log, worker_log]
        self.server = subprocess.Popen(
            [*enrs_command(), "serve", "--prod", "--port", str(self.port), "--workers", str(self.workers),
             "--threads", str(self.threads)],
            env=env, cwd=REPO, stdout=server_log, stderr=subprocess.STDOUT)
        self.worker = subprocess.Popen([*enrs_command(), "worker"], env=env, cwd=REPO, stdout=worker_log,
                                       stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            for name, process in (("enrs serve", self.server), ("enrs worker", self.worker)):
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}); see {self.log_dir}")
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as response:
                    if response.status == 200 and len(self.worker_pids()) == self.workers:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"portal not ready after {READY_TIMEOUT:.0f} s ({last}); see {self.log_dir}")

    def warm_up(self) -> None:
        """One request per worker process at least, so that none pays its imports and
        first-time caches inside a measured window."""
        for _ in range(self.workers * 4):
            for path in ("/login", "/.well-known/openid-configuration", "/oauth/jwks"):
                with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
                    response.read()

    def worker_pids(self) -> list[int]:
        return children(self.server.pid) if self.server else []

    def huge_pages(self) -> bool:
        """Whether the workers run with glibc's huge pages for large blocks (their
        environment, as `enrs serve --prod` started itself again)."""
        for pid in self.worker_pids():
            try:
                return b"glibc.malloc.hugetlb=1" in Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
        return False

    def argon2_builds(self) -> list[str]:
        """The build of libargon2 each worker has loaded, read from its memory map: the
        wheel when it comes from bench/.cache (bench/load/argon2_rate.py), otherwise the
        installed one."""
        from bench.load.argon2_rate import CACHE, installed_build

        builds = set()
        for pid in self.worker_pids():
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            # address perms offset dev inode path; the path may hold spaces, or end in
            # " (deleted)" when the library was reinstalled under a running worker.
            paths = {fields[5].removesuffix(" (deleted)") for line in maps.splitlines()
                     if "_argon2_cffi_bindings" in line and len(fields := line.split(maxsplit=5)) == 6}
            builds.update("wheel" if Path(path).is_relative_to(CACHE) else installed_build() for path in paths)
        return sorted(builds) or ["unknown"]

    def our_pids(self) -> list[int]:
        pids = [os.getpid()]
        for process in (self.server, self.worker):
            if process is not None:
                pids.append(process.pid)
        return pids + self.worker_pids()

    def stop(self) -> None:
        for process in (self.worker, self.server):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.worker, self.server):
            if process is not None:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        for log in self._logs:
            log.close()
        self._logs = []
