"""The signed designation attestation of a ROR access request (J5): the checks of the
uploaded file and the pre-filled PDF the director signs.

`check_upload(request.files)` returns a CheckedAttestation ready for the store, or
raises AttestationRefused with the French sentence shown next to the field. The type is
decided by the content (magic bytes, then a parse), never by the name or the browser's
Content-Type. Everything reads the upload in chunks from Werkzeug's spooled temporary
file: a 12 MiB attestation is never held whole in memory, images are not decoded to
full-size pixels, and PDF streams (page contents, images, fonts) are not loaded.
"""
from __future__ import annotations

import logging
import re
import socket
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import BinaryIO

from werkzeug.datastructures import FileStorage, MultiDict

log = logging.getLogger("enrs.attestation")

MAX_BYTES = 12 * 1024 * 1024
ALLOWED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pdf")
# A scan of an A4 page at 600 dpi is 35 Mpx; a phone photo 12 to 50 Mpx (binned to 12).
MAX_PIXELS = 40_000_000
MAX_DISPLAY_NAME = 100
CHUNK_SIZE = 64 * 1024
# PDF readers look for the end-of-file marker within the last 1024 bytes.
PDF_TAIL = 1024
# A one- or two-page attestation has a few hundred objects; this bounds the walk.
MAX_PDF_NODES = 200_000
CLAMD_TIMEOUT = 30.0

MIME_TYPES = {".pdf": "application/pdf", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAGIC = {"pdf": b"%PDF-", "png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
KIND_OF_EXTENSION = {".pdf": "pdf", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}

# reason -> the sentence shown next to the field
MESSAGES = {
    "missing": "Veuillez déposer l'attestation signée.",
    "several": "Un seul fichier est accepté.",
    "empty": "Le fichier est vide.",
    "too_large": "Le fichier dépasse 12 Mo.",
    "extension": "Types autorisés : .jpg, .jpeg, .png, .pdf.",
    "mismatch": ("Le contenu du fichier ne correspond pas à son extension : déposez un vrai fichier "
                 "PDF, PNG ou JPEG (.jpg, .jpeg, .png, .pdf)."),
    "pdf_unreadable": "Le fichier PDF est illisible ou incomplet. Enregistrez-le de nouveau puis déposez-le.",
    "pdf_encrypted": ("Le fichier PDF est protégé par un mot de passe ou chiffré. "
                      "Déposez une version non protégée."),
    "pdf_active": ("Le fichier PDF contient du code ou des pièces jointes, ce qui n'est pas accepté. "
                   "Déposez une version simple du document (une numérisation ou une impression en PDF)."),
    "image_unreadable": "L'image est illisible ou incomplète. Déposez-la de nouveau.",
    "image_too_large": "L'image est trop grande (plus de 40 millions de pixels). Réduisez sa résolution.",
    "infected": "Le fichier a été refusé par l'antivirus.",
    "antivirus_unavailable": ("Le fichier n'a pas pu être analysé par l'antivirus. "
                              "Réessayez plus tard."),
}


class AttestationRefused(ValueError):
    """The upload is refused; `message` is the French sentence for the field and
    `reason` a stable code (a key of MESSAGES) for logs, the audit log and tests."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.message = MESSAGES[reason]
        super().__init__(self.message)


@dataclass
class CheckedAttestation:
    stream: BinaryIO  # positioned at 0, ready for Store.put
    size: int
    content_type: str  # application/pdf | image/png | image/jpeg
    extension: str  # .pdf .png .jpg .jpeg
    display_name: str  # the original name, sanitised, for display only


_FROM_SETTINGS = object()


def check_upload(
    files: MultiDict[str, FileStorage],
    field: str = "attestation",
    *,
    clamd_socket: str | None | object = _FROM_SETTINGS,
    clamd_timeout: float = CLAMD_TIMEOUT,
) -> CheckedAttestation:
    """Check the attestation of `files` (request.files). `clamd_socket` defaults to
    the app's ENRS_CLAMD_SOCKET (no scan outside an app context)."""
    # A file input left empty still sends a part, with an empty file name.
    uploads = [f for f in files.getlist(field) if f.filename]
    if not uploads:
        raise AttestationRefused("missing")
    if len(uploads) > 1:
        raise AttestationRefused("several")
    upload = uploads[0]

    extension, display = split_filename(upload.filename)
    if extension not in ALLOWED_EXTENSIONS:
        raise AttestationRefused("extension")

    stream = upload.stream
    stream.seek(0)
    size, head = _measure(stream)
    if size == 0:
        raise AttestationRefused("empty")
    if size > MAX_BYTES:
        raise AttestationRefused("too_large")
    kind = KIND_OF_EXTENSION[extension]
    if not head.startswith(MAGIC[kind]):
        raise AttestationRefused("mismatch")

    socket_path = _clamd_socket() if clamd_socket is _FROM_SETTINGS else clamd_socket
    if socket_path:
        stream.seek(0)
        scan_with_clamd(stream, str(socket_path), timeout=clamd_timeout)

    stream.seek(0)
    if kind == "pdf":
        check_pdf(stream)
    else:
        check_image(stream, kind)
    stream.seek(0)
    return CheckedAttestation(
        stream=stream, size=size, content_type=MIME_TYPES[extension], extension=extension, display_name=display,
    )


def _clamd_socket() -> str | None:
    from flask import has_app_context

    if not has_app_context():
        return None
    from portal.config import current_settings

    return current_settings().clamd_socket


def _measure(stream: BinaryIO) -> tuple[int, bytes]:
    """The size by reading (the Content-Length of a part is the client's word), stopping
    one chunk past the limit, and the first bytes for the type."""
    size = 0
    head = b""
    while size <= MAX_BYTES:
        chunk = stream.read(CHUNK_SIZE)
        if not chunk:
            break
        if len(head) < 16:
            head += chunk[: 16 - len(head)]
        size += len(chunk)
    return size, head


# -- file names -------------------------------------------------------------------------


_UNSAFE = re.compile(r"[^\w .,()'’+\-]")


def split_filename(raw: str | None) -> tuple[str, str]:
    """(extension in lower case, display name). The display name keeps letters with
    their accents; it loses any folder part, control and formatting characters (NUL,
    right-to-left overrides), characters that mean something to a shell or a
    filesystem, leading dots, and is cut to 100 characters with its extension kept."""
    name = unicodedata.normalize("NFC", raw or "")
    # Control (Cc) and format (Cf: bidi overrides, zero-width) characters, before the
    # split, so that "a.pdf\\0.exe" is judged as "a.pdf.exe".
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    name = re.split(r"[\\/]", name)[-1]
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    extension = "." + extension.strip().lower() if extension.strip() else ""
    stem = _UNSAFE.sub("_", " ".join(stem.split())).strip(" .")
    shown_extension = extension if extension in ALLOWED_EXTENSIONS else _UNSAFE.sub("_", extension)[:10]
    stem = stem[: MAX_DISPLAY_NAME - len(shown_extension)].rstrip(" .")
    return extension, (stem or "attestation") + shown_extension


# -- antivirus --------------------------------------------------------------------------


class ClamdUnavailable(Exception):
    pass


def scan_with_clamd(stream: BinaryIO, socket_path: str, *, timeout: float = CLAMD_TIMEOUT) -> None:
    """Send the stream to clamd (INSTREAM over its unix socket). Raises
    AttestationRefused("infected"), or ("antivirus_unavailable") when clamd cannot
    answer: an unscanned file is refused, never let through."""
    try:
        verdict = clamd_instream(stream, socket_path, timeout=timeout)
    except (OSError, ClamdUnavailable) as exc:
        log.error("clamd at %s could not scan an attestation: %s", socket_path, exc)
        raise AttestationRefused("antivirus_unavailable") from exc
    if verdict.endswith(" FOUND"):
        log.warning("clamd refused an attestation: %s", verdict)
        raise AttestationRefused("infected")
    if verdict != "stream: OK":
        log.error("clamd at %s answered %r", socket_path, verdict)
        raise AttestationRefused("antivirus_unavailable")


def clamd_instream(stream: BinaryIO, socket_path: str, *, timeout: float = CLAMD_TIMEOUT) -> str:
    """clamd's answer for the stream, e.g. "stream: OK" or "stream: Eicar-Signature FOUND".

    Protocol (clamd(8)): "zINSTREAM\\0", then chunks each prefixed by its length as a
    4-byte big-endian integer, a zero length to end, and one NUL-terminated reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        try:
            sock.sendall(b"zINSTREAM\0")
            while True:
                chunk = stream.read(CHUNK_SIZE)
                if not chunk:
                    break
                sock.sendall(struct.pack("!I", len(chunk)) + chunk)
            sock.sendall(struct.pack("!I", 0))
        except BrokenPipeError:
            # clamd closes early when the stream passes its StreamMaxLength; its reply,
            # already sent, says so.
            pass
        reply = b""
        while not reply.endswith(b"\0"):
            data = sock.recv(4096)
            if not data:
                break
            reply += data
            if len(reply) > 4096:
                raise ClamdUnavailable("reply too long")
    if not reply:
        raise ClamdUnavailable("no reply")
    return reply.rstrip(b"\0").decode("utf-8", "replace").strip()


# -- PDF --------------------------------------------------------------------------------


# Keys that hold code, triggers or attached files.
_ACTIVE_KEYS = frozenset({
    "/JS", "/JavaScript", "/AA", "/XFA", "/EmbeddedFiles", "/EF", "/RichMediaContent", "/RichMediaSettings",
})
_ACTIVE_ACTIONS = frozenset({
    "/JavaScript", "/Launch", "/SubmitForm", "/ImportData", "/GoToR", "/GoToE", "/RichMediaExecute",
    "/Rendition", "/Movie", "/Sound",
})
_ACTIVE_TYPES = frozenset({"/EmbeddedFile"})
_ACTIVE_SUBTYPES = frozenset({"/FileAttachment", "/RichMedia", "/Movie", "/Sound", "/Screen", "/3D"})
# Entries that lead to streams only (page contents, images, fonts, ICC profiles,
# appearance streams, metadata): never triggers, and the bulk of a scanned PDF, so they
# are not loaded.
_STREAM_KEYS = frozenset({
    "/Contents", "/Resources", "/DR", "/Metadata", "/Thumb", "/AP", "/PieceInfo", "/OutputIntents",
    "/FontFile", "/FontFile2", "/FontFile3", "/Parent",
})


class _Active(Exception):
    pass


def check_pdf(stream: BinaryIO) -> None:
    """Refuse a truncated or unreadable PDF, an encrypted one, and one carrying
    JavaScript, launch or other active actions, an opening action other than a plain
    "go to" or attached files. Streams are not decoded."""
    from pypdf import PdfReader

    stream.seek(0, 2)
    end = stream.tell()
    stream.seek(max(0, end - PDF_TAIL))
    if b"%%EOF" not in stream.read(PDF_TAIL):
        raise AttestationRefused("pdf_unreadable")
    stream.seek(0)
    # pypdf raises many kinds of errors on hostile input (its own, ValueError, KeyError,
    # RecursionError…): any of them means a file we do not accept.
    try:
        reader = PdfReader(stream, strict=False)
        encrypted = reader.is_encrypted
    except Exception as exc:
        log.info("unreadable PDF refused: %r", exc)
        raise AttestationRefused("pdf_unreadable") from None
    if encrypted:
        raise AttestationRefused("pdf_encrypted")
    try:
        if len(reader.pages) == 0:
            raise AttestationRefused("pdf_unreadable")
        _walk_pdf(reader)
    except _Active as exc:
        log.info("PDF with active content refused: %s", exc)
        raise AttestationRefused("pdf_active") from None
    except AttestationRefused:
        raise
    except Exception as exc:
        log.info("unreadable PDF refused: %r", exc)
        raise AttestationRefused("pdf_unreadable") from None


def _walk_pdf(reader) -> None:
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

    root = reader.trailer["/Root"].get_object()
    opening = root.get("/OpenAction")
    if opening is not None:
        opening = opening.get_object()
        # A destination array only sets the first view; an action dictionary runs.
        if isinstance(opening, DictionaryObject) and opening.get("/S") != "/GoTo":
            raise _Active(f"/OpenAction {opening.get('/S')}")

    seen: set[tuple[int, int]] = set()
    stack: list = [reader.trailer]
    nodes = 0
    while stack:
        node = stack.pop()
        nodes += 1
        if nodes > MAX_PDF_NODES:
            raise ValueError("too many objects")
        if isinstance(node, IndirectObject):
            ref = (node.idnum, node.generation)
            if ref in seen:
                continue
            seen.add(ref)
            stack.append(node.get_object())
        elif isinstance(node, DictionaryObject):
            for key, value in node.items():
                if key in _ACTIVE_KEYS:
                    raise _Active(key)
                if isinstance(value, NameObject) and (
                    (key == "/S" and value in _ACTIVE_ACTIONS)
                    or (key == "/Type" and value in _ACTIVE_TYPES)
                    or (key == "/Subtype" and value in _ACTIVE_SUBTYPES)
                ):
                    raise _Active(f"{key} {value}")
                if key not in _STREAM_KEYS and isinstance(value, (IndirectObject, DictionaryObject, ArrayObject)):
                    stack.append(value)
        elif isinstance(node, ArrayObject):
            stack.extend(v for v in node if isinstance(v, (IndirectObject, DictionaryObject, ArrayObject)))


# -- images -----------------------------------------------------------------------------


def check_image(stream: BinaryIO, kind: str) -> None:
    """Open with Pillow (headers only) under a pixel limit, then go through every byte
    of the image data without keeping full-size pixels: the PNG chunks are checked
    (CRC) and their data inflated and counted, the JPEG is decoded at 1/8 scale. A
    truncated or corrupt image fails there. (Pillow's verify() is not used: for PNG it
    reads each chunk whole into memory, for JPEG it checks nothing.)"""
    from PIL import Image

    # Pillow raises DecompressionBombError past twice its own limit (~179 Mpx) and only
    # warns between the two; the portal's lower limit is checked right after the header
    # is read. (warnings.catch_warnings would turn the warning into an error, but it
    # changes process-wide state and is not safe with threads.)
    try:
        with Image.open(stream, formats=["PNG" if kind == "png" else "JPEG"]) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise AttestationRefused("image_too_large")
    except Image.DecompressionBombError:
        raise AttestationRefused("image_too_large") from None
    except AttestationRefused:
        raise
    except Exception as exc:  # Pillow's errors on hostile input are of many kinds
        log.info("unreadable image refused: %r", exc)
        raise AttestationRefused("image_unreadable") from None

    stream.seek(0)
    try:
        if kind == "png":
            _inflate_png(stream)
        else:
            _decode_jpeg_reduced(stream)
    except AttestationRefused:
        raise
    except Exception as exc:
        log.info("unreadable image refused: %r", exc)
        raise AttestationRefused("image_unreadable") from None


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_data_size(width: int, height: int, depth: int, color: int, interlaced: bool) -> int:
    """The inflated size of the image data: each row is a filter byte plus its pixels."""
    bits = _PNG_CHANNELS[color] * depth

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if not interlaced:
        return rows(width, height)
    return sum(
        rows(max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy))
        for x0, y0, dx, dy in _ADAM7
    )


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("truncated PNG")
    return data


def _inflate_png(stream: BinaryIO) -> None:
    """Walk the chunks (checking each CRC), inflate the IDAT data chunk by chunk and
    check it has exactly the size the header announces, and that IEND is there."""
    _read_exact(stream, 8)
    header = None
    expected = 0
    inflated = 0
    inflater = zlib.decompressobj()
    while True:
        length, chunk_type = struct.unpack("!I4s", _read_exact(stream, 8))
        if length > 2**31 - 1:
            raise ValueError("bad chunk length")
        crc = zlib.crc32(chunk_type)
        left = length
        while left:
            data = _read_exact(stream, min(left, CHUNK_SIZE))
            left -= len(data)
            crc = zlib.crc32(data, crc)
            if chunk_type == b"IHDR":
                header = data
            elif chunk_type == b"IDAT":
                if header is None or inflater.eof:
                    raise ValueError("IDAT out of place")
                inflated += _inflate(inflater, data, expected - inflated)
        if struct.unpack("!I", _read_exact(stream, 4))[0] != crc:
            raise ValueError(f"bad CRC in {chunk_type!r}")
        if chunk_type == b"IHDR":
            if header is None or len(header) != 13:
                raise ValueError("bad IHDR")
            width, height, depth, color, _compression, _filter, interlace = struct.unpack("!IIBBBBB", header)
            if color not in _PNG_DEPTHS or depth not in _PNG_DEPTHS[color] or interlace not in (0, 1):
                raise ValueError("bad IHDR")
            if width * height > MAX_PIXELS:
                raise AttestationRefused("image_too_large")
            expected = _png_data_size(width, height, depth, color, bool(interlace))
        elif chunk_type == b"IEND":
            break
    if not inflater.eof or inflated != expected:
        raise ValueError(f"image data is {inflated} bytes, {expected} expected")


def _inflate(inflater, data: bytes, room: int) -> int:
    """Inflate `data`, counting the output without keeping it; more than `room` bytes
    means corrupt (or hostile) data."""
    total = 0
    while data:
        out = inflater.decompress(data, CHUNK_SIZE)
        total += len(out)
        if total > room:
            raise ValueError("too much image data")
        data = inflater.unconsumed_tail
    return total


def _decode_jpeg_reduced(stream: BinaryIO) -> None:
    from PIL import Image

    # With Pillow's default LOAD_TRUNCATED_IMAGES = False, missing data raises here.
    with Image.open(stream, formats=["JPEG"]) as image:
        # libjpeg decodes all the data but outputs 1/8 of each side: ~1/64 of the pixels.
        image.draft(image.mode, (1, 1))
        image.load()


# -- the pre-filled PDF -----------------------------------------------------------------


def _pdf_text(value: object) -> str:
    """Text for fpdf2's core fonts (windows-1252: French accents, œ, €, ’ and « »
    included). Characters outside it are transliterated (Unidecode), control
    characters dropped."""
    text = unicodedata.normalize("NFC", str(value or "")).replace("\t", " ")
    text = "".join(c for c in text if c == "\n" or unicodedata.category(c) not in ("Cc", "Cf"))
    try:
        text.encode("cp1252")
        return text
    except UnicodeEncodeError:
        from unidecode import unidecode

        out = []
        for c in text:
            try:
                c.encode("cp1252")
                out.append(c)
            except UnicodeEncodeError:
                out.append(unidecode(c))
        return "".join(out)


def render_attestation_pdf(
    *,
    portal_name: str,
    user_full_name: str,
    profession_label: str,
    national_id: str | None,
    email: str,
    establishment_name: str,
    finess: str,
    establishment_city: str,
    role_label: str,
    request_label: str,
    today: date,
) -> bytes:
    """The A4 "Attestation de désignation" the director fills in, signs and stamps."""
    from fpdf import FPDF

    t = _pdf_text
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    # Core fonts need no font file; WinAnsi covers French (œ included, unlike Latin-1).
    pdf.core_fonts_encoding = "windows-1252"
    pdf.set_lang("fr")
    pdf.set_title("Attestation de désignation")
    pdf.set_author(t(portal_name))
    pdf.set_creator(t(portal_name))
    # Fixed from `today`, so that the same request always gives the same file.
    pdf.set_creation_date(datetime.combine(today, time(0, 0), tzinfo=timezone.utc))
    pdf.set_margins(20, 18, 20)
    pdf.set_auto_page_break(True, margin=18)
    pdf.add_page()
    width = pdf.epw

    pdf.set_font("helvetica", "B", 18)
    pdf.cell(width, 10, t("Attestation de désignation"), align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 11)
    pdf.cell(width, 6, t(portal_name), align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.cell(width, 6, t(request_label), align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)

    def heading(text: str) -> None:
        pdf.set_font("helvetica", "B", 12)
        pdf.set_fill_color(230, 236, 245)
        pdf.cell(width, 8, t(text), fill=True, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)

    def line(label: str, value: str | None) -> None:
        pdf.set_font("helvetica", "B", 10)
        pdf.cell(58, 6, t(label))
        pdf.set_font("helvetica", "", 10)
        pdf.multi_cell(width - 58, 6, t(value or "non renseigné"), new_x="LMARGIN", new_y="NEXT")

    heading("Personne désignée")
    line("Nom et prénom", user_full_name)
    line("Profession", profession_label)
    line("Identifiant national (RPPS/ADELI)", national_id)
    line("Adresse électronique", email)
    pdf.ln(3)

    heading("Établissement")
    line("Raison sociale", establishment_name)
    line("N° FINESS", finess)
    line("Commune", establishment_city)
    pdf.ln(3)

    heading("Rôle demandé")
    line("Rôle", role_label)
    pdf.ln(4)

    pdf.set_font("helvetica", "", 11)
    pdf.multi_cell(
        width, 6.5,
        t(
            "Je soussigné(e), ................................................................, "
            f"directeur(trice) de l'établissement {establishment_name} (FINESS {finess}, "
            f"{establishment_city}), atteste que {user_full_name}, {profession_label}, "
            f"est désigné(e) en tant que {role_label} pour cet établissement et l'autorise "
            f"à ce titre à accéder au service via {portal_name}."
        ),
        new_x="LMARGIN", new_y="NEXT",
    )
    pdf.ln(6)

    box_height = 12
    half = (width - 6) / 2
    top = pdf.get_y()
    for index, label in enumerate(("Fait à", "Le")):
        x = pdf.l_margin + index * (half + 6)
        pdf.set_xy(x, top)
        pdf.set_font("helvetica", "B", 10)
        pdf.cell(half, 6, t(label))
        pdf.rect(x, top + 6, half, box_height)
    pdf.set_xy(pdf.l_margin, top + 6 + box_height + 6)

    pdf.set_font("helvetica", "B", 10)
    pdf.cell(width, 6, t("Signature et cachet du directeur"), new_x="LMARGIN", new_y="NEXT")
    signature_height = 55
    if pdf.get_y() + signature_height > pdf.h - pdf.b_margin - 12:
        pdf.add_page()
    pdf.rect(pdf.l_margin, pdf.get_y(), width, signature_height)
    pdf.set_y(pdf.get_y() + signature_height + 6)

    pdf.set_font("helvetica", "I", 8.5)
    pdf.multi_cell(
        width, 4.5,
        t(
            f"Document pré-rempli le {today:%d/%m/%Y} par {portal_name}. Une fois signé et "
            "revêtu du cachet de l'établissement, déposez-le (PDF, JPEG ou PNG, 12 Mo au plus) "
            "dans votre demande d'inscription."
        ),
        new_x="LMARGIN", new_y="NEXT",
    )
    return bytes(pdf.output())

