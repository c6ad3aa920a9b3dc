"""Opt-in (BENCH_LOAD_PYSPY=1, with BENCH_LOAD_PYSPY_GIL=1 for the Python CPU alone):
py-spy samples every gunicorn worker during the fixed-rate phase; the summary says which
libraries the portal's Python threads spend their active time in (a stack counts for
every library it goes through) and the functions at the top of the stacks. Threads waiting (sockets, locks, the Argon2 lanes computing in C threads
of their own) are not sampled: Argon2's share is known from its own measurement."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

CATEGORIES = {
    "sqlalchemy": "(sqlalchemy/", "psycopg": "(psycopg/", "jinja2 (templates)": "(jinja2/",
    "authlib": "(authlib/", "joserfc + cryptography (JWT, RSA)": ("(joserfc/", "(cryptography/"),
    "flask_limiter + limits + redis": ("(flask_limiter/", "(limits/", "(redis/"),
    "wtforms + flask_wtf (CSRF)": ("(wtforms/", "(flask_wtf/"), "werkzeug": "(werkzeug/",
    "gunicorn": "(gunicorn/", "logging + observability": ("(logging/", "(portal/observability.py"),
    "prometheus_client": "(prometheus_client/", "smtplib (mail thread)": "(smtplib.py",
    "argon2 (Python side)": "(argon2/", "portal.audit": "(portal/audit.py", "flask": "(flask/",
    "portal's own code": ("(portal/", "(idp/", "(onboarding/"),
}
FRAME_RE = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    return shutil.which("py-spy") or (str(Path(sys.executable).with_name("py-spy"))
                                     if Path(sys.executable).with_name("py-spy").exists() else None)


def start(master_pid: int, seconds: float, output: Path) -> subprocess.Popen | None:
    binary = py_spy()
    if binary is None:
        return None
    # BENCH_LOAD_PYSPY_GIL=1: only threads holding the GIL, i.e. the Python CPU (without it,
    # threads waiting in C calls, the database or argon2, count as active too).
    gil = ["--gil"] if os.environ.get("BENCH_LOAD_PYSPY_GIL", "") not in ("", "0") else []
    return subprocess.Popen([binary, "record", "--pid", str(master_pid), "--subprocesses", "--format", "raw",
                             "--rate", os.environ.get("BENCH_LOAD_PYSPY_RATE", "50"), "--duration", str(int(seconds)),
                             "--nonblocking", *gil, "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise(path: Path, top: int = 15) -> dict:
    if not path.exists():
        return {"error": "py-spy wrote nothing (not installed, or not allowed to attach)"}
    total = 0
    inclusive: Counter = Counter()
    exclusive: Counter = Counter()
    leaves: Counter = Counter()
    views: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        for name, needles in CATEGORIES.items():
            needles = (needles,) if isinstance(needles, str) else needles
            if any(needle in frame for frame in frames for needle in needles):
                inclusive[name] += samples
        exclusive[_deepest_library(frames)] += samples
        views[_view(frames)] += samples
        match = FRAME_RE.match(frames[-1])
        leaf = f"{match['function']} ({Path(match['file']).name})" if match else frames[-1]
        leaves[leaf] += samples
    if not total:
        return {"error": "no samples"}
    return {
        "active_samples": total,
        # Where the time is spent: each sample goes to the library of its deepest frame
        # that belongs to one (the standard library's frames count for their caller).
        "share_by_library_exclusive": {name: round(count / total, 3) for name, count in exclusive.most_common()},
        # Stacks that go through a library at all (wrappers such as the limiter's count
        # for the whole view they wrap).
        "share_by_library_inclusive": {name: round(count / total, 3) for name, count in inclusive.most_common()},
        "share_of_active_samples_by_view": {name: round(count / total, 3) for name, count in views.most_common()},
        "top_functions_self": {name: round(count / total, 3) for name, count in leaves.most_common(top)},
        "raw": str(path),
    }


def _deepest_library(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in CATEGORIES.items():
            needles = (needles,) if isinstance(needles, str) else needles
            if any(needle in frame for needle in needles):
                return name
    return "(standard library only)"


def _view(frames: list[str]) -> str:
    """The view function a stack is in; the request hooks around it; or the rest."""
    for index, frame in enumerate(frames):
        if frame.startswith("Flask.dispatch_request ("):
            for inner in frames[index + 1:]:
                if "(flask/" not in inner and "(werkzeug/" not in inner and "wrapper (" not in inner \
                        and "decorated (" not in inner and "(flask_limiter/" not in inner:
                    return inner.split(" (")[0]
            return "(view)"
    if any(frame.startswith("Flask.full_dispatch_request (") for frame in frames):
        return "(before/after request hooks)"
    if any(frame.startswith("Flask.wsgi_app (") for frame in frames):
        return "(request context, teardown)"
    return "(outside requests: server, mail thread)"
