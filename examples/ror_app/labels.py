"""French labels for what the portal's claims carry.

Copied from the portal rather than imported: an application only knows the portal
through its documented claims (docs/oidc-client.md)."""
from __future__ import annotations

ROLE_LABELS = {
    "ror_referent_offre": "Référent ROR (offre de soins)",
    "ror_referent_lits": "Référent disponibilité des lits",
}

# acr: how the portal session was opened, as a whole.
ACR_LABELS = {
    "urn:enrs:acr:pwd-otp-email": "Mot de passe + code reçu par mail",
    "urn:enrs:acr:pwd-otp-app": "Mot de passe + code de l'application d'authentification",
    "urn:enrs:acr:psc": "Pro Santé Connect (carte e-CPS)",
}

# amr: the methods used (RFC 8176 values).
AMR_LABELS = {
    "pwd": "mot de passe",
    "otp": "code à usage unique",
    "mca": "plusieurs canaux (code envoyé par mail)",
    "mfa": "plusieurs facteurs",
    "kba": "code de récupération",
    "sms": "code reçu par SMS",
    "hwk": "clé matérielle",
    "swk": "clé logicielle",
    "sc": "carte à puce",
    "pin": "code PIN",
    "user": "présence de l'utilisateur vérifiée",
}


def role_label(role: str) -> str:
    return ROLE_LABELS.get(role, role)


def acr_label(acr: str | None) -> str:
    if not acr:
        return "Non précisée"
    return ACR_LABELS.get(acr, acr)


def amr_labels(amr: object) -> list[str]:
    if not isinstance(amr, list):
        return []
    return [AMR_LABELS.get(str(method), str(method)) for method in amr]
