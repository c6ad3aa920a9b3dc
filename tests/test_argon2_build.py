"""libargon2 built for the server's CPU (idp/argon2_build.py): the same hashes whatever the
build, the build chosen from the CPU, made from a clean environment and checked before it
is installed, and a portal that refuses to start on a CPU its build cannot run (or with a
build that gives wrong hashes) rather than failing at the first login."""
from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from idp import argon2_build
from idp.argon2_build import X86_64_V3, BuildFailed, UnsupportedCPU, WrongHashes

# /proc/cpuinfo "flags" lines of real CPUs (trimmed of flags unrelated to the levels).
HASWELL = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
           "ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni pclmulqdq ssse3 fma "
           "cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm "
           "invpcid_single fsgsbase bmi1 avx2 smep bmi2 erms invpcid xsaveopt")
IVY_BRIDGE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
              "ht syscall nx rdtscp lm constant_tsc rep_good nopl pni pclmulqdq ssse3 cx16 sse4_1 sse4_2 popcnt "
              "aes xsave avx f16c rdrand lahf_lm fsgsbase smep erms xsaveopt")
# A virtual machine whose hypervisor shows AVX2 but hides BMI and MOVBE (seen on some clouds).
VM_WITHOUT_BMI = ("fpu sse sse2 pni ssse3 fma cx16 sse4_1 sse4_2 popcnt xsave avx f16c lahf_lm abm avx2")
EPYC = HASWELL + " sse4a misalignsse avx512f avx512dq avx512bw avx512vl"


def flags(line: str) -> frozenset[str]:
    return argon2_build.cpu_flags(f"processor\t: 0\nflags\t\t: {line}\nbogomips\t: 4000.00\n")


def test_the_v3_level_is_the_psabi_list_in_linux_names():
    assert argon2_build.LEVEL_FLAGS[X86_64_V3] == {
        "cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",  # x86-64-v2
        "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}


@pytest.mark.parametrize(("name", "line", "machine", "level"), [
    ("Haswell", HASWELL, "x86_64", X86_64_V3),
    ("AMD EPYC", EPYC, "x86_64", X86_64_V3),
    ("Windows' name for it", HASWELL, "AMD64", X86_64_V3),
    ("Ivy Bridge: no AVX2", IVY_BRIDGE, "x86_64", "wheel"),
    ("a VM hiding BMI and MOVBE", VM_WITHOUT_BMI, "x86_64", "wheel"),
    ("not x86", HASWELL, "aarch64", "wheel"),
])
def test_auto_builds_for_x86_64_v3_only_on_an_x86_64_cpu_that_has_all_of_it(name, line, machine, level):
    assert argon2_build.best_level(machine, flags(line)) == level


def test_the_cpu_flags_are_read_from_the_first_processor():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx2\n\nprocessor\t: 1\nflags\t\t: fpu sse avx2\n"
    assert argon2_build.cpu_flags(cpuinfo) == {"fpu", "sse", "avx2"}
    assert argon2_build.cpu_flags("processor\t: 0\n") == frozenset()
    assert argon2_build.best_level("x86_64", None) == "wheel"  # /proc/cpuinfo unreadable


def test_the_build_is_known_by_its_local_version_label():
    assert argon2_build.built_for("26.2.0+x86.64.v3") == X86_64_V3
    assert argon2_build.built_for("26.2.0") == "wheel"
    assert argon2_build.built_for("26.2.0+debian.1") == "wheel"


# -- what any build must give ------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 4])
def test_the_installed_libargon2_gives_the_rfc_9106_argon2id_test_vector(threads):
    answer = {key: value for key, value in argon2_build.RFC_9106.items() if key != "tag"}
    tag = argon2_build.argon2id_tag(**answer, threads=threads)
    assert tag.hex() == "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"


def test_the_installed_libargon2_gives_the_reference_hash_with_the_portal_parameters():
    # Computed by libargon2's portable reference code (ref.c), which uses no vector instruction.
    answer = {key: value for key, value in argon2_build.PORTAL_SHAPE.items() if key != "tag"}
    assert argon2_build.argon2id_tag(**answer).hex() == argon2_build.PORTAL_SHAPE["tag"]
    argon2_build.self_test(argon2_build.KNOWN_ANSWERS)


def test_a_libargon2_that_gives_a_wrong_answer_fails_the_self_test():
    wrong = {**argon2_build.RFC_9106, "tag": "00" * 32}
    with pytest.raises(WrongHashes, match="known answer"):
        argon2_build.self_test((wrong,))


def test_the_installed_version_is_not_the_first_metadata_on_the_path(monkeypatch, tmp_path):
    stale = tmp_path / "argon2_cffi_bindings-0.0.1.dist-info"
    stale.mkdir()
    (stale / "METADATA").write_text("Metadata-Version: 2.1\nName: argon2-cffi-bindings\nVersion: 0.0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    argon2_build.installed_version.cache_clear()
    try:
        from importlib.metadata import version

        assert version("argon2-cffi-bindings") == "0.0.1"  # what a naive lookup would say
        assert argon2_build.installed_version() != "0.0.1"
    finally:
        argon2_build.installed_version.cache_clear()


def test_the_installed_version_is_read_beside_the_module_python_loads():
    from importlib.metadata import distributions

    import _argon2_cffi_bindings

    site = Path(_argon2_cffi_bindings.__file__).resolve().parent.parent
    [beside] = [d for d in distributions(path=[str(site)]) if d.metadata["Name"] == "argon2-cffi-bindings"]
    argon2_build.installed_version.cache_clear()
    assert argon2_build.installed_version() == beside.version


# -- starting the portal -----------------------------------------------------------------------

def test_a_v3_build_on_a_cpu_without_avx2_is_refused_with_the_remedy():
    with pytest.raises(UnsupportedCPU) as refused:
        argon2_build.require_cpu_support("26.2.0+x86.64.v3", flags(IVY_BRIDGE))
    message = str(refused.value)
    assert "x86-64-v3" in message and "avx2, abm, bmi1, bmi2, fma, movbe" in message.replace("abm, avx2", "avx2, abm")
    assert "python -m idp.argon2_build" in message
    assert argon2_build.require_cpu_support("26.2.0+x86.64.v3", flags(HASWELL)) == X86_64_V3
    assert argon2_build.require_cpu_support("26.2.0", flags(IVY_BRIDGE)) == "wheel"


def test_a_v3_build_where_the_cpu_cannot_be_read_is_refused_saying_so():
    with pytest.raises(UnsupportedCPU, match="/proc/cpuinfo cannot be read"):
        argon2_build.require_cpu_support("26.2.0+x86.64.v3", None)
    assert argon2_build.require_cpu_support("26.2.0", None) == "wheel"


def test_the_portal_does_not_start_on_a_cpu_its_libargon2_cannot_run(app_env, monkeypatch):
    from portal.app import create_app
    from portal.config import ConfigError

    monkeypatch.setattr(argon2_build, "installed_version", lambda: "26.2.0+x86.64.v3")
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: flags(IVY_BRIDGE))
    hashed = []
    monkeypatch.setattr(argon2_build, "argon2id_tag", lambda **_: hashed.append("self test"))
    monkeypatch.setattr("idp.passwords.prepare_dummy_hash", lambda: hashed.append("dummy"))
    with pytest.raises(ConfigError, match="x86-64-v3"):
        create_app(app_env)
    assert hashed == []  # refused before the first hash, which would have been an illegal instruction


def test_the_portal_does_not_start_with_a_libargon2_that_gives_wrong_hashes(app_env, monkeypatch):
    from portal.app import create_app
    from portal.config import ConfigError

    monkeypatch.setattr(argon2_build, "argon2id_tag", lambda **_: b"\x00" * 32)
    stored = []
    monkeypatch.setattr("idp.passwords.prepare_dummy_hash", lambda: stored.append("dummy"))
    with pytest.raises(ConfigError, match="known answer"):
        create_app(app_env)
    assert stored == []


# -- installing --------------------------------------------------------------------------------

V3, OLD = flags(HASWELL), flags(IVY_BRIDGE)


def test_install_leaves_a_build_that_is_already_the_one_asked_for(monkeypatch):
    monkeypatch.setattr(argon2_build, "_run", _nothing_to_run)
    assert argon2_build.install("auto", "x86_64", V3, "26.2.0+x86.64.v3")[1].endswith("déjà la version x86-64-v3.")
    assert "déjà" in argon2_build.install("auto", "aarch64", V3, "26.2.0")[1]
    assert "déjà" in argon2_build.install("wheel", "x86_64", V3, "26.2.0")[1]


def test_a_wheel_that_did_not_take_is_an_error_not_a_warning(monkeypatch):
    monkeypatch.setattr(argon2_build, "_run", lambda *command, env=None: None)
    monkeypatch.setattr(argon2_build, "_version_in_a_new_process", lambda: "26.2.0+x86.64.v3")
    monkeypatch.setattr(argon2_build, "installed_version", lambda: "26.2.0+x86.64.v3")
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: OLD)
    assert argon2_build.main([]) == 1  # make stops: this CPU cannot run what stays


def test_the_version_a_new_process_reads_must_be_read(monkeypatch):
    monkeypatch.setattr(argon2_build.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "boom"))
    with pytest.raises(BuildFailed, match="cannot be read"):
        argon2_build._version_in_a_new_process()


def test_install_puts_the_wheel_back_by_force_when_asked_or_when_the_cpu_lost_v3(monkeypatch):
    commands = []
    monkeypatch.setattr(argon2_build, "_run", lambda *command, env=None: commands.append(command))
    monkeypatch.setattr(argon2_build, "_version_in_a_new_process", lambda: "26.2.0")
    assert argon2_build.install("wheel", "x86_64", V3, "26.2.0+x86.64.v3") == (
        0, "argon2-cffi-bindings 26.2.0 : la version de PyPI.")
    assert argon2_build.install("auto", "x86_64", OLD, "26.2.0+x86.64.v3")[0] == 0
    assert commands == [(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
                         "--only-binary", "argon2-cffi-bindings", "argon2-cffi-bindings==26.2.0")] * 2


def test_install_builds_the_pinned_release_checks_it_then_installs_it(monkeypatch, tmp_path):
    built = tmp_path / "argon2_cffi_bindings-26.2.0+x86.64.v3-cp311-abi3-linux_x86_64.whl"
    calls = []
    monkeypatch.setattr(argon2_build, "build", lambda level, release, keep_in: calls.append((level, release)) or built)
    monkeypatch.setattr(argon2_build, "_run", lambda *command, env=None: calls.append(command[-2:]))
    monkeypatch.setattr(argon2_build, "_version_in_a_new_process", lambda: "26.2.0+x86.64.v3")
    assert argon2_build.install("auto", "x86_64", V3, "26.2.0") == (
        0, "argon2-cffi-bindings 26.2.0+x86.64.v3 : compilée pour x86-64-v3.")
    assert calls == [(X86_64_V3, "26.2.0"), ("--force-reinstall", str(built))]


def test_a_failed_build_keeps_the_wheel_says_so_and_how_to_retry(monkeypatch):
    def fails(level, release, keep_in):
        raise subprocess.CalledProcessError(1, ["pip", "download"])

    monkeypatch.setattr(argon2_build, "build", fails)
    monkeypatch.setattr(argon2_build, "_run", _nothing_to_run)
    status, said = argon2_build.install("auto", "x86_64", V3, "26.2.0")
    assert status == 3
    assert said.startswith("Avertissement") and "version de PyPI" in said and "-m idp.argon2_build" in said


def test_a_build_that_did_not_take_is_not_called_done(monkeypatch, tmp_path):
    monkeypatch.setattr(argon2_build, "build", lambda level, release, keep_in: tmp_path / "x.whl")
    monkeypatch.setattr(argon2_build, "_run", lambda *command, env=None: None)
    monkeypatch.setattr(argon2_build, "_version_in_a_new_process", lambda: "26.2.0")
    status, said = argon2_build.install("auto", "x86_64", V3, "26.2.0")
    assert status == 3 and "26.2.0" in said and "Avertissement" in said


def test_asking_for_a_v3_build_on_a_cpu_without_it_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(argon2_build, "_run", _nothing_to_run)
    with pytest.raises(UnsupportedCPU):
        argon2_build.install(X86_64_V3, "x86_64", OLD, "26.2.0")
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: OLD)
    assert argon2_build.main(["--build", X86_64_V3]) == 2
    assert capsys.readouterr().err.startswith("Erreur : ")


def test_show_names_the_installed_build_and_the_best_for_this_cpu(monkeypatch, capsys):
    monkeypatch.setattr(argon2_build, "installed_version", lambda: "26.2.0")
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: V3)
    monkeypatch.setattr(argon2_build.platform, "machine", lambda: "x86_64")
    assert argon2_build.main(["--show"]) == 0
    assert capsys.readouterr().out.strip() == (
        "argon2-cffi-bindings 26.2.0 : version de PyPI ; la meilleure pour ce processeur : x86-64-v3.")


# -- the build itself, its commands and its environment ----------------------------------------

def test_the_build_environment_inherits_no_compiler_or_cmake_flags():
    inherited = {"PATH": "/usr/bin", "HOME": "/root", "CFLAGS": "-mavx512f", "CPPFLAGS": "-DX", "CMAKE_ARGS": "-DY=1",
                 "CC": "gcc -march=native", "CXX": "g++", "CMAKE_TOOLCHAIN_FILE": "/tmp/avx512.cmake",
                 "SKBUILD_CMAKE_ARGS": "-DZ=1", "ARGON2_CFFI_USE_SYSTEM": "1", "ARGON2_CFFI_USE_SSE2": "0",
                 "PYTHONPATH": "/elsewhere", "SETUPTOOLS_SCM_PRETEND_VERSION": "9"}
    env = argon2_build.build_environment(X86_64_V3, "26.2.0", inherited)
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "CFLAGS": "-march=x86-64-v3 -mtune=generic",
                   "ARGON2_CFFI_USE_SSE2": "1",
                   "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_ARGON2_CFFI_BINDINGS": "26.2.0+x86.64.v3"}


def _fake_pip(tmp_path: Path, label: str, checks: list):
    """pip download writes a source archive, pip wheel a wheel named with `label`; the
    check in a process of its own is recorded, not run."""
    def run(*command, env=None):
        checks.append((command[3], env, command))
        if command[3] == "download":
            dest = Path(command[command.index("--dest") + 1])
            dest.mkdir(parents=True)
            data = b"[project]\n"
            with tarfile.open(dest / "argon2_cffi_bindings-26.2.0.tar.gz", "w:gz") as tar:
                info = tarfile.TarInfo("argon2_cffi_bindings-26.2.0/pyproject.toml")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        elif command[3] == "wheel":
            wheel_dir = Path(command[command.index("--wheel-dir") + 1])
            wheel_dir.mkdir(parents=True)
            with zipfile.ZipFile(wheel_dir / f"argon2_cffi_bindings-{label}-cp311-abi3-linux_x86_64.whl", "w") as whl:
                whl.writestr("_argon2_cffi_bindings/__init__.py", "")
    return run


def test_the_build_downloads_the_source_builds_a_labelled_wheel_and_checks_it(monkeypatch, tmp_path):
    commands: list = []
    checked = []
    monkeypatch.setattr(argon2_build, "_run", _fake_pip(tmp_path, "26.2.0+x86.64.v3", commands))
    monkeypatch.setattr(argon2_build, "_check_in_a_process_of_its_own", lambda unpacked: checked.append(
        sorted(p.name for p in unpacked.iterdir())))
    monkeypatch.setenv("CFLAGS", "-mavx512f")
    kept = argon2_build.build(X86_64_V3, "26.2.0", tmp_path / "kept")
    assert kept == tmp_path / "kept" / "argon2_cffi_bindings-26.2.0+x86.64.v3-cp311-abi3-linux_x86_64.whl"
    assert kept.exists()
    assert checked == [["_argon2_cffi_bindings"]]
    (download, _, _), (wheel, env, command) = commands
    assert download == "download" and wheel == "wheel"
    assert env["CFLAGS"] == "-march=x86-64-v3 -mtune=generic"
    assert Path(env["TMPDIR"]).parent == tmp_path / "kept"  # not /tmp, which may be noexec
    # The build tools are pinned: the constraints name them all, with exact versions.
    constraints = Path(command[command.index("--build-constraint") + 1])
    pins = dict(line.split("==") for line in constraints.read_text().splitlines() if line and line[0] != "#")
    assert {"scikit-build-core", "setuptools-scm", "setuptools", "packaging"} <= pins.keys()
    assert all(version[0].isdigit() for version in pins.values())


def test_the_source_is_fetched_as_source_for_the_bindings_only(monkeypatch, tmp_path):
    seen = []

    def run(*command, env=None):
        seen.append(command)
        raise subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(argon2_build, "_run", run)
    with pytest.raises(subprocess.CalledProcessError):
        argon2_build.build(X86_64_V3, "26.2.0", tmp_path)
    command = seen[0]
    assert command[command.index("--no-binary") + 1] == "argon2-cffi-bindings"  # not :all:, which builds the build tools
    assert command[-1] == "argon2-cffi-bindings==26.2.0"


def test_a_wheel_without_the_label_is_not_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(argon2_build, "_run", _fake_pip(tmp_path, "26.2.0", []))
    monkeypatch.setattr(argon2_build, "_check_in_a_process_of_its_own", lambda unpacked: None)
    with pytest.raises(BuildFailed, match="not labelled 26.2.0\\+x86.64.v3"):
        argon2_build.build(X86_64_V3, "26.2.0", tmp_path / "kept")
    assert list((tmp_path / "kept").iterdir()) == []  # no wheel kept, the scratch space gone


def test_the_check_in_a_process_of_its_own_loads_the_given_bindings(tmp_path):
    import _argon2_cffi_bindings

    # The installed bindings, copied: the check must load this copy and find the known answers.
    copy = tmp_path / "unpacked"
    installed = Path(_argon2_cffi_bindings.__file__).parent
    import shutil

    shutil.copytree(installed, copy / installed.name)
    argon2_build._check_in_a_process_of_its_own(copy)
    broken = tmp_path / "broken"
    (broken / installed.name).mkdir(parents=True)
    (broken / installed.name / "__init__.py").write_text("raise ImportError('no libargon2 here')\n")
    with pytest.raises(BuildFailed, match="known answers"):
        argon2_build._check_in_a_process_of_its_own(broken)


def test_check_tells_whether_the_installed_build_is_the_best_for_this_cpu(monkeypatch, capsys):
    """`.ci/run` calls --check after make test, which passes with PyPI's wheel too."""
    monkeypatch.setattr(argon2_build.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: V3)
    monkeypatch.setattr(argon2_build, "installed_version", lambda: "26.2.0")
    assert argon2_build.main(["--check"]) == 1
    assert "la meilleure pour ce processeur est x86-64-v3" in capsys.readouterr().err
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: OLD)
    assert argon2_build.main(["--check"]) == 0
    monkeypatch.setattr(argon2_build, "argon2id_tag", lambda **_: b"\x00" * 32)
    assert argon2_build.main(["--check"]) == 1
    assert "known answer" in capsys.readouterr().err


def test_a_command_that_outlives_its_timeout_is_killed_with_what_it_started(monkeypatch, tmp_path):
    monkeypatch.setattr(argon2_build, "_TIMEOUT", 2)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            # The grandchild holds the FIFO's write end as long as it lives.
            argon2_build._run("sh", "-c", f"sleep 60 > {fifo} & wait")
        # Its death closes the write end: EOF at once. Alive, select would wait its 10 s.
        assert select.select([reader], [], [], 10)[0] == [reader]
        assert os.read(reader, 1) == b""
    finally:
        os.close(reader)


def _nothing_to_run(*command, **options):
    raise AssertionError(f"nothing to run: {command}")
