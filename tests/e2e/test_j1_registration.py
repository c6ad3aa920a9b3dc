"""J1 "Créer un compte" in a real browser: with the mouse (on a desktop and on a 390×844
phone), with the proof-of-work captcha, with the keyboard only, and without JavaScript;
each up to "Nous étudions votre demande" through the link of the email."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.steps import (
    CHARTRES,
    DREUX,
    MAIN_SUBMIT,
    ORLEANS,
    TOURS,
    Person,
    add_establishment,
    captcha_field,
    choose_by_autocomplete,
    choose_by_search,
    establishment_row,
    establishment_search,
    expect_chosen,
    expect_registration_sent,
    fill_function,
    fill_identity,
    image_captcha_code,
    label,
    open_registration,
    show_email,
    solve_image_captcha,
    solve_pow_captcha,
    starts,
    submit_registration,
    tab_to,
    verify_email,
)


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_registration_with_two_establishments_and_image_captcha(portal, open_page, shots, device):
    person = Person("Nathalie", "Petit")
    page = open_page(portal)
    open_registration(page, shots)
    # Sent empty first: the error summary lists each field to fix, as links to it.
    page.get_by_role("button", name=MAIN_SUBMIT, exact=True).click()
    summary = page.get_by_role("alert").filter(has=page.get_by_role("heading", name=starts("Le formulaire contient")))
    expect(summary).to_be_visible()
    expect(summary.get_by_role("link").first).to_be_visible()
    shots(page, "empty-form-errors")
    fill_identity(page, person)

    # First establishment: the autocomplete (type part of the name, ArrowDown, Enter).
    choose_by_autocomplete(page, 0, DREUX, shots)
    fill_function(page, 0, DREUX)
    shots(page, "first-establishment")

    # A second one: the form comes back with a second row, everything typed kept.
    add_establishment(page)
    expect(page.get_by_label(label("Mail pour l'authentification"))).to_have_value(person.email)
    expect_chosen(establishment_row(page, 0), DREUX)
    # Its establishment through "Rechercher" (the server lists matches as radio buttons).
    choose_by_search(page, 1, TOURS)
    shots(page, "second-establishment-search")
    fill_function(page, 1, TOURS)

    solve_image_captcha(page, portal)
    shots(page, "filled")
    since = portal.mark()
    submit_registration(page)
    shots(page, "sent")
    verify_email(page, portal, person, since, shots)


def test_registration_with_proof_of_work(pow_portal, open_page, shots):
    portal = pow_portal
    person = Person("Julien", "Moreau", civility="Monsieur", profession="Infirmier")
    page = open_page(portal)
    open_registration(page, shots)
    fill_identity(page, person)
    choose_by_autocomplete(page, 0, CHARTRES)
    fill_function(page, 0, CHARTRES)
    add_establishment(page)
    choose_by_autocomplete(page, 1, ORLEANS)
    fill_function(page, 1, ORLEANS)

    expect(page.get_by_role("group", name="Vérification anti-robot")).to_be_visible()
    solve_pow_captcha(page)
    shots(page, "pow-verified")
    since = portal.mark()
    submit_registration(page)
    shots(page, "sent")
    verify_email(page, portal, person, since, shots)


def test_registration_with_the_keyboard_only(portal, open_page, shots):
    """Tab / Shift+Tab / Space / Enter / arrows and typing: no click anywhere."""
    person = Person("Camille", "Leroy")
    page = open_page(portal)
    keyboard = page.keyboard
    page.goto("/")
    shots(page, "home")
    nav_link = page.get_by_role("navigation", name="Menu principal").get_by_role("link", name="Créer un compte")
    tab_to(page, nav_link)
    keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Créer un compte", level=1)).to_be_visible()

    # From the top of the page, the first field is the CGU box; then each field in order.
    cgu = page.get_by_label(label("J'accepte les conditions générales d'utilisation"))
    tab_to(page, cgu)
    keyboard.press("Space")
    expect(cgu).to_be_checked()

    profession = page.get_by_label(label("Profession"))
    tab_to(page, profession)
    keyboard.type("Sage")  # type-ahead in a closed <select>
    expect(profession.locator("option:checked")).to_have_text("Sage-Femme")

    civility = page.get_by_label(label("Civilité"))
    tab_to(page, civility)
    keyboard.press("ArrowDown")
    keyboard.press("ArrowDown")
    expect(civility.locator("option:checked")).to_have_text("Madame")

    for text, value in (("Nom", person.last_name), ("Prénom", person.first_name),
                        ("Mail pour l'authentification", person.email),
                        ("Confirmez le mail pour l'authentification", person.email)):
        tab_to(page, page.get_by_label(label(text)), max_steps=6)
        keyboard.type(value)

    row = establishment_row(page, 0)
    box = establishment_search(row)
    tab_to(page, box, max_steps=6)
    keyboard.type(DREUX.typed)
    expect(row.get_by_role("option").first).to_contain_text(DREUX.name)
    keyboard.press("ArrowDown")
    keyboard.press("Enter")
    expect_chosen(row, DREUX)
    # "Rechercher" then FINESS come next; the function fields follow.
    tab_to(page, row.get_by_label(label("Type de fonction")), max_steps=4)
    keyboard.type(DREUX.function)
    keyboard.press("Tab")
    keyboard.type(DREUX.service)
    shots(page, "first-establishment")

    add = page.get_by_role("button", name="Ajouter un deuxième établissement")
    tab_to(page, add, max_steps=4)
    keyboard.press("Enter")
    row = establishment_row(page, 1)
    expect(row).to_be_visible()
    # The page came back with the new row: down to "Ajouter un autre établissement",
    # under it, then Shift+Tab up into the row.
    box = establishment_search(row)
    tab_to(page, page.get_by_role("button", name="Ajouter un autre établissement"), max_steps=80)
    tab_to(page, box, backwards=True, max_steps=12)
    keyboard.type(CHARTRES.typed)
    expect(row.get_by_role("option").first).to_contain_text(CHARTRES.name)
    keyboard.press("ArrowDown")
    keyboard.press("Enter")
    expect_chosen(row, CHARTRES)
    tab_to(page, row.get_by_label(label("Type de fonction")), max_steps=4)
    keyboard.type(CHARTRES.function)
    keyboard.press("Tab")
    keyboard.type(CHARTRES.service)

    code = image_captcha_code(page, portal)
    tab_to(page, captcha_field(page), max_steps=10)
    keyboard.type(code)
    shots(page, "filled")
    submit = page.get_by_role("button", name=MAIN_SUBMIT, exact=True)
    tab_to(page, submit, max_steps=3)
    since = portal.mark()
    keyboard.press("Enter")
    expect_registration_sent(page)
    shots(page, "sent")

    # The email's link, reached with Tab and opened with Enter.
    message = portal.receive(person.email, "Validation de votre inscription", since=since)
    show_email(page, message)
    tab_to(page, page.get_by_role("link", name="Je valide mon adresse mail"), max_steps=5)
    keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Nous étudions votre demande", level=1)).to_be_visible()
    shots(page, "review-pending")


def test_registration_without_javascript(portal, open_page, shots):
    person = Person("Hugo", "Lambert", civility="Monsieur", profession="Pharmacien")
    page = open_page(portal, javascript=False)
    open_registration(page, shots)
    fill_identity(page, person)

    # Without the script, "Établissement d'exercice" is a plain text field and
    # "Rechercher" asks the server, which lists the matches as radio buttons.
    row = establishment_row(page, 0)
    expect(row.get_by_role("combobox")).to_have_count(0)
    choose_by_search(page, 0, DREUX, javascript=False)
    shots(page, "search-results")
    fill_function(page, 0, DREUX)

    solve_image_captcha(page, portal)
    shots(page, "filled")
    since = portal.mark()
    submit_registration(page)
    shots(page, "sent")
    verify_email(page, portal, person, since, shots)
