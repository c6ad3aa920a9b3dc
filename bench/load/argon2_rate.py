"""Argon2id verifications per second with the portal's parameters, on every core: N
processes (one per core) start together and count for the same seconds; the sum is the
machine's rate, what a login's password check is bounded by.

    python -m bench.load.argon2_rate START_AT SECONDS [portal]   (one process: prints its rate)

By default the processes hash as any program using argon2-cffi does, with PyPI's wheel of
its bindings (put first on their path, whatever build the portal runs): the bare rate H.
With huge_pages=True they run with the glibc tunable `enrs serve --prod` gives the portal's
workers (portal/huge_pages.py); with portal_hasher=True they hash as the portal does, each
hash's lanes computed by the calling thread (idp/argon2id.py); with pypi_wheel=False they
use the installed bindings, built for this CPU by `make install` (idp/argon2_build.py).
With all three, the rate is the workers' own: beside the bare one, it shows how much a
login costs besides its hash.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from bench.load.setup import REPO
from idp.argon2_build import DISTRIBUTION, built_for, installed_version
from portal.huge_pages import TUNABLE

CACHE = (Path(__file__).resolve().parents[1] / ".cache").resolve()


def pypi_wheel() -> Path:
    """A folder holding PyPI's wheel of the pinned argon2-cffi-bindings, unpacked: first on
    a process's PYTHONPATH, its libargon2 is the one argon2-cffi loads. Downloaded once."""
    release = installed_version().partition("+")[0]
    folder = CACHE / f"{DISTRIBUTION}-{release}-pypi"
    if not (folder / "_argon2_cffi_bindings").is_dir():
        with tempfile.TemporaryDirectory() as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                            "--dest", download, f"{DISTRIBUTION}=={release}"], check=True)
            CACHE.mkdir(exist_ok=True)
            unpacked = Path(tempfile.mkdtemp(prefix=folder.name, dir=CACHE))  # renamed whole: never half there
            with zipfile.ZipFile(next(Path(download).glob("*.whl"))) as wheel:
                wheel.extractall(unpacked)
            try:
                unpacked.rename(folder)
            except OSError:  # another benchmark unpacked it meanwhile
                if not (folder / "_argon2_cffi_bindings").is_dir():
                    raise
    return folder


def with_pypi_wheel(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(pypi_wheel()), env.get("PYTHONPATH")]))}


def machine_rate(processes: int, seconds: float = 5.0, huge_pages: bool = False,
                 portal_hasher: bool = False, pypi_wheel: bool = True) -> dict[str, object]:
    start_at = time.time() + 3.0  # every process has imported argon2 and hashed once by then
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if huge_pages:
        env["GLIBC_TUNABLES"] = f"{TUNABLE}=1"
    if pypi_wheel:
        env = with_pypi_wheel(env)
    elif "PYTHONPATH" in env:  # a variant's wheel left on the path must not stand in for the build
        cache = str(CACHE.resolve())
        env["PYTHONPATH"] = os.pathsep.join(entry for entry in env["PYTHONPATH"].split(os.pathsep)
                                            if not os.path.realpath(entry).startswith(cache))
    command = [sys.executable, "-m", "bench.load.argon2_rate", str(start_at), str(seconds),
               *(["portal"] if portal_hasher else [])]
    children = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(processes)]
    rates, cpu, builds = [], [], set()
    for child in children:
        output, _ = child.communicate(timeout=seconds + 60)
        if child.returncode != 0:
            raise RuntimeError(f"argon2 rate process failed ({child.returncode})")
        rate, cpu_per_hash, build = output.split()
        rate, cpu_per_hash = float(rate), float(cpu_per_hash)
        builds.add(build)
        rates.append(rate)
        cpu.append(cpu_per_hash)
    # CPU seconds per verification (all of argon2's lane threads): what a login costs
    # whatever else the machine runs, unlike the rate, which other processes lower.
    return {"processes": processes, "per_process": [round(r, 3) for r in rates], "total": round(sum(rates), 3),
            "cpu_seconds_per_hash": round(sum(cpu) / len(cpu), 4),
            "argon2_build": builds.pop() if len(builds) == 1 else sorted(builds)}


def _loaded_build() -> str:
    """The build of the libargon2 this process loaded, by where its module lies."""
    import _argon2_cffi_bindings

    if Path(_argon2_cffi_bindings.__file__).resolve().is_relative_to(CACHE.resolve()):
        return "wheel"
    return installed_build()


def installed_build() -> str:
    return built_for(installed_version())


def _one(start_at: float, seconds: float, as_portal: bool) -> tuple[float, float, str]:
    from bench.login import hash_rate

    hash_rate(0.01, as_portal)  # imports and a first hash outside the window
    time.sleep(max(0.0, start_at - time.time()))
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    rate = hash_rate(seconds, as_portal)
    hashes = rate * (time.perf_counter() - wall_started)
    return rate, (time.process_time() - cpu_started) / max(hashes, 1), _loaded_build()


if __name__ == "__main__":
    print(*_one(float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:] == ["portal"]))
