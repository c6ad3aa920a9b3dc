"""libargon2 built for the server's CPU (idp/argon2_build.py): the same hashes whatever the
build, the build chosen from the CPU, and a portal that refuses to start on a CPU its build
cannot run rather than dying at the first login."""
from __future__ import annotations

import subprocess

import pytest
from argon2.low_level import Type, core, ffi

from idp import argon2_build
from idp.argon2_build import X86_64_V3, UnsupportedCPU

V3 = argon2_build.LEVEL_FLAGS[X86_64_V3] | {"fpu", "sse", "sse2", "avx512f"}
OLD_XEON = frozenset({"fpu", "sse", "sse2", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm", "avx", "xsave"})
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 bmi1
bogomips\t: 4000.00

processor\t: 1
flags\t\t: fpu sse sse2 avx avx2 bmi1
"""


def _argon2id(password: bytes, salt: bytes, *, t: int, m: int, lanes: int, threads: int,
              secret: bytes = b"", ad: bytes = b"") -> bytes:
    out = ffi.new("uint8_t[]", 32)
    buffers = [ffi.new("uint8_t[]", value) if value else ffi.NULL for value in (password, salt, secret, ad)]
    context = ffi.new("argon2_context *", {
        "out": out, "outlen": 32, "pwd": buffers[0], "pwdlen": len(password), "salt": buffers[1],
        "saltlen": len(salt), "secret": buffers[2], "secretlen": len(secret), "ad": buffers[3], "adlen": len(ad),
        "t_cost": t, "m_cost": m, "lanes": lanes, "threads": threads, "version": 0x13,
        "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL, "flags": 0})
    assert core(context, Type.ID.value) == 0
    return bytes(out)


@pytest.mark.parametrize("threads", [1, 4])
def test_the_installed_libargon2_gives_the_rfc_9106_argon2id_test_vector(threads):
    tag = _argon2id(b"\x01" * 32, b"\x02" * 16, secret=b"\x03" * 8, ad=b"\x04" * 12, t=3, m=32, lanes=4,
                    threads=threads)
    assert tag.hex() == "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"


def test_the_installed_libargon2_gives_the_reference_hash_with_the_portal_parameters():
    # Computed by libargon2's portable reference code (ref.c), which uses no vector instruction.
    tag = _argon2id(b"correct horse battery", b"\x01" * 16, t=8, m=32 * 1024, lanes=4, threads=1)
    assert tag.hex() == "ededb8ae4f35ca2668ef8ddef38eef617833e77bc542346ae44eea06554df075"


def test_the_cpu_flags_are_read_from_the_first_processor():
    assert argon2_build.cpu_flags(CPUINFO) == {"fpu", "sse", "sse2", "avx", "avx2", "bmi1"}
    assert argon2_build.cpu_flags("processor\t: 0\n") == frozenset()


def test_auto_builds_for_x86_64_v3_only_on_an_x86_64_cpu_that_has_all_of_it():
    assert argon2_build.best_level("x86_64", V3) == X86_64_V3
    assert argon2_build.best_level("AMD64", V3) == X86_64_V3
    assert argon2_build.best_level("x86_64", OLD_XEON) == "wheel"
    assert argon2_build.best_level("x86_64", V3 - {"movbe"}) == "wheel"
    assert argon2_build.best_level("aarch64", V3) == "wheel"


def test_the_build_is_known_by_its_local_version_label():
    assert argon2_build.built_for("26.2.0+x86.64.v3") == X86_64_V3
    assert argon2_build.built_for("26.2.0") == "wheel"
    assert argon2_build.built_for("26.2.0+debian.1") == "wheel"


def test_a_v3_build_on_a_cpu_without_avx2_is_refused_with_the_remedy():
    with pytest.raises(UnsupportedCPU) as refused:
        argon2_build.require_cpu_support("26.2.0+x86.64.v3", OLD_XEON)
    message = str(refused.value)
    assert "x86-64-v3" in message and "avx2" in message and "python -m idp.argon2_build" in message
    assert argon2_build.require_cpu_support("26.2.0+x86.64.v3", V3) == X86_64_V3
    assert argon2_build.require_cpu_support("26.2.0", OLD_XEON) == "wheel"


def test_the_portal_does_not_start_on_a_cpu_its_libargon2_cannot_run(app_env, monkeypatch):
    from portal.app import create_app
    from portal.config import ConfigError

    monkeypatch.setattr(argon2_build, "installed_version", lambda: "26.2.0+x86.64.v3")
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: OLD_XEON)
    hashed = []
    monkeypatch.setattr("idp.passwords.prepare_dummy_hash", lambda: hashed.append(True))
    with pytest.raises(ConfigError, match="x86-64-v3"):
        create_app(app_env)
    assert hashed == []  # refused before the first hash, which would have been an illegal instruction


def test_install_leaves_a_build_that_is_already_the_one_asked_for(monkeypatch):
    monkeypatch.setattr(argon2_build, "_pip", _no_pip)
    monkeypatch.setattr(argon2_build, "_build", _no_pip)
    assert "déjà" in argon2_build.install("auto", "x86_64", V3, "26.2.0+x86.64.v3")
    assert "déjà" in argon2_build.install("auto", "aarch64", V3, "26.2.0")
    assert "déjà" in argon2_build.install("wheel", "x86_64", V3, "26.2.0")


def test_install_builds_the_pinned_release_for_v3_or_puts_the_wheel_back(monkeypatch):
    calls = []
    monkeypatch.setattr(argon2_build, "_build", lambda level, release: calls.append(("build", level, release)))
    monkeypatch.setattr(argon2_build, "_pip", lambda *arguments, env=None: calls.append(("pip", *arguments)))
    assert "compilée pour x86-64-v3" in argon2_build.install("auto", "x86_64", V3, "26.2.0")
    assert "PyPI" in argon2_build.install("wheel", "x86_64", V3, "26.2.0+x86.64.v3")
    assert calls == [("build", X86_64_V3, "26.2.0"),
                     ("pip", "--only-binary", "argon2-cffi-bindings", "argon2-cffi-bindings==26.2.0")]


def test_a_failed_build_keeps_the_wheel_and_says_so(monkeypatch):
    def fails(level, release):
        raise subprocess.CalledProcessError(1, ["pip", "download"])

    monkeypatch.setattr(argon2_build, "_build", fails)
    said = argon2_build.install("auto", "x86_64", V3, "26.2.0")
    assert said.startswith("Avertissement") and "version de PyPI" in said


def test_asking_for_a_v3_build_on_a_cpu_without_it_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(argon2_build, "_build", _no_pip)
    with pytest.raises(UnsupportedCPU):
        argon2_build.install(X86_64_V3, "x86_64", OLD_XEON, "26.2.0")
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: OLD_XEON)
    assert argon2_build.main(["--build", X86_64_V3]) == 2
    assert capsys.readouterr().err.startswith("Erreur : ")


def test_show_names_the_installed_build_and_the_best_for_this_cpu(monkeypatch, capsys):
    monkeypatch.setattr(argon2_build, "installed_version", lambda: "26.2.0")
    monkeypatch.setattr(argon2_build, "this_cpu_flags", lambda: V3)
    monkeypatch.setattr(argon2_build.platform, "machine", lambda: "x86_64")
    assert argon2_build.main(["--show"]) == 0
    assert capsys.readouterr().out.strip() == (
        "argon2-cffi-bindings 26.2.0 : version de PyPI ; la meilleure pour ce processeur : x86-64-v3.")


def _no_pip(*arguments, **options):
    raise AssertionError("nothing to install")
