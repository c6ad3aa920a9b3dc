"""Checks on what a professional says about themselves: email addresses, national
identifiers (RPPS, ADELI), phone numbers, and the login identifier made from the names."""
from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email
from unidecode import unidecode

MSSANTE_DOMAIN = "mssante.fr"
INDIVIDUAL_EMAIL_MESSAGE = (
    "Mail individuel obligatoire. Les adresses MSSanté sont interdites ainsi que le mail générique."
)


class InvalidEmail(ValueError):
    """The address cannot be used; the message is French and shown next to the field."""


def normalise_email(value: str) -> str:
    """Trimmed, syntax-checked address with its domain lower-cased and IDN-encoded.

    The local part keeps its case as typed (RFC 5321), but addresses are compared
    case-insensitively everywhere, so it is lower-cased too: one mailbox, one account.
    """
    value = (value or "").strip()
    if not value:
        raise InvalidEmail("Veuillez saisir une adresse mail.")
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        raise InvalidEmail("L'adresse mail n'est pas valide (exemple : prenom.nom@domaine.fr).") from None
    return result.ascii_email.lower()


def is_mssante(email: str) -> bool:
    domain = email.rpartition("@")[2].lower()
    return domain == MSSANTE_DOMAIN or domain.endswith("." + MSSANTE_DOMAIN)


def is_generic(email: str, generic_mailboxes: tuple[str, ...]) -> bool:
    local = email.partition("@")[0].lower()
    # "contact.dreux@…" or "secretariat-cardio@…" are still shared mailboxes.
    head = re.split(r"[._+-]", local, maxsplit=1)[0]
    return local in generic_mailboxes or head in generic_mailboxes


def authentication_email(value: str, generic_mailboxes: tuple[str, ...]) -> str:
    email = normalise_email(value)
    if is_mssante(email) or is_generic(email, generic_mailboxes):
        raise InvalidEmail(INDIVIDUAL_EMAIL_MESSAGE)
    return email


# -- national identifiers ----------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn key used by RPPS, ADELI and FINESS numbers."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def national_id(value: str) -> tuple[str, str] | None:
    """(identifier, "rpps" | "adeli") for a valid number, None when left empty.

    Raises ValueError with a French message for a number of the wrong shape or key.
    """
    cleaned = re.sub(r"[\s.-]", "", value or "")
    if not cleaned:
        return None
    if not cleaned.isdigit() or len(cleaned) not in (9, 11):
        raise ValueError("L'identifiant national doit comporter 11 chiffres (RPPS) ou 9 chiffres (ADELI).")
    kind = "rpps" if len(cleaned) == 11 else "adeli"
    if not luhn_valid(cleaned):
        label = "RPPS" if kind == "rpps" else "ADELI"
        raise ValueError(f"Le numéro {label} saisi n'est pas valide : vérifiez les chiffres (clé de contrôle incorrecte).")
    return cleaned, kind


def phone(value: str) -> str | None:
    """A French phone number as 10 digits (or +33…), None when empty."""
    cleaned = re.sub(r"[\s.()-]", "", value or "")
    if not cleaned:
        return None
    if cleaned.startswith("+33"):
        cleaned = "0" + cleaned[3:]
    elif cleaned.startswith("0033"):
        cleaned = "0" + cleaned[4:]
    if not re.fullmatch(r"0[1-9]\d{8}", cleaned):
        raise ValueError("Le numéro de téléphone doit comporter 10 chiffres (exemple : 02 37 51 52 53).")
    return " ".join(cleaned[i:i + 2] for i in range(0, 10, 2))


# -- login identifiers -------------------------------------------------------------------


def login_stem(first_name: str, last_name: str) -> tuple[str, str]:
    """("n", "dupont") for Nathalie Dupont: ASCII, lower-case, letters and digits only."""
    first = re.sub(r"[^a-z0-9]", "", unidecode(first_name).lower())
    last = re.sub(r"[^a-z0-9]", "", unidecode(last_name).lower())
    return (first[:1] or "x"), (last[:40] or "utilisateur")


def login_candidates(first_name: str, last_name: str):
    """ndupont, n2dupont, n3dupont, … (the seed's `n2dupont` shape)."""
    initial, last = login_stem(first_name, last_name)
    yield f"{initial}{last}"
    number = 2
    while True:
        yield f"{initial}{number}{last}"
        number += 1
