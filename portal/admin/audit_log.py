"""The audit log page of the admin console (J6): read it, filter it, export it as CSV.

Who sees what: a super admin sees every entry. A regional admin sees the entries whose
target is a user of their départements (the same rule as the account queues,
`onboarding.approval.in_scope`) or an access request of their départements (requests,
decisions and attestations viewed, by their colleagues too), their own actions and the
entries about their own account. Entries without such a target (FINESS imports, CGU
versions, sessions…) are for super admins only. See docs/audit.md.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Blueprint, Response, g, render_template, request, stream_with_context, url_for
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from wtforms import Form, StringField

from idp.models import User
from idp.sessions import admin_required
from onboarding import access, approval
from onboarding.models import AccessRequest
from portal import audit
from portal.audit import AuditEntry
from portal.clock import now
from portal.db import db

bp = Blueprint("audit_log", __name__, url_prefix="/admin/audit")

PARIS = ZoneInfo("Europe/Paris")
PAGE_SIZE = 50
# An export is meant for a spreadsheet: past this, the filters should be narrowed, and
# the file says so in its last line.
EXPORT_MAX_ROWS = 100_000
# Rows fetched per round trip (server-side cursor on PostgreSQL) and written per chunk.
EXPORT_BATCH = 1_000

# French labels of the actions written by `audit.record(...)` across portal/, idp/ and
# onboarding/. An action missing here is shown by its raw name.
ACTION_LABELS: dict[str, str] = {
    "account.register": "Demande de création de compte",
    "account.register_duplicate": "Inscription avec une adresse déjà enregistrée",
    "account.email_verified": "Adresse mail validée",
    "account.link_resend": "Nouveau lien demandé",
    "account.approve": "Compte validé",
    "account.activate": "Compte activé à la validation du mail",
    "account.reject": "Demande refusée",
    "account.create": "Compte créé en ligne de commande",
    "account.contacts": "Coordonnées modifiées",
    "access.request": "Demande d'accès au ROR",
    "access.cancel": "Demande d'accès annulée",
    "access.approve": "Demande d'accès acceptée",
    "access.reject": "Demande d'accès refusée",
    "access.attestation_view": "Attestation consultée",
    "role.revoke": "Rôle retiré",
    "account.email_change_requested": "Changement de mail demandé",
    "account.email_changed": "Mail pour l'authentification modifié",
    "account.establishment_added": "Établissement ajouté",
    "account.establishment_removed": "Établissement retiré",
    "admin.create": "Administrateur créé",
    "admin.scope": "Départements de l'administrateur modifiés",
    "login.password_ok": "Mot de passe accepté",
    "login.password_refused": "Mot de passe refusé",
    "login.code_refused": "Code de connexion refusé",
    "login.code_resent": "Code de connexion renvoyé",
    "login.success": "Connexion",
    "login.locked": "Compte bloqué",
    "login.unlocked": "Compte débloqué",
    "password.reset_requested": "Réinitialisation du mot de passe demandée",
    "password.set": "Mot de passe défini",
    "session.logout": "Déconnexion",
    "session.revoked_by_user": "Session fermée par l'utilisateur",
    "session.revoked_by_admin": "Sessions fermées par un administrateur",
    "session.revoked_by_reset": "Sessions fermées (mot de passe réinitialisé)",
    "session.revoked_by_password_change": "Sessions fermées (mot de passe changé)",
    "totp.enrolled": "Application d'authentification ajoutée",
    "totp.removed": "Application d'authentification retirée",
    "totp.remove_refused": "Retrait de l'application refusé",
    "totp.recovery_code_used": "Code de secours utilisé",
    "totp.recovery_codes_renewed": "Codes de secours renouvelés",
    "totp.recovery_codes_refused": "Renouvellement des codes de secours refusé",
    "cgu.accepted": "CGU acceptées",
    "cgu.publish": "Nouvelle version des CGU publiée",
    "finess.import": "Import du répertoire FINESS",
    "audit.export": "Export du journal d'audit",
    "session.replaced": "Session remplacée (nouvelle connexion)",
    "app.open": "Application ouverte",
    "app.created": "Application enregistrée",
    "app.updated": "Application modifiée",
    "app.secret_rotated": "Secret d'application renouvelé",
    "app.disabled": "Application désactivée",
    "app.enabled": "Application réactivée",
    "app.removed": "Application supprimée",
    "oidc.code_issued": "Connexion transmise à une application",
    "oidc.code_reused": "Code d'autorisation rejoué (jetons révoqués)",
    "oidc.refresh_reused": "Jeton de rafraîchissement rejoué (jetons révoqués)",
    "oidc.redirect_uri_refused": "Adresse de retour refusée",
    "oidc.role_missing": "Application refusée (rôle manquant)",
    "oidc.token_revoked": "Jeton révoqué par l'application",
    "oidc.keys_rotated": "Clés de signature renouvelées",
    "psc.linked": "Carte e-CPS liée",
    "psc.unlinked": "Carte e-CPS déliée",
    "psc.unlink_refused": "Déliaison e-CPS refusée",
    "psc.identity_unlinked": "Connexion Pro Santé Connect sans compte lié",
    "psc.already_linked": "Identité PSC déjà liée à un autre compte",
    "psc.link_refused": "Liaison e-CPS refusée",
    "psc.national_id_mismatch": "Identifiant national différent de celui du compte",
    "psc.account_not_active": "Connexion PSC d'un compte inactif",
    "psc.state_mismatch": "Réponse PSC invalide ou rejouée",
    "psc.cancelled": "Connexion PSC annulée",
    "psc.unavailable": "Pro Santé Connect indisponible",
}

OUTCOME_LABELS = {"success": "Succès", "failure": "Échec", "partial": "Partiel"}
TARGET_TYPE_LABELS = {"user": "utilisateur", "session": "session", "referential": "référentiel",
                      "application": "application"}
# "utilisateur:12" is accepted as well as "user:12" in the target filter.
TARGET_TYPE_ALIASES = {label: name for name, label in TARGET_TYPE_LABELS.items()} | {"référentiel": "referential",
                                                                                     "referentiel": "referential"}

ACTION_NAME_RE = re.compile(r"[a-z0-9_.]{1,64}")
# Spreadsheets run a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FIRST_YEAR, LAST_YEAR = 2000, 2999
DATE_ERROR = "Date invalide : saisissez une date au format JJ/MM/AAAA."
DATE_RANGE_ERROR = f"Date hors limites : saisissez une année entre {FIRST_YEAR} et {LAST_YEAR}."
CSV_HEADER = ["Date et heure (Europe/Paris)", "Acteur", "Action", "Code de l'action", "Type de cible", "Cible",
              "Résultat", "Motif", "Adresse IP", "Détails"]


# -- filters -------------------------------------------------------------------------------------


class ChoiceField(StringField):
    """A value offered as a <select> by macros/forms.html. Unlike WTForms' SelectField it
    keeps any value sent: `parse_filters` decides what a value means, and a value from an
    old link is shown back rather than replaced."""

    def __init__(self, label: str, choices: list[tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(label, **kwargs)
        self.choices = list(choices or [])


class FilterForm(Form):
    """The GET form above the table; never validated by WTForms (see `parse_filters`)."""

    actor = StringField("Acteur")
    action = ChoiceField("Action")
    target = StringField("Cible")
    date_from = StringField("Du")
    date_to = StringField("Au")
    outcome = ChoiceField("Résultat", choices=[("", "Tous"), *OUTCOME_LABELS.items()])


FILTER_NAMES = ("actor", "action", "target", "date_from", "date_to", "outcome")


@dataclass
class Filters:
    actor: str = ""
    action: str = ""
    target_type: str | None = None
    target_id: str = ""
    start: datetime | None = None  # aware UTC, inclusive
    end: datetime | None = None  # aware UTC, exclusive (the day after the "to" date)
    outcome: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    # The filters as applied, for the audit entry of an export.
    applied: dict[str, str] = field(default_factory=dict)


def filter_form(args: MultiDict) -> FilterForm:
    form = FilterForm(formdata=args, meta={"csrf": False})
    choices = [("", "Toutes"), *sorted(ACTION_LABELS.items(), key=lambda item: item[1])]
    wanted = form.action.data or ""
    # A link may filter on an action this list does not know yet; keep it selectable.
    if wanted and wanted not in ACTION_LABELS and ACTION_NAME_RE.fullmatch(wanted):
        choices.append((wanted, wanted))
    form.action.choices = choices
    return form


def parse_day(raw: str) -> date:
    """The ISO date a date input sends, or JJ/MM/AAAA typed where the browser shows a text box."""
    raw = raw.strip()
    match = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", raw)
    try:
        day = date(int(match[3]), int(match[2]), int(match[1])) if match else date.fromisoformat(raw)
    except ValueError:
        raise ValueError(DATE_ERROR) from None
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise ValueError(DATE_RANGE_ERROR)
    return day


def paris_midnight(day: date) -> datetime:
    """A Paris calendar day starts at Paris midnight, 23:00 or 22:00 UTC the day before."""
    return datetime.combine(day, time.min, tzinfo=PARIS).astimezone(timezone.utc)


def parse_filters(form: FilterForm) -> Filters:
    """Read the form; a wrong value gets an error next to its field and is left out of the
    query, and the form keeps what was typed."""
    filters = Filters()
    actor = (form.actor.data or "").strip()[:100]
    if actor:
        filters.actor = filters.applied["actor"] = actor
    action = (form.action.data or "").strip()
    if action and ACTION_NAME_RE.fullmatch(action):
        filters.action = filters.applied["action"] = action
    target = (form.target.data or "").strip()[:100]
    if target:
        filters.applied["target"] = target
        kind, separator, ident = target.partition(":")
        if separator:
            kind = kind.strip().lower()
            filters.target_type = TARGET_TYPE_ALIASES.get(kind, kind)
            filters.target_id = ident.strip()
        else:
            filters.target_id = target
    from_day = to_day = None
    for name in ("date_from", "date_to"):
        raw = (getattr(form, name).data or "").strip()
        if not raw:
            continue
        try:
            day = parse_day(raw)
        except ValueError as exc:
            filters.errors[name] = str(exc)
            continue
        if name == "date_from":
            from_day = day
        else:
            to_day = day
    if from_day and to_day and to_day < from_day:
        filters.errors["date_to"] = "La date de fin doit être égale ou postérieure à la date de début."
        to_day = None
    if from_day:
        filters.start = paris_midnight(from_day)
        filters.applied["date_from"] = from_day.isoformat()
    if to_day:
        filters.end = paris_midnight(to_day + timedelta(days=1))
        filters.applied["date_to"] = to_day.isoformat()
    if form.outcome.data in OUTCOME_LABELS:
        filters.outcome = filters.applied["outcome"] = form.outcome.data
    return filters


def visible_to(query: sa.Select, admin: User) -> sa.Select:
    """The scope rule of the module docstring, on a query of audit entries."""
    if admin.is_super_admin:
        return query
    # target_id is a string column (it also holds session ids, "finess"…), so the user ids
    # are cast rather than the column: casting the column would fail on those values.
    users_in_scope = approval.in_scope(sa.select(sa.cast(User.id, sa.String(64))), admin)
    requests_in_scope = access.in_scope(sa.select(sa.cast(AccessRequest.id, sa.String(64))), admin)
    return query.where(
        sa.or_(
            AuditEntry.actor_id == admin.id,
            sa.and_(
                AuditEntry.target_type == "user",
                sa.or_(AuditEntry.target_id == str(admin.id), AuditEntry.target_id.in_(users_in_scope)),
            ),
            sa.and_(AuditEntry.target_type == "access_request", AuditEntry.target_id.in_(requests_in_scope)),
        )
    )


def entries_query(admin: User, filters: Filters) -> sa.Select:
    query = visible_to(sa.select(AuditEntry), admin)
    if filters.actor:
        by_login = sa.select(User.id).where(User.login.icontains(filters.actor, autoescape=True))
        query = query.where(sa.or_(AuditEntry.actor_label.icontains(filters.actor, autoescape=True),
                                   AuditEntry.actor_id.in_(by_login)))
    if filters.action:
        query = query.where(AuditEntry.action == filters.action)
    if filters.target_type:
        query = query.where(AuditEntry.target_type == filters.target_type)
    if filters.target_id:
        query = query.where(AuditEntry.target_id == filters.target_id)
    if filters.start:
        query = query.where(AuditEntry.at >= filters.start)
    if filters.end:
        query = query.where(AuditEntry.at < filters.end)
    if filters.outcome:
        query = query.where(AuditEntry.outcome == filters.outcome)
    return query


# -- presentation --------------------------------------------------------------------------------


@dataclass
class Row:
    """One entry as the page and the CSV show it."""

    entry: AuditEntry
    at: datetime  # Paris time
    actor: str
    action: str
    target_type: str
    target: str
    target_user_id: int | None
    outcome: str
    details: str

    @property
    def when(self) -> str:
        return self.at.strftime("%d/%m/%Y %H:%M:%S")


def user_logins(session: Session, entries: list[AuditEntry]) -> dict[int, str]:
    """Logins of the actors without a label (session entries) and of the target users, in
    one query per page or per export batch rather than a join on a cast id."""
    ids = {e.actor_id for e in entries if e.actor_id is not None and not e.actor_label}
    ids |= {int(e.target_id) for e in entries if e.target_type == "user" and (e.target_id or "").isdigit()}
    if not ids:
        return {}
    rows = session.execute(sa.select(User.id, User.login, User.email).where(User.id.in_(ids)))
    return {user_id: login or email for user_id, login, email in rows}


def compact_json(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "), default=str)


def present(entry: AuditEntry, logins: dict[int, str]) -> Row:
    if entry.actor_label:
        actor = entry.actor_label
    elif entry.actor_id is not None:
        actor = logins.get(entry.actor_id, f"utilisateur n° {entry.actor_id}")
    else:
        actor = "système"
    target_user_id = None
    target = entry.target_id or ""
    if entry.target_type == "user" and target.isdigit():
        target_user_id = int(target)
        login = logins.get(target_user_id)
        target = f"n° {target}" + (f" ({login})" if login else "")
    return Row(
        entry=entry,
        at=entry.at.astimezone(PARIS),
        actor=actor,
        action=ACTION_LABELS.get(entry.action, entry.action),
        target_type=TARGET_TYPE_LABELS.get(entry.target_type or "", entry.target_type or ""),
        target=target,
        target_user_id=target_user_id,
        outcome=OUTCOME_LABELS.get(entry.outcome, entry.outcome),
        details=compact_json(entry.details),
    )


def present_all(session: Session, entries: list[AuditEntry]) -> list[Row]:
    logins = user_logins(session, entries)
    return [present(e, logins) for e in entries]


# -- the page ------------------------------------------------------------------------------------


def newest_first(query: sa.Select) -> sa.Select:
    return query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())


def older_than(at: datetime, entry_id: int) -> sa.ColumnElement[bool]:
    return sa.or_(AuditEntry.at < at, sa.and_(AuditEntry.at == at, AuditEntry.id < entry_id))


def newer_than(at: datetime, entry_id: int) -> sa.ColumnElement[bool]:
    return sa.or_(AuditEntry.at > at, sa.and_(AuditEntry.at == at, AuditEntry.id > entry_id))


def cursor_arg(name: str) -> int | None:
    raw = request.args.get(name, "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


@dataclass
class Page:
    entries: list[AuditEntry]
    has_newer: bool
    has_older: bool


def read_page(session: Session, query: sa.Select, before: int | None, after: int | None) -> Page:
    """Keyset pagination on (at, id), newest first: a page costs one index range whatever
    its depth. `before`/`after` name the entry the page continues from."""
    cursor_id = before if before is not None else after
    cursor_at = session.scalar(sa.select(AuditEntry.at).where(AuditEntry.id == cursor_id)) if cursor_id else None
    if cursor_at is None:
        entries = list(session.scalars(newest_first(query).limit(PAGE_SIZE)))
    elif before is not None:
        entries = list(session.scalars(newest_first(query.where(older_than(cursor_at, cursor_id))).limit(PAGE_SIZE)))
    else:
        ascending = query.where(newer_than(cursor_at, cursor_id)).order_by(AuditEntry.at, AuditEntry.id)
        entries = list(reversed(session.scalars(ascending.limit(PAGE_SIZE)).all()))
        if not entries:  # nothing newer any more: show the newest page
            entries = list(session.scalars(newest_first(query).limit(PAGE_SIZE)))

    def exists(condition: sa.ColumnElement[bool]) -> bool:
        return session.scalar(query.where(condition).with_only_columns(AuditEntry.id).limit(1)) is not None

    if not entries:
        return Page(entries, has_newer=False, has_older=False)
    first, last = entries[0], entries[-1]
    return Page(entries, has_newer=exists(newer_than(first.at, first.id)),
                has_older=exists(older_than(last.at, last.id)))


def filter_args() -> dict[str, str]:
    """The filters as typed, for the pagination and export links."""
    return {name: request.args[name] for name in FILTER_NAMES if request.args.get(name)}


@bp.get("/")
@admin_required
def index():
    session = db.session
    form = filter_form(request.args)
    filters = parse_filters(form)
    page = read_page(session, entries_query(g.user, filters), cursor_arg("before"), cursor_arg("after"))
    args = filter_args()
    return render_template(
        "admin/audit_log.html",
        form=form,
        errors=filters.errors,
        rows=present_all(session, page.entries),
        newer_url=url_for(".index", **args, after=page.entries[0].id) if page.has_newer else None,
        older_url=url_for(".index", **args, before=page.entries[-1].id) if page.has_older else None,
        export_url=url_for(".export", **args),
        reset_url=url_for(".index"),
        filtered=bool(filters.applied),
        departments=g.user.departments,
        page_size=PAGE_SIZE,
        export_max_rows=EXPORT_MAX_ROWS,
    )


# -- CSV export ----------------------------------------------------------------------------------


def neutralise(value: str) -> str:
    """A leading apostrophe makes a spreadsheet show the text instead of running it."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def csv_cells(row: Row) -> list[str]:
    entry = row.entry
    cells = [row.when, row.actor, row.action, entry.action, row.target_type, entry.target_id or "",
             row.outcome, entry.reason or "", entry.ip or "", row.details]
    return [neutralise(cell) for cell in cells]


def csv_chunks(session: Session, query: sa.Select, limit: int) -> Iterator[bytes]:
    """The file, a batch of rows at a time: the rows come from a server-side cursor
    (`yield_per`) and leave as soon as they are written, so memory does not grow with
    the export."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")

    def flush() -> bytes:
        data = buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
        return data

    # The BOM tells Excel the file is UTF-8 (otherwise it reads accents as Windows-1252).
    buffer.write("\ufeff")
    writer.writerow(CSV_HEADER)
    yield flush()
    written = 0
    result = session.execute(newest_first(query).limit(limit + 1).execution_options(yield_per=EXPORT_BATCH))
    try:
        for batch in result.scalars().partitions():
            entries: list[AuditEntry] = list(batch)
            cut = written + len(entries) > limit
            entries = entries[: limit - written]
            for row in present_all(session, entries):
                writer.writerow(csv_cells(row))
            written += len(entries)
            if cut:
                writer.writerow([f"Export limité à {limit:,} lignes".replace(",", " ")
                                 + " : précisez les filtres pour obtenir les entrées plus anciennes."])
            yield flush()
            if cut:
                break
    finally:
        result.close()
        # A read-only transaction; ending it now frees the connection (and, on SQLite,
        # the database) without waiting for the end of the request.
        session.rollback()


@bp.get("/export.csv")
@admin_required
def export():
    session = db.session
    filters = parse_filters(filter_form(request.args))
    details: dict[str, Any] = {"format": "csv", "filters": filters.applied}
    if filters.errors:
        details["ignored"] = sorted(filters.errors)  # e.g. a wrong date, left out of the export
    audit.record(session, "audit.export", actor_id=g.user.id, actor_label=g.user.login, details=details)
    session.commit()
    filename = f"journal-audit-{now().astimezone(PARIS):%Y%m%d}.csv"
    body = stream_with_context(csv_chunks(session, entries_query(g.user, filters), EXPORT_MAX_ROWS))
    return Response(body, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    })
