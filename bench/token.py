"""The token endpoint per worker process, next to panva's certified oidc-provider.

Two operations, each on both servers in the same run with the same HTTP load driver
(bench/node/load.mjs: undici, CONCURRENCY requests in flight, SECONDS after a warm-up):

- authorization code exchange: client_secret_basic, PKCE S256, an opaque access token, a
  refresh token and an RS256 ID token carrying the scope's claims;
- refresh-token grant: the refresh token is rotated and a new ID token signed. Each of the
  CONCURRENCY chains sends the refresh token its previous response returned.

The portal runs as in production, `gunicorn -c python:portal.gunicorn_conf portal.wsgi:app`
with one worker (sync, and gthread with GTHREADS threads), on a fresh SQLite database and, when reachable, on
PostgreSQL (a schema of its own, dropped afterwards). oidc-provider (bench/node/op.mjs,
pinned version) runs in one Node process with an in-memory store. Both servers are
pinned to CPU 0 and the driver to CPU 1 when the machine has two cores or more.

Codes: the user's login sessions and codes are inserted into the portal's tables as its
authorize endpoint writes them (one login session per code); oidc-provider's are minted
through its own models (a Session, a Grant, an AuthorizationCode per code) behind a
loopback-only admin port. Refresh tokens come from the warm-up's code exchanges.

`python -m bench token`; ENRS_BENCH_TOKEN_SECONDS (default 10) sets the measuring time.
`python -m bench.token --profile [--postgresql]` profiles the portal's token endpoint
in-process (cProfile) and prints the top functions.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"
SECONDS = float(os.environ.get("ENRS_BENCH_TOKEN_SECONDS", "10"))
WARMUP_SECONDS = float(os.environ.get("ENRS_BENCH_TOKEN_WARMUP", "3"))
CONCURRENCY = int(os.environ.get("ENRS_BENCH_TOKEN_CONCURRENCY", "8"))
GTHREADS = 4
PG_URL = os.environ.get("ENRS_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SECRET_KEY = "bench-token-" + "k" * 40
CLIENT_ID = "ror-bench"
CLIENT_SECRET = "bench-secret-" + "s" * 32
REDIRECT_URI = "https://ror.esante-bench.fr/callback"
SCOPE = "openid profile email establishments roles national_id"
ACR = "urn:enrs:acr:pwd-otp-email"
AMR = ["pwd", "otp", "mca"]
REFERENCE = {
    "oidc_provider_earlier_measure_on_these_machines": {"code_exchange": 700, "refresh": 740},
    "keycloak_published_floor_refresh_per_vcpu": 120,
}


# -- helpers ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a server: ours without ENRS_* (the portal refuses unknown settings,
    such as the bench's own ENRS_BENCH_*), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("ENRS_")}, **extra}


def _pinned(cpu: str) -> list[str]:
    """`taskset -c cpu` when there are two cores or more to keep server and driver apart."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", cpu]
    return []


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def ensure_node_modules() -> None:
    """`npm ci` in bench/node on a clean clone (the lock file pins every package)."""
    if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir() or not (NODE_DIR / "node_modules" / "undici").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)


def _wait_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server not ready after {seconds}s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by the process `pid` and its descendants (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def drive(job: dict, workdir: Path, server_pid: int | None = None) -> dict:
    """One run of the load driver; the driver's JSON result, with the CPU time the server
    used during the run (`server_cpu_ms_per_op`), which depends much less than ops/s on what
    else the machine runs at the same time."""
    before = cpu_seconds(server_pid) if server_pid else None
    load_before = os.getloadavg()[0]
    path = workdir / f"job-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps({"concurrency": CONCURRENCY, **job}))
    try:
        completed = subprocess.run([*_pinned("1"), "node", str(NODE_DIR / "load.mjs"), str(path)],
                                   capture_output=True, text=True, check=False, timeout=job["seconds"] + 120)
    finally:
        path.unlink()
    if completed.returncode != 0:
        raise RuntimeError(f"load driver failed: {completed.stderr[-2000:]}")
    result = json.loads(completed.stdout)
    if server_pid:
        used = cpu_seconds(server_pid) - before
        result["server_cpu_seconds"] = round(used, 2)
        result["server_cpu_ms_per_op"] = round(used * 1000 / result["ok"], 3) if result["ok"] else None
        result["ops_per_server_cpu_second"] = round(result["ok"] / used, 1) if used else None
    result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def _summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "refresh_tokens"}


def measure(target, workdir: Path) -> dict:
    """Warm-up, then SECONDS of code exchanges, then SECONDS of refresh grants."""
    common = {"url": target.token_url, "authorization": target.authorization, "redirect_uri": REDIRECT_URI}
    # Warm-up: code exchanges (their refresh tokens feed the refresh chains), then refreshes.
    warm = drive({**common, "mode": "code", "seconds": WARMUP_SECONDS, "collect": True,
                  "codes": target.mint(target.warmup_codes)}, workdir, target.pid)
    if warm["errors"] or warm["ok"] < CONCURRENCY:
        raise RuntimeError(f"{target.name}: warm-up code exchanges failed: {_summary(warm)}")
    warm_refresh = drive({**common, "mode": "refresh", "seconds": WARMUP_SECONDS / 2, "collect": True,
                          "refresh_tokens": warm["refresh_tokens"][:CONCURRENCY]}, workdir, target.pid)
    if warm_refresh["errors"]:
        raise RuntimeError(f"{target.name}: warm-up refreshes failed: {_summary(warm_refresh)}")
    # Codes for the measured run: 1.5 times what the warm-up rate would use, and more than
    # the driver can send in SECONDS when the warm-up was slowed by first requests.
    needed = math.ceil(warm["ops_per_second"] * SECONDS * 1.5) + 200
    code = drive({**common, "mode": "code", "seconds": SECONDS, "codes": target.mint(needed)}, workdir, target.pid)
    if code["exhausted"]:
        code = drive({**common, "mode": "code", "seconds": SECONDS,
                      "codes": target.mint(math.ceil(code["ops_per_second"] * SECONDS * 2) + 200)},
                     workdir, target.pid)
    refresh = drive({**common, "mode": "refresh", "seconds": SECONDS,
                     "refresh_tokens": warm_refresh["refresh_tokens"]}, workdir, target.pid)
    return {"code_exchange": _summary(code), "refresh": _summary(refresh)}


# -- the portal ---------------------------------------------------------------------------

class Portal:
    """A database prepared for the bench, and `gunicorn portal.wsgi:app` serving it."""

    warmup_codes = 1500

    def __init__(self, database_url: str, instance: Path) -> None:
        self.database_url = database_url
        self.instance = instance
        self.env = {
            "ENRS_ENV": "development", "ENRS_INSTANCE_DIR": str(instance), "ENRS_DATABASE_URL": database_url,
            "ENRS_SECRET_KEY": SECRET_KEY, "ENRS_MAIL_URL": f"file://{instance / 'mail'}",
        }
        self.authorization = _basic(CLIENT_ID, CLIENT_SECRET)
        self.process: subprocess.Popen | None = None
        self.app = None

    def prepare(self) -> None:
        """`enrs db upgrade`, then the user (roles, establishment, national id) and the client."""
        enrs = Path(sys.executable).with_name("enrs")
        command = [str(enrs)] if enrs.exists() else [sys.executable, "-m", "portal.cli"]
        self.instance.mkdir(parents=True, exist_ok=True)
        upgraded = subprocess.run([*command, "db", "upgrade"], env=_child_env(self.env), cwd=ROOT,
                                  capture_output=True, text=True)
        if upgraded.returncode != 0:
            raise RuntimeError(f"enrs db upgrade failed: {upgraded.stdout}{upgraded.stderr}")
        from idp.models import UserRole
        from idp.provider.clients import ClientSpec, create_client
        from onboarding.accounts import create_professional
        from onboarding.finess import load_demo_establishments
        from portal.app import create_app
        from portal.clock import now
        from portal.db import db

        self.app = create_app({**self.env, "ENRS_BASE_URL": "http://127.0.0.1"})
        with self.app.app_context():
            load_demo_establishments(db.session)
            user = create_professional(db.session, email="nathalie.dupont@esante-bench.fr",
                                       password="Hopital-Dreux-2026", first_name="Nathalie", last_name="Dupont",
                                       profession="10", finess="280503848")
            user.national_id, user.national_id_type = "10108825463", "rpps"
            db.session.add(UserRole(user_id=user.id, role="ror_referent_offre", finess="280503848",
                                    granted_at=now()))
            client, _ = create_client(db.session, ClientSpec(
                name="ROR (banc d'essai)", client_id=CLIENT_ID, redirect_uris=[REDIRECT_URI],
                required_role="ror_referent_offre", icon="ror"), secret=CLIENT_SECRET)
            db.session.commit()
            self.user_id, self.client_pk = user.id, client.id

    def mint(self, count: int) -> list[dict]:
        """`count` codes, each from its own login session, written as CodeGrant.save_authorization_code does."""
        from idp.provider.models import AuthorizationCode, SessionClient
        from idp.provider.server import CODE_LIFETIME, digest
        from idp.sessions import UserSession, token_digest
        from portal.clock import now
        from portal.db import db

        current = now()
        sessions, codes, opened, handed = [], [], [], []
        for _ in range(count):
            session_id = token_digest(secrets.token_urlsafe(32))
            sessions.append({
                "id": session_id, "public_id": secrets.token_hex(16), "user_id": self.user_id,
                "created_at": current, "last_seen_at": current, "expires_at": current + timedelta(hours=12),
                "revoked_at": None, "ip": "127.0.0.1", "user_agent": "bench", "amr": AMR, "acr": ACR,
            })
            code = secrets.token_urlsafe(36)  # 48 characters, as authlib generates them
            verifier, challenge = _pkce()
            codes.append({
                "code_hash": digest(code), "client_pk": self.client_pk, "user_id": self.user_id,
                "session_id": session_id, "redirect_uri": REDIRECT_URI, "scope": SCOPE,
                "nonce": secrets.token_hex(8), "code_challenge": challenge, "code_challenge_method": "S256",
                "auth_time": current, "acr": ACR, "amr": AMR, "created_at": current,
                "expires_at": current + CODE_LIFETIME, "used_at": None,
            })
            opened.append({"session_id": session_id, "client_pk": self.client_pk, "created_at": current})
            handed.append({"code": code, "code_verifier": verifier})
        with self.app.app_context():
            db.session.execute(sa.insert(UserSession), sessions)
            db.session.execute(sa.insert(AuthorizationCode), codes)
            db.session.execute(sa.insert(SessionClient), opened)
            db.session.commit()
        return handed

    @contextmanager
    def serving(self, worker_class: str, threads: int, log: Path):
        port = _free_port()
        self.name = f"portal {worker_class}"
        self.token_url = f"http://127.0.0.1:{port}/oauth/token"
        metrics = log.with_suffix(".metrics")
        metrics.mkdir(exist_ok=True)
        env = _child_env({**self.env, "ENRS_BASE_URL": f"http://127.0.0.1:{port}",
                          "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
        # The production settings (portal/gunicorn_conf.py: access log, multiprocess metrics,
        # keep-alive), one worker of the class under test; no recycling during a run.
        command = [*_pinned("0"), sys.executable, "-m", "gunicorn", "-c", "python:portal.gunicorn_conf",
                   "-w", "1", "-k", worker_class, "--threads", str(threads), "-b", f"127.0.0.1:{port}",
                   "--max-requests", "0", "--no-control-socket", "portal.wsgi:app"]
        with log.open("w") as output:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        try:
            _wait_http(f"http://127.0.0.1:{port}/.well-known/openid-configuration", self.process, log)
            yield self
        finally:
            _stop(self.process)

    def close(self) -> None:
        if self.app is not None:
            from portal.db import db

            with self.app.app_context():
                db.engine.dispose()


def _portal_runs(database_url: str, instance: Path, workdir: Path) -> dict:
    portal = Portal(database_url, instance)
    portal.prepare()
    try:
        runs = {}
        for label, worker_class, threads in (("sync", "sync", 1), (f"gthread_{GTHREADS}", "gthread", GTHREADS)):
            with portal.serving(worker_class, threads, workdir / f"gunicorn-{label}.log"):
                runs[label] = measure(portal, workdir)
        return runs
    finally:
        portal.close()


# -- oidc-provider ------------------------------------------------------------------------

class OidcProvider:
    """bench/node/op.mjs: oidc-provider in one Node process, codes minted by its admin port."""

    name = "oidc-provider"
    warmup_codes = 4000

    def __init__(self) -> None:
        self.authorization = _basic("bench", CLIENT_SECRET)

    @contextmanager
    def serving(self, log: Path):
        port, admin = _free_port(), _free_port()
        self.token_url = f"http://127.0.0.1:{port}/token"
        self.admin_url = f"http://127.0.0.1:{admin}"
        env = _child_env({"BENCH_CLIENT_SECRET": CLIENT_SECRET, "NODE_ENV": "production"})
        with log.open("w") as output:
            process = subprocess.Popen([*_pinned("0"), "node", str(NODE_DIR / "op.mjs"), str(port), str(admin)],
                                       cwd=NODE_DIR, env=env, stdout=subprocess.PIPE, stderr=output, text=True)
        try:
            ready = json.loads(process.stdout.readline() or "{}")
            if not ready.get("ready"):
                raise RuntimeError(f"oidc-provider did not start:\n{log.read_text()[-3000:]}")
            self.info = ready
            self.pid = process.pid
            yield self
        finally:
            _stop(process)

    def mint(self, count: int) -> list[dict]:
        request = urllib.request.Request(f"{self.admin_url}/codes?n={count}", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)


def _oidc_provider_version() -> str:
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    return lock["packages"]["node_modules/oidc-provider"]["version"]


# -- the run ------------------------------------------------------------------------------

def _ratio(portal: dict, reference: dict) -> dict:
    ratios = {}
    for op in ("code_exchange", "refresh"):
        ratios[op] = round(portal[op]["ops_per_second"] / reference[op]["ops_per_second"], 3)
        if portal[op].get("ops_per_server_cpu_second") and reference[op].get("ops_per_server_cpu_second"):
            ratios[f"{op}_per_cpu_second"] = round(
                portal[op]["ops_per_server_cpu_second"] / reference[op]["ops_per_server_cpu_second"], 3)
    return ratios


def _machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(), "node": node,
            "platform": platform.platform(), "pinned": bool(_pinned("0"))}


class PostgresUnreachable(Exception):
    pass


@contextmanager
def postgresql_schema():
    """A URL of PG_URL in a schema of its own, dropped afterwards."""
    from bench.finess import throwaway_schema

    try:
        probe = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        probe.connect().close()
        probe.dispose()
    except Exception as error:
        raise PostgresUnreachable(str(error)) from error
    with throwaway_schema(PG_URL) as url:
        yield url


def run() -> dict[str, object]:
    ensure_node_modules()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        reference = OidcProvider()
        with reference.serving(workdir / "oidc-provider.log"):
            results["oidc_provider"] = {"version": _oidc_provider_version(), **measure(reference, workdir)}
        portal: dict[str, object] = {}
        instance = workdir / "instance-sqlite"
        portal["sqlite"] = _portal_runs(f"sqlite:///{instance}/bench.db", instance, workdir)
        try:
            with postgresql_schema() as url:
                portal["postgresql"] = _portal_runs(url, workdir / "instance-pg", workdir)
        except PostgresUnreachable:
            portal["postgresql"] = "unreachable"
        # The reference again after the portal: both ends of the run, their mean is the yardstick.
        with reference.serving(workdir / "oidc-provider-2.log"):
            again = measure(reference, workdir)
    first = results["oidc_provider"]
    yardstick = {}
    for op in ("code_exchange", "refresh"):
        first[f"{op}_second_run"] = again[op]
        yardstick[op] = {key: round((first[op][key] + again[op][key]) / 2, 1)
                         for key in ("ops_per_second", "ops_per_server_cpu_second")}
        first[op]["mean_of_both_runs"] = yardstick[op]
    results["portal"] = portal["sqlite"]["sync"]
    results["portal_by_setup"] = portal
    results["ratio"] = {
        f"{backend}_{label}": _ratio(runs[label], yardstick)
        for backend, runs in portal.items() if isinstance(runs, dict) for label in runs
    }
    results["ratio"]["meaning"] = (
        "portal ÷ oidc-provider (mean of its runs before and after the portal's): <op> compares ops/s, "
        "<op>_per_cpu_second compares requests per second of the server's own CPU time, which other work "
        "on the machine does not change")
    # Without HTTP or gunicorn: what the application itself costs, and its SQL statements.
    results["portal_in_process"] = in_process()
    results["codes"] = {
        "portal": "one login session per code: rows inserted into user_sessions, oidc_authorization_codes and "
                  "oidc_session_clients as CodeGrant.save_authorization_code writes them (SHA-256 digests, "
                  "PKCE S256 challenge, nonce, 60 s lifetime), minted just before each run",
        "oidc_provider": "a Session, a Grant and an AuthorizationCode per code, through its own models "
                         "(new provider.AuthorizationCode({...}).save()) on a loopback-only admin port",
        "refresh_tokens": "from the warm-up's code exchanges; each of the chains sends the token its "
                          "previous response returned",
    }
    results["reference"] = REFERENCE
    results["machine"] = _machine()
    results["method"] = (
        f"One run, same driver (bench/node/load.mjs, undici, {CONCURRENCY} requests in flight) against both "
        f"servers: {WARMUP_SECONDS:g} s warm-up, then {SECONDS:g} s of code exchanges and {SECONDS:g} s of refresh "
        "grants (rotation, new ID token) per server. Servers pinned to CPU 0, driver to CPU 1 (PostgreSQL "
        "unpinned, it shares the machine). Portal: gunicorn -c python:portal.gunicorn_conf portal.wsgi:app "
        f"with 1 worker (sync; gthread {GTHREADS} threads) and no recycling, ENRS_ENV=development, fresh database after `enrs db upgrade`; login sessions "
        "and codes inserted into its tables as its authorize endpoint writes them, one session per code. "
        "oidc-provider: one Node process, unbounded in-memory adapter, codes minted through its models "
        "(Session, Grant, AuthorizationCode) on a loopback admin port. Both: client_secret_basic, PKCE S256, "
        "RS256 ID tokens with the scope's claims, opaque access tokens, refresh tokens rotated at every use "
        "and bound to the login session. Refresh chains start from the warm-up's tokens; ok = 200 with "
        "access, refresh and ID tokens."
    )
    return results


# -- in-process: statements and time per request, profile ----------------------------------

def in_process(requests: int = 200, profiler=None, database_url: str | None = None) -> dict:
    """The token endpoint without HTTP (Flask test client, this process; SQLite unless
    `database_url`): SQL statements per request and milliseconds per request, code
    exchanges then refreshes. With `profiler` (a cProfile.Profile), only the measured
    requests are profiled."""
    from sqlalchemy import event

    from portal.db import db

    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp)
        portal = Portal(database_url or f"sqlite:///{instance}/bench.db", instance)
        portal.prepare()
        client = portal.app.test_client()
        headers = {"Authorization": portal.authorization}
        statements: list[str] = []
        with portal.app.app_context():
            engine = db.engine

        def record(_connection, _cursor, statement, *_args) -> None:
            statements.append(statement.split(None, 1)[0].upper())

        event.listen(engine, "before_cursor_execute", record)

        def exchange(code: dict) -> str:
            response = client.post("/oauth/token", headers=headers, data={
                "grant_type": "authorization_code", "code": code["code"], "code_verifier": code["code_verifier"],
                "redirect_uri": REDIRECT_URI})
            assert response.status_code == 200, response.get_data(as_text=True)
            return response.json["refresh_token"]

        def refresh(token: str) -> str:
            response = client.post("/oauth/token", headers=headers,
                                   data={"grant_type": "refresh_token", "refresh_token": token})
            assert response.status_code == 200, response.get_data(as_text=True)
            return response.json["refresh_token"]

        # The access log's lines are formatted as in production, but not printed here.
        quiet = [(handler, handler.setStream(open(os.devnull, "w")))  # noqa: SIM115
                 for handler in logging.getLogger("enrs").handlers if isinstance(handler, logging.StreamHandler)]
        try:
            for code in portal.mint(30):  # warm: keys loaded, statements compiled
                refresh(exchange(code))
            counts = {}
            code = portal.mint(1)[0]
            statements.clear()
            token = exchange(code)
            counts["code_exchange"] = {"total": len(statements), "by_kind": dict(sorted(
                {kind: statements.count(kind) for kind in set(statements)}.items()))}
            statements.clear()
            refresh(token)
            counts["refresh"] = {"total": len(statements), "by_kind": dict(sorted(
                {kind: statements.count(kind) for kind in set(statements)}.items()))}
            codes = portal.mint(requests)
            timings, cpu = {}, {}
            if profiler:
                profiler.enable()
            started, started_cpu = time.perf_counter(), time.process_time()
            tokens = [exchange(code) for code in codes]
            timings["code_exchange"] = round((time.perf_counter() - started) * 1000 / requests, 2)
            cpu["code_exchange"] = round((time.process_time() - started_cpu) * 1000 / requests, 2)
            started, started_cpu = time.perf_counter(), time.process_time()
            for token in tokens:
                refresh(token)
            timings["refresh"] = round((time.perf_counter() - started) * 1000 / requests, 2)
            cpu["refresh"] = round((time.process_time() - started_cpu) * 1000 / requests, 2)
            if profiler:
                profiler.disable()
        finally:
            for handler, stream in quiet:
                handler.setStream(stream).close()
            event.remove(engine, "before_cursor_execute", record)
            portal.close()
    return {"sql_statements_per_request": counts, "ms_per_request": timings, "cpu_ms_per_request": cpu,
            "requests": requests}


def profile(requests: int = 400, top: int = 30, database_url: str | None = None) -> None:
    """cProfile of the measured in-process requests; prints the largest cumulative and own times.
    (The figures of docs/performance.md come from py-spy sampling the same loop, which distorts
    less: `pip install py-spy`, then `py-spy record -f raw -- python -m bench.token --profile`.)"""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    print(json.dumps(in_process(requests, profiler, database_url), indent=2))
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    if "--profile" in sys.argv[1:]:
        if "--postgresql" in sys.argv[1:]:
            with postgresql_schema() as url:
                profile(database_url=url)
        else:
            profile()
    else:
        print(json.dumps(run(), indent=2, ensure_ascii=False))
