"""Child processes of the browser and fault suites (the portal, the ROR app, Redis): how
they end, and the end of their log for an assertion's message."""
from __future__ import annotations

import subprocess
from pathlib import Path


def end_process(process: subprocess.Popen | None) -> None:
    """SIGTERM, ten seconds to finish (gunicorn lets requests in flight end), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
