"""The referentials: professions (TRE_G15) and the FINESS establishments (search, JSON API).

Establishment search must answer an autocomplete within a few milliseconds over the
~100,000 establishments of the national file, on SQLite and PostgreSQL alike, so it uses
no full-text extension: each establishment's normalised words are rows of
`establishment_terms`, and a typed word is a prefix range scan on that table's primary
key. The rarest typed word drives the scan; the other words are checked with an index
probe per candidate; a bounded candidate set is ranked in Python.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable
from urllib.parse import unquote_to_bytes

import sqlalchemy as sa
from flask import Blueprint, jsonify, request
from sqlalchemy.orm import Session
from unidecode import unidecode

from onboarding.finess import (
    FINESS_ALPHABET,
    MAX_TERM_LENGTH,
    TERM_ALPHABET,
    department_of,
    is_valid_finess,
    load_demo_establishments,
    prefix_upper_bound,
    search_words,
)
from onboarding.models import Establishment, EstablishmentTerm
from portal.db import db
from portal.security import limiter

__all__ = [
    "Profession", "professions", "profession_label", "is_valid_finess", "department_of",
    "search_establishments", "search_establishments_json", "get_establishment", "establishment_json",
    "load_demo_establishments", "bp",
]

bp = Blueprint("referentials", __name__)

# -- professions ------------------------------------------------------------------------

OTHER_PROFESSION_CODE = "autre"
_FIRST_PROFESSION_CODE = "10"  # Médecin: by far the most frequent choice, listed first


@dataclass(frozen=True)
class Profession:
    code: str
    label: str


@lru_cache(maxsize=1)
def _profession_table() -> tuple[Profession, ...]:
    text = (resources.files("onboarding") / "data" / "professions.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text), delimiter=";")
    table = [Profession(row["code"].strip(), row["label"].strip()) for row in rows]
    table.sort(key=lambda p: (p.code != _FIRST_PROFESSION_CODE, unidecode(p.label).lower()))
    table.append(Profession(OTHER_PROFESSION_CODE, "Autre"))
    return tuple(table)


def professions() -> list[Profession]:
    """The choices of the registration form: Médecin, then alphabetical, then "Autre"."""
    return list(_profession_table())


def profession_label(code: str | None) -> str | None:
    for profession in _profession_table():
        if profession.code == code:
            return profession.label
    return None


# -- establishment search ---------------------------------------------------------------

DEFAULT_LIMIT = 10
MAX_LIMIT = 50
MAX_QUERY_LENGTH = 200
MAX_QUERY_WORDS = 6
# The driving word's range is counted up to COUNT_CAP rows: below it, scanning that range
# whole is cheap; at it, every word is common and the scan stops after COMMON_SCAN rows
# (bounding the worst query, common words that seldom meet, to a few milliseconds; the
# names that start with the typed words were found beforehand by their own index).
COUNT_CAP = 3000
COMMON_SCAN = 1500
# How many matching establishments are ranked in Python.
CANDIDATE_CAP = 200

_FINESS_LIKE = re.compile(r"(?:[0-9]{2}|2[AB])[0-9]{0,7}")
_NAME_ALPHABET = " " + TERM_ALPHABET  # name keys are words separated by one space


# The JSON of an establishment: key -> attribute, read alike from a model or a row.
_JSON_FIELDS = (
    ("finess", "finess"), ("name", "name"), ("long_name", "long_name"),
    ("postal_code", "postal_code"), ("city", "city"), ("department", "department_code"),
    ("department_name", "department_name"), ("finess_juridique", "finess_juridique"),
    ("category", "category_label"), ("category_code", "category_code"),
)


@dataclass(frozen=True)
class _Candidate:
    """A matching establishment as read for ranking; `row` also holds its JSON fields."""

    finess: str
    name_key: str
    long_name_key: str
    search_text: str
    row: sa.Row


def search_establishments(session: Session, q: str | None, limit: int = DEFAULT_LIMIT) -> list[Establishment]:
    """Open establishments matching `q`, best first: the exact FINESS number; numbers
    starting with it; names (short or long) starting with the typed words; names holding
    them all; then establishments whose other words (city, postal code) hold them."""
    return _load_in_order(session, [c.finess for c in _best_candidates(session, q, limit)])


def search_establishments_json(session: Session, q: str | None, limit: int = DEFAULT_LIMIT) -> list[dict[str, object]]:
    """The same answer as JSON objects, read from the search's own rows (no model loaded:
    one database round trip less for the autocomplete)."""
    return [establishment_json(c.row) for c in _best_candidates(session, q, limit)]


def _best_candidates(session: Session, q: str | None, limit: int) -> list[_Candidate]:
    typed = (q or "")[:MAX_QUERY_LENGTH]
    q = typed.strip()
    limit = max(1, min(MAX_LIMIT, limit))
    if len(q) < 2:
        return []
    compact = re.sub(r"\s+", "", q).upper()
    finess_prefix = None
    if _FINESS_LIKE.fullmatch(compact):
        if len(compact) == 9:
            return list(_candidates_by_finess(session, compact).values())
        finess_prefix = compact
    words = search_words(q)[:MAX_QUERY_WORDS]
    # The words before the last one were typed whole; the last one too if something
    # (a space, a comma) follows it. Whole words match whole terms: fewer, better rows.
    last_is_prefix = typed[-1].isalnum()
    candidates: dict[str, _Candidate] = {}
    if finess_prefix:
        candidates.update(_candidates_by_finess_prefix(session, finess_prefix))
    if words:
        # One word: its term range holds the names starting with it too (one round trip
        # less). Several: a name typed from its start is found by the name indexes, and
        # when that fills the list the word search is not needed.
        starting = _candidates_by_name_start(session, " ".join(words)) if len(words) > 1 else {}
        candidates.update(starting)
        if len(starting) < limit:
            for finess, candidate in _candidates_by_words(session, words, last_is_prefix).items():
                candidates.setdefault(finess, candidate)
    return sorted(candidates.values(), key=_ranking(words, finess_prefix))[:limit]


def get_establishment(session: Session, finess: str | None) -> Establishment | None:
    """The establishment of a FINESS number, open or closed; None when unknown or invalid."""
    finess = (finess or "").strip().upper()
    if not is_valid_finess(finess):
        return None
    return session.get(Establishment, finess)


# The statements are built once per shape (number of words, driving word…) with bound
# parameters: building SQLAlchemy expressions costs more than running these queries.


def _in_range(column: sa.ColumnElement, name: str) -> sa.ColumnElement:
    return sa.and_(column >= sa.bindparam(f"{name}_lo"), column < sa.bindparam(f"{name}_hi"))


def _range_params(name: str, prefix: str, alphabet: str, longest: int) -> dict[str, str]:
    # Past "zz…" there is no bound in the alphabet; a run of "z" longer than any stored
    # value sorts after all of them, under a byte order and a linguistic collation alike.
    upper = prefix_upper_bound(prefix, alphabet) or "z" * (longest + 1)
    return {f"{name}_lo": prefix, f"{name}_hi": upper}


def _term_params(name: str, word: str, *, whole: bool) -> dict[str, str]:
    if whole:
        # [word, word + "0"): nothing made of [0-9a-z] lies strictly between the two.
        return {f"{name}_lo": word, f"{name}_hi": word + TERM_ALPHABET[0]}
    return _range_params(name, word, TERM_ALPHABET, MAX_TERM_LENGTH)


def _candidate_columns() -> tuple:
    e = Establishment.__table__
    ranking = (e.c.finess, e.c.name_key, e.c.long_name_key, e.c.search_text)
    shown = tuple(e.c[attribute] for _, attribute in _JSON_FIELDS if attribute != "finess")
    return ranking + shown


def _candidates(session: Session, statement: sa.Select, params: dict[str, object]) -> dict[str, _Candidate]:
    candidates: dict[str, _Candidate] = {}
    for row in session.execute(statement, params):
        candidates.setdefault(row.finess, _Candidate(row.finess, row.name_key, row.long_name_key,
                                                     row.search_text, row))
        if len(candidates) >= CANDIDATE_CAP:
            break
    return candidates


@lru_cache(maxsize=1)
def _finess_statement() -> sa.Select:
    e = Establishment.__table__
    return sa.select(*_candidate_columns()).where(e.c.finess == sa.bindparam("finess"), e.c.closed_at.is_(None))


def _candidates_by_finess(session: Session, finess: str) -> dict[str, _Candidate]:
    """The open establishment of a whole FINESS number; nothing when the key is wrong."""
    if not is_valid_finess(finess):
        return {}
    return _candidates(session, _finess_statement(), {"finess": finess})


@lru_cache(maxsize=1)
def _finess_prefix_statement() -> sa.Select:
    e = Establishment.__table__
    return (sa.select(*_candidate_columns())
            .where(_in_range(e.c.finess, "finess"), e.c.closed_at.is_(None))
            .order_by(e.c.finess).limit(CANDIDATE_CAP))


def _candidates_by_finess_prefix(session: Session, prefix: str) -> dict[str, _Candidate]:
    params = _range_params("finess", prefix, FINESS_ALPHABET, 9)
    return _candidates(session, _finess_prefix_statement(), params)


@lru_cache(maxsize=1)
def _name_start_statement() -> sa.Select:
    e = Establishment.__table__
    return (sa.select(*_candidate_columns())
            .where(sa.or_(_in_range(e.c.name_key, "name"), _in_range(e.c.long_name_key, "name")),
                   e.c.closed_at.is_(None))
            .limit(CANDIDATE_CAP))


def _candidates_by_name_start(session: Session, phrase: str) -> dict[str, _Candidate]:
    """Open establishments whose short or long name starts with the typed words: the
    common case of a name typed from its beginning, answered from the name indexes."""
    params = _range_params("name", phrase, _NAME_ALPHABET, 255)
    matches = _candidates(session, _name_start_statement(), params)
    # Under a linguistic collation the range may also hold "centreber…" for "centre ber".
    return {f: c for f, c in matches.items() if _name_starts_with(c, phrase)}


@lru_cache(maxsize=MAX_QUERY_WORDS)
def _count_statement(word_count: int) -> sa.Select:
    terms = EstablishmentTerm.__table__
    counts = []
    for index in range(word_count):
        capped = (sa.select(sa.literal(1)).select_from(terms)
                  .where(_in_range(terms.c.term, f"w{index}")).limit(COUNT_CAP).subquery())
        counts.append(sa.select(sa.func.count()).select_from(capped).scalar_subquery())
    return sa.select(*counts)


def _driving_word(session: Session, words: list[str], params: dict[str, object]) -> tuple[int, bool]:
    """The index of the word with the fewest terms (counted up to COUNT_CAP, all words in
    one round trip; among words past the cap, the longest), and whether it is common."""
    if len(words) == 1:
        return 0, True
    row = session.execute(_count_statement(len(words)), params).one()
    driver = min(range(len(words)), key=lambda i: (row[i], -len(words[i])))
    return driver, row[driver] >= COUNT_CAP


@lru_cache(maxsize=64)
def _words_statement(word_count: int, driver: int, common: bool) -> sa.Select:
    """Open establishments holding every word, read from the driving word's range.

    The matching numbers are chosen in a LIMITed subquery over the terms alone (index-only
    scans and probes), so that both databases then join at most a few hundred rows."""
    terms = EstablishmentTerm.__table__
    driving_range = _in_range(terms.c.term, f"w{driver}")
    if common and word_count > 1:
        scanned = sa.select(terms.c.finess).where(driving_range).limit(COMMON_SCAN).subquery("scanned")
        matching = sa.select(scanned.c.finess)
        finess_column = scanned.c.finess
    else:
        matching = sa.select(terms.c.finess).where(driving_range)
        finess_column = terms.c.finess
    other = terms.alias("other")
    for index in range(word_count):
        if index != driver:
            # A correlated LIMIT 1 probe rather than EXISTS: PostgreSQL would turn EXISTS
            # into a hash semi-join over the whole range of a common word, while the
            # driving word, being the rarest, is best checked row by row.
            probe = (sa.select(sa.literal(1)).select_from(other)
                     .where(other.c.finess == finess_column, _in_range(other.c.term, f"w{index}"))
                     .limit(1).scalar_subquery())
            matching = matching.where(probe.is_not(None))
    # A prefix can match several words of one establishment: leave room for repeats.
    limited = matching.limit(CANDIDATE_CAP + CANDIDATE_CAP // 2).subquery("limited")
    ids = sa.select(limited.c.finess).distinct().subquery("ids")
    e = Establishment.__table__
    return (sa.select(*_candidate_columns())
            .select_from(ids.join(e, e.c.finess == ids.c.finess))
            .where(e.c.closed_at.is_(None)))


def _candidates_by_words(session: Session, words: list[str], last_is_prefix: bool) -> dict[str, _Candidate]:
    params: dict[str, object] = {}
    for index, word in enumerate(words):
        whole = index < len(words) - 1 or not last_is_prefix
        params.update(_term_params(f"w{index}", word, whole=whole))
    driver, common = _driving_word(session, words, params)
    return _candidates(session, _words_statement(len(words), driver, common), params)


def _name_starts_with(candidate: _Candidate, phrase: str) -> bool:
    return candidate.name_key.startswith(phrase) or candidate.long_name_key.startswith(phrase)


def _ranking(words: list[str], finess_prefix: str | None) -> Callable[[_Candidate], tuple]:
    """The sort key of the candidates of one query (lower sorts first)."""
    phrase = " ".join(words)

    def key(candidate: _Candidate) -> tuple:
        if finess_prefix and candidate.finess.startswith(finess_prefix):
            return (1, 0, 0, "", candidate.finess)  # typing a number: numeric order
        if words and _name_starts_with(candidate, phrase):
            tier = 2
        else:
            name_words = (candidate.name_key + " " + candidate.long_name_key).split()
            tier = 3 if all(any(n.startswith(w) for n in name_words) for w in words) else 4
        tokens = candidate.search_text.split()
        exact_words = sum(1 for w in words if w in tokens)
        return (tier, -exact_words, len(candidate.name_key), candidate.name_key, candidate.finess)

    return key


def _load_in_order(session: Session, finess_numbers: list[str]) -> list[Establishment]:
    if not finess_numbers:
        return []
    found = session.scalars(sa.select(Establishment).where(Establishment.finess.in_(finess_numbers)))
    by_finess = {e.finess: e for e in found}
    return [by_finess[f] for f in finess_numbers if f in by_finess]


def establishment_json(establishment: Establishment | sa.Row) -> dict[str, object]:
    return {key: getattr(establishment, attribute) for key, attribute in _JSON_FIELDS}


# -- JSON API ---------------------------------------------------------------------------

# Registration is anonymous, so the autocomplete is open: the limit keeps a scraper from
# turning it into a bulk export while leaving room for fast typists behind one NAT.
SEARCH_RATE_LIMIT = "30 per second;600 per minute"


def search_rate_limit() -> str:
    """The limit of the autocomplete (app.config may lower it, e.g. in a test)."""
    from flask import current_app

    return current_app.config.get("ENRS_SEARCH_RATE_LIMIT", SEARCH_RATE_LIMIT)


def _json_error(status: int, title: str, message: str):
    return jsonify(error=title, message=message), status


def _query_string_is_utf8() -> bool:
    try:
        unquote_to_bytes(request.query_string.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _requested_limit(raw: str | None) -> int:
    try:
        value = int((raw or "").strip())
    except ValueError:
        return DEFAULT_LIMIT
    return max(1, min(MAX_LIMIT, value))


@bp.get("/api/establishments")
@limiter.limit(search_rate_limit)
def api_search_establishments():
    if not _query_string_is_utf8():
        return _json_error(400, "Requête invalide", "La recherche contient des caractères illisibles (encodage UTF-8 attendu).")
    return jsonify(search_establishments_json(db.session, request.args.get("q", ""),
                                              _requested_limit(request.args.get("limit"))))


@bp.get("/api/establishments/<finess>")
@limiter.limit(search_rate_limit)
def api_get_establishment(finess: str):
    if not is_valid_finess(finess.strip().upper()):
        return _json_error(404, "Établissement introuvable", "Ce numéro FINESS n'est pas valide (9 caractères, clé de contrôle).")
    establishment = get_establishment(db.session, finess)
    if establishment is None:
        return _json_error(404, "Établissement introuvable", "Aucun établissement ne porte ce numéro FINESS.")
    if not establishment.is_open:
        return _json_error(404, "Établissement fermé", "Cet établissement est fermé dans le répertoire FINESS.")
    return jsonify(establishment_json(establishment) | {"address": establishment.address_lines, "phone": establishment.phone})
