"""J5–J6 in the browser: download the pre-filled attestation, upload it (and a photo, and
a refused 13 MB file), then the regional admin approves with the inline preview."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.attestation_samples import generated_pdf, png_image
from tests.e2e.steps import Person, label, login, logout, solve_image_captcha

PASSWORD = "Attestation-Signee-2026!"


def _open_request_form(page):
    page.goto("/")
    page.get_by_role("main").get_by_role("link", name="Demander l'accès au ROR").click()
    expect(page.get_by_role("heading", name="ROR inscription", level=1)).to_be_visible()


def _fill(page, portal, choice: str, path) -> None:
    page.get_by_label(choice).check()
    page.get_by_label(label("Déposer l'attestation")).set_input_files(str(path))
    solve_image_captcha(page, portal)


def test_professional_uploads_the_signed_attestation_and_the_admin_approves_it(portal, open_page, shots,
                                                                              tmp_path):
    person = Person("Camille", "Roussel")
    login_id = portal.create_professional(email=person.email, password=PASSWORD, first_name="Camille",
                                          last_name="Roussel", finess="280503848")
    page = open_page(portal, name="professional")
    login(page, portal, login_id, PASSWORD, person.email, shots)
    _open_request_form(page)
    shots(page, "access-form")

    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("Attestation de désignation")).first.click()
    template = tmp_path / "attestation-vierge.pdf"
    download.value.save_as(template)
    assert template.read_bytes().startswith(b"%PDF-")

    big = tmp_path / "scan-trop-gros.pdf"
    big.write_bytes(b"%PDF-1.7\n" + b"0" * (13 * 1024 * 1024))
    _fill(page, portal, "Je souhaite accéder et être référent ROR (saisie de l'offre).", big)
    page.get_by_role("button", name="DEMANDER MON INSCRIPTION").click()
    expect(page.get_by_text("Le fichier dépasse 12 Mo.").first).to_be_visible()
    expect(page.get_by_label("Je souhaite accéder et être référent ROR (saisie de l'offre).")).to_be_checked()
    shots(page, "access-too-large")

    signed = tmp_path / "attestation signée.pdf"
    signed.write_bytes(generated_pdf())
    _fill(page, portal, "Je souhaite accéder et être référent ROR (saisie de l'offre).", signed)
    page.get_by_role("button", name="DEMANDER MON INSCRIPTION").click()
    expect(page.get_by_role("heading", name="MERCI !")).to_be_visible()
    expect(page.get_by_text("Nous avons bien réceptionné votre demande")).to_be_visible()
    shots(page, "access-thanks")

    _open_request_form(page)
    photo = tmp_path / "photo-attestation.png"
    photo.write_bytes(png_image(900, 1200))
    _fill(page, portal, re.compile("référent disponibilité des lits \\(saisie du capacitaire\\)"), photo)
    page.get_by_role("button", name="DEMANDER MON INSCRIPTION").click()
    expect(page.get_by_role("heading", name="MERCI !")).to_be_visible()
    logout(page)

    admin = open_page(portal, name="admin")
    login(admin, portal, portal.admin_login, portal.demo_password, portal.admin_email, shots)
    admin.get_by_role("link", name="Administration").click()
    admin.get_by_role("link", name=re.compile("Demandes d'accès")).first.click()
    expect(admin.get_by_role("heading", name="Demandes d'accès (2)")).to_be_visible()
    admin.get_by_role("link", name=re.compile("ROUSSEL Camille")).first.click()
    expect(admin.locator("object[type='application/pdf'], img[alt^='Attestation']").first).to_be_visible()
    shots(admin, "admin-request-preview")
    # The browser's PDF viewer loads out of process and may shift the page under the
    # pointer: decide with the keyboard, as many admins do.
    admin.get_by_role("button", name="Accepter et attribuer le rôle").press("Enter")
    expect(admin.get_by_text("La demande est acceptée")).to_be_visible()
    expect(admin.get_by_role("heading", name="Demandes d'accès (1)")).to_be_visible()
    admin.get_by_role("link", name=re.compile("ROUSSEL Camille")).first.click()
    expect(admin.locator("img[alt^='Attestation']")).to_be_visible()  # the photo, inline
    shots(admin, "admin-photo-preview")
