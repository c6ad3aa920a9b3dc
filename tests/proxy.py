"""Debian's nginx configured with the block of docs/deploy.md itself, for the suites that
put the portal behind the guide's proxy: the rolling release of the fault suite
(tests/faults/proxy.py) and the browser over HTTPS (tests/e2e/test_https_behind_the_proxy.py).

Only the listening address, the certificate (self-signed, made here) and the upstream's
servers are put into the guide's block; the rest is the guide's, so that a change there
is what the suites test.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import port_outside_ephemeral_range
from tests.processes import children_of, log_tail

REPO = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOY_GUIDE = REPO / "docs" / "deploy.md"


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


@dataclass
class Nginx:
    """nginx on https://127.0.0.1:`port` in front of the portals on `backend_ports`."""

    folder: Path
    backend_ports: list[int]
    port: int = field(default_factory=port_outside_ephemeral_range)
    taken_out: set[int] = field(default_factory=set)  # ports marked `down`
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_bundle(self) -> str:
        return str(self.folder / "fullchain.pem")

    def command(self, *options: str) -> list[str]:
        folder = self.folder
        return [NGINX, *options, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(folder / "nginx.conf")]

    def write_config(self) -> None:
        folder = self.folder
        backends = {port: port in self.taken_out for port in self.backend_ports}
        (folder / "nginx.conf").write_text(f"""
daemon off;
# The suites run as root; nginx's workers would otherwise become `nobody`, who cannot
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
{guide_config_for(self.port, self.folder / "fullchain.pem", self.folder / "privkey.pem", backends)}
}}
""", encoding="utf-8")
        check = subprocess.run(self.command("-t"), capture_output=True, text=True)
        assert check.returncode == 0, check.stderr

    def start(self) -> None:
        if not Path(NGINX).exists():
            raise AssertionError("nginx is needed here: apt-get install nginx-light (.ci/run does)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self_signed(self.folder)
        self.write_config()
        with (self.folder / "stderr.log").open("w") as log:
            # A session of its own: nginx's workers outlive a killed master, holding the port.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"nginx did not start:\n{log_tail(self.folder / 'stderr.log')}\n"
                             f"{log_tail(self.folder / 'error.log')}")

    def workers(self) -> list[int]:
        return children_of(self.process.pid) if self.process else []

    def reload(self, timeout: float = 40) -> float:
        """The configuration written again and `nginx -s reload`, then wait until the former
        workers are gone: from then on no request routed by the former configuration is in
        flight. Returns the seconds waited."""
        started = time.monotonic()
        before = set(self.workers())
        self.write_config()
        self.process.send_signal(signal.SIGHUP)
        while time.monotonic() - started < timeout:
            workers = set(self.workers())
            if workers and not workers & before:
                return round(time.monotonic() - started, 2)
            time.sleep(0.05)
        raise AssertionError(f"nginx's former workers still there after {timeout} s")

    def stop(self, keep_logs_in: Path | None = None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: the requests in flight end first
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
        if keep_logs_in is not None:
            keep_logs_in.mkdir(parents=True, exist_ok=True)
            for name in ("error.log", "access.log", "stderr.log"):
                if (self.folder / name).exists():
                    shutil.copy(self.folder / name, keep_logs_in / f"nginx-{name}")
