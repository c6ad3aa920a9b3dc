"""Sample attestation files for the tests, built in memory: valid PDFs, PNGs and JPEGs,
and each kind of bad file the upload checks must refuse. Also `form_files`, which turns
files into the `request.files` of a real multipart request (so that the streams are
Werkzeug's spooled temporary files, as in production)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

MIB = 1024 * 1024


# -- requests ---------------------------------------------------------------------------


def form_files(*files: tuple[str, bytes | Path], field: str = "attestation") -> MultiDict[str, FileStorage]:
    """`request.files` of a POST carrying each (file name, content) under `field`.
    Content given as a Path is streamed from disk, never read whole."""
    parts: list[tuple[BinaryIO, str]] = []
    for name, content in files:
        stream = open(content, "rb") if isinstance(content, Path) else io.BytesIO(content)
        parts.append((stream, name))
    builder = EnvironBuilder(method="POST", data={field: parts, "request_type": "1"})
    try:
        request = Request(builder.get_environ())
        request.max_content_length = None
        uploaded = request.files
    finally:
        builder.close()
        for stream, _ in parts:
            stream.close()
    return uploaded


def empty_file_input(field: str = "attestation") -> MultiDict[str, FileStorage]:
    """What a browser sends for a file input left empty: a part with an empty name."""
    return form_files(("", b""), field=field)


# -- PDF --------------------------------------------------------------------------------


def raw_pdf(objects: list[bytes | str], *, root: int = 1, trailer: str = "") -> bytes:
    """A PDF 1.7 file of the given objects (numbered from 1), with an exact xref."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        data = body.encode("latin-1") if isinstance(body, str) else body
        out.write(b"%d 0 obj\n" % number + data + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root {root} 0 R {trailer}>>\n".encode("latin-1"))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def _stream(data: bytes, extra: str = "") -> bytes:
    return f"<< /Length {len(data)} {extra}>>\nstream\n".encode("latin-1") + data + b"\nendstream"


PAGE_TEXT = b"BT /F1 18 Tf 72 720 Td (Attestation signee) Tj ET"


def simple_pdf(*, catalog_extra: str = "", page_extra: str = "", more: list[bytes | str] | None = None,
               content: bytes = PAGE_TEXT) -> bytes:
    """One A4 page of text. Objects 1-5 are the catalog, pages, page, content and font;
    `more` are appended from number 6 on, for the extras to refer to."""
    return raw_pdf([
        f"<< /Type /Catalog /Pages 2 0 R {catalog_extra}>>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        f"/Resources << /Font << /F1 5 0 R >> >> {page_extra}>>",
        _stream(content),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *(more or []),
    ])


def generated_pdf(pages: int = 1) -> bytes:
    """A PDF as fpdf2 writes it (compressed content, an /OpenAction destination)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for number in range(pages):
        pdf.add_page()
        for line in range(40):
            pdf.cell(0, 6, f"Page {number + 1}, ligne {line + 1} de l'attestation signée", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def pdf_of_size(size: int) -> bytes:
    """A valid one-page PDF of exactly `size` bytes: the page's content stream carries a
    long PDF comment."""
    padding = max(0, size - len(simple_pdf(content=PAGE_TEXT + b"\n%")))
    for _ in range(5):
        data = simple_pdf(content=PAGE_TEXT + b"\n%" + b"x" * padding)
        if len(data) == size:
            return data
        padding += size - len(data)
    raise AssertionError(f"could not build a PDF of {size} bytes")


def pdf_with_open_javascript() -> bytes:
    return simple_pdf(catalog_extra="/OpenAction 6 0 R ", more=["<< /S /JavaScript /JS (app.alert\\('x'\\);) >>"])


def pdf_with_named_javascript() -> bytes:
    """JavaScript in the document's name tree, run when the document opens."""
    return simple_pdf(
        catalog_extra="/Names << /JavaScript 6 0 R >> ",
        more=["<< /Names [(init) 7 0 R] >>", "<< /S /JavaScript /JS (app.alert\\(1\\);) >>"],
    )


def pdf_with_escaped_javascript_name() -> bytes:
    """`/J#53` is `/JS` written with a hex escape, to slip past naive byte scans."""
    return simple_pdf(catalog_extra="/OpenAction 6 0 R ", more=["<< /S /JavaScript /J#53 (app.alert\\(1\\);) >>"])


def pdf_with_javascript_link() -> bytes:
    annotation = ("<< /Type /Annot /Subtype /Link /Rect [72 700 300 730] "
                  "/A << /S /JavaScript /JS (this.print\\(\\);) >> >>")
    return simple_pdf(page_extra="/Annots [6 0 R] ", more=[annotation])


def pdf_with_launch_action() -> bytes:
    return simple_pdf(catalog_extra="/OpenAction << /S /Launch /F (cmd.exe) >> ")


def pdf_with_page_open_action() -> bytes:
    """An additional action (/AA) run when the page is shown."""
    return simple_pdf(page_extra="/AA << /O << /S /URI /URI (https://example.invalid/) >> >> ")


def pdf_with_uri_link() -> bytes:
    """A plain hyperlink: harmless, accepted."""
    annotation = ("<< /Type /Annot /Subtype /Link /Rect [72 700 300 730] "
                  "/A << /S /URI /URI (https://example.invalid/) >> >>")
    return simple_pdf(page_extra="/Annots [6 0 R] ", more=[annotation])


def pdf_with_attachment() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(simple_pdf())))
    writer.add_attachment("facture.exe", b"MZ\x90\x00" + b"\x00" * 60)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def encrypted_pdf(user_password: str = "secret") -> bytes:
    """Encrypted with AES-256; with an empty user password it opens without asking."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(simple_pdf())))
    writer.encrypt(user_password, "owner-password", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def truncated_pdf() -> bytes:
    """A three-page PDF cut two thirds of the way, as an interrupted download is."""
    data = generated_pdf(pages=3)
    return data[: len(data) * 2 // 3]


def pdf_without_pages() -> bytes:
    return raw_pdf(["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [] /Count 0 >>"])


# -- images -----------------------------------------------------------------------------


def png_image(width: int = 64, height: int = 48, mode: str = "RGB", **save: object) -> bytes:
    from PIL import Image

    image = Image.new(mode, (width, height), color="white" if mode != "P" else 0)
    out = io.BytesIO()
    image.save(out, "PNG", **save)
    return out.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """Random pixels barely compress: about 3 bytes a pixel."""
    from PIL import Image

    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def jpeg_image(width: int = 64, height: int = 48, *, noise: bool = False, progressive: bool = False) -> bytes:
    from PIL import Image

    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), color=(200, 180, 160))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, progressive=progressive)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header announces `width` × `height` pixels (a decompression bomb
    once decoded), with a few bytes of image data."""
    header = struct.pack("!IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + _png_chunk(b"IEND", b""))


def png_of_size(size: int) -> bytes:
    """A valid PNG padded to exactly `size` bytes with a private ancillary chunk
    (which decoders skip) before IEND."""
    image = png_image()
    iend = _png_chunk(b"IEND", b"")
    body = image[: -len(iend)]
    padding = size - len(image) - 12
    assert padding >= 0
    data = body + _png_chunk(b"paDd", b"\x00" * padding) + iend
    assert len(data) == size
    return data


def png_with_bad_crc() -> bytes:
    data = bytearray(png_image())
    data[40] ^= 0xFF  # inside the first IDAT chunk
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to announce other dimensions."""
    data = bytearray(jpeg_image(16, 16))
    sof = data.index(b"\xff\xc0")
    struct.pack_into("!HH", data, sof + 5, height, width)
    return bytes(data)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def windows_executable() -> bytes:
    """The start of a PE file ("MZ"), as an .exe renamed .pdf would be."""
    return b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + os.urandom(4096)


def interlaced_png(width: int, height: int, *, missing: int = 0) -> bytes:
    """An 8-bit grey Adam7-interlaced PNG (Pillow cannot write one), its data counted
    pixel by pixel; `missing` bytes of image data are left out."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        columns, rows = len(range(x0, width, dx)), len(range(y0, height, dy))
        if columns and rows:
            raw += (b"\x00" + b"\x80" * columns) * rows
    raw = raw[: len(raw) - missing]
    header = struct.pack("!IIBBBBB", width, height, 8, 0, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(bytes(raw))) + _png_chunk(b"IEND", b""))


EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def pdf_with_eicar() -> bytes:
    """A valid PDF carrying the EICAR test string (in a comment of its page content)."""
    return simple_pdf(content=PAGE_TEXT + b"\n%" + EICAR)
