"""Eight concurrent 12 MB attestation uploads to a real portal process (`enrs serve`):
the server's peak resident memory before and after, and the upload throughput next to a
plain copy of the same file on this disk, measured in the same run.

Each upload comes from its own professional (one pending request per user, role and
establishment), logged in with the code read from the development mail folder, and
passes the image captcha like the browser tests do (the code is derived from the
challenge id with the portal's key).
"""
from __future__ import annotations

import email
import glob
import http.cookiejar
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from email import policy
from pathlib import Path

UPLOADS = 8
SIZE = 12 * 1024 * 1024
PASSWORD = "Hopital-Dreux-2026"
ROOT = Path(__file__).resolve().parent.parent
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
CAPTCHA_RE = re.compile(r'name="captcha_id" value="([^"]+)"')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _multipart(fields: dict[str, str], file_path: Path) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="attestation"; filename="attestation.pdf"\r\n'
                 f"Content-Type: application/pdf\r\n\r\n".encode())
    parts.append(file_path.read_bytes())
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _pdf_of_size(size: int) -> bytes:
    sys.path.insert(0, str(ROOT))
    from tests.attestation_samples import pdf_of_size

    return pdf_of_size(size)


def run() -> dict[str, object]:
    enrs = str(ROOT / ".venv" / "bin" / "enrs")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ENRS_ENV": "development", "ENRS_INSTANCE_DIR": tmp,
               "ENRS_BASE_URL": f"http://127.0.0.1:{port}", "ENRS_SECRET_KEY": "bench-" + "u" * 40}
        env = {k: v for k, v in env.items() if not k.startswith("ENRS_TEST_")}
        subprocess.run([enrs, "db", "upgrade"], env=env, check=True, capture_output=True)
        subprocess.run([enrs, "demo"], env=env, check=True, capture_output=True)
        logins = []
        for i in range(UPLOADS):
            out = subprocess.run([enrs, "user", "create", "--email", f"pro{i}@esante-bench.fr", "--password", PASSWORD,
                                  "--first-name", "Claire", "--last-name", f"Durand{i}", "--finess", "280503848"],
                                 env=env, check=True, capture_output=True, text=True)
            logins.append((out.stdout.strip(), f"pro{i}@esante-bench.fr"))
        server = subprocess.Popen([enrs, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    urllib.request.urlopen(base + "/", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            sys.path.insert(0, str(ROOT))
            os.environ.update({k: v for k, v in env.items() if k.startswith("ENRS_")})
            from onboarding.captcha import code_for
            from portal.app import create_app

            app = create_app({k: v for k, v in env.items() if k.startswith("ENRS_")})
            pdf_path = Path(tmp) / "attestation.pdf"
            pdf_path.write_bytes(_pdf_of_size(SIZE))

            prepared = []
            for login, address in logins:
                opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
                page = opener.open(base + "/login").read().decode()
                opener.open(base + "/login", urllib.parse.urlencode({
                    "csrf_token": CSRF_RE.search(page).group(1), "username": login, "password": PASSWORD}).encode())
                code = _code_for(tmp, address)
                page = opener.open(base + "/login/code").read().decode()
                opener.open(base + "/login/code", urllib.parse.urlencode({
                    "csrf_token": CSRF_RE.search(page).group(1), "code": code}).encode())
                page = opener.open(base + "/access/ror").read().decode()
                if "/account/cgu" in page or "conditions générales" in page and "J'accepte" in page:
                    page = _accept_cgu(opener, base, page)
                challenge = CAPTCHA_RE.search(page).group(1)
                with app.app_context():
                    answer = code_for(challenge)
                fields = {"csrf_token": CSRF_RE.search(page).group(1), "request_type": "offre_new",
                          "establishment": "280503848", "captcha_id": challenge, "captcha_answer": answer}
                prepared.append((opener, _multipart(fields, pdf_path)))

            rss_before = _peak_rss_kib(server.pid)
            statuses: list[int] = []

            def upload(opener, body_and_type):
                body, content_type = body_and_type
                request = urllib.request.Request(base + "/access/ror", data=body,
                                                 headers={"Content-Type": content_type})
                with opener.open(request) as response:  # follows the 303 to "MERCI !"
                    statuses.append(response.status if response.geturl().endswith("/access/ror/merci") else 0)

            started = time.perf_counter()
            threads = [threading.Thread(target=upload, args=item) for item in prepared]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            rss_after = _peak_rss_kib(server.pid)

            copy_started = time.perf_counter()
            for i in range(UPLOADS):
                shutil.copyfile(pdf_path, Path(tmp) / f"copy{i}.pdf")
                os.sync()
            copy_elapsed = time.perf_counter() - copy_started
        finally:
            server.terminate()
            server.wait(timeout=10)
    megabytes = UPLOADS * SIZE / 1024 / 1024
    return {
        "uploads": UPLOADS, "file_mib": 12, "accepted": statuses.count(200),
        "server_peak_rss_before_mib": round(rss_before / 1024, 1),
        "server_peak_rss_after_mib": round(rss_after / 1024, 1),
        "peak_rss_increase_mib": round((rss_after - rss_before) / 1024, 1),
        "upload_mib_per_s": round(megabytes / elapsed, 1),
        "plain_copy_mib_per_s": round(megabytes / copy_elapsed, 1),
        "target": "peak RSS increase < 40 MiB for 8 concurrent 12 MB uploads",
    }


def _code_for(instance: str, address: str) -> str:
    for _ in range(200):
        for path in sorted(glob.glob(f"{instance}/mail/*.eml"), reverse=True):
            message = email.message_from_bytes(Path(path).read_bytes(), policy=policy.default)
            if message["To"] == address:
                text = message.get_body(preferencelist=("plain",)).get_content()
                return re.search(r"unique est : (\d{6})", text).group(1)
        time.sleep(0.05)
    raise RuntimeError(f"no login code for {address}")


def _accept_cgu(opener, base: str, page: str) -> str:
    opener.open(base + "/account/cgu", urllib.parse.urlencode({
        "csrf_token": CSRF_RE.search(page).group(1), "accept": "y", "next": "/access/ror"}).encode())
    return opener.open(base + "/access/ror").read().decode()
