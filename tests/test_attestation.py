"""The checks of an uploaded attestation (onboarding/attestation.py) and the pre-filled
PDF the director signs. Uploads go through a real multipart request, so the streams are
Werkzeug's spooled temporary files."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
from datetime import date
from pathlib import Path
from typing import Iterator

import pytest
from werkzeug.datastructures import FileStorage, Headers, MultiDict

from onboarding.attestation import (
    MAX_BYTES,
    MESSAGES,
    AttestationRefused,
    check_image,
    check_upload,
    render_attestation_pdf,
    split_filename,
)
from tests import attestation_samples as samples
from tests.attestation_samples import MIB, form_files


def refusal(files: MultiDict, **kwargs) -> AttestationRefused:
    kwargs.setdefault("clamd_socket", None)
    with pytest.raises(AttestationRefused) as caught:
        check_upload(files, **kwargs)
    assert caught.value.message == MESSAGES[caught.value.reason]
    return caught.value


def accepted(name: str, data: bytes, **kwargs):
    kwargs.setdefault("clamd_socket", None)
    return check_upload(form_files((name, data)), **kwargs)


# -- what is accepted -------------------------------------------------------------------


def test_a_pdf_is_accepted_with_its_size_type_and_a_stream_ready_to_store():
    data = samples.generated_pdf(pages=2)
    checked = accepted("Attestation signée.pdf", data)
    assert checked.size == len(data)
    assert checked.content_type == "application/pdf"
    assert checked.extension == ".pdf"
    assert checked.display_name == "Attestation signée.pdf"
    assert checked.stream.tell() == 0
    assert checked.stream.read() == data


@pytest.mark.parametrize(("name", "data", "content_type"), [
    ("photo.jpg", samples.jpeg_image(640, 480), "image/jpeg"),
    ("photo.JPEG", samples.jpeg_image(640, 480, progressive=True), "image/jpeg"),
    ("scan.png", samples.png_image(620, 877), "image/png"),
    ("scan-gris.png", samples.png_image(620, 877, mode="L"), "image/png"),
    ("scan-palette.png", samples.png_image(33, 17, mode="P"), "image/png"),
    ("scan-noir-blanc.png", samples.png_image(33, 17, mode="1"), "image/png"),
    ("scan-16-bits.png", samples.png_image(33, 17, mode="I;16"), "image/png"),
    ("scan-alpha.png", samples.png_image(33, 17, mode="RGBA"), "image/png"),
    ("entrelace.png", samples.interlaced_png(33, 17), "image/png"),
])
def test_photos_and_scans_are_accepted(name, data, content_type):
    checked = accepted(name, data)
    assert (checked.content_type, checked.size) == (content_type, len(data))
    assert checked.extension == os.path.splitext(name)[1].lower()


def test_the_interlaced_sample_is_a_real_png():
    from PIL import Image

    image = Image.open(io.BytesIO(samples.interlaced_png(33, 17)))
    image.load()  # Pillow decodes it whole: the sample's data has the right size
    assert image.size == (33, 17)


@pytest.mark.parametrize("build", [samples.pdf_of_size, samples.png_of_size], ids=["pdf", "png"])
def test_a_file_of_exactly_12_mib_is_accepted(build):
    data = build(12 * MIB)
    assert len(data) == MAX_BYTES == 12_582_912
    checked = accepted("attestation" + (".pdf" if data.startswith(b"%PDF") else ".png"), data)
    assert checked.size == MAX_BYTES


def test_a_pdf_with_a_plain_hyperlink_is_accepted():
    assert accepted("lien.pdf", samples.pdf_with_uri_link()).content_type == "application/pdf"


def test_the_browser_content_type_is_not_trusted():
    png = FileStorage(io.BytesIO(samples.png_image()), filename="scan.png", content_type="application/pdf")
    assert check_upload(MultiDict([("attestation", png)]), clamd_socket=None).content_type == "image/png"
    exe = FileStorage(io.BytesIO(samples.windows_executable()), filename="scan.pdf", content_type="application/pdf")
    assert refusal(MultiDict([("attestation", exe)])).reason == "mismatch"


def test_the_generated_attestation_itself_passes_the_checks():
    assert accepted("attestation.pdf", render_sample()).content_type == "application/pdf"


# -- how many files ---------------------------------------------------------------------


def test_no_file_is_refused():
    assert refusal(MultiDict()).message == "Veuillez déposer l'attestation signée."


def test_a_file_input_left_empty_is_refused_as_no_file():
    assert refusal(samples.empty_file_input()).reason == "missing"


def test_a_file_under_another_field_name_does_not_count():
    files = form_files(("a.pdf", samples.simple_pdf()), field="autre")
    assert refusal(files).reason == "missing"


def test_two_files_are_refused():
    files = form_files(("a.pdf", samples.simple_pdf()), ("b.png", samples.png_image()))
    assert refusal(files).message == "Un seul fichier est accepté."


# -- size -------------------------------------------------------------------------------


def test_an_empty_file_is_refused():
    assert refusal(form_files(("vide.pdf", b""))).message == "Le fichier est vide."


@pytest.mark.parametrize("build", [samples.pdf_of_size, samples.png_of_size], ids=["pdf", "png"])
def test_one_byte_more_than_12_mib_is_refused(build):
    data = build(12 * MIB + 1)
    name = "attestation" + (".pdf" if data.startswith(b"%PDF") else ".png")
    assert refusal(form_files((name, data))).message == "Le fichier dépasse 12 Mo."


def test_the_size_is_measured_not_taken_from_the_part_headers():
    data = samples.pdf_of_size(12 * MIB + 1)
    lying = FileStorage(io.BytesIO(data), filename="a.pdf", headers=Headers({"Content-Length": "1000"}))
    assert lying.content_length == 1000
    assert refusal(MultiDict([("attestation", lying)])).reason == "too_large"


# -- type -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["programme.exe", "image.gif", "sans-extension", "scan.pdf.exe", "scan.pdf\x00.exe",
                                  "document.docx"])
def test_a_name_outside_the_allowed_extensions_is_refused(name):
    data = samples.simple_pdf()
    assert refusal(form_files((name, data))).message == "Types autorisés : .jpg, .jpeg, .png, .pdf."


def test_an_exe_renamed_pdf_is_refused():
    error = refusal(form_files(("attestation.pdf", samples.windows_executable())))
    assert error.reason == "mismatch"
    assert error.message.startswith("Le contenu du fichier ne correspond pas à son extension")


def test_a_png_named_pdf_is_refused():
    assert refusal(form_files(("attestation.pdf", samples.png_image()))).reason == "mismatch"


def test_a_pdf_named_png_is_refused():
    assert refusal(form_files(("attestation.png", samples.simple_pdf()))).reason == "mismatch"


def test_a_png_named_jpg_is_refused():
    assert refusal(form_files(("photo.jpg", samples.png_image()))).reason == "mismatch"


def test_a_jpeg_named_png_is_refused():
    assert refusal(form_files(("photo.png", samples.jpeg_image()))).reason == "mismatch"


# -- PDF content ------------------------------------------------------------------------


def test_a_truncated_pdf_is_refused():
    assert refusal(form_files(("a.pdf", samples.truncated_pdf()))).message.startswith("Le fichier PDF est illisible")


@pytest.mark.parametrize("data", [
    b"%PDF-1.7\nnothing of a PDF here\n%%EOF\n",
    samples.pdf_without_pages(),
    samples.simple_pdf()[:200] + b"\n%%EOF\n",  # cut, then given an end marker
], ids=["garbage", "no-pages", "cut-with-eof"])
def test_a_pdf_that_does_not_parse_is_refused(data):
    assert refusal(form_files(("a.pdf", data))).reason == "pdf_unreadable"


def test_a_pdf_with_a_few_bytes_after_its_end_marker_is_accepted():
    # Some scanners and mail gateways add padding or a newline after %%EOF.
    assert accepted("a.pdf", samples.generated_pdf() + b"\0" * 100 + b"\r\n").content_type == "application/pdf"


def test_a_pdf_with_a_file_appended_after_its_end_is_refused():
    # pypdf would read it, but readers look for %%EOF in the last 1024 bytes, and data
    # glued after the end is how PDF/ZIP or PDF/HTML polyglots are made.
    appended = samples.generated_pdf() + b"PK\x03\x04" + os.urandom(2000)
    assert refusal(form_files(("a.pdf", appended))).reason == "pdf_unreadable"


@pytest.mark.parametrize("password", ["secret", ""], ids=["user-password", "owner-password-only"])
def test_an_encrypted_pdf_is_refused(password):
    error = refusal(form_files(("a.pdf", samples.encrypted_pdf(password))))
    assert error.reason == "pdf_encrypted"
    assert "mot de passe" in error.message


@pytest.mark.parametrize("build", [
    samples.pdf_with_open_javascript,
    samples.pdf_with_named_javascript,
    samples.pdf_with_escaped_javascript_name,
    samples.pdf_with_javascript_link,
    samples.pdf_with_launch_action,
    samples.pdf_with_page_open_action,
])
def test_a_pdf_with_javascript_or_an_automatic_action_is_refused(build):
    error = refusal(form_files(("a.pdf", build())))
    assert error.reason == "pdf_active"
    assert "contient du code ou des pièces jointes" in error.message


def test_a_pdf_with_an_attached_file_is_refused():
    assert refusal(form_files(("a.pdf", samples.pdf_with_attachment()))).reason == "pdf_active"


# -- image content ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("name", "data"), [
    ("bombe.png", samples.png_declaring(100_000, 100_000)),  # beyond Pillow's own limit
    ("bombe.png", samples.png_declaring(8000, 6000)),  # 48 Mpx: under Pillow's, over ours
    ("bombe.png", samples.png_declaring(10_000, 10_000)),  # where Pillow only warns
    ("bombe.jpg", samples.jpeg_declaring(60_000, 60_000)),
    ("bombe.jpg", samples.jpeg_declaring(7000, 7000)),
])
def test_an_image_bomb_is_refused_before_decoding(name, data):
    error = refusal(form_files((name, data)))
    assert error.reason == "image_too_large"
    assert error.message.startswith("L'image est trop grande")


@pytest.mark.parametrize(("name", "data"), [
    ("coupee.png", samples.truncated(samples.noise_png(200, 150))),
    ("coupee.jpg", samples.truncated(samples.jpeg_image(400, 300, noise=True))),
    ("crc.png", samples.png_with_bad_crc()),
    ("donnees-courtes.png", samples.interlaced_png(33, 17, missing=1)),
    ("sans-fin.png", samples.png_image()[:-12]),
])
def test_a_truncated_or_corrupt_image_is_refused(name, data):
    assert refusal(form_files((name, data))).reason == "image_unreadable"


def test_png_data_longer_than_its_header_announces_is_refused():
    with pytest.raises(AttestationRefused) as caught:
        check_image(io.BytesIO(samples.png_declaring(4, 4)), "png")  # 1 KiB of data for 4x4 pixels
    assert caught.value.reason == "image_unreadable"


# -- file names -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "extension", "display"), [
    ("../../etc/passwd.pdf", ".pdf", "passwd.pdf"),
    ("..\\..\\Windows\\scan.PDF", ".pdf", "scan.pdf"),
    ("C:\\Users\\chloe\\Documents\\Attestation.JPG", ".jpg", "Attestation.jpg"),
    ("scan\x00.pdf", ".pdf", "scan.pdf"),
    ("évaluation\r\nX-Header: 1.png", ".png", "évaluationX-Header_ 1.png"),
    ("Désignation d’Œuvre (signée).pdf", ".pdf", "Désignation d’Œuvre (signée).pdf"),
    ("facture\u202egpj.pdf", ".pdf", "facturegpj.pdf"),
    ('<img src=x onerror="alert(1)">.pdf', ".pdf", "_img src_x onerror__alert(1)__.pdf"),
    ("<script>alert(1)</script>.pdf", ".pdf", "script_.pdf"),  # the "/" is a folder separator
    ("...pdf", ".pdf", "attestation.pdf"),
    (".pdf", ".pdf", "attestation.pdf"),
    ("  .cache.png", ".png", "cache.png"),
    ("scan.PDF ", ".pdf", "scan.pdf"),
    ("", "", "attestation"),
])
def test_the_display_name_is_sanitised(raw, extension, display):
    assert split_filename(raw) == (extension, display)


def test_a_300_character_name_is_cut_to_100_keeping_its_extension():
    checked = accepted("é" * 300 + ".pdf", samples.simple_pdf())
    assert len(checked.display_name) == 100
    assert checked.display_name == "é" * 96 + ".pdf"


def test_a_name_with_folders_and_nul_is_accepted_under_its_sanitised_name():
    checked = accepted("../../../var/www/scan\x00 final.pdf", samples.simple_pdf())
    assert checked.display_name == "scan final.pdf"


# -- antivirus --------------------------------------------------------------------------


class FakeClamd:
    """clamd's INSTREAM protocol on a unix socket: "zINSTREAM\\0", length-prefixed
    chunks, a zero length, then one NUL-terminated reply. Finds the EICAR string."""

    def __init__(self, path: str, mode: str = "scan") -> None:
        self.path = path
        self.mode = mode  # scan | error | hang-up | mute
        self.received: list[bytes] = []
        self.chunks = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.release = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_exact(self, conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            part = conn.recv(size - len(data))
            if not part:
                raise ConnectionError("client went away")
            data += part
        return data

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.stopping:
                conn.close()
                return
            with conn:
                try:
                    assert self._read_exact(conn, 10) == b"zINSTREAM\0"
                    body = b""
                    while True:
                        (length,) = struct.unpack("!I", self._read_exact(conn, 4))
                        if length == 0:
                            break
                        self.chunks += 1
                        body += self._read_exact(conn, length)
                    self.received.append(body)
                    if self.mode == "hang-up":
                        continue
                    if self.mode == "mute":
                        self.release.wait(10)
                        continue
                    if self.mode == "error":
                        conn.sendall(b"INSTREAM size limit exceeded. ERROR\0")
                    elif samples.EICAR in body:
                        conn.sendall(b"stream: Eicar-Test-Signature FOUND\0")
                    else:
                        conn.sendall(b"stream: OK\0")
                except (AssertionError, ConnectionError, OSError):
                    continue

    def close(self) -> None:
        # Closing a listening socket does not wake a thread blocked in accept(): a last
        # connection does.
        self.stopping = True
        self.release.set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
            wake.connect(self.path)
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.listener.close()


@pytest.fixture
def clamd_dir() -> Iterator[str]:
    # A unix socket path must stay under ~100 characters: pytest's tmp_path can be longer.
    folder = tempfile.mkdtemp(prefix="clamd-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def clamd(clamd_dir) -> Iterator[FakeClamd]:
    server = FakeClamd(os.path.join(clamd_dir, "clamd.sock"))
    yield server
    server.close()


def test_a_clean_file_is_sent_whole_to_clamd_in_chunks_and_accepted(clamd):
    data = samples.noise_png(200, 200)  # ~120 KB: more than one 64 KiB chunk
    checked = accepted("scan.png", data, clamd_socket=clamd.path)
    assert checked.size == len(data)
    assert [hashlib.sha256(b).hexdigest() for b in clamd.received] == [hashlib.sha256(data).hexdigest()]
    assert clamd.chunks >= 2
    assert checked.stream.tell() == 0


def test_a_file_clamd_finds_infected_is_refused(clamd, caplog):
    error = refusal(form_files(("a.pdf", samples.pdf_with_eicar())), clamd_socket=clamd.path)
    assert error.message == "Le fichier a été refusé par l'antivirus."
    assert "Eicar-Test-Signature FOUND" in caplog.text


def test_the_eicar_sample_is_otherwise_a_valid_pdf():
    assert accepted("a.pdf", samples.pdf_with_eicar()).content_type == "application/pdf"


def test_an_unreachable_clamd_refuses_the_file_and_is_logged(clamd_dir, caplog):
    missing = os.path.join(clamd_dir, "absent.sock")
    with caplog.at_level(logging.ERROR, logger="enrs.attestation"):
        error = refusal(form_files(("a.pdf", samples.simple_pdf())), clamd_socket=missing)
    assert error.reason == "antivirus_unavailable"
    assert "Réessayez plus tard" in error.message
    assert missing in caplog.text


@pytest.mark.parametrize("mode", ["error", "hang-up"])
def test_a_clamd_error_or_hang_up_refuses_the_file(clamd_dir, mode):
    server = FakeClamd(os.path.join(clamd_dir, "clamd.sock"), mode=mode)
    try:
        assert refusal(form_files(("a.pdf", samples.simple_pdf())), clamd_socket=server.path).reason == \
            "antivirus_unavailable"
    finally:
        server.close()


def test_a_clamd_that_does_not_answer_in_time_refuses_the_file(clamd_dir):
    server = FakeClamd(os.path.join(clamd_dir, "clamd.sock"), mode="mute")
    try:
        error = refusal(form_files(("a.pdf", samples.simple_pdf())), clamd_socket=server.path, clamd_timeout=0.2)
    finally:
        server.close()
    assert error.reason == "antivirus_unavailable"


def test_bad_files_are_refused_before_the_antivirus_is_asked(clamd):
    refusal(form_files(("a.pdf", samples.png_image())), clamd_socket=clamd.path)
    assert clamd.received == []


def test_the_clamd_socket_comes_from_the_settings_in_the_app(app_env, clamd, clock):
    from portal.app import create_app

    app = create_app({**app_env, "ENRS_CLAMD_SOCKET": clamd.path}, clock=clock)
    try:
        with app.app_context():
            with pytest.raises(AttestationRefused) as caught:
                check_upload(form_files(("a.pdf", samples.pdf_with_eicar())))
            assert caught.value.reason == "infected"
            check_upload(form_files(("a.pdf", samples.simple_pdf())))
        assert len(clamd.received) == 2
    finally:
        app.extensions["enrs.db"]["engine"].dispose()


def test_without_a_clamd_socket_in_the_settings_no_scan_is_made(app):
    with app.app_context():
        assert check_upload(form_files(("a.pdf", samples.pdf_with_eicar()))).content_type == "application/pdf"


# -- the pre-filled PDF -----------------------------------------------------------------


def render_sample(**overrides) -> bytes:
    fields = dict(
        portal_name="eSanté Centre-Val de Loire",
        user_full_name="Chloé Lefèvre-Cœurdevey",
        profession_label="Infirmier(ère)",
        national_id="10108825463",
        email="chloe.lefevre@chu-dreux.fr",
        establishment_name="Centre hospitalier Victor Jousselin",
        finess="280503848",
        establishment_city="28100 DREUX",
        role_label="référent ROR (saisie de l'offre)",
        request_label="Je souhaite accéder et être référent ROR (saisie de l'offre).",
        today=date(2026, 11, 2),
    )
    fields.update(overrides)
    return render_attestation_pdf(**fields)


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data), strict=True)
    return "\n".join(page.extract_text() for page in reader.pages)


def test_the_attestation_is_an_a4_pdf_with_the_user_and_the_establishment():
    from pypdf import PdfReader

    data = render_sample()
    reader = PdfReader(io.BytesIO(data), strict=True)
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (595, 842)
    assert reader.metadata.title == "Attestation de désignation"
    text = pdf_text(data)
    for expected in (
        "Attestation de désignation", "eSanté Centre-Val de Loire", "Chloé Lefèvre-Cœurdevey",
        "Infirmier(ère)", "10108825463", "chloe.lefevre@chu-dreux.fr", "Centre hospitalier Victor Jousselin",
        "280503848", "28100 DREUX", "référent ROR (saisie de l'offre)", "Je soussigné(e)",
        "directeur(trice) de l'établissement", "est désigné(e) en tant que", "Fait à", "Le",
        "Signature et cachet du directeur", "02/11/2026",
    ):
        assert expected in text, expected


def test_characters_outside_the_core_font_are_transliterated_not_lost():
    text = pdf_text(render_sample(user_full_name="Łukasz Nguyễn", establishment_name="Clinique Saint-Étienne\x07"))
    assert "Lukasz Nguyen" in text
    assert "Clinique Saint-Étienne" in text


def test_a_missing_national_identifier_is_shown_as_not_given():
    assert "non renseigné" in pdf_text(render_sample(national_id=None))


def test_the_same_request_gives_the_same_file():
    assert render_sample() == render_sample()
    assert render_sample() != render_sample(today=date(2026, 11, 3))


def test_long_values_stay_on_one_page_or_flow_to_a_second():
    from pypdf import PdfReader

    data = render_sample(establishment_name="Groupement hospitalier de territoire " * 12)
    reader = PdfReader(io.BytesIO(data), strict=True)
    assert 1 <= len(reader.pages) <= 2
    assert "Signature et cachet du directeur" in pdf_text(data)


def test_the_sample_files_used_here_are_what_they_claim(tmp_path: Path):
    """Guards the samples: a 'valid' sample must really open in pypdf and Pillow."""
    from PIL import Image
    from pypdf import PdfReader

    for data in (samples.simple_pdf(), samples.pdf_of_size(MIB), samples.pdf_with_uri_link()):
        assert len(PdfReader(io.BytesIO(data), strict=True).pages) == 1
    big = Image.open(io.BytesIO(samples.png_of_size(MIB)))
    big.load()
    assert big.size == (64, 48)
