"""The establishment autocomplete of the registration form: GET /api/establishments."""
from __future__ import annotations

import io

import pytest

from bench.finess_factory import establishment, establishments, finess_number, write_extraction
from onboarding.finess import import_finess
from onboarding.referentials import search_establishments


def f(department: str, sequence: int) -> str:
    return finess_number(department, sequence)


DIRECTORY = [
    establishment("280503848", "AIRBP IRC DREUX", "28100 DREUX", rslongue="ASSOCIATION IRC DREUX"),
    establishment(f("28", 710001), "CH DE DREUX", "28102 DREUX CEDEX", rslongue="CENTRE HOSPITALIER VICTOR JOUSSELIN"),
    establishment(f("28", 710002), "PHARMACIE DE LA GARE", "28100 DREUX"),
    establishment(f("28", 710003), "EHPAD LES TILLEULS", "28000 CHARTRES"),
    establishment(f("28", 710004), "CENTRE HOSPITALIER DE CHARTRES", "28000 CHARTRES"),
    establishment(f("28", 710005), "EHPAD DU CENTRE HOSPITALIER", "28200 CHATEAUDUN"),
    establishment(f("37", 710001), "CLINIQUE DREUX-LANCÉ", "37000 TOURS"),
    establishment(f("75", 710001), "HÔPITAL SAINT-JOSEPH", "75014 PARIS", departement="75", libdepartement="PARIS"),
    establishment("2A0000154", "CLINIQUE DU SUD DE LA CORSE", "20137 PORTO VECCHIO", libdepartement="CORSE DU SUD"),
    establishment("010000024", "CH DE FLEYRIAT", "01440 VIRIAT", rslongue="CENTRE HOSPITALIER DE BOURG-EN-BRESSE FLEYRIAT",
                  nofinessej="010780054", libdepartement="AIN", categetab="355", libcategetab="Centre Hospitalier (C.H.)"),
]


def load(session, rows) -> None:
    stream = io.BytesIO()
    write_extraction(stream, rows)
    stream.seek(0)
    report = import_finess(session, stream)
    assert report.rejected == 0, report.rejections


@pytest.fixture
def directory(session):
    load(session, DIRECTORY)
    return session


def search(client, query: str, **params) -> list[dict]:
    response = client.get("/api/establishments", query_string={"q": query, **params})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def names(results: list[dict]) -> list[str]:
    return [r["name"] for r in results]


def test_an_anonymous_visitor_gets_the_establishment_as_json(client, directory):
    results = search(client, "fleyriat")

    assert results == [{
        "finess": "010000024",
        "name": "CH DE FLEYRIAT",
        "long_name": "CENTRE HOSPITALIER DE BOURG-EN-BRESSE FLEYRIAT",
        "postal_code": "01440",
        "city": "VIRIAT",
        "department": "01",
        "department_name": "AIN",
        "finess_juridique": "010780054",
        "category": "Centre Hospitalier (C.H.)",
        "category_code": "355",
    }]


def test_words_of_the_name_match_in_any_order(client, directory):
    assert names(search(client, "ehpad tilleuls"))[0] == "EHPAD LES TILLEULS"
    assert names(search(client, "tilleuls ehpad"))[0] == "EHPAD LES TILLEULS"
    assert names(search(client, "tilleuls chartres")) == ["EHPAD LES TILLEULS"]


def test_accents_and_case_do_not_matter(client, directory):
    for query in ("hopital saint joseph", "HÔPITAL Saint-Joséph", "joseph hopi", "Hôpital JOSEPH paris"):
        assert names(search(client, query)) == ["HÔPITAL SAINT-JOSEPH"], query
    assert names(search(client, "clinique dreux lance")) == ["CLINIQUE DREUX-LANCÉ"]


def test_saint_and_st_find_each_other(client, directory):
    assert names(search(client, "hopital st joseph")) == ["HÔPITAL SAINT-JOSEPH"]
    load(directory, [establishment(f("36", 710001), "EHPAD STE MARIE", "36000 CHATEAUROUX")])
    assert names(search(client, "ehpad sainte marie")) == ["EHPAD STE MARIE"]


def test_the_last_word_may_be_unfinished(client, directory):
    assert names(search(client, "airbp irc dre")) == ["AIRBP IRC DREUX"]
    assert names(search(client, "pharm")) == ["PHARMACIE DE LA GARE"]


def test_an_exact_finess_number_answers_that_establishment_alone(client, directory):
    assert names(search(client, "280503848")) == ["AIRBP IRC DREUX"]
    assert names(search(client, " 2A0000154 ")) == ["CLINIQUE DU SUD DE LA CORSE"]
    assert names(search(client, "2a0000154")) == ["CLINIQUE DU SUD DE LA CORSE"]


def test_a_finess_prefix_lists_the_numbers_in_order(client, directory):
    results = search(client, "28710")
    assert [r["finess"] for r in results] == [f("28", 710000 + i) for i in range(1, 6)]
    assert [r["finess"] for r in search(client, "2A")] == ["2A0000154"]


def test_a_finess_looking_query_with_a_wrong_key_finds_nothing_without_error(client, directory):
    assert search(client, "280503849") == []
    assert search(client, "2A0000155") == []


def test_a_postal_code_finds_the_establishments_of_that_code(client, directory):
    assert sorted(names(search(client, "28100"))) == ["AIRBP IRC DREUX", "PHARMACIE DE LA GARE"]
    assert names(search(client, "75014")) == ["HÔPITAL SAINT-JOSEPH"]


def test_a_city_finds_the_establishments_named_after_it_first_then_those_located_there(client, directory):
    results = names(search(client, "dreux"))

    assert set(results[:3]) == {"AIRBP IRC DREUX", "CH DE DREUX", "CLINIQUE DREUX-LANCÉ"}
    assert results[3:] == ["PHARMACIE DE LA GARE"]
    assert names(search(client, "porto vecchio")) == ["CLINIQUE DU SUD DE LA CORSE"]


def test_names_starting_with_the_words_come_before_names_merely_holding_them(client, directory):
    for query in ("centre hospitalier", "centre hosp"):
        results = names(search(client, query))
        assert set(results[:3]) == {"CH DE DREUX", "CENTRE HOSPITALIER DE CHARTRES", "CH DE FLEYRIAT"}, query
        assert results[3:] == ["EHPAD DU CENTRE HOSPITALIER"], query


def test_a_long_name_typed_from_its_start_finds_its_establishment(client, directory):
    assert names(search(client, "centre hospitalier victor jous")) == ["CH DE DREUX"]
    assert names(search(client, "Centre hospitalier de Bourg-en-Bresse")) == ["CH DE FLEYRIAT"]


def test_only_the_word_being_typed_is_a_prefix(client, directory):
    assert names(search(client, "ehpad til")) == ["EHPAD LES TILLEULS"]
    assert search(client, "ehp tilleuls") == []   # "ehp" was typed whole: no word "ehp"
    assert search(client, "tilleuls ehp ") == []  # the space ends the word
    assert names(search(client, "tilleuls ehpad ")) == ["EHPAD LES TILLEULS"]


def test_every_typed_word_must_match(client, directory):
    assert search(client, "ehpad fleyriat") == []
    assert search(client, "clinique corse dreux") == []


@pytest.mark.parametrize("query", ["", " ", "a", "é", "d l", "--"])
def test_an_empty_or_one_letter_query_returns_an_empty_list(client, directory, query):
    assert search(client, query) == []


def test_a_missing_query_returns_an_empty_list(client, directory):
    response = client.get("/api/establishments")
    assert response.status_code == 200 and response.get_json() == []


@pytest.fixture
def pharmacies(session):
    load(session, [establishment(f("45", 720000 + i), f"PHARMACIE NUMERO {i}", "45000 ORLEANS") for i in range(60)])
    return session


@pytest.mark.parametrize("limit, expected", [
    (None, 10), ("5", 5), ("50", 50), ("51", 50), ("1000", 50), ("1", 1), ("0", 1), ("-3", 1),
    ("dix", 10), ("", 10), ("2.5", 10),
])
def test_limit_defaults_to_ten_and_is_clamped_between_one_and_fifty(client, pharmacies, limit, expected):
    params = {} if limit is None else {"limit": limit}
    assert len(search(client, "pharmacie", **params)) == expected


def test_a_query_that_is_not_utf8_gets_a_french_json_400(client, directory):
    for url in ("/api/establishments?q=%FF", "/api/establishments?q=caf%E9", "/api/establishments?q=dreux&limit=%C3"):
        response = client.get(url)
        assert response.status_code == 400, url
        assert response.mimetype == "application/json"
        body = response.get_json()
        assert body["error"] == "Requête invalide"
        assert "UTF-8" in body["message"]


def test_utf8_encoded_accents_are_fine(client, directory):
    response = client.get("/api/establishments?q=h%C3%B4pital+joseph")
    assert response.status_code == 200
    assert names(response.get_json()) == ["HÔPITAL SAINT-JOSEPH"]


def test_closed_establishments_are_no_longer_suggested(client, directory):
    load(directory, [row for row in DIRECTORY if row["nofinesset"] != "280503848"])

    assert "AIRBP IRC DREUX" not in names(search(client, "dreux"))
    assert search(client, "280503848") == []
    assert search(client, "airbp") == []


def test_the_registration_form_can_recheck_a_chosen_finess(client, directory):
    response = client.get("/api/establishments/280503848")

    assert response.status_code == 200
    body = response.get_json()
    assert body["finess"] == "280503848" and body["name"] == "AIRBP IRC DREUX"
    assert body["postal_code"] == "28100" and body["city"] == "DREUX" and body["department"] == "28"
    assert body["address"][-1] == "28100 DREUX"
    assert client.get("/api/establishments/2a0000154").get_json()["name"] == "CLINIQUE DU SUD DE LA CORSE"


@pytest.mark.parametrize("finess, error", [
    ("280503849", "Établissement introuvable"),   # wrong key
    ("12", "Établissement introuvable"),          # not a FINESS number
    ("280000662", "Établissement introuvable"),   # valid, not in the referential
])
def test_an_unknown_or_invalid_finess_is_a_json_404(client, directory, finess, error):
    response = client.get(f"/api/establishments/{finess}")

    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == error


def test_a_closed_establishment_is_a_json_404_that_says_so(client, directory):
    load(directory, DIRECTORY[1:])

    response = client.get("/api/establishments/280503848")

    assert response.status_code == 404
    assert response.get_json()["error"] == "Établissement fermé"


def test_the_autocomplete_is_rate_limited_per_address_with_a_json_429(app, client, directory):
    # The limiter counts real time: a small limit keeps the test from depending on speed.
    app.config["ENRS_SEARCH_RATE_LIMIT"] = "40 per minute"
    statuses = [client.get("/api/establishments?q=").status_code for _ in range(41)]

    assert 429 in statuses and set(statuses) == {200, 429}
    response = client.get("/api/establishments?q=dreux")
    assert response.status_code == 429
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "Trop de tentatives"
    other = client.get("/api/establishments?q=dreux", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 200


def test_the_json_search_answers_what_the_model_search_answers(directory):
    from onboarding.referentials import establishment_json, search_establishments_json

    for query in ("dreux", "centre hospitalier", "28710", "280503848", "2A", "tilleuls ehpad", "a", "280503849"):
        models = [establishment_json(e) for e in search_establishments(directory, query, 10)]
        assert search_establishments_json(directory, query, 10) == models, query


def test_search_from_python_returns_models_best_first(directory):
    found = search_establishments(directory, "centre hospitalier", limit=2)

    assert [e.finess for e in found][:1] == [f("28", 710001)]
    assert len(found) == 2 and all(e.is_open for e in found)
    assert search_establishments(directory, "dreux", limit=500)[-1].name == "PHARMACIE DE LA GARE"


def test_search_scales_past_the_candidate_cap_without_losing_exact_matches(session, client):
    load(session, [*establishments(900, seed=21),
                   establishment(f("28", 730001), "PHARMACIE QUIMPERLE", "28100 DREUX")])

    assert names(search(client, "pharmacie quimperle")) == ["PHARMACIE QUIMPERLE"]
    assert names(search(client, "quimperle")) == ["PHARMACIE QUIMPERLE"]
    assert len(search(client, "pharmacie", limit=50)) == 50
