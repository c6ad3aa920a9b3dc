"""The fault suite's machinery: the production shape on this machine, a load of people,
and the checks that nothing acknowledged was lost.

- `Stack`: `enrs serve --prod --workers 2 --threads 4` (gunicorn) and `enrs worker
  --interval 1`, on a PostgreSQL database of our own, a file store in a temporary folder,
  a loopback SMTP server (aiosmtpd) and a redis-server of our own, all of which the test
  can break and mend. When the suite runs as root, the portal's processes run without
  CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (as an unprivileged service user would), so that
  `chmod 0500` on the store means what it means in production.
- `Load`: a few threads of people played by `requests`, each behind its own address
  (X-Forwarded-For from the loopback proxy, ENRS_TRUSTED_PROXIES=1): professionals log
  in (password, then the code received by mail) and send ROR access requests with a
  PNG or PDF attestation; newcomers register. Every response is recorded, and every
  acknowledgement (the 303 that tells the person "done") is kept.
- `Outcome`: the database, the store and the mailbox after recovery, checked against
  those acknowledgements: each acknowledged registration, request, upload and email
  there exactly once, no orphan or half-written file, no duplicate email, no traceback
  and no error page that is not the portal's French one.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urljoin, urlsplit

import requests

from tests.attestation_samples import noise_png, simple_pdf
from tests.conftest import free_port
from tests.e2e.support import MailServer, WaitingMailbox, login_code_in
from tests.journeys import CAPTCHA_ID_RE, csrf, field_value, registration_data
from tests.processes import children_of, end_process, log_tail

FAULTS = Path(__file__).resolve().parent
REPO = FAULTS.parent.parent
ARTIFACTS = FAULTS / "artifacts"

PG_ADMIN_URL = os.environ.get("ENRS_TEST_FAULTS_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "enrs_faults"
TEMPLATE = "enrs_faults_template"
SECRET_KEY = "faults-secret-key-" + "f" * 40
PORTAL_NAME = "eSanté Centre-Val de Loire"
PASSWORD = "Panne-Controlee-2026!"
FINESS = "280071135"  # an establishment of `enrs demo`, with a FINESS number
PROFESSIONALS = 8
HTTP_TIMEOUT = 20.0
READY_TIMEOUT = 40.0

CODE_SUBJECT = "Code d'authentification"
ACCESS_SUBJECT = "Demande d'accès au ROR reçue"
REGISTRATION_SUBJECT = "Validation de votre inscription"

# What a person must never see: Python's or a library's innards.
TRACEBACK_RE = re.compile(
    r"Traceback \(most recent call last\)|File \"/|werkzeug\.debug|sqlalchemy\.exc|psycopg\.|"
    r"redis\.exceptions|OperationalError|PermissionError|StorageError|Errno")


def professional_email(number: int) -> str:
    return f"pro{number}@esante-faults.fr"


# -- PostgreSQL -----------------------------------------------------------------------------


def database_url(name: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def pg_admin(*statements: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as connection:
        for statement in statements:
            connection.execute(statement)


def pg_query(name: str, sql: str, *params) -> list[tuple]:
    import psycopg

    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, connect_timeout=5) as connection:
        return connection.execute(sql, params).fetchall()


def pg_ready() -> bool:
    try:
        pg_admin("SELECT 1")
    except Exception:
        return False
    return True


def pg_cluster() -> tuple[str, str]:
    versions = sorted(os.listdir("/etc/postgresql"))
    return versions[-1], "main"


def pg_ctl(action: str) -> subprocess.CompletedProcess:
    version, cluster = pg_cluster()
    return subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, action],
                          capture_output=True, text=True, timeout=90)


def pg_ensure_up(timeout: float = 60.0) -> None:
    """PostgreSQL answering again, started if need be (the fault tests' finally)."""
    deadline = time.monotonic() + timeout
    started = False
    while time.monotonic() < deadline:
        if pg_ready():
            return
        if not started:
            pg_ctl("start")
            started = True
        time.sleep(0.5)
    raise AssertionError("PostgreSQL did not come back")


# -- processes ------------------------------------------------------------------------------


def enrs_command() -> list[str]:
    script = Path(sys.executable).with_name("enrs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "portal.cli"]


def unprivileged() -> list[str]:
    """Run as root without the capabilities that ignore file modes (see the module doc)."""
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    return []


def open_files(pid: int) -> list[str]:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    paths = []
    for name in names:
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return paths


def _worker_with_open_file(stack: "Stack", timeout: float, wanted) -> int | None:
    """The gunicorn worker holding an open file whose path `wanted` accepts, watched for at
    most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in stack.worker_pids():
            if any(wanted(path) for path in open_files(pid)):
                return pid
        time.sleep(0.002)
    return None


def worker_handling_big_upload(stack: "Stack", timeout: float) -> int | None:
    """The gunicorn worker that holds a spooled upload (Werkzeug keeps a request body
    above 500 KB in an unnamed temporary file until the request ends): it is in the
    middle of a big upload's request, past the login check."""
    spool = tempfile.gettempdir() + "/#"
    return _worker_with_open_file(stack, timeout, lambda path: path.startswith(spool) and path.endswith("(deleted)"))


def worker_writing_to_store(stack: "Stack", timeout: float) -> int | None:
    """The gunicorn worker that is writing an attestation into the store right now (it
    holds a `.part` file of the store open), watched for at most `timeout` seconds."""
    store = str(stack.store_root) + "/"
    return _worker_with_open_file(stack, timeout, lambda path: path.startswith(store) and path.endswith(".part"))


class HoldingMailbox(WaitingMailbox):
    """A mailbox whose server can hold one message before answering 250: the sender
    then waits in the middle of its delivery (its outbox row claimed, "sending")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.armed = False
        self.holding = threading.Event()
        self.released = threading.Event()
        self.held_message_id: str | None = None

    def hold_next(self) -> None:
        self.holding.clear()
        self.released.clear()
        self.armed = True

    def release(self) -> None:
        self.released.set()

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler API
        if self.armed:
            self.armed = False
            message = message_from_bytes(envelope.content, policy=email_policy.default)
            self.held_message_id = str(message["Message-ID"])
            self.holding.set()
            # Waited for off the event loop: the other SMTP sessions go on meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, self.released.wait, 8.0)
        return await super().handle_DATA(server, session, envelope)


class HoldingMailServer(MailServer):
    def __init__(self) -> None:
        super().__init__()
        self.mailbox = HoldingMailbox()


class RedisServer:
    """A redis-server of the test's own on a free port: stopping it cuts nobody else."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def keys(self, pattern: str = "*") -> list[bytes]:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return list(client.scan_iter(pattern))
        finally:
            client.close()

    def stop(self) -> None:
        end_process(self.process)
        self.process = None


@dataclass
class Stack:
    """The portal in production shape on this machine, and what it depends on."""

    name: str
    root: Path  # a temporary folder of the test's
    mail: MailServer
    redis: RedisServer
    port: int = field(default_factory=free_port)
    server: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    ready_after: float | None = None  # seconds from start() to /readyz

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_root(self) -> Path:
        return self.root / "attestations"

    @property
    def artifacts(self) -> Path:
        return ARTIFACTS / self.name

    def env(self) -> dict[str, str]:
        return {
            "ENRS_ENV": "development",  # http on loopback; serving is gunicorn's, as in production
            "ENRS_INSTANCE_DIR": str(self.root / "instance"),
            "ENRS_BASE_URL": self.base_url,
            "ENRS_DATABASE_URL": database_url(DATABASE),
            "ENRS_MAIL_URL": self.mail.url,
            "ENRS_MAIL_FROM": "ne-pas-repondre@esante-faults.fr",
            "ENRS_SECRET_KEY": SECRET_KEY,
            "ENRS_PORTAL_NAME": PORTAL_NAME,
            "ENRS_REDIS_URL": self.redis.url,
            "ENRS_STORAGE_URL": f"file://{self.store_root}",
            "ENRS_TRUSTED_PROXIES": "1",
            "ENRS_LOG_FORMAT": "json",
        }

    def process_env(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("ENRS_")}
        metrics = self.root / "metrics"
        metrics.mkdir(exist_ok=True)
        return {**inherited, **self.env(), "PYTHONUNBUFFERED": "1", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}

    def start(self) -> None:
        began = time.monotonic()
        self.store_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        env = self.process_env()
        with (self.artifacts / "gunicorn.log").open("w") as log:
            self.server = subprocess.Popen(
                [*unprivileged(), *enrs_command(), "serve", "--prod", "--workers", "2", "--threads", "4",
                 "--port", str(self.port)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        with (self.artifacts / "worker.log").open("w") as log:
            self.worker = subprocess.Popen(
                [*unprivileged(), *enrs_command(), "worker", "--interval", "1"],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready()
        self.ready_after = round(time.monotonic() - began, 2)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise AssertionError(f"`enrs serve --prod` exited ({self.server.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=3) as response:
                    body = json.loads(response.read())
                    if len(self.worker_pids()) == 2:
                        return body
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"portal not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def browser(self, number: int, iteration: int) -> tuple[requests.Session, str]:
        """A fresh browser at a fresh address (rate limits count per address): here, an
        X-Forwarded-For that the portal believes from its one trusted proxy."""
        address = f"10.{number}.{iteration // 250}.{iteration % 250 + 1}"
        http = requests.Session()
        http.headers["X-Forwarded-For"] = address
        return http, address

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base_url + path, timeout=5, **kwargs)

    def readyz(self) -> tuple[int | None, dict | None]:
        try:
            response = self.get("/readyz")
        except requests.RequestException:
            return None, None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    def worker_pids(self) -> list[int]:
        return children_of(self.server.pid) if self.server else []

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.artifacts / "gunicorn.log", lines)

    def logged_tracebacks(self) -> int:
        """Unhandled errors the portal logged (the operator's side, not the user's)."""
        count = 0
        for name in ("gunicorn.log", "worker.log"):
            try:
                count += (self.artifacts / name).read_text(errors="replace").count("Traceback (most recent call last)")
            except OSError:
                pass
        return count

    def processes(self) -> list[subprocess.Popen | None]:
        return [self.worker, self.server]

    def stop(self) -> None:
        processes = self.processes()
        for process in processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            if process is None:
                continue
            try:
                process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.server = self.worker = None


# -- captcha, read as a person would -------------------------------------------------------------

_captcha_app = None
_captcha_lock = threading.Lock()


def captcha_code(challenge_id: str) -> str:
    """The characters the image of `challenge_id` shows (derived from the id with a key
    derived from the portal's SECRET_KEY: what the person reads off the screen)."""
    global _captcha_app
    with _captcha_lock:
        if _captcha_app is None:
            from portal.app import create_app

            root = ARTIFACTS / "captcha-instance"
            _captcha_app = create_app({"ENRS_ENV": "development", "ENRS_SECRET_KEY": SECRET_KEY,
                                       "ENRS_INSTANCE_DIR": str(root),
                                       "ENRS_DATABASE_URL": f"sqlite:///{root / 'unused.db'}"})
    from onboarding.captcha import code_for

    with _captcha_app.app_context():
        return code_for(challenge_id)


def captcha_fields(html: str) -> dict[str, str]:
    match = CAPTCHA_ID_RE.search(html)
    if not match:
        return {}
    return {"captcha_id": match.group(1), "captcha_answer": captcha_code(match.group(1)).lower()}


# -- the load --------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One HTTP exchange as a person's browser saw it."""

    at: float  # seconds since the load started (when the request was sent)
    took: float
    who: str
    step: str
    method: str
    path: str
    status: int | None  # None: no HTTP answer (connection refused or reset, timeout)
    error: str | None = None
    location: str | None = None
    french_error_page: bool = False
    traceback: bool = False
    excerpt: str = ""


def page_text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def is_french_error_page(html: str) -> bool:
    return 'lang="fr"' in html and 'id="titre-erreur"' in html and "Code d'erreur" in html


@dataclass
class Acks:
    """What the portal acknowledged to people (a 303 to the "done" page)."""

    logins: list[tuple[str, float]] = field(default_factory=list)  # (email, at)
    uploads: list[dict] = field(default_factory=list)  # email, sha256, size, kind, at
    registrations: list[tuple[str, float]] = field(default_factory=list)
    upload_attempts: list[dict] = field(default_factory=list)  # every upload sent, with its status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, item) -> None:
        with self.lock:
            getattr(self, kind).append(item)


class Load:
    """People using the portal from a few threads until stop()."""

    def __init__(self, stack: Stack, *, professionals: int = 4, registrants: int = 1, big_uploaders: int = 0,
                 code_wait: float = 8.0) -> None:
        self.stack = stack
        self.hits: list[Hit] = []
        self.acks = Acks()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.code_wait = code_wait
        self.started = time.monotonic()
        self.threads: list[threading.Thread] = []
        self.people = ([Professional(self, number, big=False) for number in range(1, professionals + 1)]
                       + [Professional(self, professionals + n, big=True) for n in range(1, big_uploaders + 1)]
                       + [Registrant(self, n) for n in range(1, registrants + 1)])
        assert professionals + big_uploaders <= PROFESSIONALS

    def now(self) -> float:
        return time.monotonic() - self.started

    def record(self, hit: Hit) -> None:
        with self.lock:
            self.hits.append(hit)

    def start(self) -> None:
        self.started = time.monotonic()
        for person in self.people:
            thread = threading.Thread(target=person.run, name=person.name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=HTTP_TIMEOUT + self.code_wait + 5)
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"load threads still running: {alive}"
        for person in self.people:  # no idle keep-alive connection left for gunicorn to wait on
            person.http.close()

    def sleep(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    def hits_between(self, start: float, end: float) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if start <= h.at <= end]

    def summary(self) -> str:
        with self.lock:
            counts = Counter((h.step, h.status if h.status is not None else h.error) for h in self.hits)
        return ", ".join(f"{step} {status}: {n}" for (step, status), n in sorted(counts.items(), key=str))


class Person:
    name = "person"

    def __init__(self, load: Load) -> None:
        self.load = load
        self.http = requests.Session()
        self.iteration = 0
        self.address = ""

    @property
    def base_url(self) -> str:
        return self.load.stack.base_url

    def new_browser(self, number: int) -> None:
        """A fresh browser at a fresh address (see Stack.browser)."""
        self.http.close()
        self.iteration += 1
        self.http, self.address = self.load.stack.browser(number, self.iteration)

    def call(self, step: str, method: str, path: str, **kwargs) -> requests.Response | None:
        at = self.load.now()
        started = time.monotonic()
        try:
            response = self.http.request(method, urljoin(self.base_url, path), allow_redirects=False,
                                         timeout=HTTP_TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            self.load.record(Hit(at=at, took=time.monotonic() - started, who=self.name, step=step, method=method,
                                 path=path, status=None, error=type(exc).__name__, excerpt=str(exc)[:200]))
            return None
        body = response.text if "html" in response.headers.get("Content-Type", "") or response.status_code >= 400 \
            else ""
        hit = Hit(at=at, took=time.monotonic() - started, who=self.name, step=step, method=method, path=path,
                  status=response.status_code, location=response.headers.get("Location"),
                  french_error_page=is_french_error_page(body), traceback=bool(TRACEBACK_RE.search(body)))
        if response.status_code >= 400 or hit.traceback:
            hit.excerpt = page_text(body)[:300]
        self.load.record(hit)
        return response

    def run(self) -> None:
        while not self.load.stop_event.is_set():
            try:
                self.once()
            except Exception as exc:  # a bug of the driver: recorded, never silent
                self.load.record(Hit(at=self.load.now(), took=0, who=self.name, step="driver", method="-",
                                     path="-", status=None, error=f"driver {type(exc).__name__}",
                                     excerpt=str(exc)[:300]))
                self.load.sleep(0.5)
            self.load.sleep(random.uniform(0.05, 0.25))

    def once(self) -> None:
        # What a person does in the load's loop; a person driven step by step (the Redis
        # test's burst) has none.
        raise NotImplementedError


def location_path(response: requests.Response | None) -> str | None:
    if response is None or response.status_code not in (301, 302, 303, 307, 308):
        return None
    return urlsplit(response.headers.get("Location", "")).path


def wait_for_mail(mailbox: WaitingMailbox, to: str, subject: str, since: int, timeout: float,
                  stop: threading.Event):
    deadline = time.monotonic() + timeout
    with mailbox.arrived:
        while True:
            for message in mailbox.messages[since:]:
                if message["To"] == to and subject in str(message["Subject"]):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or stop.is_set():
                return None
            mailbox.arrived.wait(min(left, 0.5))


class Professional(Person):
    """Logs in (password, then the emailed code) and asks for a ROR role with an attestation,
    then cancels it so that the next round may ask again."""

    TYPES = ("offre_new", "lits_new")

    def __init__(self, load: Load, number: int, *, big: bool) -> None:
        super().__init__(load)
        self.number = number
        self.email = professional_email(number)
        self.big = big
        self.name = f"{'big-' if big else ''}pro{number}"

    def attestation(self) -> tuple[str, bytes, str]:
        nonce = f"{self.name}-{self.iteration}-{random.getrandbits(64):016x}".encode()
        if self.big:  # a 6 MiB scan: the put to the store takes long enough to be caught
            content = b"BT /F1 18 Tf 72 720 Td (Attestation " + nonce + b") Tj ET\n%" + b"x" * (6 * 1024 * 1024)
            return "attestation-scannee.pdf", simple_pdf(content=content), "application/pdf"
        if self.iteration % 2:
            return "photo-attestation.png", noise_png(48, 36), "image/png"
        content = b"BT /F1 18 Tf 72 720 Td (Attestation signee " + nonce + b") Tj ET"
        return "attestation signée.pdf", simple_pdf(content=content), "application/pdf"

    def once(self) -> None:
        self.new_browser(self.number)
        if not self.log_in():
            return
        # The big uploader keeps sending scans while logged in: more puts in flight.
        for _ in range(4 if self.big else 1):
            if self.load.stop_event.is_set():
                return
            self.request_access()
            self.cancel_pending()
            self.iteration += 1

    def log_in(self) -> bool:
        page = self.call("login_form", "GET", "/login")
        if page is None or page.status_code != 200:
            return False
        mailbox = self.load.stack.mail.mailbox
        since = mailbox.mark()
        response = self.call("login_password", "POST", "/login", data={
            "csrf_token": csrf(page.text), "username": self.email, "password": PASSWORD,
            "next": field_value(page.text, "next") or ""})
        if location_path(response) != "/login/code":
            return False
        self.load.acks.add("logins", (self.email, self.load.now()))
        message = wait_for_mail(mailbox, self.email, CODE_SUBJECT, since, self.load.code_wait, self.load.stop_event)
        if message is None and self.load.stop_event.is_set():
            return False
        if message is None:
            self.load.record(Hit(at=self.load.now(), took=0, who=self.name, step="login_code_mail", method="-",
                                 path="-", status=None, error="code not received yet"))
            return False
        page = self.call("login_code_form", "GET", "/login/code")
        if page is None or page.status_code != 200:
            return False
        response = self.call("login_code", "POST", "/login/code",
                             data={"csrf_token": csrf(page.text), "code": login_code_in(message)})
        return location_path(response) is not None

    def accept_cgu(self) -> bool:
        """The terms of use, when the portal asks for them (a newer version was published)."""
        page = self.call("cgu_form", "GET", "/account/cgu")
        if page is None or page.status_code != 200:
            return False
        response = self.call("cgu", "POST", "/account/cgu", data={"csrf_token": csrf(page.text), "accept": "y",
                                                                 "next": field_value(page.text, "next") or ""})
        return location_path(response) is not None

    def request_access(self) -> None:
        page = self.call("access_form", "GET", "/access/ror")
        if location_path(page) == "/account/cgu" and self.accept_cgu():
            page = self.call("access_form", "GET", "/access/ror")
        if page is None or page.status_code != 200:
            return
        name, content, mimetype = self.attestation()
        request_type = self.TYPES[self.iteration % 2]
        data = {"csrf_token": csrf(page.text), "request_type": request_type, "establishment": FINESS,
                **captcha_fields(page.text)}
        at = self.load.now()
        response = self.call("access_request", "POST", "/access/ror", data=data,
                             files={"attestation": (name, content, mimetype)})
        attempt = {"email": self.email, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content),
                   "type": request_type, "sent_at": at, "at": self.load.now(), "who": self.name,
                   "status": response.status_code if response is not None else None}
        self.load.acks.add("upload_attempts", attempt)
        if location_path(response) == "/access/ror/merci":
            self.load.acks.add("uploads", attempt)

    def cancel_pending(self) -> None:
        page = self.call("my_requests", "GET", "/access/")
        if page is None or page.status_code != 200:
            return
        for request_id in re.findall(r'action="/access/(\d+)/cancel"', page.text):
            self.call("access_cancel", "POST", f"/access/{request_id}/cancel", data={"csrf_token": csrf(page.text)})


class Registrant(Person):
    """A newcomer filling the registration form (J1)."""

    def __init__(self, load: Load, number: int) -> None:
        super().__init__(load)
        self.number = number
        self.name = f"registrant{number}"

    def once(self) -> None:
        self.new_browser(200 + self.number)
        page = self.call("register_form", "GET", "/register")
        if page is None or page.status_code != 200:
            return
        email = f"inscription-{self.number}-{self.iteration}-{random.getrandbits(32):08x}@esante-faults.fr"
        data = {"csrf_token": csrf(page.text), **captcha_fields(page.text),
                **registration_data(email=email, email_confirm=email, last_name=f"Panne{self.iteration}",
                                    first_name="Camille")}
        response = self.call("register", "POST", "/register", data=data)
        if location_path(response) == "/register/sent":
            self.load.acks.add("registrations", (email, self.load.now()))


# -- after recovery ---------------------------------------------------------------------------------


def wait_outbox_settled(stack: Stack, timeout: float, notes: dict) -> list[tuple]:
    """Wait until every outbox message is sent and received; the rows still waiting.

    A message claimed by a process that then died stays "sending" until its claim
    expires (portal.mail.CLAIM_SECONDS, 2 minutes) before any process retries it. Rather
    than wait that long, once nothing else moves for 5 seconds the suite expires such
    claims itself (as the clock would) and notes which messages they were."""
    deadline = time.monotonic() + timeout
    waiting: list[tuple] = []
    stuck_since: dict[int, float] = {}
    while time.monotonic() < deadline:
        try:
            waiting = pg_query(DATABASE, "SELECT id, recipient, subject, status, attempts, next_attempt_at, "
                                         "claimed_until, last_error FROM mail_outbox WHERE status <> 'sent'")
        except Exception as exc:  # the database may still be coming back
            waiting = [(-1, "query failed", str(exc))]
        if not waiting:
            sent = {row[0] for row in pg_query(DATABASE, "SELECT message_id FROM mail_outbox")}
            with stack.mail.mailbox.lock:
                received = {str(m["Message-ID"]) for m in stack.mail.mailbox.messages}
            if sent <= received:
                return []
        current = time.monotonic()
        claimed = [row for row in waiting if len(row) > 3 and row[3] == "sending"]
        for row in claimed:
            stuck_since.setdefault(row[0], current)
        expired = [row for row in claimed if current - stuck_since[row[0]] >= 5]
        if expired and len(expired) == len(waiting):
            notes.setdefault("claims_expired_by_the_suite", []).extend(
                f"{row[0]} to {row[1]} ({row[2]}), claimed until {row[6]:%H:%M:%S}" for row in expired)
            notes.setdefault("claims_expired_ids", []).extend(row[0] for row in expired)
            ids = ",".join(str(row[0]) for row in expired)
            pg_query(DATABASE, f"UPDATE mail_outbox SET claimed_until = (now() at time zone 'utc') "
                               f"- interval '1 second' WHERE id IN ({ids}) AND status = 'sending' RETURNING id")
            for row in expired:
                stuck_since.pop(row[0], None)
        time.sleep(0.5)
    return waiting


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Outcome:
    """The state after recovery, and what the people saw on the way."""

    load: Load
    stack: Stack
    notes: dict = field(default_factory=dict)  # what the scenario measured (times, pids…)

    def __post_init__(self) -> None:
        self.requests = pg_query(DATABASE, "SELECT r.id, u.email, r.attestation_key, r.attestation_sha256, "
                                           "r.attestation_size, r.status FROM access_requests r "
                                           "JOIN users u ON u.id = r.user_id")
        self.users = Counter(row[0] for row in pg_query(DATABASE, "SELECT email FROM users"))
        self.outbox = pg_query(DATABASE, "SELECT id, recipient, subject, message_id, status, attempts, "
                                         "extract(epoch FROM sent_at - created_at) FROM mail_outbox")
        failed = [h for h in self.load.hits if h.step not in ("driver", "login_code_mail")
                  and (h.status is None or h.status >= 500)]
        if failed:
            self.notes["errors_answered_between"] = (round(min(h.at + h.took for h in failed), 2),
                                                     round(max(h.at + h.took for h in failed), 2))
        self.notes["email_attempts"] = dict(Counter(row[5] for row in self.outbox))
        errors = pg_query(DATABASE, "SELECT attempts, subject, last_error FROM mail_outbox WHERE attempts > 2")
        if errors:
            self.notes["emails_tried_3_times_or_more"] = [str(row)[:200] for row in errors[:5]]
        self.notes["slowest_email_s"] = round(max((float(row[6] or 0) for row in self.outbox), default=0), 1)
        with self.stack.mail.mailbox.lock:
            mailbox = self.stack.mail.mailbox
            self.received = [(str(m["To"]), str(m["Subject"]), str(m["Message-ID"]))
                             for m in mailbox.messages]
            self.accepted_at: dict[str, list[float]] = {}
            for (_, _, message_id), at in zip(self.received, mailbox.accepted_at, strict=True):
                self.accepted_at.setdefault(message_id, []).append(at)
        root = self.stack.store_root
        self.files = {}
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file():
                self.files[path.relative_to(root).as_posix()] = path

    # -- checks: each returns the problems found, in words ----------------------------------------

    def lost(self) -> list[str]:
        """Acknowledged registrations, requests, uploads and emails not there exactly once."""
        problems = []
        by_sha = defaultdict(list)
        for row in self.requests:
            by_sha[row[3]].append(row)
        for ack in self.load.acks.uploads:
            rows = by_sha.get(ack["sha256"], [])
            if len(rows) != 1 or rows[0][1] != ack["email"]:
                problems.append(f"acknowledged upload of {ack['email']} at {ack['at']:.1f} s "
                                f"(sha256 {ack['sha256'][:12]}…) is in the database {len(rows)} time(s)")
        for email, at in self.load.acks.registrations:
            if self.users[email] != 1:
                problems.append(f"acknowledged registration {email} at {at:.1f} s is in the database "
                                f"{self.users[email]} time(s)")
            mails = self.outbox_count(email, REGISTRATION_SUBJECT)
            if mails != 1:
                problems.append(f"acknowledged registration {email}: {mails} verification email(s) queued")
        logins = Counter(email for email, _ in self.load.acks.logins)
        for email, acknowledged in logins.items():
            queued = self.outbox_count(email, CODE_SUBJECT)
            if queued < acknowledged:
                problems.append(f"{email}: {acknowledged} logins acknowledged (\"code sent\") but {queued} "
                                f"code emails queued")
        requests_of = Counter(row[1] for row in self.requests)
        for email in {ack["email"] for ack in self.load.acks.uploads} | set(requests_of):
            mails = self.outbox_count(email, ACCESS_SUBJECT)
            if mails != requests_of[email]:
                problems.append(f"{email}: {requests_of[email]} access requests stored but {mails} "
                                f"\"demande reçue\" emails queued")
        return problems

    def stored_although_refused(self) -> list[str]:
        """Uploads whose person was shown an error although the request was stored: not
        a loss, but the person believes it failed."""
        stored = {row[3] for row in self.requests}
        return [f"{a['who']} at {a['sent_at']:.1f} s: answered {a['status']}, stored all the same"
                for a in self.load.acks.upload_attempts
                if a["sha256"] in stored and (a["status"] is None or a["status"] >= 400)]

    def outbox_count(self, email: str, subject: str) -> int:
        return sum(1 for row in self.outbox if row[1] == email and subject in row[2])

    def row_problems(self) -> list[str]:
        """Rows whose file is missing or differs from what the row says."""
        problems = []
        for request_id, email, key, sha, size, _status in self.requests:
            path = self.files.get(key)
            if path is None:
                problems.append(f"access request {request_id} ({email}): its file {key} is missing")
            elif path.stat().st_size != size or sha256_of(path) != sha:
                problems.append(f"access request {request_id} ({email}): its file {key} differs from the row "
                                f"({path.stat().st_size} bytes)")
        return problems

    def debris(self) -> list[tuple[str, str, int, float]]:
        """Files no row refers to: (kind, name, size, mtime)."""
        keys = {row[2] for row in self.requests}
        found = []
        for name, path in self.files.items():
            if name in keys:
                continue
            info = path.stat()
            kind = "half-written temporary file" if name.rsplit("/", 1)[-1].startswith(".") else \
                "empty reserved key (half-written)" if info.st_size == 0 else "orphan file (no row)"
            found.append((kind, name, info.st_size, info.st_mtime))
        return found

    def store_problems(self) -> list[str]:
        """Rows without their file, files without their row, half-written files."""
        return self.row_problems() + [f"{kind}: {name} ({size} bytes)" for kind, name, size, _ in self.debris()]

    def email_problems(self) -> list[str]:
        """Outbox messages not delivered, delivered more than once, or mail from nowhere.

        One duplicate is not a problem: the message whose sender was killed (kill -9)
        after the SMTP server accepted it and before the process recorded it as sent.
        Nothing can tell, afterwards, whether such a message went out; the outbox sends it
        again once its claim expires, with the same Message-ID (mail clients that dedupe
        by Message-ID show it once). That window is a few milliseconds per message; the
        suite recognises it strictly (see `_resent_after_its_sender_was_killed`) and
        notes it."""
        problems = []
        received = Counter(message_id for _, _, message_id in self.received)
        queued = {row[3]: row for row in self.outbox}
        excused = [message_id for message_id, count in received.items()
                   if count > 1 and self._resent_after_its_sender_was_killed(message_id, queued.get(message_id))]
        if len(excused) > 1:  # one delivery thread per process: at most one message in its hands
            problems.append(f"{len(excused)} emails sent again after the kill, one at most can be: {excused}")
        elif excused:
            self.notes["sent_again_after_its_sender_was_killed"] = excused[0]
        for message_id, count in received.items():
            if count > 1 and message_id not in excused[:1]:
                row = queued.get(message_id)
                problems.append(f"duplicate email: {message_id} received {count} times "
                                f"({row[1] if row else '?'}: {row[2] if row else '?'})")
            if message_id not in queued:
                problems.append(f"email {message_id} received but not in the outbox")
        for message_id, row in queued.items():
            if row[4] != "sent":
                problems.append(f"outbox message {row[0]} to {row[1]} ({row[2]}) still {row[4]} after "
                                f"{row[5]} attempt(s)")
            elif received[message_id] == 0:
                problems.append(f"outbox message {row[0]} to {row[1]} ({row[2]}) marked sent, never received")
        return problems

    def _resent_after_its_sender_was_killed(self, message_id: str, row: tuple | None) -> bool:
        """Received twice: first just before the kill, then after the suite expired the
        claim the dead process held, as its second attempt."""
        killed_at = self.notes.get("killed_at_wall")
        times = sorted(self.accepted_at.get(message_id, []))
        return (killed_at is not None and row is not None and len(times) == 2
                and row[5] == 2 and row[0] in self.notes.get("claims_expired_ids", [])
                and killed_at - 1.0 <= times[0] <= killed_at < times[1])

    def page_problems(self) -> list[str]:
        """Tracebacks, and errors shown otherwise than on the portal's French error page."""
        problems = []
        for hit in self.load.hits:
            if hit.traceback:
                problems.append(f"{hit.who} {hit.method} {hit.path} at {hit.at:.1f} s: {hit.status} with a "
                                f"traceback: {hit.excerpt}")
            elif hit.status is not None and hit.status >= 500 and not hit.french_error_page:
                problems.append(f"{hit.who} {hit.method} {hit.path} at {hit.at:.1f} s: {hit.status} without the "
                                f"French error page: {hit.excerpt}")
        return problems

    def driver_errors(self) -> list[str]:
        return [f"{h.who}: {h.error}: {h.excerpt}" for h in self.load.hits if h.step == "driver"]

    def statuses(self, start: float = float("-inf"), end: float = float("inf")) -> Counter:
        return Counter(h.status if h.status is not None else h.error for h in self.load.hits
                       if start <= h.at <= end and h.step != "login_code_mail")

    def describe(self) -> str:
        acks = self.load.acks
        refused = self.stored_although_refused()
        if refused:
            self.notes["stored_although_refused"] = refused
        return (f"{len(self.load.hits)} responses ({self.load.summary()}); acknowledged: {len(acks.logins)} "
                f"logins, {len(acks.uploads)} uploads, {len(acks.registrations)} registrations; "
                f"{len(self.outbox)} emails queued, {len(self.received)} received; {len(self.files)} files; "
                f"notes: {self.notes}")

    def save(self) -> None:
        """The responses and the summary, for whoever reads a CI failure."""
        self.stack.artifacts.mkdir(parents=True, exist_ok=True)
        with (self.stack.artifacts / "responses.jsonl").open("w") as out:
            for hit in sorted(self.load.hits, key=lambda h: h.at):
                out.write(json.dumps(hit.__dict__, ensure_ascii=False) + "\n")
        (self.stack.artifacts / "summary.txt").write_text(self.describe() + "\n", encoding="utf-8")


def assert_none(problems: list[str], what: str, outcome: Outcome) -> None:
    assert not problems, f"{what}:\n  " + "\n  ".join(problems[:30]) + f"\n({outcome.describe()})"


def run_scenario(stack: Stack, load: Load, fault: Callable[[Load, dict], None], *, warmup: float,
                 after: float, settle: float) -> Outcome:
    """The load, the fault in the middle of it, the load again, then the state after
    recovery (the outbox given `settle` seconds to drain)."""
    notes: dict = {"ready_after_s": stack.ready_after}
    load.start()
    try:
        load.sleep(warmup)
        notes["fault_start"] = round(load.now(), 2)
        fault(load, notes)
        notes["fault_end"] = round(load.now(), 2)
        load.sleep(after)
    finally:
        load.stop()
    notes["load_end"] = round(load.now(), 2)
    stuck = wait_outbox_settled(stack, settle, notes)
    notes["settled_at"] = round(load.now(), 2)
    if stuck:
        notes["outbox_not_settled"] = [str(row)[:200] for row in stuck[:5]]
    outcome = Outcome(load, stack, notes)
    outcome.save()
    return outcome


def iter_until(timeout: float, interval: float = 0.2) -> Iterator[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        yield deadline - time.monotonic()
        time.sleep(interval)
