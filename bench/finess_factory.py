"""Synthetic FINESS extractions in the official format, for the tests and the bench.

Deterministic for a given seed: the bench regenerates the same establishments to choose
its queries instead of keeping 100,000 rows in memory.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterable, Iterator

FIELDS = (
    "structureet", "nofinesset", "nofinessej", "rs", "rslongue", "complrs", "compldistrib",
    "numvoie", "typvoie", "voie", "compvoie", "lieuditbp", "commune", "departement",
    "libdepartement", "ligneacheminement", "telephone", "telecopie", "categetab",
    "libcategetab", "categagretab", "libcategagretab", "siret", "codeape", "codemft",
    "libmft", "codesph", "libsph", "dateouv", "dateautor", "datemaj",
)


@dataclass(frozen=True)
class Town:
    city: str
    postal_code: str
    department: str
    department_name: str
    commune: str


TOWNS = (
    Town("DREUX", "28100", "28", "EURE ET LOIR", "134"),
    Town("CHARTRES", "28000", "28", "EURE ET LOIR", "085"),
    Town("CHATEAUDUN", "28200", "28", "EURE ET LOIR", "088"),
    Town("NOGENT LE ROTROU", "28400", "28", "EURE ET LOIR", "280"),
    Town("TOURS", "37000", "37", "INDRE ET LOIRE", "261"),
    Town("AMBOISE", "37400", "37", "INDRE ET LOIRE", "003"),
    Town("CHINON", "37500", "37", "INDRE ET LOIRE", "072"),
    Town("JOUE LES TOURS", "37300", "37", "INDRE ET LOIRE", "122"),
    Town("ORLEANS", "45000", "45", "LOIRET", "234"),
    Town("MONTARGIS", "45200", "45", "LOIRET", "208"),
    Town("GIEN", "45500", "45", "LOIRET", "155"),
    Town("PITHIVIERS", "45300", "45", "LOIRET", "252"),
    Town("BLOIS", "41000", "41", "LOIR ET CHER", "018"),
    Town("VENDOME", "41100", "41", "LOIR ET CHER", "269"),
    Town("ROMORANTIN LANTHENAY", "41200", "41", "LOIR ET CHER", "194"),
    Town("BOURGES", "18000", "18", "CHER", "033"),
    Town("VIERZON", "18100", "18", "CHER", "279"),
    Town("SAINT AMAND MONTROND", "18200", "18", "CHER", "197"),
    Town("CHATEAUROUX", "36000", "36", "INDRE", "044"),
    Town("ISSOUDUN", "36100", "36", "INDRE", "088"),
    Town("LE BLANC", "36300", "36", "INDRE", "018"),
    Town("PARIS", "75013", "75", "PARIS", "113"),
    Town("PARIS", "75014", "75", "PARIS", "114"),
    Town("PARIS", "75018", "75", "PARIS", "118"),
    Town("NANTES", "44000", "44", "LOIRE ATLANTIQUE", "109"),
    Town("SAINT NAZAIRE", "44600", "44", "LOIRE ATLANTIQUE", "184"),
    Town("CHATEAUBRIANT", "44110", "44", "LOIRE ATLANTIQUE", "036"),
    Town("AJACCIO", "20000", "2A", "CORSE DU SUD", "004"),
    Town("PORTO VECCHIO", "20137", "2A", "CORSE DU SUD", "247"),
    Town("BASTIA", "20200", "2B", "HAUTE CORSE", "033"),
    Town("CORTE", "20250", "2B", "HAUTE CORSE", "096"),
    Town("BOURG EN BRESSE", "01000", "01", "AIN", "053"),
    Town("EVREUX", "27000", "27", "EURE", "229"),
    Town("LE MANS", "72000", "72", "SARTHE", "181"),
    Town("ANGERS", "49000", "49", "MAINE ET LOIRE", "007"),
    Town("LILLE", "59000", "59", "NORD", "350"),
    Town("LYON", "69003", "69", "RHONE", "383"),
    Town("MARSEILLE", "13005", "13", "BOUCHES DU RHONE", "205"),
    Town("TOULOUSE", "31000", "31", "HAUTE GARONNE", "555"),
    Town("BORDEAUX", "33000", "33", "GIRONDE", "063"),
    Town("STRASBOURG", "67000", "67", "BAS RHIN", "482"),
    Town("RENNES", "35000", "35", "ILLE ET VILAINE", "238"),
    Town("BREST", "29200", "29", "FINISTERE", "019"),
    Town("MONTPELLIER", "34000", "34", "HERAULT", "172"),
    Town("NICE", "06000", "06", "ALPES MARITIMES", "088"),
    Town("LIMOGES", "87000", "87", "HAUTE VIENNE", "085"),
    Town("POITIERS", "86000", "86", "VIENNE", "194"),
    Town("DIJON", "21000", "21", "COTE D OR", "231"),
)

# (short prefix, long prefix with accents, category code, category label, group code, group label)
KINDS = (
    ("CH", "CENTRE HOSPITALIER", "355", "Centre Hospitalier (C.H.)", "1102", "Centres Hospitaliers"),
    ("EHPAD", "ÉTABLISSEMENT D'HÉBERGEMENT POUR PERSONNES ÂGÉES DÉPENDANTES", "500",
     "Etablissement d'hébergement pour personnes âgées dépendantes", "4401", "Etablissements d'Hébergement pour Personnes Âgées"),
    ("PHARMACIE", "PHARMACIE", "620", "Pharmacie d'Officine", "3301", "Pharmacies d'Officine"),
    ("LBM", "LABORATOIRE DE BIOLOGIE MÉDICALE", "611", "Laboratoire de Biologie Médicale", "2206", "Laboratoires d'Analyses"),
    ("CLINIQUE", "CLINIQUE", "365", "Etablissement de Soins Pluridisciplinaire", "1106", "Autres Etablissements de Soins"),
    ("MSP", "MAISON DE SANTÉ PLURIPROFESSIONNELLE", "603", "Maison de santé (L.6223-3)", "2204", "Autres Etablissements Relevant de la Loi Hospitalière"),
    ("CDS", "CENTRE DE SANTÉ", "124", "Centre de Santé", "2204", "Centres de Santé"),
    ("SSIAD", "SERVICE DE SOINS INFIRMIERS À DOMICILE", "354", "Service de Soins Infirmiers A Domicile", "4403", "Services à Domicile pour Personnes Âgées"),
    ("IME", "INSTITUT MÉDICO-ÉDUCATIF", "183", "Institut Médico-Educatif (I.M.E.)", "4101", "Etablissements pour Enfants Handicapés"),
    ("CMPP", "CENTRE MÉDICO-PSYCHO-PÉDAGOGIQUE", "189", "Centre Médico-Psycho-Pédagogique (C.M.P.P.)", "4106", "Services à Domicile ou Ambulatoires pour Handicapés"),
    ("CENTRE DE DIALYSE", "CENTRE DE DIALYSE", "146", "Structure d'Alternative à la dialyse en centre", "1203", "Dialyse Ambulatoire"),
    ("FOYER", "FOYER D'ACCUEIL MÉDICALISÉ", "437", "Foyer d'Accueil Médicalisé pour Adultes Handicapés (F.A.M.)", "4301", "Etablissements pour Adultes Handicapés"),
)

PATRONS = (
    "SAINT JOSEPH", "SAINTE MARIE", "NOTRE DAME", "SAINT FRANCOIS", "JEANNE D'ARC", "PASTEUR",
    "VICTOR HUGO", "LOUIS PASTEUR", "LES TILLEULS", "LES GLYCINES", "LES ACACIAS", "LE PARC",
    "LES CORDELIERS", "DU CENTRE", "DE LA GARE", "DES BORDS DE LOIRE", "LA ROSERAIE",
    "LES MAGNOLIAS", "BEAUSOLEIL", "LES PEUPLIERS", "DU VAL", "LA CHESNAIE", "LES HAUTS DE FRANCE",
    "SAINT LUC", "SAINTE ANNE", "LES CHÊNES", "L'ÉCLUSE", "MONTFORT", "BELLEVUE", "LE CLOS FLEURI",
    "DU MARCHE", "DES HALLES", "DE LA CATHÉDRALE", "GAMBETTA", "JEAN JAURÈS", "CLEMENCEAU",
    "DU LAC", "DES VIGNES", "LA FONTAINE", "DU MOULIN",
)

# Syllables for made-up surnames and towns: the national file has tens of thousands of
# distinct names in 35,000 communes, and the search must be measured on that diversity.
_SURNAME_PARTS = ("MAR", "TIN", "BER", "NARD", "DU", "BOIS", "LE", "ROUX", "FOUR", "NIER", "GAR",
                  "MO", "REAU", "LAM", "BERT", "PE", "TIT", "RI", "CHARD", "FAU", "CON", "GI", "RAUD",
                  "BON", "NET", "VAL", "LON", "CHE", "VAL", "LIER", "RO", "BIN", "GUIL", "LOT", "BRU")
_TOWN_HEADS = ("BEAU", "MONT", "VAL", "CHATEAU", "ROCHE", "FONT", "BOIS", "MAR", "VILLE", "NEUF",
               "SAINT MAR", "SAINT GER", "SAINTE CE", "LA FER", "LE PLES", "BRIE", "CHAM", "COR", "ROUV", "LUS")
_TOWN_TAILS = ("VILLE", "COURT", "MONT", "FORT", "LIEU", "BOURG", "TIN", "MAIN", "LINE", "SIS", "NAY",
               "ZAC", "LAY", "IGNY", "ANGES", " SUR LOIRE", " LES BAINS", " EN VEXIN", " LA FORET", "ILLE")
METROPOLITAN = tuple(f"{n:02d}" for n in range(1, 96) if n != 20) + ("2A", "2B")

STREET_TYPES = ("R", "AV", "BD", "PL", "RTE", "CHE", "ALL", "IMP", "QUAI")
STREETS = ("DE PARIS", "DU GENERAL DE GAULLE", "JEAN JAURES", "VICTOR HUGO", "DE LA REPUBLIQUE",
           "PASTEUR", "DES LILAS", "DU PRESIDENT WILSON", "SAINT MARTIN", "DE VERDUN", "NATIONALE")


def finess_check_digit(body: str) -> str:
    """The Luhn key of the first eight characters (2A/2B count as 21/22)."""
    digits = {"2A": "21", "2B": "22"}.get(body[:2], body[:2]) + body[2:]
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # doubled: the key will be appended to the right
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def finess_number(department: str, sequence: int) -> str:
    body = f"{department}{sequence:06d}"
    return body + finess_check_digit(body)


def wrong_key(finess: str) -> str:
    """The same number with another check digit."""
    return finess[:8] + str((int(finess[8]) + 1) % 10)


def _surname(rng: random.Random) -> str:
    return "".join(rng.choice(_SURNAME_PARTS) for _ in range(2 + rng.randrange(2)))


def synthetic_towns(rng: random.Random, per_department: int = 40) -> list[Town]:
    towns = []
    for department in METROPOLITAN:
        for index in range(per_department):
            city = rng.choice(_TOWN_HEADS) + rng.choice(_TOWN_TAILS)
            number = {"2A": "20", "2B": "20"}.get(department, department)
            towns.append(Town(city, f"{number}{100 + index * 20:03d}", department,
                              f"DEPARTEMENT {department}", f"{index + 1:03d}"))
    return towns


def _qualifier(rng: random.Random, short: str, town: Town) -> str:
    draw = rng.random()
    if draw < 0.35:
        return rng.choice(PATRONS)
    if draw < 0.75:
        return _surname(rng)
    if draw < 0.9:
        return f"DE {town.city}" if short in ("CH", "CLINIQUE", "CDS") else town.city
    return f"{rng.choice(PATRONS)} {_surname(rng)}"


def establishments(count: int, seed: int = 0) -> Iterator[dict[str, str]]:
    """`count` establishments as dicts of the extraction's fields, FINESS keys valid.

    The first ones visit every town of TOWNS (real towns the tests search for); then one
    establishment in five is in such a town and the rest spread over made-up towns of
    every metropolitan département, with pharmacies and EHPADs as common as in the file."""
    rng = random.Random(seed)
    others = synthetic_towns(rng)
    kind_weights = [22 if k[0] == "PHARMACIE" else 8 if k[0] == "EHPAD" else 4 for k in KINDS]
    sequences: dict[str, int] = {}
    for index in range(count):
        if index < len(TOWNS):
            town = TOWNS[index]
        else:
            town = rng.choice(TOWNS) if rng.random() < 0.2 else rng.choice(others)
        short, long_prefix, cat, cat_label, group, group_label = rng.choices(KINDS, kind_weights)[0]
        qualifier = _qualifier(rng, short, town)
        sequence = sequences.get(town.department, rng.randrange(1000, 5000)) + 1 + rng.randrange(3)
        sequences[town.department] = sequence
        finess = finess_number(town.department, sequence)
        juridique = finess_number(town.department, 780000 + sequence % 200000)
        name = f"{short} {qualifier}"[:38]
        if rng.random() < 0.02:
            name = f'{short} "{qualifier}"'
        opened = date(1960 + rng.randrange(60), 1 + rng.randrange(12), 1 + rng.randrange(28))
        yield {
            "structureet": "structureet",
            "nofinesset": finess,
            "nofinessej": juridique,
            "rs": name,
            "rslongue": f"{long_prefix} {qualifier}",
            "complrs": "",
            "compldistrib": "",
            "numvoie": str(1 + rng.randrange(200)),
            "typvoie": rng.choice(STREET_TYPES),
            "voie": rng.choice(STREETS),
            "compvoie": "B" if rng.random() < 0.05 else "",
            "lieuditbp": f"BP {rng.randrange(10, 999)}" if rng.random() < 0.1 else "",
            "commune": town.commune,
            "departement": town.department,
            "libdepartement": town.department_name,
            "ligneacheminement": f"{town.postal_code} {town.city}" + (" CEDEX" if rng.random() < 0.05 else ""),
            "telephone": f"0{rng.randrange(1, 6)}{rng.randrange(10**8):08d}",
            "telecopie": "",
            "categetab": cat,
            "libcategetab": cat_label,
            "categagretab": group,
            "libcategagretab": group_label,
            "siret": f"{rng.randrange(10**13, 10**14)}",
            "codeape": "8610Z",
            "codemft": "03",
            "libmft": "ARS établissements Publics de santé dotation globale",
            "codesph": "1",
            "libsph": "Etablissement public de santé",
            "dateouv": opened.isoformat(),
            "dateautor": opened.isoformat(),
            "datemaj": date(2020 + rng.randrange(5), 1 + rng.randrange(12), 1 + rng.randrange(28)).isoformat(),
        }


@lru_cache(maxsize=1)
def _template_row() -> tuple[tuple[str, str], ...]:
    return tuple(next(establishments(1)).items())


def establishment(finess: str, name: str, routing_line: str = "28100 DREUX", **fields: str) -> dict[str, str]:
    """One establishment written by hand (tests): the given fields over plausible defaults;
    the département defaults to the number's."""
    row = dict(_template_row())
    row.update({
        "nofinesset": finess, "rs": name, "rslongue": "", "ligneacheminement": routing_line,
        "departement": finess[:2], "libdepartement": f"DEPARTEMENT {finess[:2]}",
    })
    row.update(fields)
    return row


def _quoted(value: str) -> str:
    if ";" in value or '"' in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def _day_first(value: str) -> str:
    """2020-02-04 -> 04/02/2020, the date format of older extractions."""
    if len(value) == 10 and value[4] == "-":
        return f"{value[8:]}/{value[5:7]}/{value[:4]}"
    return value


def structure_line(row: dict[str, str], *, day_first_dates: bool = False) -> str:
    values = [row.get(name, "") for name in FIELDS]
    if day_first_dates:
        values[-3:] = [_day_first(v) for v in values[-3:]]
    return ";".join(_quoted(v) for v in values) + ";"


def geolocation_line(finess: str, index: int) -> str:
    x, y = 550000.0 + index % 1000 * 10.5, 6700000.0 + index % 997 * 9.25
    return f"geolocalisation;{finess};{x:.1f};{y:.1f};1,ATLASANTE,100,IGN,BD_ADRESSE,V2.2,LAMBERT_93;2024-05-12"


def extraction_lines(rows: Iterable[dict[str, str]], *, extraction_date: str = "2026-05-12",
                     day_first_dates: bool = False, geolocation: bool = True) -> Iterator[str]:
    """The lines of an extraction (without line ends): header, structures, geolocations."""
    yield f"finess;etalab;111;{extraction_date}"
    numbers = []
    for row in rows:
        numbers.append(row["nofinesset"])
        yield structure_line(row, day_first_dates=day_first_dates)
    if geolocation:
        for index, finess in enumerate(numbers):
            yield geolocation_line(finess, index)


def write_extraction(target: str | Path | IO[bytes], rows: Iterable[dict[str, str]], *,
                     encoding: str = "utf-8", newline: str = "\n", **options: object) -> None:
    """Write an extraction to a path or a binary stream (`options`: see extraction_lines)."""
    if isinstance(target, (str, Path)):
        with open(target, "wb") as stream:
            write_extraction(stream, rows, encoding=encoding, newline=newline, **options)
        return
    buffer: list[str] = []
    for line in extraction_lines(rows, **options):  # type: ignore[arg-type]
        buffer.append(line)
        if len(buffer) >= 5000:
            target.write((newline.join(buffer) + newline).encode(encoding))
            buffer = []
    if buffer:
        target.write((newline.join(buffer) + newline).encode(encoding))
