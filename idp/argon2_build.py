"""The build of libargon2 the portal hashes with: made for the server's CPU, and checked.

argon2-cffi-bindings' wheels on PyPI compile libargon2 for the x86-64 baseline, whose only
vector instructions are SSE2. Compiled for x86-64-v3 (AVX2, the level every x86 server CPU
since 2015 has, and the baseline of RHEL 10), the same Argon2id hash takes 0.6–0.7 of the
CPU. The hash is the same function with the same parameters, so a guess costs an attacker
what it did; only the portal's own cost goes down: more logins per core, and a shorter
password step (`python -m bench argon2_build`, docs/deploy-sizing.md).

`make install` runs `python -m idp.argon2_build`: on an x86-64 CPU with the v3 level, it
rebuilds the pinned release of argon2-cffi-bindings from its source with
`-march=x86-64-v3` and tags it with a local version label, 26.2.0+x86.64.v3 (PEP 440: the
pin ==26.2.0 still holds). Elsewhere, or with `--build wheel`, it keeps or puts back
PyPI's wheel. A build that fails (no compiler, no network) leaves the wheel in place and
says so: the portal works either way, only slower.

A library built for v3 would die of an illegal instruction on an older CPU, at its first
hash, in the middle of a login. The app refuses to start instead (`require_cpu_support`,
called by create_app), with a message saying how to rebuild.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

from portal.config import ConfigError

DISTRIBUTION = "argon2-cffi-bindings"
X86_64_V3 = "x86-64-v3"
# The local version label of the build (PEP 440 normalises "-" to "."), by the level it targets.
LABELS = {X86_64_V3: "x86.64.v3"}
# What /proc/cpuinfo lists for the x86-64-v3 level (the psABI's levels; LZCNT shows as "abm",
# OSXSAVE as "xsave"), with the v2 level it includes.
LEVEL_FLAGS = {
    X86_64_V3: frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3",
                          "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
}
COMPILER_FLAGS = {X86_64_V3: "-march=x86-64-v3"}
WHEEL = "wheel"
CHOICES = ("auto", X86_64_V3, WHEEL)
_NAMES = {WHEEL: "de PyPI"}


class UnsupportedCPU(ConfigError):
    """The installed libargon2 was built for instructions this CPU does not have."""


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in a /proc/cpuinfo text (every core has the same)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def this_cpu_flags() -> frozenset[str]:
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace"))
    except OSError:
        return frozenset()


def runs(level: str, flags: frozenset[str]) -> bool:
    return LEVEL_FLAGS[level] <= flags


def best_level(machine: str, flags: frozenset[str]) -> str:
    """What `auto` builds on this machine: x86-64-v3 where the CPU has it, else PyPI's wheel
    (libargon2 has vector code for x86 only; elsewhere it compiles its portable C)."""
    if machine.lower() in ("x86_64", "amd64") and runs(X86_64_V3, flags):
        return X86_64_V3
    return WHEEL


def built_for(version: str) -> str:
    """The level an installed version of the bindings was built for: its local label, or
    `wheel` for a public version (PyPI's wheel, or a build this module did not make)."""
    local = version.partition("+")[2]
    for level, label in LABELS.items():
        if local == label:
            return level
    return WHEEL


@lru_cache(maxsize=1)
def installed_version() -> str:
    return importlib.metadata.version(DISTRIBUTION)


def require_cpu_support(version: str | None = None, flags: frozenset[str] | None = None) -> str:
    """The level the installed libargon2 was built for, once it is known that this CPU runs it."""
    level = built_for(version if version is not None else installed_version())
    if level != WHEEL and not runs(level, flags if flags is not None else this_cpu_flags()):
        missing = sorted(LEVEL_FLAGS[level] - (flags if flags is not None else this_cpu_flags()))
        raise UnsupportedCPU(
            f"libargon2 (argon2-cffi-bindings {version or installed_version()}) was built for {level}, "
            f"which this CPU lacks ({', '.join(missing)}): run `python -m idp.argon2_build` on this "
            f"machine, or `--build wheel` for PyPI's portable build")
    return level


def _pip(*arguments: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
                    *arguments], check=True, env=env)


def _build(level: str, release: str) -> None:
    """argon2-cffi-bindings `release` from its source distribution, for `level`."""
    with tempfile.TemporaryDirectory(prefix="enrs-argon2-") as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", folder, f"{DISTRIBUTION}=={release}"], check=True)
        archive = next(Path(folder).glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        source = next(path for path in Path(folder).iterdir() if path.is_dir())
        # Installed from a folder, not from the archive: pip checks that an archive's name and
        # the version it builds agree, and the label is the point.
        env = {**os.environ,
               "CFLAGS": f"{os.environ.get('CFLAGS', '')} {COMPILER_FLAGS[level]}".strip(),
               "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_ARGON2_CFFI_BINDINGS": f"{release}+{LABELS[level]}"}
        _pip(str(source), env=env)


def install(choice: str, machine: str, flags: frozenset[str], version: str) -> str:
    """Make the installed bindings the build `choice` asks for on this machine; what it says."""
    wanted = best_level(machine, flags) if choice == "auto" else choice
    if wanted != WHEEL and not runs(wanted, flags):
        raise UnsupportedCPU(f"this CPU cannot run a {wanted} build")
    release = version.partition("+")[0]
    if built_for(version) == wanted:
        return f"argon2-cffi-bindings {version} : déjà la version {_NAMES.get(wanted, wanted)}."
    if wanted == WHEEL:
        _pip("--only-binary", DISTRIBUTION, f"{DISTRIBUTION}=={release}")
        return f"argon2-cffi-bindings {release} : la version de PyPI."
    try:
        _build(wanted, release)
    except (subprocess.CalledProcessError, OSError, StopIteration, tarfile.TarError) as exc:
        return (f"Avertissement : libargon2 n'a pas pu être compilée pour {wanted} ({exc}). Le portail "
                f"garde la version de PyPI : mêmes empreintes, calculées plus lentement.")
    return f"argon2-cffi-bindings {release} : compilée pour {wanted}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idp.argon2_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", choices=CHOICES, default="auto",
                        help="auto (default): x86-64-v3 where the CPU has it, else PyPI's wheel")
    parser.add_argument("--show", action="store_true", help="print the installed build and exit")
    arguments = parser.parse_args(argv)
    version = installed_version()
    if arguments.show:
        level, best = built_for(version), best_level(platform.machine(), this_cpu_flags())
        print(f"argon2-cffi-bindings {version} : version {_NAMES.get(level, level)} ; "
              f"la meilleure pour ce processeur : {_NAMES.get(best, best)}.")
        return 0
    try:
        print(install(arguments.build, platform.machine(), this_cpu_flags(), version))
    except UnsupportedCPU as exc:
        print(f"Erreur : {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
