"""The production shape of docs/deploy.md: two `enrs serve --prod` behind nginx, with TLS.

`ProxiedStack` puts Debian's nginx with the guide's own block (tests/proxy.py) in front
of two gunicorns, so that the guide's proxy is the one tested: `X-Forwarded-*` set by
nginx and believed by the portal from its one trusted proxy, the body size, `/metrics`
refused, HSTS and `__Host-` cookies over HTTPS. The people of the load each connect from
their own loopback address (127.N.x.y), as clients on a network would, and forge the
X-Forwarded-* headers that nginx overwrites or passes on.

`release(i)` rolls process i as the guide's "Upgrades" says: taken out of the upstream
(`down`, reload), stopped with SIGTERM once nginx's former workers are done, started
again, put back once its /readyz answers.
"""
from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from tests.conftest import port_outside_ephemeral_range
from tests.faults.support import READY_TIMEOUT, REPO, Stack, enrs_command, iter_until, unprivileged
from tests.processes import children_of, log_tail
from tests.proxy import Nginx

FORGED_ADDRESS = "198.51.100.66"  # what a client claims in its own X-Forwarded-For
# What else a client may forge that nginx passes on as it came (the guide's block sets
# Host, not these): the portal must not believe them (its ProxyFix takes For and Proto).
FORGED_HEADERS = {"X-Forwarded-For": FORGED_ADDRESS, "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "8443"}


class BoundAdapter(HTTPAdapter):
    """Connections from a given local address: a client of its own on the network."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        return super().init_poolmanager(*args, **kwargs)


@dataclass
class ProxiedStack(Stack):
    """nginx (TLS, the guide's block) in front of two `enrs serve --prod` of 2 workers each,
    and one `enrs worker`; in production mode, as the portal's public https URL is."""

    backend_ports: list[int] = field(default_factory=lambda: [port_outside_ephemeral_range() for _ in range(2)])
    servers: list[subprocess.Popen | None] = field(default_factory=lambda: [None, None])
    starts: list[int] = field(default_factory=lambda: [0, 0])

    def __post_init__(self) -> None:
        self.proxy = Nginx(self.root / "nginx", self.backend_ports, port=self.port)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_bundle(self) -> str:
        return self.proxy.ca_bundle

    def env(self) -> dict[str, str]:
        return {**super().env(), "ENRS_ENV": "production"}

    def browser(self, number: int, iteration: int) -> tuple[requests.Session, str]:
        address = f"127.{number}.{iteration // 250}.{iteration % 250 + 1}"
        http = requests.Session()
        # Not the environment's: a REQUESTS_CA_BUNDLE there would win over the session's own.
        http.trust_env = False
        http.verify = self.ca_bundle
        http.mount("https://", BoundAdapter(address))
        http.headers.update(FORGED_HEADERS)
        # Over HTTPS, a form is accepted only with a Referer of the portal's own origin
        # (Flask-WTF's check; browsers send it, Referrer-Policy: same-origin).
        http.headers["Referer"] = self.base_url + "/"
        return http, address

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base_url + path, verify=self.ca_bundle, timeout=10, **kwargs)

    # -- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        self.store_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        for index in range(len(self.backend_ports)):
            self.start_backend(index)
        with (self.artifacts / "worker.log").open("w") as log:
            self.worker = subprocess.Popen([*unprivileged(), *enrs_command(), "worker", "--interval", "1"],
                                           env=self.process_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        for index in range(len(self.backend_ports)):
            self.wait_backend_ready(index)
        self.proxy.start()
        for _ in iter_until(10, 0.1):
            if self.readyz()[0] == 200:
                break
        else:
            raise AssertionError(f"nginx does not pass /readyz on: {self.readyz()}")
        self.ready_after = round(time.monotonic() - began, 2)

    def start_backend(self, index: int) -> None:
        self.starts[index] += 1
        log_path = self.artifacts / f"gunicorn-{index}-{self.starts[index]}.log"
        with log_path.open("w") as log:
            self.servers[index] = subprocess.Popen(
                [*unprivileged(), *enrs_command(), "serve", "--prod", "--workers", "2", "--threads", "4",
                 "--host", "127.0.0.1", "--port", str(self.backend_ports[index])],
                env=self.process_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.server = self.servers[0]

    def wait_backend_ready(self, index: int, timeout: float = READY_TIMEOUT) -> None:
        server, url = self.servers[index], f"http://127.0.0.1:{self.backend_ports[index]}/readyz"
        last: object = None
        for _ in iter_until(timeout, 0.2):
            if server.poll() is not None:
                raise AssertionError(f"`enrs serve --prod` exited ({server.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(url, timeout=3).status_code == 200 and len(children_of(server.pid)) == 2:
                    return
            except requests.RequestException as exc:
                last = exc
        raise AssertionError(f"process {index} not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def release(self, index: int, notes: dict) -> None:
        """Process `index` rolled as docs/deploy.md's "Upgrades" says."""
        port = self.backend_ports[index]
        self.proxy.taken_out.add(port)
        notes[f"drained_{index}_s"] = self.proxy.reload()
        server = self.servers[index]
        server.send_signal(signal.SIGTERM)
        notes[f"stopped_{index}_rc"] = server.wait(timeout=40)
        self.start_backend(index)
        self.wait_backend_ready(index)
        self.proxy.taken_out.discard(port)
        notes[f"back_{index}_s"] = self.proxy.reload()

    def worker_pids(self) -> list[int]:
        return [pid for server in self.servers if server is not None for pid in children_of(server.pid)]

    def gunicorn_logs(self) -> list[Path]:
        return sorted(self.artifacts.glob("gunicorn-*.log"))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"== {path.name}\n{log_tail(path, lines)}" for path in self.gunicorn_logs())

    def logged_tracebacks(self) -> int:
        return sum(path.read_text(errors="replace").count("Traceback (most recent call last)")
                   for path in [*self.gunicorn_logs(), self.artifacts / "worker.log"] if path.exists())

    def processes(self) -> list[subprocess.Popen | None]:
        return [self.worker, *self.servers]

    def stop(self) -> None:
        self.proxy.stop(keep_logs_in=self.artifacts)
        super().stop()
        self.servers = [None] * len(self.backend_ports)
