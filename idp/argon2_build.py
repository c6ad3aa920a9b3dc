"""The build of libargon2 the portal hashes with: made for the server's CPU, and checked.

argon2-cffi-bindings' wheels on PyPI compile libargon2 for the x86-64 baseline, whose only
vector instructions are SSE2. Compiled for x86-64-v3 (AVX2, the level of every x86 server
CPU since 2015 and the baseline of RHEL 10), the portal's Argon2id verification takes
~100 ms of CPU instead of ~150–200 (`python -m bench argon2_build`, docs/deploy-sizing.md).
The hash is the same function with the same parameters, so a guess costs an attacker what
it did; only the portal's own cost goes down: more logins per core, a shorter password step.

`make install` runs `python -m idp.argon2_build`: on an x86-64 CPU with the v3 level, it
builds the pinned release of argon2-cffi-bindings from its source with
`-march=x86-64-v3`, tagged with a local version label, 26.2.0+x86.64.v3 (PEP 440: the pin
==26.2.0 still holds). The wheel it builds is installed only once its libargon2, loaded in
a process of its own, gives the known answers (`KNOWN_ANSWERS`). Elsewhere, or with
`--build wheel`, PyPI's wheel stays or is put back. A build that fails (no compiler, no
network) leaves the wheel in place and says so (exit status 3): the portal works either
way, only slower.

A library built for v3 would die of an illegal instruction on an older CPU at its first
hash, in the middle of a login; one miscompiled would store hashes no other build can
verify. create_app checks both before anything hashes (`require_cpu_support`,
`self_test`), and refuses to start with a message saying how to rebuild.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

from portal.config import ConfigError

DISTRIBUTION = "argon2-cffi-bindings"
MODULE = "_argon2_cffi_bindings"
X86_64_V3 = "x86-64-v3"
WHEEL = "wheel"
CHOICES = ("auto", X86_64_V3, WHEEL)
# The local version label of a build (PEP 440 normalises "-" to "."), by the level it targets.
LABELS = {X86_64_V3: "x86.64.v3"}
# What /proc/cpuinfo lists for the x86-64-v3 level of the psABI, with the v2 level under it
# (SSE3 shows as "pni", LZCNT as "abm"; the kernel hides OSXSAVE, and shows "avx" only when
# the OS saves the AVX state, so "xsave" and "avx" stand for it).
LEVEL_FLAGS = {
    X86_64_V3: frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",
                          "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
}
# -march alone decides which of libargon2's vector code is compiled (opt.c: SSE2, AVX2 or
# AVX-512 by the compiler's predefined macros): nothing inherited may add to it.
COMPILER_FLAGS = {X86_64_V3: "-march=x86-64-v3 -mtune=generic"}
# What the build must not inherit: compiler and CMake settings (CMake takes flags inside CC,
# and a toolchain file from the environment), and the bindings' own switches (a system
# libargon2, the portable C code).
_BUILD_VARIABLES = ("CC", "CXX", "CFLAGS", "CPPFLAGS", "LDFLAGS", "PYTHONPATH")
_BUILD_PREFIXES = ("CMAKE_", "SKBUILD_", "ARGON2_CFFI_", "SETUPTOOLS_SCM_")
# RFC 9106 §5.3's Argon2id vector (t=3, m=32 KiB, p=4, with a secret and associated data),
# and libargon2's portable reference code (ref.c) with the portal's parameters (t=8, m=32 MiB,
# p=4): the first is cheap enough for every start, the second covers the portal's shape.
RFC_9106 = dict(password=b"\x01" * 32, salt=b"\x02" * 16, secret=b"\x03" * 8, ad=b"\x04" * 12,
                time_cost=3, memory_kib=32, lanes=4,
                tag="0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659")
PORTAL_SHAPE = dict(password=b"correct horse battery", salt=b"\x01" * 16, secret=b"", ad=b"",
                    time_cost=8, memory_kib=32 * 1024, lanes=4,
                    tag="ededb8ae4f35ca2668ef8ddef38eef617833e77bc542346ae44eea06554df075")
KNOWN_ANSWERS = (RFC_9106, PORTAL_SHAPE)
BUILD_CONSTRAINTS = Path(__file__).with_name("argon2_build_constraints.txt")  # the build tools' versions
_TIMEOUT = 900  # seconds for one pip step: a source build on a slow machine


class UnsupportedCPU(ConfigError):
    """The installed libargon2 was built for instructions this CPU does not have."""


class WrongHashes(ConfigError):
    """The installed libargon2 does not give Argon2id's known answers."""


class BuildFailed(Exception):
    """The build could not be made or did not pass its checks; the wheel stays."""


# -- the CPU ---------------------------------------------------------------------------------

def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in a /proc/cpuinfo text (every core has the same)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def this_cpu_flags() -> frozenset[str] | None:
    """None when /proc/cpuinfo cannot be read (not Linux): nothing is known of the CPU."""
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace"))
    except OSError:
        return None


def runs(level: str, flags: frozenset[str] | None) -> bool:
    return flags is not None and LEVEL_FLAGS[level] <= flags


def best_level(machine: str, flags: frozenset[str] | None) -> str:
    """What `auto` builds on this machine: x86-64-v3 where the CPU has it, else PyPI's wheel
    (libargon2 has vector code for x86 only; elsewhere it compiles its portable C)."""
    if machine.lower() in ("x86_64", "amd64") and runs(X86_64_V3, flags):
        return X86_64_V3
    return WHEEL


# -- the installed build ---------------------------------------------------------------------

def built_for(version: str) -> str:
    """The level a version of the bindings was built for: its local label, or `wheel` for a
    public version (PyPI's wheel, or a build this module did not make)."""
    local = version.partition("+")[2]
    for level, label in LABELS.items():
        if local == label:
            return level
    return WHEEL


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


@lru_cache(maxsize=1)
def installed_version() -> str:
    """The version of the bindings Python would load: read from the metadata beside the
    module (found without loading it), the one that lists the module's files, not from
    the first metadata on the path."""
    spec = importlib.util.find_spec(MODULE)
    if spec is not None and spec.origin:
        beside = str(Path(spec.origin).resolve().parent.parent)
        found = [distribution for distribution in importlib.metadata.distributions(path=[beside])
                 if _canonical(distribution.metadata["Name"] or "") == DISTRIBUTION]
        owning = [distribution for distribution in found
                  if any(str(file).replace("\\", "/") == f"{MODULE}/__init__.py" for file in distribution.files or ())]
        if owning or found:
            return (owning or found)[0].version
    return importlib.metadata.version(DISTRIBUTION)


_THIS_CPU: frozenset[str] = frozenset({"read /proc/cpuinfo"})  # a sentinel, compared by identity


def require_cpu_support(version: str | None = None, flags: frozenset[str] | None = _THIS_CPU) -> str:
    """The level the installed libargon2 was built for, once it is known that this CPU runs
    it (flags: this CPU's by default; None, unknown)."""
    version = version if version is not None else installed_version()
    if flags is _THIS_CPU:
        flags = this_cpu_flags()
    level = built_for(version)
    if level == WHEEL or runs(level, flags):
        return level
    remedy = ("run `python -m idp.argon2_build` on this machine, or `python -m idp.argon2_build --build wheel` "
              "for PyPI's portable build")
    if flags is None:
        raise UnsupportedCPU(f"libargon2 (argon2-cffi-bindings {version}) was built for {level}, and /proc/cpuinfo "
                             f"cannot be read to check that this CPU has it: {remedy}")
    raise UnsupportedCPU(f"libargon2 (argon2-cffi-bindings {version}) was built for {level}, which this CPU lacks "
                         f"({', '.join(sorted(LEVEL_FLAGS[level] - flags))}): {remedy}")


def argon2id_tag(*, password: bytes, salt: bytes, secret: bytes, ad: bytes, time_cost: int, memory_kib: int,
                 lanes: int, threads: int = 1, length: int = 32) -> bytes:
    """Argon2id computed the portal's way (idp/argon2id.py), with RFC 9106's secret and
    associated data, which the RFC's vector has."""
    from argon2.exceptions import HashingError

    from idp.argon2id import argon2id_raw

    try:
        return argon2id_raw(password, salt, time_cost=time_cost, memory_kib=memory_kib, lanes=lanes,
                            threads=threads, length=length, key=secret, data=ad)
    except HashingError as exc:
        raise WrongHashes(f"libargon2 failed: {exc}") from None


def self_test(answers: tuple[dict, ...] = (RFC_9106,)) -> None:
    """The installed libargon2 gives Argon2id's known answers (RFC 9106's vector by default:
    32 KiB, well under a millisecond)."""
    for answer in answers:
        parameters = {key: value for key, value in answer.items() if key != "tag"}
        if argon2id_tag(**parameters).hex() != answer["tag"]:
            raise WrongHashes(f"libargon2 (argon2-cffi-bindings {installed_version()}) does not give Argon2id's "
                              f"known answer (t={answer['time_cost']}, m={answer['memory_kib']} KiB): "
                              f"run `python -m idp.argon2_build --build wheel`")


# -- building --------------------------------------------------------------------------------

def _run(*command: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """A command, its whole process group killed if it outlives the timeout: pip's timeout
    alone would leave the compiler and CMake it started running."""
    with subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True) as process:
        try:
            status = process.wait(timeout=_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    if status != 0:
        raise subprocess.CalledProcessError(status, command)


def _pip_install(*arguments: str) -> None:
    # --force-reinstall: a v3 build and the wheel have the same public version, which pip
    # would otherwise call satisfied.
    _run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", *arguments)


def build_environment(level: str, release: str, inherited: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in inherited.items()
           if key not in _BUILD_VARIABLES and not key.startswith(_BUILD_PREFIXES)}
    env.update({"CFLAGS": COMPILER_FLAGS[level], "ARGON2_CFFI_USE_SSE2": "1",
                "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_ARGON2_CFFI_BINDINGS": f"{release}+{LABELS[level]}"})
    return env


def _unpack_source(archive: Path, into: Path) -> Path:
    if not hasattr(tarfile, "data_filter"):  # Python before 3.11.4: no safe extraction
        raise BuildFailed("this Python cannot unpack an archive safely (3.11.4 or later is needed)")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    folders = [path for path in into.iterdir() if path.is_dir()]
    if len(folders) != 1:
        raise BuildFailed(f"unexpected source archive: {sorted(path.name for path in into.iterdir())}")
    return folders[0]


def _check_in_a_process_of_its_own(unpacked: Path) -> None:
    """The built libargon2, loaded first on a fresh interpreter's path, gives the known
    answers. -P and the folder as working directory: nothing else on the path comes first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(unpacked), str(Path(__file__).resolve().parents[1])])}
    check = ("from idp import argon2_build as b; b.self_test(b.KNOWN_ANSWERS); "
             "import _argon2_cffi_bindings as m; print(m.__file__)")
    result = subprocess.run([sys.executable, "-P", "-c", check], env=env, cwd=unpacked, capture_output=True,
                            text=True, timeout=_TIMEOUT)
    if result.returncode != 0:
        raise BuildFailed(f"the build could not be loaded, or does not give Argon2id's known answers: "
                          f"{result.stderr.strip()[-300:]}")
    if not Path(result.stdout.strip()).resolve().is_relative_to(unpacked.resolve()):
        raise BuildFailed("the check loaded another libargon2 than the build's")


def build(level: str, release: str, keep_in: Path) -> Path:
    """A wheel of argon2-cffi-bindings `release` built from its source for `level`, checked,
    and kept in `keep_in` (which pip then records as where the package came from)."""
    # Scratch space beside keep_in, not in /tmp: a hardened server mounts /tmp noexec, where
    # neither the check could load the library nor pip's build run a downloaded CMake.
    keep_in.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=keep_in) as scratch:
        folder = Path(scratch)
        _run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", DISTRIBUTION,
             "--dest", str(folder / "source"), f"{DISTRIBUTION}=={release}")
        archives = list((folder / "source").glob("*.tar.gz")) if (folder / "source").is_dir() else []
        if len(archives) != 1:
            raise BuildFailed(f"no source archive of {DISTRIBUTION} {release}")
        source = _unpack_source(archives[0], folder / "unpacked")
        # A wheel from the unpacked folder, not from the archive: pip checks that an archive's
        # name and the version it builds agree, and the label is the point.
        _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--build-constraint", str(BUILD_CONSTRAINTS),
             "--wheel-dir", str(folder / "wheel"), str(source),
             env={**build_environment(level, release, dict(os.environ)), "TMPDIR": str(folder)})
        label = f"{release}+{LABELS[level]}"
        wheels = [path for path in (folder / "wheel").glob("*.whl") if f"-{label}-" in path.name]
        if len(wheels) != 1:
            raise BuildFailed(f"the build is not labelled {label}: {sorted(p.name for p in (folder / 'wheel').iterdir())}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                wheel.extractall(folder / "check")
        except zipfile.BadZipFile as exc:
            raise BuildFailed(f"the built wheel cannot be read: {exc}") from None
        _check_in_a_process_of_its_own(folder / "check")
        return Path(shutil.copy2(wheels[0], keep_in / wheels[0].name))


def _version_in_a_new_process() -> str:
    """What a new interpreter of this environment loads now (this one has cached the old)."""
    result = subprocess.run([sys.executable, "-c", "from idp.argon2_build import installed_version as v; print(v())"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60,
                            env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"})
    if result.returncode != 0 or not result.stdout.strip():
        raise BuildFailed(f"the installed version cannot be read: {result.stderr.strip()[-300:]}")
    return result.stdout.strip()


def install(choice: str, machine: str, flags: frozenset[str] | None, version: str) -> tuple[int, str]:
    """Make the installed bindings the build `choice` asks for on this machine: an exit
    status (0 done, 3 the build failed and the wheel stays) and what to tell."""
    wanted = best_level(machine, flags) if choice == "auto" else choice
    if wanted != WHEEL and not runs(wanted, flags):
        raise UnsupportedCPU(f"this CPU cannot run a {wanted} build")
    release = version.partition("+")[0]
    if built_for(version) == wanted:
        return 0, f"argon2-cffi-bindings {version} : déjà la version {_name(wanted)}."
    if wanted == WHEEL:
        _pip_install("--only-binary", DISTRIBUTION, f"{DISTRIBUTION}=={release}")
        now = _version_in_a_new_process()
        if built_for(now) != WHEEL:  # an error, not a warning: this CPU may not run what stays
            raise BuildFailed(f"PyPI's wheel did not take: {now} is still installed")
        return 0, f"argon2-cffi-bindings {now} : la version de PyPI."
    retry = f"Pour réessayer : {sys.executable} -m idp.argon2_build"
    try:
        wheel = build(wanted, release, Path(sys.prefix) / "enrs-wheels")
        _pip_install(str(wheel))
        now = _version_in_a_new_process()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, tarfile.TarError, BuildFailed) as exc:
        return 3, (f"Avertissement : libargon2 n'a pas pu être compilée pour {wanted} ({exc}). Le portail garde "
                   f"la version de PyPI : mêmes empreintes, calculées plus lentement. {retry}")
    if built_for(now) != wanted:
        return 3, f"Avertissement : la version installée est {now}, pas celle compilée pour {wanted}. {retry}"
    return 0, f"argon2-cffi-bindings {now} : compilée pour {wanted}."


def _name(level: str) -> str:
    return "de PyPI" if level == WHEEL else level


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idp.argon2_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", choices=CHOICES, default="auto",
                        help="auto (default): x86-64-v3 where the CPU has it, else PyPI's wheel")
    parser.add_argument("--show", action="store_true", help="print the installed build and exit")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless the installed build is the best for this CPU and gives the known answers")
    arguments = parser.parse_args(argv)
    version = installed_version()
    if arguments.check:
        best = best_level(platform.machine(), this_cpu_flags())
        try:
            require_cpu_support(version)
            self_test(KNOWN_ANSWERS)
        except ConfigError as exc:
            print(f"Erreur : {exc}", file=sys.stderr)
            return 1
        if built_for(version) != best:
            print(f"Erreur : argon2-cffi-bindings {version} est la version {_name(built_for(version))}, "
                  f"la meilleure pour ce processeur est {_name(best)}.", file=sys.stderr)
            return 1
        print(f"argon2-cffi-bindings {version} : la meilleure version pour ce processeur, réponses connues exactes.")
        return 0
    if arguments.show:
        best = best_level(platform.machine(), this_cpu_flags())
        print(f"argon2-cffi-bindings {version} : version {_name(built_for(version))} ; "
              f"la meilleure pour ce processeur : {_name(best)}.")
        return 0
    try:
        status, said = install(arguments.build, platform.machine(), this_cpu_flags(), version)
    except UnsupportedCPU as exc:
        print(f"Erreur : {exc}", file=sys.stderr)
        return 2
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, BuildFailed) as exc:
        print(f"Erreur : la version de PyPI n'a pas pu être remise ({exc}).", file=sys.stderr)
        return 1
    print(said, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
