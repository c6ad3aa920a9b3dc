"""FINESS numbers, search words and the professions list: pure functions, no database."""
from __future__ import annotations

import pytest

from bench.finess_factory import finess_number, wrong_key
from onboarding.finess import (
    FINESS_ALPHABET,
    department_of,
    is_valid_finess,
    normalise,
    parse_date,
    prefix_upper_bound,
    search_words,
    split_routing_line,
)
from onboarding.referentials import profession_label, professions


@pytest.mark.parametrize("finess", ["280503848", "010000024", "280000662", "360000160", "440000503"])
def test_the_spec_examples_and_real_numbers_are_valid(finess):
    assert is_valid_finess(finess)


@pytest.mark.parametrize("finess", ["280503848", "010000024", "2A0000154", "2B0000038"])
def test_any_other_check_digit_is_refused(finess):
    for digit in "0123456789":
        candidate = finess[:8] + digit
        assert is_valid_finess(candidate) == (candidate == finess)


# The five Corsican numbers of the decree of 4 March 2015 (isolated establishments).
CORSICAN = ["2A0000154", "2B0004246", "2B0000038", "2B0005342", "2B0005359"]


@pytest.mark.parametrize("finess", CORSICAN)
def test_corsican_numbers_count_2a_as_21_and_2b_as_22_in_the_key(finess):
    assert is_valid_finess(finess)
    assert not is_valid_finess(wrong_key(finess))


def test_corsican_numbers_are_not_checked_as_if_corsica_were_20():
    from idp.identity import luhn_valid

    assert not any(luhn_valid("20" + finess[2:]) for finess in CORSICAN)


def test_generated_numbers_have_valid_keys_in_every_kind_of_departement():
    for department in ("01", "28", "2A", "2B", "75", "95"):
        number = finess_number(department, 4242)
        assert is_valid_finess(number), number
        assert not is_valid_finess(wrong_key(number))


@pytest.mark.parametrize("value", [
    None, "", 280503848, "28050384", "2805038480", " 280503848", "280503848 ", "2C0000154",
    "28O503848", "2a0000154", "AB0503848", "２80503848",
])
def test_what_is_not_nine_finess_characters_is_not_a_finess_number(value):
    assert not is_valid_finess(value)


@pytest.mark.parametrize("finess, department", [
    ("280503848", "28"), ("010000024", "01"), ("2A0000154", "2A"), ("2B0000038", "2B"),
    ("970400024", "974"), ("970102018", "971"), ("980501506", "976"), ("980600027", "986"),
])
def test_department_of_a_finess_number(finess, department):
    assert department_of(finess) == department


def test_department_of_an_invalid_number_is_none():
    assert department_of("280503849") is None
    assert department_of("bonjour") is None


def test_search_words_drop_accents_case_punctuation_and_lone_letters():
    assert normalise("Hôpital d'Évreux – Œuvre SAINT-JOSEPH") == "hopital d evreux oeuvre saint joseph"
    assert search_words("Hôpital d'Évreux, l'Hôpital") == ["hopital", "evreux"]
    assert search_words("") == [] and search_words(None) == []


def test_prefix_upper_bound_is_the_next_string_in_the_alphabet():
    assert prefix_upper_bound("ab") == "ac"
    assert prefix_upper_bound("az") == "b"
    assert prefix_upper_bound("a9") == "aa"
    assert prefix_upper_bound("zz") is None
    assert prefix_upper_bound("29", FINESS_ALPHABET) == "2A"
    assert prefix_upper_bound("2A", FINESS_ALPHABET) == "2B"


@pytest.mark.parametrize("line, expected", [
    ("28100 DREUX", ("28100", "DREUX")),
    ("01012 BOURG EN BRESSE CEDEX", ("01012", "BOURG EN BRESSE")),
    ("45067 ORLEANS CEDEX 2", ("45067", "ORLEANS")),
    ("37044 TOURS CEDEX 9", ("37044", "TOURS")),
    ("97150 ST MARTIN", ("97150", "ST MARTIN")),
    ("DREUX", (None, "DREUX")),
    ("", (None, None)),
])
def test_the_routing_line_gives_the_postal_code_and_the_city(line, expected):
    assert split_routing_line(line) == expected


def test_dates_are_read_in_both_formats_of_the_extraction():
    assert str(parse_date("2020-02-04")) == "2020-02-04"
    assert str(parse_date("04/02/2020")) == "2020-02-04"
    assert parse_date("2020-02-31") is None
    assert parse_date("hier") is None
    assert parse_date("") is None


def test_professions_list_medecin_first_then_alphabetical_then_autre():
    listed = professions()
    labels = [p.label for p in listed]
    assert listed[0].code == "10" and labels[0] == "Médecin"
    assert listed[-1].code == "autre" and labels[-1] == "Autre"
    from unidecode import unidecode
    middle = [unidecode(label).lower() for label in labels[1:-1]]
    assert middle == sorted(middle)
    codes = {p.code for p in listed}
    assert {"21", "26", "28", "40", "50", "60", "70", "91", "98"} <= codes
    assert len(codes) == len(listed) == 31


def test_profession_label_of_a_code():
    assert profession_label("21") == "Pharmacien"
    assert profession_label("40") == "Chirurgien-Dentiste"
    assert profession_label("50") == "Sage-Femme"
    assert profession_label("autre") == "Autre"
    assert profession_label("99") is None
    assert profession_label(None) is None


def test_professions_are_read_once_at_first_use_not_at_import():
    from onboarding import referentials

    referentials._profession_table.cache_clear()
    assert referentials._profession_table.cache_info().currsize == 0
    professions()
    professions()
    info = referentials._profession_table.cache_info()
    assert info.misses == 1 and info.hits >= 1
