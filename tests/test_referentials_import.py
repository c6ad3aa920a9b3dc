"""Importing the FINESS extraction: parsing, bad files and lines, re-imports, demo data, CLI."""
from __future__ import annotations

import io

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from bench.finess_factory import (
    establishment,
    establishments,
    extraction_lines,
    finess_number,
    structure_line,
    write_extraction,
    wrong_key,
)
from onboarding.finess import FinessFileError, import_finess, load_demo_establishments
from onboarding.models import Establishment, EstablishmentTerm
from onboarding.referentials import get_establishment, search_establishments
from portal.audit import AuditEntry


def extraction_bytes(rows, encoding="utf-8", **options) -> bytes:
    stream = io.BytesIO()
    write_extraction(stream, rows, encoding=encoding, **options)
    return stream.getvalue()


def open_count(session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Establishment).where(Establishment.closed_at.is_(None)))


# -- parsing ----------------------------------------------------------------------------


def test_the_official_line_of_the_spec_is_read_field_by_field(session):
    line = ("structureet;010000024;010780054;CH DE FLEYRIAT;CENTRE HOSPITALIER DE BOURG-EN-BRESSE FLEYRIAT;;;"
            "900;RTE;DE PARIS;;;451;01;AIN;01440 VIRIAT;0474454647;0474454114;355;Centre Hospitalier (C.H.);"
            "1102;Centres Hospitaliers;26010004500012;8610Z;03;ARS établissements Publics de santé dotation globale;"
            "1;Etablissement public de santé;1979-02-13;1979-02-13;2020-02-04;")
    data = "\n".join(["finess;etalab;111;2026-05-12", line, "geolocalisation;010000024;871234.5;6571234.5;1,ATLASANTE;2026-05-04", ""])

    report = import_finess(session, io.BytesIO(data.encode()))

    assert report.created == 1 and report.rejected == 0 and report.geolocations == 1
    assert str(report.extraction_date) == "2026-05-12"
    e = get_establishment(session, "010000024")
    assert (e.finess_juridique, e.name, e.long_name) == ("010780054", "CH DE FLEYRIAT", "CENTRE HOSPITALIER DE BOURG-EN-BRESSE FLEYRIAT")
    assert (e.postal_code, e.city, e.commune_code, e.department_code, e.department_name) == ("01440", "VIRIAT", "451", "01", "AIN")
    assert (e.category_code, e.category_label) == ("355", "Centre Hospitalier (C.H.)")
    assert (e.category_group_code, e.category_group_label) == ("1102", "Centres Hospitaliers")
    assert (e.phone, e.fax, e.siret) == ("0474454647", "0474454114", "26010004500012")
    assert (str(e.opened_on), str(e.authorized_on), str(e.finess_updated_on)) == ("1979-02-13", "1979-02-13", "2020-02-04")
    assert e.address_lines == ["900 RTE DE PARIS", "01440 VIRIAT"]
    assert e.source == "finess" and e.closed_at is None


def test_quoted_fields_keep_their_semicolons_and_doubled_quotes(session):
    finess = finess_number("97", 501506)
    row = establishment(finess, 'LIEU DE VIE "MAVOUNA MEMA 1"', "97620 CHIRONGUI",
                        rslongue="ACCUEIL; HÉBERGEMENT \"MAVOUNA\"", departement="9F", libdepartement="MAYOTTE")
    line = structure_line(row)
    assert '"LIEU DE VIE ""MAVOUNA MEMA 1"""' in line

    report = import_finess(session, io.BytesIO(extraction_bytes([row])))

    assert report.created == 1, report.rejections
    e = get_establishment(session, finess)
    assert e.name == 'LIEU DE VIE "MAVOUNA MEMA 1"'
    assert e.long_name == 'ACCUEIL; HÉBERGEMENT "MAVOUNA"'
    assert e.department_code == "976"  # the file's 9F, as the INSEE code of Mayotte


def test_older_extractions_with_day_first_dates_are_read(session):
    row = establishment("280503848", "AIRBP IRC DREUX", dateouv="2003-06-02", dateautor="2003-05-01", datemaj="2024-03-18")

    import_finess(session, io.BytesIO(extraction_bytes([row], day_first_dates=True)))

    e = get_establishment(session, "280503848")
    assert (str(e.opened_on), str(e.authorized_on), str(e.finess_updated_on)) == ("2003-06-02", "2003-05-01", "2024-03-18")


def test_a_latin1_extraction_keeps_its_accents(session):
    row = establishment("280503848", "CLINIQUE DE L'ÉCLUSE", "28100 DREUX", rslongue="CLINIQUE DE L'ÉCLUSE À DREUX",
                        libcategetab="Etablissement de Soins Pluridisciplinaire — Œuvre")
    data = extraction_bytes([row], encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")

    report = import_finess(session, io.BytesIO(data))

    assert report.encoding == "cp1252" and report.created == 1
    e = get_establishment(session, "280503848")
    assert e.name == "CLINIQUE DE L'ÉCLUSE" and e.long_name == "CLINIQUE DE L'ÉCLUSE À DREUX"
    assert e.category_label == "Etablissement de Soins Pluridisciplinaire — Œuvre"
    assert [x.finess for x in search_establishments(session, "clinique ecluse")] == ["280503848"]


def test_a_windows_file_with_crlf_line_ends_is_read(session):
    rows = list(establishments(3, seed=4))

    report = import_finess(session, io.BytesIO(extraction_bytes(rows, newline="\r\n")))

    assert report.created == 3 and report.rejected == 0 and not report.is_truncated
    assert str(get_establishment(session, rows[0]["nofinesset"]).finess_updated_on) == rows[0]["datemaj"]


def test_a_text_stream_can_be_imported_from_python(session):
    text = "\n".join(extraction_lines(establishments(2, seed=14))) + "\n"

    report = import_finess(session, io.StringIO(text))

    assert report.created == 2 and not report.is_truncated


def test_geolocation_lines_are_counted_and_ignored(session):
    rows = list(establishments(5, seed=2))

    report = import_finess(session, io.BytesIO(extraction_bytes(rows)))

    assert report.geolocations == 5 and report.created == 5 and report.rejected == 0
    assert session.scalar(sa.select(sa.func.count()).select_from(Establishment)) == 5


def test_each_establishment_gets_search_terms_for_its_names_city_and_postal_code(session):
    row = establishment("280503848", "AIRBP IRC DREUX", "28102 DREUX CEDEX", rslongue="ASSOCIATION D'INSUFFISANTS RÉNAUX")

    import_finess(session, io.BytesIO(extraction_bytes([row])))

    terms = set(session.scalars(sa.select(EstablishmentTerm.term).where(EstablishmentTerm.finess == "280503848")))
    assert terms == {"airbp", "irc", "dreux", "association", "insuffisants", "renaux", "28102"}


# -- bad files and bad lines ------------------------------------------------------------


def test_a_file_that_is_not_a_finess_extraction_is_refused_and_nothing_is_written(session):
    data = "nofinesset;rs\n" + "\n".join(structure_line(r) for r in establishments(3)) + "\n"

    with pytest.raises(FinessFileError, match="n'est pas une extraction FINESS"):
        import_finess(session, io.BytesIO(data.encode()))

    assert session.scalar(sa.select(sa.func.count()).select_from(Establishment)) == 0
    assert session.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == 0


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00", b"\xff\xfe\x00f\x00i"])
def test_an_empty_or_binary_file_is_refused(session, content):
    with pytest.raises(FinessFileError):
        import_finess(session, io.BytesIO(content))
    assert session.scalar(sa.select(sa.func.count()).select_from(Establishment)) == 0


def test_malformed_lines_are_reported_with_their_number_and_the_rest_imports(session):
    good = list(establishments(4, seed=3))
    bad_key = establishment(wrong_key("280503848"), "CLÉ FAUSSE")
    lines = list(extraction_lines(good[:2]))[:3]  # header + two good structure lines
    lines += [
        structure_line(bad_key),                                  # line 4: check digit
        "structureet;280503848;CH TROP COURT;",                   # line 5: field count
        structure_line(good[0]),                                  # line 6: duplicate
        'structureet;"280503848;CH GUILLEMET OUVERT' + ";" * 29,  # line 7: unclosed quote
        "activite;280503848;XYZ;",                                # line 8: unknown record type
        "",                                                       # line 9: blank, ignored
        structure_line(good[2]),
        structure_line(good[3]),
        *(f"geolocalisation;{r['nofinesset']};1;2;IGN;2026-05-04" for r in good),
    ]

    report = import_finess(session, io.BytesIO(("\n".join(lines) + "\n").encode()))

    assert report.created == 4 and report.rejected == 5 and not report.is_truncated
    reasons = {r.line: r.reason for r in report.rejections}
    assert set(reasons) == {4, 5, 6, 7, 8}
    assert "FINESS géographique invalide" in reasons[4] and "280503849" in reasons[4]
    assert "champs au lieu de 31" in reasons[5]
    assert "en double (déjà lu ligne 2)" in reasons[6]
    assert "guillemets" in reasons[7]
    assert "type de ligne inconnu" in reasons[8]
    assert str(report.rejections[0]).startswith("ligne 4 : ")
    assert open_count(session) == 4


def test_a_truncated_file_keeps_what_was_read_and_closes_nothing(session):
    rows = list(establishments(40, seed=5))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))
    full = extraction_bytes([{**r, "datemaj": "2026-01-02"} for r in rows])
    cut = full[: full.index(rows[10]["nofinesset"].encode()) + 30]  # in the middle of line 12

    report = import_finess(session, io.BytesIO(cut))

    assert report.is_truncated and report.truncated_at == 12
    assert report.updated == 10 and report.closed == 0
    assert [r.line for r in report.rejections] == [12]
    assert "incomplète" in report.rejections[0].reason
    assert open_count(session) == 40
    assert "aucun établissement n'a été fermé" in report.error()
    assert "ligne 12" in report.error()


def test_a_complete_file_without_a_final_line_end_is_not_taken_for_a_cut_one(session):
    rows = list(establishments(12, seed=18))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))
    for geolocation in (True, False):
        data = extraction_bytes(rows[:11], geolocation=geolocation).rstrip(b"\n")

        report = import_finess(session, io.BytesIO(data))

        assert not report.is_truncated and report.rejected == 0, geolocation
    assert open_count(session) == 11


def test_a_file_cut_among_the_geolocation_lines_lost_no_establishment(session):
    rows = list(establishments(12, seed=19))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))
    data = extraction_bytes(rows[:11])
    cut = data[: data.rindex(b"geolocalisation;") + 25]

    report = import_finess(session, io.BytesIO(cut))

    assert not report.is_truncated and report.error() is None
    assert (report.unchanged, report.closed) == (11, 1)


def test_a_cut_right_after_a_separator_is_still_a_cut(session):
    rows = list(establishments(12, seed=20))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))
    data = extraction_bytes(rows)
    line_start = data.index(rows[11]["nofinesset"].encode())
    cut = data[: data.index(b";", line_start + 12) + 1]  # "structureet;<finess>;<ej>;"

    report = import_finess(session, io.BytesIO(cut))

    assert report.is_truncated and report.truncated_at == 13 and report.closed == 0
    assert open_count(session) == 12


def test_a_file_cut_between_two_lines_closes_nothing_when_that_would_close_the_region(session):
    rows = list(establishments(60, seed=6))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))
    lines = list(extraction_lines(rows))[:11]  # header and ten establishments, each line whole

    report = import_finess(session, io.BytesIO(("\n".join(lines) + "\n").encode()))

    assert not report.is_truncated
    assert (report.unchanged, report.closed, report.closures_withheld) == (10, 0, 50)
    assert open_count(session) == 60
    assert "50 établissements absents du fichier n'ont pas été fermés" in report.summary()
    assert "--allow-mass-closure" in report.error()


def test_an_operator_may_confirm_a_mass_closure(session):
    rows = list(establishments(60, seed=6))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))

    report = import_finess(session, io.BytesIO(extraction_bytes(rows[:10])), allow_mass_closure=True)

    assert (report.closed, report.closures_withheld) == (50, 0) and report.error() is None
    assert open_count(session) == 10


def test_a_header_alone_never_empties_the_referential(session):
    import_finess(session, io.BytesIO(extraction_bytes(list(establishments(30, seed=15)))))

    report = import_finess(session, io.BytesIO(b"finess;etalab;111;2026-06-12\n"))

    assert report.closures_withheld == 30 and open_count(session) == 30


def test_an_extraction_without_geolocation_lines_is_a_complete_file_too(session):
    rows = list(establishments(30, seed=16))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))

    # etalab-cs1100502 is the same extraction without the geolocalisation section.
    report = import_finess(session, io.BytesIO(extraction_bytes(rows[:28], geolocation=False)))

    assert (report.geolocations, report.closed, report.unchanged) == (0, 2, 28)
    assert report.error() is None and open_count(session) == 28


# -- re-imports -------------------------------------------------------------------------


def test_import_updates_changed_rows_and_closes_vanished_ones(session, clock):
    rows = list(establishments(30, seed=7))
    first = import_finess(session, io.BytesIO(extraction_bytes(rows)))
    assert (first.created, first.closed) == (30, 0)
    renamed, kept, gone = rows[0], rows[1], rows[2:4]
    created_at = get_establishment(session, kept["nofinesset"]).updated_at
    newcomer = establishment(finess_number("28", 990001), "MAISON DE SANTÉ NOUVELLE")
    clock.advance(days=30)

    newer = [{**renamed, "rs": "CH RENOMMÉ QUARTZ", "datemaj": "2026-06-01"}, *rows[1:2], *rows[4:], newcomer]
    report = import_finess(session, io.BytesIO(extraction_bytes(newer)))

    assert (report.created, report.updated, report.closed, report.unchanged, report.reopened) == (1, 1, 2, 27, 0)
    assert get_establishment(session, renamed["nofinesset"]).name == "CH RENOMMÉ QUARTZ"
    assert get_establishment(session, kept["nofinesset"]).updated_at == created_at
    for row in gone:
        closed = get_establishment(session, row["nofinesset"])
        assert closed is not None and closed.closed_at == clock()
    assert [e.finess for e in search_establishments(session, "renomme quartz")] == [renamed["nofinesset"]]
    assert search_establishments(session, gone[0]["nofinesset"]) == []
    assert open_count(session) == 29


def test_a_closed_establishment_reopens_when_it_reappears(session):
    rows = list(establishments(10, seed=8))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))
    import_finess(session, io.BytesIO(extraction_bytes(rows[1:])))
    assert get_establishment(session, rows[0]["nofinesset"]).closed_at is not None

    report = import_finess(session, io.BytesIO(extraction_bytes(rows)))

    assert (report.reopened, report.created, report.closed) == (1, 0, 0)
    assert get_establishment(session, rows[0]["nofinesset"]).closed_at is None
    assert [e.finess for e in search_establishments(session, rows[0]["nofinesset"])] == [rows[0]["nofinesset"]]


def test_reimporting_the_same_file_changes_nothing(session):
    rows = list(establishments(20, seed=9))
    import_finess(session, io.BytesIO(extraction_bytes(rows)))
    terms_before = session.scalar(sa.select(sa.func.count()).select_from(EstablishmentTerm))

    report = import_finess(session, io.BytesIO(extraction_bytes(rows)))

    assert (report.created, report.updated, report.closed, report.unchanged) == (0, 0, 0, 20)
    assert session.scalar(sa.select(sa.func.count()).select_from(EstablishmentTerm)) == terms_before


def test_the_import_from_a_path_is_audited(session, tmp_path):
    path = tmp_path / "etalab-cs1100507-stock-20260512-0336.csv"
    write_extraction(path, establishments(3, seed=10))

    report = import_finess(session, path)

    entry = session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "finess.import")).one()
    assert entry.outcome == "success"
    assert entry.details["file"] == path.name
    assert entry.details["created"] == 3 and entry.details["extraction_date"] == "2026-05-12"
    assert report.file_name == path.name


# -- demo data --------------------------------------------------------------------------


def test_demo_establishments_include_the_spec_examples_across_several_departements(session):
    loaded = load_demo_establishments(session)

    assert loaded >= 30
    dreux = get_establishment(session, "280503848")
    assert (dreux.name, dreux.postal_code, dreux.city, dreux.source) == ("AIRBP IRC DREUX", "28100", "DREUX", "demo")
    assert get_establishment(session, "010000024") is not None
    departments = set(session.scalars(sa.select(Establishment.department_code)))
    assert {"28", "37", "45", "41", "18", "36", "75", "44", "2A"} <= departments
    assert load_demo_establishments(session) == loaded  # idempotent


def test_demo_data_never_overwrites_the_official_referential(session):
    official = establishment("280503848", "AIRBP IRC DREUX OFFICIEL")
    import_finess(session, io.BytesIO(extraction_bytes([official])))

    load_demo_establishments(session)
    import_finess(session, io.BytesIO(extraction_bytes([official])))

    assert get_establishment(session, "280503848").name == "AIRBP IRC DREUX OFFICIEL"
    assert get_establishment(session, "280503848").source == "finess"
    # The official file does not close the demo establishments it does not list.
    assert get_establishment(session, "010000024").closed_at is None


# -- the command ------------------------------------------------------------------------


@pytest.fixture
def enrs(app, monkeypatch):
    import portal.cli

    monkeypatch.setattr(portal.cli, "_app", app)
    runner = CliRunner()
    return lambda *args: runner.invoke(portal.cli.main, list(args))


def test_enrs_finess_import_prints_a_french_summary(enrs, tmp_path, session):
    path = tmp_path / "finess.csv"
    write_extraction(path, establishments(12, seed=11))

    result = enrs("finess", "import", str(path))

    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("Import FINESS terminé — créés : 12, mis à jour : 0, rouverts : 0, "
                                     "fermés : 0, inchangés : 0, lignes rejetées : 0.")


def test_enrs_finess_import_lists_the_first_twenty_rejected_lines(enrs, tmp_path):
    rows = list(establishments(25, seed=12))
    bad = [{**r, "nofinesset": wrong_key(r["nofinesset"])} for r in rows]
    path = tmp_path / "finess.csv"
    write_extraction(path, bad[:22] + rows[22:])

    result = enrs("finess", "import", str(path))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("créés : 3, mis à jour : 0, rouverts : 0, fermés : 0, inchangés : 0, lignes rejetées : 22.")
    assert lines[1].startswith("  ligne 2 : numéro FINESS géographique invalide")
    assert len([line for line in lines if line.startswith("  ligne ")]) == 20
    assert lines[-1] == "  … et 2 autres lignes rejetées"


def test_enrs_finess_import_refuses_another_file_in_one_line_with_status_1(enrs, tmp_path):
    path = tmp_path / "pas-finess.csv"
    path.write_text("nom;prenom\nDupont;Jean\n", encoding="utf-8")

    result = enrs("finess", "import", str(path))

    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("Erreur : ce fichier n'est pas une extraction FINESS")
    assert "rien n'a été importé" in result.output


def test_enrs_finess_import_of_a_missing_file_says_so(enrs, tmp_path):
    result = enrs("finess", "import", str(tmp_path / "absent.csv"))

    assert result.exit_code == 1
    assert result.output == f"Erreur : fichier introuvable : {tmp_path / 'absent.csv'}\n"


def test_enrs_finess_import_withholds_a_mass_closure_until_confirmed(enrs, tmp_path, session):
    rows = list(establishments(40, seed=17))
    full, partial = tmp_path / "complet.csv", tmp_path / "partiel.csv"
    write_extraction(full, rows)
    write_extraction(partial, rows[:5])
    assert enrs("finess", "import", str(full)).exit_code == 0

    refused = enrs("finess", "import", str(partial))
    confirmed = enrs("finess", "import", "--allow-mass-closure", str(partial))

    assert refused.exit_code == 1
    assert "35 établissements absents du fichier n'ont pas été fermés" in refused.output
    assert refused.output.splitlines()[-1] == ("Erreur : fermeture de 35 établissements refusée (fichier partiel ?) ; "
                                               "si l'extraction est bien complète, relancez avec --allow-mass-closure")
    assert confirmed.exit_code == 0 and "fermés : 35" in confirmed.output
    assert open_count(session) == 5


def test_enrs_finess_import_of_a_truncated_file_fails_after_keeping_what_was_read(enrs, tmp_path, session):
    data = extraction_bytes(list(establishments(10, seed=13)))
    path = tmp_path / "coupe.csv"
    path.write_bytes(data[: len(data) // 3])

    result = enrs("finess", "import", str(path))

    assert result.exit_code == 1
    assert "Aucun établissement n'a été fermé" in result.output
    assert result.output.splitlines()[-1].startswith("Erreur : fichier tronqué à la ligne ")
    assert open_count(session) >= 1
