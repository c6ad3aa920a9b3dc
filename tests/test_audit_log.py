"""J6: the audit log page of the admin console: filters, scope, pagination, CSV export."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta, timezone
from html import unescape

import pytest
import sqlalchemy as sa

from tests.journeys import csrf, error_for, field_value, link_in, login, path_of, submit_registration

ADMIN_PASSWORD = "Console-Region-2026!"
CENTRE = ("pbernard", "admin.centre@esante-test.fr")
IDF = ("lmoreau", "admin.idf@esante-test.fr")
SUPER = ("smartin", "super@esante-test.fr")
PARIS_USER = {"email": "jean.roux@aphp-test.fr", "email_confirm": "jean.roux@aphp-test.fr", "first_name": "Jean",
              "last_name": "Roux", "establishments-0-finess": "750071136", "establishments-0-query": ""}
UTC = timezone.utc


@pytest.fixture
def portal(app):
    from onboarding.accounts import create_admin
    from onboarding.finess import load_demo_establishments
    from portal import audit
    from portal.cgu import DEFAULT_CGU_TEXT, publish_cgu
    from portal.db import db

    with app.app_context():
        publish_cgu(db.session, "1.0", DEFAULT_CGU_TEXT)
        audit.record(db.session, "cgu.publish", actor_label="cli", details={"version": "1.0"})
        load_demo_establishments(db.session)  # audits a "finess.import", an entry without a user target
        for email, first, last, role, departments in (
            (CENTRE[1], "Paul", "Bernard", "regional_admin", ["28", "37"]),
            (IDF[1], "Lucie", "Moreau", "regional_admin", ["75", "92"]),
            (SUPER[1], "Sophie", "Martin", "super_admin", []),
        ):
            create_admin(db.session, email=email, first_name=first, last_name=last, role=role,
                         departments=departments, actor=None, password=ADMIN_PASSWORD)
        db.session.commit()
    return app


def admin_client(app, mailbox, who):
    client = app.test_client()
    assert login(client, mailbox, who[0], ADMIN_PASSWORD, who[1]).status_code == 303
    return client


def registered_and_verified(app, mailbox, **overrides):
    from idp.models import User
    from portal.db import db

    client = app.test_client()
    assert submit_registration(app, client, **overrides).status_code == 303
    email = overrides.get("email", "nathalie.petit@esante-centre.fr")
    client.get(path_of(link_in(mailbox.last(email), "/register/verify/")))
    with app.app_context():
        return db.session.scalar(sa.select(User).where(User.email == email))


def decide(admin, user_id, decision, reason=""):
    page = admin.get(f"/admin/accounts/{user_id}").get_data(as_text=True)
    response = admin.post(f"/admin/accounts/{user_id}",
                          data={"csrf_token": csrf(page), "decision": decision, "reason": reason})
    assert response.status_code == 303


def user_id_of(app, login_name):
    from idp.models import User
    from portal.db import db

    with app.app_context():
        return db.session.scalar(sa.select(User.id).where(User.login == login_name))


def record_at(app, clock, at, action, **fields):
    """An entry written at a chosen moment (the clock is put back afterwards)."""
    from portal import audit
    from portal.db import db

    saved = clock.current
    clock.current = at
    try:
        with app.app_context():
            entry = audit.record(db.session, action, **fields)
            db.session.commit()
            return entry.id
    finally:
        clock.current = saved


def table(html):
    """The rows of the table only (the labels are also in the action filter's options)."""
    match = re.search(r"<tbody>(.*)</tbody>", html, re.S)
    return match.group(1) if match else ""


def reasons(html):
    """The motif cells of the table, top to bottom."""
    return re.findall(r"<td>(m-[\w-]+)</td>", table(html))


def page(client, query=""):
    response = client.get("/admin/audit/" + query)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def read_csv(response):
    body = response.get_data()
    assert body.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline=""), delimiter=";"))


# -- access ------------------------------------------------------------------------------------


def test_anonymous_visitors_log_in_first_and_professionals_are_refused(portal, mailbox):
    from onboarding.accounts import create_professional
    from portal.db import db

    anonymous = portal.test_client()
    for path in ("/admin/audit/", "/admin/audit/export.csv"):
        response = anonymous.get(path)
        assert response.status_code == 302 and f"/login?next={path}" in response.headers["Location"]
    with portal.app_context():
        create_professional(db.session, email="pro@esante-test.fr", password="Un-Secret-Solide-1",
                            first_name="Anne", last_name="Leroy", profession="60", finess="280503848")
        db.session.commit()
    professional = portal.test_client()
    assert login(professional, mailbox, "aleroy", "Un-Secret-Solide-1", "pro@esante-test.fr").status_code == 303
    assert professional.get("/admin/audit/").status_code == 403
    assert professional.get("/admin/audit/export.csv").status_code == 403
    from portal.audit import AuditEntry

    with portal.app_context():  # a refused export leaves no export entry
        assert db.session.scalar(sa.select(sa.func.count()).where(AuditEntry.action == "audit.export")) == 0


# -- what the page shows -----------------------------------------------------------------------


def test_real_decisions_are_listed_newest_first_in_french_and_paris_time(portal, mailbox, clock):
    dreux = registered_and_verified(portal, mailbox)
    paris = registered_and_verified(portal, mailbox, **PARIS_USER)
    centre = admin_client(portal, mailbox, CENTRE)
    clock.advance(minutes=5)
    decide(centre, dreux.id, "approve")
    clock.advance(minutes=5)
    decide(admin_client(portal, mailbox, IDF), paris.id, "reject", "Établissement hors de la région <b>")

    html = page(admin_client(portal, mailbox, SUPER))
    assert "<caption>Entrées du journal d'audit" in html and '<th scope="col">Acteur</th>' in html
    rows = table(html)
    # 08:35 UTC on 2 November 2026 is 09:35 in Paris (winter time).
    approve_row = re.search(r"<tr>\s*<td><time [^>]*>02/11/2026 09:35:00</time></td>\s*<td>pbernard</td>\s*"
                            r"<td>Compte validé <span class=\"muted\">\(account.approve\)</span></td>\s*"
                            rf"<td><a href=\"/admin/users/{dreux.id}\">utilisateur n° {dreux.id} \(npetit\)</a></td>\s*"
                            r"<td>Succès</td>", rows)
    assert approve_row, rows
    assert re.search(r"<td>lmoreau</td>\s*<td>Demande refusée", rows)
    assert "<td>Établissement hors de la région &lt;b&gt;</td>" in rows
    assert rows.index("Demande refusée") < rows.index("Compte validé")  # newest first
    assert "Demande de création de compte" in rows and "<td>jean.roux@aphp-test.fr</td>" in rows
    assert re.search(r"<td>smartin</td>\s*<td>Connexion", rows)
    assert re.search(r"<td>système</td>\s*<td>Import du répertoire FINESS", rows)
    assert re.search(r"<td>cli</td>\s*<td>Nouvelle version des CGU publiée", rows)
    assert '<code>{"login": "npetit"}</code>' in unescape(rows)  # details, compact JSON


def test_an_actor_without_label_is_shown_by_login_and_found_by_it(portal, mailbox, clock):
    centre_id = user_id_of(portal, "pbernard")
    record_at(portal, clock, clock.current - timedelta(hours=1), "session.logout", actor_id=centre_id,
              target_type="session", target_id="abc123", reason="m-logout")
    superadmin = admin_client(portal, mailbox, SUPER)
    html = page(superadmin, "?actor=PBERN")
    assert reasons(html) == ["m-logout"]
    assert re.search(r"<td>pbernard</td>\s*<td>Déconnexion", table(html))
    assert "<td>session abc123</td>" in table(html)


# -- scope -------------------------------------------------------------------------------------


def test_a_regional_admin_sees_their_users_and_own_actions_only(portal, mailbox, clock):
    dreux = registered_and_verified(portal, mailbox)
    paris = registered_and_verified(portal, mailbox, **PARIS_USER)
    idf = admin_client(portal, mailbox, IDF)
    decide(idf, paris.id, "reject", "m-paris-refus")
    centre = admin_client(portal, mailbox, CENTRE)
    decide(centre, dreux.id, "reject", "m-dreux-refus")
    record_at(portal, clock, clock.current, "totp.enrolled", actor_label="npetit", target_type="user",
              target_id=dreux.id, reason="m-dreux-totp")
    # Someone else's attempt on the admin's own account: about them, though not their action.
    record_at(portal, clock, clock.current, "login.password_refused", outcome="failure", actor_label="pbernard",
              target_type="user", target_id=user_id_of(portal, "pbernard"), reason="m-centre-self")

    html = page(centre)
    assert reasons(html) == ["m-centre-self", "m-dreux-totp", "m-dreux-refus"]
    rows = table(html)
    assert "<td>nathalie.petit@esante-centre.fr</td>" in rows  # their user's registration
    assert re.search(r"<td>pbernard</td>\s*<td>Connexion", rows)  # their own login
    for hidden in ("jean.roux", "lmoreau", "Import du répertoire FINESS", "Nouvelle version des CGU publiée",
                   f"/admin/users/{paris.id}"):
        assert hidden not in rows, hidden
    assert "vos départements (28, 37)" in html
    # Naming another region's user in the filter does not widen the scope.
    assert table(page(centre, f"?target=user:{paris.id}")) == ""
    assert "Aucune entrée ne correspond à ces filtres dans votre périmètre." in page(centre, f"?target={paris.id}")
    rows = read_csv(centre.get("/admin/audit/export.csv"))
    text = "\n".join(";".join(r) for r in rows)
    assert "m-dreux-refus" in text and "m-paris-refus" not in text and "finess.import" not in text

    assert reasons(page(idf)) == ["m-paris-refus"]

    everything = page(admin_client(portal, mailbox, SUPER))
    assert reasons(everything) == ["m-centre-self", "m-dreux-totp", "m-dreux-refus", "m-paris-refus"]
    assert "Import du répertoire FINESS" in table(everything)
    assert "Nouvelle version des CGU publiée" in table(everything)


# -- filters -----------------------------------------------------------------------------------


@pytest.fixture
def seeded(portal, clock):
    """Entries around the night of 31 October to 1 November 2026 (Paris time, UTC+1)."""
    centre_id = user_id_of(portal, "pbernard")
    night = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)  # midnight in Paris
    ids = {
        "m-late": record_at(portal, clock, night - timedelta(minutes=30), "account.reject",
                            actor_id=centre_id, actor_label="pbernard", target_type="user", target_id=41),
        "m-early": record_at(portal, clock, night + timedelta(minutes=30), "login.password_refused",
                             outcome="failure", actor_label="Inconnu@Exemple.fr"),
        "m-next": record_at(portal, clock, night + timedelta(hours=24, minutes=10), "account.reject",
                            actor_label="lmoreau", target_type="user", target_id=42),
        "m-import": record_at(portal, clock, night + timedelta(hours=2), "finess.import", outcome="partial",
                              target_type="referential", target_id="finess"),
    }
    from portal.audit import AuditEntry
    from portal.db import db

    with portal.app_context():  # the marker in the motif column identifies each entry
        for reason, entry_id in ids.items():
            db.session.get(AuditEntry, entry_id).reason = reason
        db.session.commit()
    return ids


@pytest.mark.parametrize("query, expected", [
    ("", ["m-next", "m-import", "m-early", "m-late"]),
    ("?actor=bern", ["m-late"]),
    ("?actor=INCONNU%40exemple", ["m-early"]),
    ("?action=account.reject", ["m-next", "m-late"]),
    ("?target=user:41", ["m-late"]),
    ("?target=42", ["m-next"]),
    ("?target=utilisateur%3A42", ["m-next"]),
    ("?target=referential:finess", ["m-import"]),
    ("?target=session:42", []),
    ("?outcome=failure", ["m-early"]),
    ("?outcome=partial", ["m-import"]),
    ("?outcome=success", ["m-next", "m-late"]),
    # Dates are Paris days: 00:30 on 1 November in Paris is still 31 October in UTC.
    ("?date_from=2026-11-01&date_to=2026-11-01", ["m-import", "m-early"]),
    ("?date_to=2026-10-31", ["m-late"]),
    ("?date_from=2026-11-02", ["m-next"]),
    ("?date_from=01/11/2026&date_to=01/11/2026", ["m-import", "m-early"]),
    ("?action=account.reject&date_from=2026-11-01", ["m-next"]),
])
def test_each_filter(portal, seeded, mailbox, query, expected):
    assert reasons(page(admin_client(portal, mailbox, SUPER), query)) == expected


def test_a_wrong_date_is_reported_next_to_its_field_and_left_out(portal, seeded, mailbox):
    superadmin = admin_client(portal, mailbox, SUPER)
    html = page(superadmin, "?date_from=31/02/2026&action=account.reject&actor=l")
    assert error_for(html, "date_from") == "Date invalide : saisissez une date au format JJ/MM/AAAA."
    assert 'aria-invalid="true"' in html and 'href="#date_from"' in html  # the summary links to the field
    assert field_value(html, "date_from") == "31/02/2026" and field_value(html, "actor") == "l"
    assert '<option value="account.reject" selected>' in html
    assert reasons(html) == ["m-next"]  # the other filters still apply

    html = page(superadmin, "?date_from=2026-11-02&date_to=2026-11-01")
    assert error_for(html, "date_to") == "La date de fin doit être égale ou postérieure à la date de début."
    assert error_for(html, "date_from") is None
    assert reasons(html) == ["m-next"]  # only "from" is applied

    html = page(superadmin, "?date_to=1850-01-01")
    assert error_for(html, "date_to") == "Date hors limites : saisissez une année entre 2000 et 2999."
    assert reasons(html) == ["m-next", "m-import", "m-early", "m-late"]


# -- pagination --------------------------------------------------------------------------------


def test_pages_of_fifty_keep_the_filters_and_lose_no_entry(portal, mailbox, clock):
    start = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
    for number in range(120):
        # Several entries share a timestamp, so that pages also split ties (on the id).
        record_at(portal, clock, start + timedelta(minutes=number // 7), "account.contacts",
                  actor_label="npetit", target_type="user", target_id=7, reason=f"m-{number:03d}")
    record_at(portal, clock, start, "account.contacts", actor_label="autre", reason="m-other")
    superadmin = admin_client(portal, mailbox, SUPER)

    def links(html):
        return {rel: unescape(href) for href, rel in re.findall(r'<a class="button" href="([^"]+)" rel="(\w+)"', html)}

    first = page(superadmin, "?actor=npetit&action=account.contacts")
    assert reasons(first) == [f"m-{n:03d}" for n in range(119, 69, -1)]
    assert '<nav class="actions" aria-label="Pagination du journal d\'audit">' in first
    assert set(links(first)) == {"next"} and "Page précédente" not in first
    assert "actor=npetit" in links(first)["next"] and "action=account.contacts" in links(first)["next"]

    second = superadmin.get(links(first)["next"]).get_data(as_text=True)
    assert reasons(second) == [f"m-{n:03d}" for n in range(69, 19, -1)]
    assert set(links(second)) == {"prev", "next"}
    assert field_value(second, "actor") == "npetit"

    third = superadmin.get(links(second)["next"]).get_data(as_text=True)
    assert reasons(third) == [f"m-{n:03d}" for n in range(19, -1, -1)]
    assert set(links(third)) == {"prev"} and "Page suivante" not in third

    back = superadmin.get(links(third)["prev"]).get_data(as_text=True)
    assert reasons(back) == reasons(second)
    assert reasons(superadmin.get(links(back)["prev"]).get_data(as_text=True)) == reasons(first)
    # A cursor that names no entry falls back to the first page.
    assert reasons(page(superadmin, "?actor=npetit&before=999999")) == reasons(first)


# -- CSV export --------------------------------------------------------------------------------


def test_export_is_an_excel_friendly_csv_with_the_filters_applied(portal, mailbox, clock):
    from portal.audit import AuditEntry
    from portal.db import db

    at = datetime(2026, 10, 31, 23, 15, tzinfo=UTC)
    record_at(portal, clock, at, "account.reject", actor_label="=HYPERLINK(\"http://x.example\")",
              target_type="user", target_id=12, reason="+33 6 12 34 56 78", details={"note": "-1"})
    record_at(portal, clock, at + timedelta(minutes=1), "account.reject", actor_label="@SUM(A1)",
              target_type="user", target_id=13, reason="\tcaché; avec \"guillemets\"\nsur deux lignes")
    record_at(portal, clock, at, "login.success", actor_label="npetit", target_type="user", target_id=12)

    superadmin = admin_client(portal, mailbox, SUPER)
    response = superadmin.get("/admin/audit/export.csv?action=account.reject&date_from=2026-11-01")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == 'attachment; filename="journal-audit-20261102.csv"'
    assert b";" in response.get_data().splitlines()[0]
    rows = read_csv(response)
    assert rows[0] == ["Date et heure (Europe/Paris)", "Acteur", "Action", "Code de l'action", "Type de cible",
                       "Cible", "Résultat", "Motif", "Adresse IP", "Détails"]
    assert rows[1:] == [
        ["01/11/2026 00:16:00", "'@SUM(A1)", "Demande refusée", "account.reject", "utilisateur", "13", "Succès",
         "'\tcaché; avec \"guillemets\"\nsur deux lignes", "", ""],
        ["01/11/2026 00:15:00", "'=HYPERLINK(\"http://x.example\")", "Demande refusée", "account.reject",
         "utilisateur", "12", "Succès", "'+33 6 12 34 56 78", "", '{"note": "-1"}'],
    ]

    smartin = user_id_of(portal, "smartin")
    with portal.app_context():
        export = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "audit.export")).one()
        assert export.actor_label == "smartin" and export.actor_id == smartin
        assert export.details == {"format": "csv", "filters": {"action": "account.reject",
                                                               "date_from": "2026-11-01"}}
    html = page(superadmin, "?action=audit.export")
    assert re.search(r"<td>smartin</td>\s*<td>Export du journal d'audit", unescape(table(html)))
    assert 'href="/admin/audit/export.csv?action=audit.export"' in html  # the link carries the filters


def test_export_with_a_wrong_date_ignores_it_and_says_so(portal, seeded, mailbox):
    from portal.audit import AuditEntry
    from portal.db import db

    response = admin_client(portal, mailbox, SUPER).get("/admin/audit/export.csv?date_to=demain&outcome=failure")
    assert [row[7] for row in read_csv(response)[1:]] == ["m-early"]
    with portal.app_context():
        export = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "audit.export")).one()
        assert export.details == {"format": "csv", "filters": {"outcome": "failure"}, "ignored": ["date_to"]}


def test_export_is_streamed_in_batches_and_capped(portal, mailbox, clock, monkeypatch):
    from portal.admin import audit_log

    start = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
    for number in range(5):
        record_at(portal, clock, start + timedelta(minutes=number), "account.contacts", actor_label="npetit",
                  target_type="user", target_id=7, reason=f"m-{number}")
    superadmin = admin_client(portal, mailbox, SUPER)
    monkeypatch.setattr(audit_log, "EXPORT_BATCH", 2)

    monkeypatch.setattr(audit_log, "EXPORT_MAX_ROWS", 5)
    response = superadmin.get("/admin/audit/export.csv?action=account.contacts", buffered=False)
    assert response.is_streamed
    chunks = list(response.response)
    response.close()
    # The header, then one chunk per batch of 2 rows: the rows are never all held at once.
    assert len(chunks) == 4 and chunks[0].startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode("utf-8-sig"), newline=""), delimiter=";"))
    assert [row[7] for row in rows[1:]] == ["m-4", "m-3", "m-2", "m-1", "m-0"]  # exactly the cap: no cut line

    monkeypatch.setattr(audit_log, "EXPORT_MAX_ROWS", 3)
    rows = read_csv(superadmin.get("/admin/audit/export.csv?action=account.contacts"))
    assert [row[7] for row in rows[1:4]] == ["m-4", "m-3", "m-2"]
    assert rows[4] == ["Export limité à 3 lignes : précisez les filtres pour obtenir les entrées plus anciennes."]
    assert len(rows) == 5
