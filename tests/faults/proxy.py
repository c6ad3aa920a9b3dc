"""The production shape of docs/deploy.md: two `enrs serve --prod` behind nginx, with TLS.

`ProxiedStack` runs Debian's nginx with the configuration block of docs/deploy.md itself
(only the addresses, the certificate and the upstream's servers put in), so that the
guide's proxy is the one tested: `X-Forwarded-*` set by nginx and believed by the portal
from its one trusted proxy, the body size, `/metrics` refused, HSTS and `__Host-` cookies
over HTTPS. The people of the load each connect from their own loopback address
(127.N.x.y), as clients on a network would, and send a forged X-Forwarded-For that nginx
must overwrite.

`release(i)` rolls process i as the guide's "Upgrades" says: taken out of the upstream
(`down`, reload), stopped with SIGTERM once nginx's former workers are done, started
again, put back once its /readyz answers.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from tests.faults.support import READY_TIMEOUT, REPO, Stack, children_of, enrs_command, iter_until, unprivileged
from tests.processes import log_tail

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOY_GUIDE = REPO / "docs" / "deploy.md"
FORGED_ADDRESS = "198.51.100.66"  # what a client claims in its own X-Forwarded-For
# What else a client may forge that nginx passes on as it came (the guide's block sets
# Host, not these): the portal must not believe them (its ProxyFix takes For and Proto).
FORGED_HEADERS = {"X-Forwarded-For": FORGED_ADDRESS, "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "8443"}


def guide_nginx_block() -> str:
    """The nginx configuration of docs/deploy.md, as the guide prints it."""
    found = re.search(r"```nginx\n(.*?)```", DEPLOY_GUIDE.read_text(encoding="utf-8"), re.S)
    assert found, f"no nginx block in {DEPLOY_GUIDE}"
    return found.group(1)


def guide_config_for(port: int, cert: Path, key: Path, backends: dict[int, bool]) -> str:
    """The guide's block with this machine's addresses: `backends` maps each process's
    port to whether it is taken out (`down`)."""
    block = guide_nginx_block()
    servers = "".join(f"    server 127.0.0.1:{p}{' down' if down else ''};\n" for p, down in backends.items())
    replaced = {
        r"(upstream enrs \{\n)(?:    server [^\n]*\n)+": lambda m: m.group(1) + servers,
        r"listen 443 ssl http2;": lambda m: f"listen 127.0.0.1:{port} ssl http2;",
        r"ssl_certificate     \S+;": lambda m: f"ssl_certificate     {cert};",
        r"ssl_certificate_key \S+;": lambda m: f"ssl_certificate_key {key};",
    }
    for pattern, by in replaced.items():
        block, count = re.subn(pattern, by, block)
        assert count == 1, f"docs/deploy.md's nginx block changed shape: {pattern!r} matched {count} times"
    return block


def port_outside_ephemeral_range() -> int:
    """A free port that no outgoing connection can take as its source port meanwhile: a
    process stopped for its release gets its own port back."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


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
    taken_out: set[int] = field(default_factory=set)
    proxy: subprocess.Popen | None = None
    starts: list[int] = field(default_factory=lambda: [0, 0])

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def nginx_dir(self) -> Path:
        return self.root / "nginx"

    @property
    def ca_bundle(self) -> str:
        return str(self.nginx_dir / "fullchain.pem")

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

    def readyz(self) -> tuple[int | None, dict | None]:
        try:
            response = self.get("/readyz")
        except requests.RequestException:
            return None, None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    # -- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        if not Path(NGINX).exists():
            raise AssertionError("nginx is needed for this test: apt-get install nginx-light (.ci/run does)")
        began = time.monotonic()
        self.store_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.nginx_dir.mkdir()
        self.cert, self.key = self_signed(self.nginx_dir)
        for index in range(len(self.backend_ports)):
            self.start_backend(index)
        with (self.artifacts / "worker.log").open("w") as log:
            self.worker = subprocess.Popen([*unprivileged(), *enrs_command(), "worker", "--interval", "1"],
                                           env=self.process_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        for index in range(len(self.backend_ports)):
            self.wait_backend_ready(index)
        self.write_proxy_config()
        self.check_proxy_config()
        with (self.artifacts / "nginx.stderr").open("w") as log:
            # A session of its own: nginx's workers outlive a killed master, holding the port.
            self.proxy = subprocess.Popen([*self.nginx_command()], stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        for _ in iter_until(10, 0.1):
            if self.readyz()[0] == 200:
                break
        else:
            raise AssertionError(f"nginx does not answer:\n{log_tail(self.artifacts / 'nginx.stderr')}\n"
                                 f"{log_tail(self.nginx_dir / 'error.log')}")
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

    def write_proxy_config(self) -> None:
        folder = self.nginx_dir
        backends = {port: index in self.taken_out for index, port in enumerate(self.backend_ports)}
        (folder / "nginx.conf").write_text(f"""
daemon off;
# The suite runs as root; nginx's workers would otherwise become `nobody`, who cannot
# enter this temporary folder.
user root root;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
{guide_config_for(self.port, self.cert, self.key, backends)}
}}
""", encoding="utf-8")

    def nginx_command(self, *options: str) -> list[str]:
        folder = self.nginx_dir
        return [NGINX, *options, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(folder / "nginx.conf")]

    def check_proxy_config(self) -> None:
        check = subprocess.run(self.nginx_command("-t"), capture_output=True, text=True)
        assert check.returncode == 0, check.stderr

    def nginx_workers(self) -> list[int]:
        return children_of(self.proxy.pid) if self.proxy else []

    def reload_proxy(self, timeout: float = 40) -> float:
        """`nginx -s reload`, then wait until the former workers are gone: from then on no
        request routed by the former configuration is in flight. Returns the seconds waited."""
        started = time.monotonic()
        before = set(self.nginx_workers())
        self.check_proxy_config()
        self.proxy.send_signal(signal.SIGHUP)
        for _ in iter_until(timeout, 0.05):
            workers = set(self.nginx_workers())
            if workers and not workers & before:
                return round(time.monotonic() - started, 2)
        raise AssertionError(f"nginx's former workers still there after {timeout} s")

    def release(self, index: int, notes: dict) -> None:
        """Process `index` rolled as docs/deploy.md's "Upgrades" says."""
        self.taken_out.add(index)
        self.write_proxy_config()
        notes[f"drained_{index}_s"] = self.reload_proxy()
        server = self.servers[index]
        server.send_signal(signal.SIGTERM)
        notes[f"stopped_{index}_rc"] = server.wait(timeout=40)
        self.start_backend(index)
        self.wait_backend_ready(index)
        self.taken_out.discard(index)
        self.write_proxy_config()
        notes[f"back_{index}_s"] = self.reload_proxy()

    def worker_pids(self) -> list[int]:
        return [pid for server in self.servers if server is not None for pid in children_of(server.pid)]

    def gunicorn_logs(self) -> list[Path]:
        return sorted(self.artifacts.glob("gunicorn-*.log"))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"== {path.name}\n{log_tail(path, lines)}" for path in self.gunicorn_logs())

    def logged_tracebacks(self) -> int:
        return sum(path.read_text(errors="replace").count("Traceback (most recent call last)")
                   for path in [*self.gunicorn_logs(), self.artifacts / "worker.log"] if path.exists())

    def stop(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGQUIT)  # graceful: the requests in flight end first
            try:
                self.proxy.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proxy.pid, signal.SIGKILL)
                self.proxy.wait(timeout=10)
        for name in ("error.log", "access.log"):
            if (self.nginx_dir / name).exists():
                shutil.copy(self.nginx_dir / name, self.artifacts / f"nginx-{name}")
        processes = [self.worker, *self.servers]
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
        self.proxy = self.worker = self.server = None
        self.servers = [None] * len(self.backend_ports)

