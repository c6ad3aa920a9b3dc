"""The FINESS referential: identifiers, the official open-data extraction, and its import.

The extraction published on data.gouv.fr is one `;`-separated file: a first line
`finess;etalab;<n>;<date>`, one `structureet;…` line per establishment (31 fields, a
trailing `;`), then one `geolocalisation;…` line per establishment. The import streams
it, upserts in batches (committing as it goes, so that SQLite writers elsewhere are never
locked out for long) and marks absent establishments closed, but never on the word of a
file that stops in the middle of a line, nor when the file would close more than a
twentieth of the referential at once (a partial or regional file) unless told to.
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import IO, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session
from unidecode import unidecode

from idp.identity import luhn_valid
from onboarding.models import Establishment, EstablishmentTerm
from portal import audit
from portal.clock import now

# -- identifiers ------------------------------------------------------------------------

_FINESS_SHAPE = re.compile(r"(?:[0-9]{2}|2[AB])[0-9]{7}")

# For the check digit the Corsican letters count as their rank in the alphabet
# (A=1, B=2), as in the RIB key: 2A0000154 is checked as 210000154 and 2B0000038 as
# 220000038. Verified on the FINESS numbers of the decree of 4 March 2015 (JORF), whose
# five Corsican numbers all pass this rule and fail the "2A/2B -> 20" reading.
_CORSICAN_DIGITS = {"2A": "21", "2B": "22"}

# FINESS numbers of the overseas départements start with 97/98 and a two-digit area;
# the extraction writes their département as 9A, 9B… These are the INSEE codes the
# portal uses instead (an admin's scope is "971", not "9A").
_OVERSEAS_BY_FINESS_PREFIX = {
    "9701": "971", "9702": "972", "9703": "973", "9704": "974", "9705": "975",
    "9805": "976", "9806": "986",
}
_OVERSEAS_BY_FILE_CODE = {
    "9A": "971", "9B": "972", "9C": "973", "9D": "974", "9E": "975", "9F": "976", "9J": "986",
}


def is_valid_finess(value: object) -> bool:
    """Nine characters: a département (two digits, or 2A/2B), seven digits, the last one a
    Luhn check digit over the nine."""
    if not isinstance(value, str) or not _FINESS_SHAPE.fullmatch(value):
        return False
    digits = _CORSICAN_DIGITS.get(value[:2], value[:2]) + value[2:]
    return luhn_valid(digits)


def department_of(finess: str) -> str | None:
    """The département code of a valid FINESS number ("28", "2A", "974"), else None."""
    if not is_valid_finess(finess):
        return None
    if finess[:2] in ("97", "98"):
        return _OVERSEAS_BY_FINESS_PREFIX.get(finess[:4], finess[:2])
    return finess[:2]


def normalise_department(code: str | None, finess: str) -> str:
    code = (code or "").strip().upper()
    if code in _OVERSEAS_BY_FILE_CODE:
        return _OVERSEAS_BY_FILE_CODE[code]
    return code or department_of(finess) or finess[:2]


# -- search words -----------------------------------------------------------------------

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
MAX_TERM_LENGTH = 64
TERM_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
FINESS_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# The accented letters of French names, transliterated without calling Unidecode (which
# costs a Python call per character); Unidecode handles whatever else remains.
_FRENCH_LETTERS = str.maketrans({
    **{c: "a" for c in "àâäáãåÀÂÄÁÃÅ"}, **{c: "e" for c in "éèêëÉÈÊË"}, **{c: "i" for c in "îïíìÎÏÍÌ"},
    **{c: "o" for c in "ôöóòõÔÖÓÒÕ"}, **{c: "u" for c in "ùûüúÙÛÜÚ"}, **{c: "c" for c in "çÇ"},
    **{c: "y" for c in "ÿŸ"}, **{c: "n" for c in "ñÑ"}, "œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae",
    "’": " ", "–": " ", "—": " ", "«": " ", "»": " ", "\u00a0": " ",
})


def normalise(text: str | None) -> str:
    """Lower-case ASCII words separated by one space: "Hôpital d'Évreux" -> "hopital d evreux"."""
    if not text:
        return ""
    if not text.isascii():
        text = text.translate(_FRENCH_LETTERS)
        if not text.isascii():
            text = unidecode(text)
    return _NOT_ALNUM.sub(" ", text.lower()).strip()


def search_words(text: str | None) -> list[str]:
    """The words a search can match: normalised, two characters or more (a lone "d" or
    "l" of an elision says nothing), each once, in order."""
    seen: dict[str, None] = {}
    for word in normalise(text).split():
        if len(word) >= 2:
            seen.setdefault(word[:MAX_TERM_LENGTH], None)
    return list(seen)


def name_key(name: str | None) -> str:
    """A name as its search words, in order and repeated if need be: "CH DE L'ÉCLUSE"
    -> "ch de ecluse", so that it starts with the words a user types from its start."""
    return " ".join(word for word in normalise(name).split() if len(word) >= 2)[:255]


def prefix_upper_bound(prefix: str, alphabet: str = TERM_ALPHABET) -> str | None:
    """The smallest string after every string that starts with `prefix`, over `alphabet`
    (None when there is none: "zz"). Computed in the alphabet's own order so that the
    range `prefix <= x < bound` holds under a byte order and a linguistic collation alike."""
    chars = list(prefix)
    while chars:
        position = alphabet.find(chars[-1])
        if 0 <= position < len(alphabet) - 1:
            chars[-1] = alphabet[position + 1]
            return "".join(chars)
        chars.pop()
    return None


# -- the extraction's fields ------------------------------------------------------------

STRUCTURE_FIELDS = (
    "structureet", "nofinesset", "nofinessej", "rs", "rslongue", "complrs", "compldistrib",
    "numvoie", "typvoie", "voie", "compvoie", "lieuditbp", "commune", "departement",
    "libdepartement", "ligneacheminement", "telephone", "telecopie", "categetab",
    "libcategetab", "categagretab", "libcategagretab", "siret", "codeape", "codemft",
    "libmft", "codesph", "libsph", "dateouv", "dateautor", "datemaj",
)
_FIELD = {name: index for index, name in enumerate(STRUCTURE_FIELDS)}
# Recent extractions append `numuai` (a school code, unused here) after datemaj.
_ACCEPTED_FIELD_COUNTS = (len(STRUCTURE_FIELDS), len(STRUCTURE_FIELDS) + 1)

_ROUTING_LINE = re.compile(r"(?P<postal>[0-9]{5})\s+(?P<city>.*?)(?:\s+CEDEX(?:\s*\d+)?)?\s*$", re.IGNORECASE)
_SPACES = re.compile(r"\s{2,}")
# The file writes "ST JOSEPH" as often as "SAINT JOSEPH": index both spellings.
_ABBREVIATIONS = {"st": "saint", "ste": "sainte", "saint": "st", "sainte": "ste"}

# Column sizes of the model: longer values are clipped rather than refused, since a
# too-long label must not cost a region one of its establishments.
_MAX_LENGTH = {
    column.name: column.type.length
    for column in Establishment.__table__.columns
    if isinstance(column.type, sa.String) and column.type.length
}


def parse_date(value: str | None) -> date | None:
    """YYYY-MM-DD (recent extractions) or DD/MM/YYYY (older ones); anything else is None."""
    if not value or len(value) != 10:
        return None
    try:
        if value[4] == "-":
            return date(int(value[:4]), int(value[5:7]), int(value[8:]))
        if value[2] == "/":
            return date(int(value[6:]), int(value[3:5]), int(value[:2]))
    except ValueError:
        return None
    return None


def split_routing_line(line: str | None) -> tuple[str | None, str | None]:
    """"28100 DREUX" -> ("28100", "DREUX"); "45067 ORLEANS CEDEX 2" -> ("45067", "ORLEANS")."""
    if not line:
        return None, None
    match = _ROUTING_LINE.match(line)
    if not match:
        return None, line
    return match["postal"], match["city"] or None


def _clean(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if "  " in value:
        value = _SPACES.sub(" ", value)
    return value


class LineError(ValueError):
    """A line of the extraction that cannot be imported; the message says why, in French."""


@dataclass(frozen=True)
class Header:
    version: str
    extraction_date: date | None


@dataclass
class EstablishmentRecord:
    """One `structureet` line, ready to be written."""

    values: dict[str, object]
    terms: list[str]

    @property
    def finess(self) -> str:
        return self.values["finess"]  # type: ignore[return-value]

    @property
    def fingerprint(self) -> str:
        return self.values["fingerprint"]  # type: ignore[return-value]


def parse_header(line: str) -> Header:
    parts = line.lstrip("\ufeff").rstrip("\r\n").split(";")
    if len(parts) < 3 or parts[0].strip().lower() != "finess" or parts[1].strip().lower() != "etalab":
        shown = "".join(c if c.isprintable() else "?" for c in line.strip()[:60])
        raise LineError(
            "ce fichier n'est pas une extraction FINESS : la première ligne devrait commencer par "
            f"« finess;etalab; » et c'est « {shown} »"
        )
    extraction = parts[3].strip() if len(parts) > 3 else ""
    return Header(version=parts[2].strip(), extraction_date=parse_date(extraction))


def split_fields(line: str) -> list[str]:
    """The fields of one line: `;`-separated, quoted with `"` and `""` escapes."""
    if '"' not in line:
        fields = line.split(";")
    else:
        try:
            fields = next(csv.reader([line], delimiter=";", quotechar='"', doublequote=True, strict=True))
        except csv.Error:
            raise LineError("guillemets mal fermés") from None
    if len(fields) > 1 and fields[-1] == "":
        fields.pop()  # the `;` that ends every line
    return fields


def parse_structure(fields: list[str], source: str) -> EstablishmentRecord:
    if len(fields) not in _ACCEPTED_FIELD_COUNTS:
        raise LineError(f"{len(fields)} champs au lieu de {len(STRUCTURE_FIELDS)}")
    raw = [_clean(value) for value in fields[: len(STRUCTURE_FIELDS)]]
    get = lambda name: raw[_FIELD[name]]  # noqa: E731 - reads better than 31 indexes

    finess = (get("nofinesset") or "").upper()
    if not is_valid_finess(finess):
        raise LineError(f"numéro FINESS géographique invalide : « {get('nofinesset') or ''} »")
    name = get("rs") or get("rslongue")
    if not name:
        raise LineError(f"raison sociale vide pour le FINESS {finess}")

    postal_code, city = split_routing_line(get("ligneacheminement"))
    values: dict[str, object] = {
        "finess": finess,
        "finess_juridique": (get("nofinessej") or "").upper() or None,
        "name": name,
        "long_name": get("rslongue"),
        "name_complement": get("complrs"),
        "distribution_complement": get("compldistrib"),
        "street_number": get("numvoie"),
        "street_type": get("typvoie"),
        "street": get("voie"),
        "street_number_suffix": get("compvoie"),
        "locality": get("lieuditbp"),
        "routing_line": get("ligneacheminement"),
        "postal_code": postal_code,
        "city": city,
        "commune_code": get("commune"),
        "department_code": normalise_department(get("departement"), finess),
        "department_name": get("libdepartement"),
        "category_code": get("categetab"),
        "category_label": get("libcategetab"),
        "category_group_code": get("categagretab"),
        "category_group_label": get("libcategagretab"),
        "phone": get("telephone"),
        "fax": get("telecopie"),
        "siret": get("siret"),
        "opened_on": parse_date(get("dateouv")),
        "authorized_on": parse_date(get("dateautor")),
        "finess_updated_on": parse_date(get("datemaj")),
        "source": source,
    }
    for column, length in _MAX_LENGTH.items():
        value = values.get(column)
        if isinstance(value, str) and len(value) > length:
            values[column] = value[:length]

    terms = search_words(" ".join([values["name"], get("rslongue") or "", get("complrs") or "", city or ""]))  # type: ignore[list-item]
    terms += [_ABBREVIATIONS[t] for t in terms if t in _ABBREVIATIONS and _ABBREVIATIONS[t] not in terms]
    if postal_code and postal_code not in terms:
        terms.append(postal_code)
    values["name_key"] = name_key(values["name"])  # type: ignore[arg-type]
    values["long_name_key"] = name_key(values["long_name"])  # type: ignore[arg-type]
    values["search_text"] = " ".join(terms)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(source.encode())
    for value in raw:
        digest.update(b"\x1f" + (value or "").encode())
    values["fingerprint"] = digest.hexdigest()
    return EstablishmentRecord(values=values, terms=terms)


# -- reading the file -------------------------------------------------------------------


class LineDecoder:
    """UTF-8 until a line proves otherwise, then Windows-1252 (Latin-1 for its five holes)
    for the rest: the extraction has been published in both encodings."""

    def __init__(self) -> None:
        self.encoding = "utf-8"

    def __call__(self, raw: bytes) -> str:
        if self.encoding == "utf-8":
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                self.encoding = "cp1252"
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


@dataclass
class RawLine:
    number: int
    text: str
    terminated: bool


def read_lines(stream: IO[bytes] | IO[str], decoder: LineDecoder) -> Iterator[RawLine]:
    for number, raw in enumerate(stream, start=1):
        text = decoder(raw) if isinstance(raw, bytes) else raw
        terminated = text.endswith("\n")
        yield RawLine(number, text.rstrip("\r\n"), terminated)


# -- the import -------------------------------------------------------------------------

BATCH_SIZE = 2000
KEPT_REJECTIONS = 1000
# An extraction closes a few hundred of 100,000 establishments a month. More than this
# share (or this many, for a small referential) at once is taken for a partial file.
MASS_CLOSURE_SHARE = 0.05
MASS_CLOSURE_MINIMUM = 20


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"ligne {self.line} : {self.reason}"


@dataclass
class ImportReport:
    source: str
    file_name: str | None = None
    extraction_date: date | None = None
    encoding: str = "utf-8"
    lines: int = 0
    created: int = 0
    updated: int = 0
    reopened: int = 0
    unchanged: int = 0
    closed: int = 0
    geolocations: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    # Set when the file stops in the middle of a line: that line's number.
    truncated_at: int | None = None
    # Absent establishments left open because closing them all looked like a partial file.
    closures_withheld: int = 0

    @property
    def is_truncated(self) -> bool:
        return self.truncated_at is not None

    @property
    def establishments(self) -> int:
        return self.created + self.updated + self.reopened + self.unchanged

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.rejections) < KEPT_REJECTIONS:
            self.rejections.append(Rejection(line, reason))

    def summary(self) -> str:
        text = (
            f"Import FINESS terminé — créés : {self.created}, mis à jour : {self.updated}, "
            f"rouverts : {self.reopened}, fermés : {self.closed}, inchangés : {self.unchanged}, "
            f"lignes rejetées : {self.rejected}."
        )
        if self.is_truncated:
            text += " Aucun établissement n'a été fermé : le fichier est incomplet."
        elif self.closures_withheld:
            text += (f" {self.closures_withheld} établissements absents du fichier n'ont pas été fermés :"
                     " c'est plus d'un vingtième du référentiel, le fichier semble partiel.")
        return text

    def error(self) -> str | None:
        """What the operator must look at, in one line; None when the import is complete."""
        if self.is_truncated:
            return (f"fichier tronqué à la ligne {self.truncated_at} (la ligne est incomplète) : "
                    "les lignes lues ont été importées, aucun établissement n'a été fermé")
        if self.closures_withheld:
            return (f"fermeture de {self.closures_withheld} établissements refusée (fichier partiel ?) ; "
                    "si l'extraction est bien complète, relancez avec --allow-mass-closure")
        return None

    def audit_details(self) -> dict[str, object]:
        return {
            "file": self.file_name,
            "source": self.source,
            "extraction_date": self.extraction_date.isoformat() if self.extraction_date else None,
            "encoding": self.encoding,
            "created": self.created,
            "updated": self.updated,
            "reopened": self.reopened,
            "closed": self.closed,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "truncated_at": self.truncated_at,
            "closures_withheld": self.closures_withheld,
        }


@dataclass
class _Known:
    fingerprint: str
    closed: bool
    source: str


class FinessFileError(ValueError):
    """The file is not a FINESS extraction; nothing was written."""


def import_finess(session: Session, path_or_stream: str | Path | IO[bytes] | IO[str], *,
                  source: str = "finess", allow_mass_closure: bool = False) -> ImportReport:
    """Import a FINESS extraction; see the module docstring. Raises FinessFileError (and
    writes nothing) when the file is not an extraction. Commits as it goes.

    `allow_mass_closure`: close the absent establishments even when they are more than
    MASS_CLOSURE_SHARE of the referential (the operator checked the file is whole)."""
    if isinstance(path_or_stream, (str, Path)):
        with open(path_or_stream, "rb") as stream:
            return _import_stream(session, stream, source, Path(path_or_stream).name, allow_mass_closure)
    return _import_stream(session, path_or_stream, source, getattr(path_or_stream, "name", None),
                          allow_mass_closure)


def _import_stream(session: Session, stream: IO[bytes] | IO[str], source: str,
                   file_name: str | None, allow_mass_closure: bool) -> ImportReport:
    report = ImportReport(source=source, file_name=str(file_name) if file_name else None)
    decoder = LineDecoder()
    lines = read_lines(stream, decoder)
    header_line = next(lines, None)
    if header_line is None:
        raise FinessFileError("le fichier est vide : ce n'est pas une extraction FINESS")
    try:
        header = parse_header(header_line.text)
    except LineError as exc:
        raise FinessFileError(str(exc)) from None
    report.extraction_date = header.extraction_date

    writer = _BatchWriter(session, source, report)
    seen: dict[str, int] = {}
    last = header_line
    for line in lines:
        last = line
        _read_line(line, source, seen, writer, report)
    writer.flush()
    report.lines = last.number
    report.encoding = decoder.encoding

    if not report.is_truncated:
        _close_absent(writer, seen, report, allow_mass_closure)
    if report.created or report.updated or report.reopened or report.closed:
        refresh_statistics(session)
    audit.record(session, "finess.import", target_type="referential", target_id="finess",
                 outcome="partial" if report.error() else "success",
                 details=report.audit_details())
    session.commit()
    return report


def _read_line(line: RawLine, source: str, seen: dict[str, int], writer: "_BatchWriter",
               report: ImportReport) -> None:
    if not line.text.strip():
        return
    kind = line.text.split(";", 1)[0].strip().lower()
    if not line.terminated and kind != "geolocalisation" and not _is_whole_structure(line.text, source):
        # The file stops in the middle of this line. (A cut among the geolocalisation
        # lines comes after every establishment, and loses none.)
        report.truncated_at = line.number
        report.reject(line.number, "ligne incomplète : le fichier s'arrête au milieu de cette ligne")
        return
    if kind == "geolocalisation":
        # Coordinates (Lambert 93) are of no use to the portal: counted, not stored.
        report.geolocations += 1
        return
    if kind != "structureet":
        report.reject(line.number, f"type de ligne inconnu « {kind[:30]} »")
        return
    try:
        record = parse_structure(split_fields(line.text), source)
    except LineError as exc:
        report.reject(line.number, str(exc))
        return
    first = seen.get(record.finess)
    if first is not None:
        report.reject(line.number, f"FINESS {record.finess} en double (déjà lu ligne {first})")
        return
    seen[record.finess] = line.number
    writer.add(record)


def _is_whole_structure(text: str, source: str) -> bool:
    """Whether a last line without its line end is whole all the same: a structure line
    ends with ";" and has all its fields, which a cut leaves only by chance."""
    if not text.startswith("structureet;") or not text.endswith(";"):
        return False
    try:
        parse_structure(split_fields(text), source)
    except LineError:
        return False
    return True


def _close_absent(writer: "_BatchWriter", seen: dict[str, int], report: ImportReport,
                  allow_mass_closure: bool) -> None:
    open_numbers = writer.open_numbers()
    absent = [finess for finess in open_numbers if finess not in seen]
    allowance = max(MASS_CLOSURE_MINIMUM, int(len(open_numbers) * MASS_CLOSURE_SHARE))
    if len(absent) > allowance and not allow_mass_closure:
        report.closures_withheld = len(absent)
    else:
        report.closed = writer.close(absent)


class _BatchWriter:
    """Upserts establishments and their search terms, BATCH_SIZE rows per transaction."""

    def __init__(self, session: Session, source: str, report: ImportReport) -> None:
        self.session = session
        self.source = source
        self.report = report
        self.pending: list[EstablishmentRecord] = []
        self.table = Establishment.__table__
        self.terms = EstablishmentTerm.__table__

    def _known(self, records: list[EstablishmentRecord]) -> dict[str, _Known]:
        """What the database holds for this batch (looked up per batch: memory stays flat
        whatever the size of the referential)."""
        t = self.table
        rows = self.session.execute(
            sa.select(t.c.finess, t.c.fingerprint, t.c.closed_at, t.c.source)
            .where(t.c.finess.in_([r.finess for r in records]))
        )
        return {finess: _Known(fp, closed is not None, src) for finess, fp, closed, src in rows}

    def add(self, record: EstablishmentRecord) -> None:
        self.pending.append(record)
        if len(self.pending) >= BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        created, changed = self._classify(self.pending, self._known(self.pending))
        at = now()
        self._insert(created, at)
        self._update(changed, at)
        self.session.commit()
        self.pending = []

    def _classify(self, records: list[EstablishmentRecord], known_rows: dict[str, _Known]) -> tuple[list, list]:
        created, changed = [], []
        for record in records:
            known = known_rows.get(record.finess)
            if known is None:
                created.append(record)
                self.report.created += 1
            elif self.source != "finess" and known.source == "finess":
                # Demo data never overwrites the official referential.
                self.report.unchanged += 1
            elif known.fingerprint != record.fingerprint:
                changed.append(record)
                if known.closed:
                    self.report.reopened += 1
                else:
                    self.report.updated += 1
            elif known.closed:
                changed.append(record)
                self.report.reopened += 1
            else:
                self.report.unchanged += 1
        return created, changed

    def _insert(self, records: list[EstablishmentRecord], at: datetime) -> None:
        if not records:
            return
        rows = [{**r.values, "closed_at": None, "created_at": at, "updated_at": at} for r in records]
        self._bulk_insert(self.table, rows)
        self._insert_terms(records)

    def _update(self, records: list[EstablishmentRecord], at: datetime) -> None:
        if not records:
            return
        t = self.table
        # executemany: the SET clause takes the keys of the parameter rows.
        statement = sa.update(t).where(t.c.finess == sa.bindparam("key")).values(closed_at=None, updated_at=at)
        rows = [{**{c: v for c, v in r.values.items() if c != "finess"}, "key": r.finess} for r in records]
        self.session.execute(statement, rows)
        keys = [r.finess for r in records]
        self.session.execute(sa.delete(self.terms).where(self.terms.c.finess.in_(keys)))
        self._insert_terms(records)

    def _insert_terms(self, records: Iterable[EstablishmentRecord]) -> None:
        self._bulk_insert(self.terms, [{"term": term, "finess": r.finess} for r in records for term in r.terms])

    def _bulk_insert(self, table: sa.Table, rows: list[dict[str, object]]) -> None:
        """Insert many rows: COPY on PostgreSQL, where psycopg's pipelined executemany is
        ten times slower (a national import writes ~900,000 rows); executemany elsewhere."""
        if not rows:
            return
        connection = self.session.connection()
        dialect = connection.dialect
        if dialect.name != "postgresql":
            connection.execute(sa.insert(table), rows)
            return
        names = list(rows[0])
        # The columns' own bind processing (UTCDateTime stores naive UTC, for one).
        processors = [(name, table.c[name].type.bind_processor(dialect)) for name in names]
        preparer = dialect.identifier_preparer
        command = (f"COPY {preparer.format_table(table)} ({', '.join(preparer.quote(n) for n in names)}) "
                   "FROM STDIN")
        with connection.connection.cursor() as cursor, cursor.copy(command) as copy:
            for row in rows:
                copy.write_row([process(row[name]) if process else row[name] for name, process in processors])

    def open_numbers(self) -> list[str]:
        """The FINESS numbers of this source's open establishments."""
        t = self.table
        return list(self.session.scalars(
            sa.select(t.c.finess).where(t.c.closed_at.is_(None), t.c.source == self.source)
        ))

    def close(self, numbers: list[str]) -> int:
        t = self.table
        at = now()
        for start in range(0, len(numbers), BATCH_SIZE):
            chunk = numbers[start:start + BATCH_SIZE]
            self.session.execute(
                sa.update(t).where(t.c.finess.in_(chunk), t.c.closed_at.is_(None))
                .values(closed_at=at, updated_at=at)
            )
            # The terms index open establishments only; a reopening writes them again.
            self.session.execute(sa.delete(self.terms).where(self.terms.c.finess.in_(chunk)))
            self.session.commit()
        return len(numbers)


def refresh_statistics(session: Session) -> None:
    """Let the query planner know the new size of the tables after a bulk load. On
    PostgreSQL, VACUUM also marks the pages all-visible, which the search's index-only
    scans need to stay index-only; it cannot run inside a transaction."""
    session.commit()
    bind = session.get_bind()
    tables = (Establishment.__tablename__, EstablishmentTerm.__tablename__)
    if bind.dialect.name == "postgresql":
        with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f"VACUUM (ANALYZE) {', '.join(tables)}")
    else:
        for table in tables:
            session.execute(sa.text(f"ANALYZE {table}"))
        session.commit()


# -- demo data --------------------------------------------------------------------------


def demo_file() -> Traversable:
    return resources.files("onboarding") / "data" / "demo_finess.csv"


def load_demo_establishments(session: Session) -> int:
    """Import the demo extraction shipped with the portal (source "demo"); returns the
    number of demo establishments it lists. Commits."""
    with demo_file().open("rb") as stream:
        report = import_finess(session, stream, source="demo")
    return report.establishments
