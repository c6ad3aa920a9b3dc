"""What a person does in the portal, by the French labels and roles they see on screen.

Shared by the journeys (and the ones to come: access requests, SSO, PSC). Every field is
found by its <label> or its role, never by a CSS selector, so that a label that goes
missing or changes fails here as it would fail a screen reader user.
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from email.message import EmailMessage

from playwright.sync_api import Locator, Page, expect
from unidecode import unidecode

from tests.e2e.support import Portal, html_of, login_code_in

MAIN_SUBMIT = "DEMANDER MON INSCRIPTION"
# First acceptance (accounts made by `enrs`) or a newer version.
CGU_HEADINGS = ("Conditions générales d'utilisation", "Nouvelles conditions générales d'utilisation")
GENERATED_RE = re.compile(r"Mot de passe généré : (\S+) \(notez-le")


def label(text: str) -> re.Pattern:
    """A label as shown, maybe followed by the required star: "Nom" matches "Nom *" but
    not "Nom de l'établissement" (Playwright's substring match would)."""
    return re.compile(rf"^\s*{re.escape(text)}(\s*\*)?\s*$")


def starts(text: str) -> re.Pattern:
    return re.compile(rf"^\s*{re.escape(text)}")


@dataclass
class Establishment:
    typed: str      # what the person types in "Établissement d'exercice"
    name: str       # the referential's name, as listed
    finess: str
    city: str
    function: str = "Médecin"
    service: str = "Urgences"


DREUX = Establishment("Jousselin", "CH VICTOR JOUSSELIN DREUX", "280071135", "DREUX")
CHARTRES = Establishment("Pasteur", "CH LOUIS PASTEUR", "280071523", "LE COUDRAY",
                         function="Cadre de santé", service="Pharmacie")
TOURS = Establishment("Bretonneau", "CHU TOURS BRETONNEAU", "370071136", "TOURS",
                      function="Praticien hospitalier", service="Cardiologie")
ORLEANS = Establishment("CHR Orléans", "CHR ORLEANS", "450071139", "ORLEANS",
                        function="Infirmière", service="Réanimation")


@dataclass
class Person:
    first_name: str
    last_name: str
    civility: str = "Madame"
    profession: str = "Médecin"
    email: str = dataclass_field(default="")

    def __post_init__(self) -> None:
        if not self.email:
            first, last = (re.sub(r"[^a-z]+", "-", unidecode(n).lower()).strip("-")
                           for n in (self.first_name, self.last_name))
            # unique per run: the portal of a session keeps every account it was given
            self.email = f"{first}.{last}.{secrets.token_hex(3)}@ch-e2e.fr"

    @property
    def listed_name(self) -> str:
        """How the admin queue names the account: "PETIT Nathalie"."""
        return f"{self.last_name.upper()} {self.first_name}"


# -- registration (J1) ------------------------------------------------------------------------


def open_registration(page: Page, shots) -> None:
    page.goto("/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Bienvenue")
    shots(page, "home")
    page.get_by_role("main").get_by_role("link", name="Créer un compte").click()
    expect(page.get_by_role("heading", name="Créer un compte", level=1)).to_be_visible()


def fill_identity(page: Page, person: Person) -> None:
    page.get_by_label(label("J'accepte les conditions générales d'utilisation")).check()
    page.get_by_label(label("Profession")).select_option(label=person.profession)
    page.get_by_label(label("Civilité")).select_option(label=person.civility)
    page.get_by_label(label("Nom")).fill(person.last_name)
    page.get_by_label(label("Prénom")).fill(person.first_name)
    page.get_by_label(label("Mail pour l'authentification")).fill(person.email)
    page.get_by_label(label("Confirmez le mail pour l'authentification")).fill(person.email)


def establishment_row(page: Page, index: int) -> Locator:
    """The fieldset of the index-th establishment (0: "Informations établissement")."""
    legend = "Informations établissement" if index == 0 else f"Établissement {index + 1}"
    return page.get_by_role("group", name=legend, exact=True)


def establishment_search(row: Locator, *, javascript: bool = True) -> Locator:
    role = "combobox" if javascript else "textbox"
    return row.get_by_role(role, name=starts("Établissement d'exercice"))


def choose_by_autocomplete(page: Page, index: int, establishment: Establishment, shots=None) -> None:
    """Type part of the name, then ArrowDown and Enter on the first suggestion (screenshot
    and audit of the open list when `shots` is given)."""
    row = establishment_row(page, index)
    box = establishment_search(row)
    box.click()
    box.press_sequentially(establishment.typed, delay=20)
    first = row.get_by_role("listbox").get_by_role("option").first
    expect(first).to_contain_text(establishment.name)
    expect(box).to_have_attribute("aria-expanded", "true")
    box.press("ArrowDown")
    expect(first).to_have_attribute("aria-selected", "true")
    if shots:
        shots(page, f"autocomplete-open-{index + 1}")
    box.press("Enter")
    expect_chosen(row, establishment)


def choose_by_search(page: Page, index: int, establishment: Establishment, *, javascript: bool = True) -> None:
    """"Rechercher": the form comes back with the matches as radio buttons."""
    row = establishment_row(page, index)
    establishment_search(row, javascript=javascript).fill(establishment.typed)
    row.get_by_role("button", name="Rechercher").click()
    row = establishment_row(page, index)
    results = row.get_by_role("group", name=starts("Choisissez votre établissement"))
    expect(results).to_be_visible()
    results.get_by_role("radio", name=starts(establishment.name)).check()


def expect_chosen(row: Locator, establishment: Establishment) -> None:
    expect(row.get_by_label(label("FINESS géographique"))).to_have_value(establishment.finess)
    expect(row.get_by_text(establishment.city, exact=True)).to_be_visible()


def fill_function(page: Page, index: int, establishment: Establishment) -> None:
    row = establishment_row(page, index)
    row.get_by_label(label("Type de fonction")).fill(establishment.function)
    row.get_by_label(label("Service d'exercice")).fill(establishment.service)


def add_establishment(page: Page) -> None:
    page.get_by_role("button", name="Ajouter un deuxième établissement").click()
    expect(establishment_row(page, 1)).to_be_visible()


def captcha_field(page: Page) -> Locator:
    return page.get_by_label(label("Quel code est dissimulé dans l'image ?"))


def image_captcha_code(page: Page, portal: Portal) -> str:
    """What the image shows: the server derives it from the challenge id with its key."""
    image = page.get_by_role("img", name=starts("Image du code de sécurité"))
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth > 0"), "the captcha image did not load"
    challenge_id = page.locator("input[name=captcha_id]").input_value()
    return portal.captcha_code(challenge_id)


def solve_image_captcha(page: Page, portal: Portal) -> None:
    captcha_field(page).fill(image_captcha_code(page, portal))


def solve_pow_captcha(page: Page) -> None:
    """Tick the real ALTCHA widget; the browser solves the proof of work."""
    page.get_by_role("checkbox", name="Je suis humain").click()
    expect(page.get_by_text("Vérification réussie")).to_be_visible(timeout=60_000)


def submit_registration(page: Page) -> None:
    page.get_by_role("button", name=MAIN_SUBMIT, exact=True).click()
    expect_registration_sent(page)


def expect_registration_sent(page: Page) -> None:
    expect(page.get_by_role("heading", name="Validez votre adresse mail", level=1)).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Votre demande d'inscription a bien été enregistrée")


def verify_email(page: Page, portal: Portal, person: Person, since: int, shots) -> None:
    """Open "Validation de votre inscription" and its link "Je valide mon adresse mail"."""
    message = portal.receive(person.email, "Validation de votre inscription", since=since)
    show_email(page, message)
    shots(page, "email-validation")
    page.get_by_role("link", name="Je valide mon adresse mail").click()
    expect(page.get_by_role("heading", name="Nous étudions votre demande", level=1)).to_be_visible()
    shots(page, "review-pending")


def register(page: Page, portal: Portal, person: Person, shots,
             establishments: tuple[Establishment, ...] = (DREUX,)) -> None:
    """J1 in short (image captcha, autocomplete), up to "Nous étudions votre demande"."""
    open_registration(page, shots)
    fill_identity(page, person)
    for index, establishment in enumerate(establishments):
        if index == 1:
            add_establishment(page)
        elif index > 1:
            page.get_by_role("button", name="Ajouter un autre établissement").click()
        choose_by_autocomplete(page, index, establishment)
        fill_function(page, index, establishment)
    solve_image_captcha(page, portal)
    shots(page, "registration-filled")
    since = portal.mark()
    submit_registration(page)
    verify_email(page, portal, person, since, shots)


# -- email ------------------------------------------------------------------------------------


def show_email(page: Page, message: EmailMessage) -> None:
    """Display the HTML email in the page, as a webmail would, to click its links."""
    html = html_of(message)
    assert html, f"{message['Subject']!r} has no HTML part"
    page.goto("about:blank")  # not on the portal's origin: its CSP must not apply to the mail
    page.set_content(html)


# -- login (J3) -------------------------------------------------------------------------------


def submit_password(page: Page, username: str, password: str) -> None:
    page.get_by_label(label("Identifiant ou mail pour l'authentification")).fill(username)
    page.get_by_label(label("Mot de passe")).fill(password)
    page.get_by_role("button", name="Se connecter", exact=True).click()


def login(page: Page, portal: Portal, username: str, password: str, email: str, shots=None) -> None:
    """Identifier and password, then the 6-digit code received by mail."""
    page.goto("/login")
    expect(page.get_by_role("heading", name="Veuillez vous authentifier")).to_be_visible()
    since = portal.mark()
    submit_password(page, username, password)
    expect(page.get_by_role("heading", name="Code d'authentification", level=1)).to_be_visible()
    code = login_code_in(portal.receive(email, "Code d'authentification", since=since))
    page.get_by_label(label("Un code vous a été envoyé par mail, entrez-le ici")).fill(code)
    if shots:
        shots(page, f"login-code-{username}")
    page.get_by_role("button", name="Se connecter", exact=True).click()
    heading = page.get_by_role("heading", level=1)
    expect(heading).not_to_have_text("Code d'authentification")
    cgu_heading = heading.inner_text()
    if cgu_heading in CGU_HEADINGS:
        if shots:
            shots(page, f"cgu-{username}")
        page.get_by_label(label("J'accepte les conditions générales d'utilisation")).check()
        page.get_by_role("button", name="Continuer").click()
        expect(heading).not_to_have_text(cgu_heading)
    expect_logged_in(page)


def log_in_as_ror_referent(portal: Portal, open_page, shots, person: Person, password: str) -> Page:
    """A professional of Dreux holding the ROR role (as an approved request leaves it),
    logged in in a browser page of their own: where J7 and J8 start."""
    login_id = portal.create_professional(email=person.email, password=password, first_name=person.first_name,
                                          last_name=person.last_name, finess=DREUX.finess)
    portal.grant_role(person.email, ROR_REFERENT, DREUX.finess)
    page = open_page(portal, name="professional")
    login(page, portal, login_id, password, person.email, shots)
    return page


def logout(page: Page) -> None:
    page.get_by_role("button", name="Se déconnecter").click()
    expect(page.get_by_role("status")).to_contain_text("Vous êtes déconnecté.")


def expect_logged_in(page: Page) -> None:
    menu = page.get_by_role("navigation", name="Menu principal")
    expect(menu.get_by_role("link", name="Mon compte")).to_be_visible()
    expect(menu.get_by_role("button", name="Se déconnecter")).to_be_visible()


# -- keyboard ---------------------------------------------------------------------------------


def is_focused(locator: Locator) -> bool:
    return locator.evaluate("el => el === document.activeElement")


def tab_to(page: Page, target: Locator, *, backwards: bool = False, max_steps: int = 60) -> int:
    """Press Tab (or Shift+Tab) until `target` has the focus; how many presses it took.
    Fails when the target is not reachable by the keyboard within max_steps."""
    key = "Shift+Tab" if backwards else "Tab"
    for step in range(1, max_steps + 1):
        page.keyboard.press(key)
        if is_focused(target):
            return step
    raise AssertionError(f"{target} not reached with {key} in {max_steps} presses")


# -- Mes applications and the demo ROR app (J7) ----------------------------------------------

ROR_APP_NAME = "ROR Centre-Val de Loire"
ROR_REFERENT = "ror_referent_offre"
ROR_REFERENT_LABEL = "Référent ROR (offre de soins)"


def expect_my_apps(page: Page) -> None:
    expect(page.get_by_role("heading", name="Mes applications", level=1)).to_be_visible()


def favourites(page: Page) -> Locator:
    return page.get_by_role("region", name="Mes applications favorites")


def other_apps(page: Page) -> Locator:
    return page.get_by_role("region", name="Autres applications disponibles")


def app_tile(where: Locator, name: str) -> Locator:
    """The tile (list item) whose heading is the application's name."""
    return where.get_by_role("listitem").filter(has=where.page.get_by_role("heading", name=name, exact=True))


def star(page: Page, name: str) -> None:
    """"Ajouter aux favoris" on the tile: it moves up to "Mes applications favorites"."""
    app_tile(other_apps(page), name).get_by_role("button", name=starts("Ajouter aux favoris")).click()
    expect(page.get_by_role("status")).to_contain_text(f"« {name} » est ajoutée à vos applications favorites.")
    expect(app_tile(favourites(page), name)).to_be_visible()
    expect(app_tile(other_apps(page), name)).to_have_count(0)


def open_app(page: Page, name: str) -> None:
    page.get_by_role("link", name=f"Accéder à {name}", exact=True).click()


def expect_ror_welcome(page: Page, first_name: str, last_name: str, establishment: Establishment) -> None:
    """The demo ROR app's home, signed in with the portal's claims."""
    expect(page.get_by_role("heading", level=1)).to_have_text(
        re.compile(rf"^Bienvenue {re.escape(first_name)} {re.escape(last_name)}$", re.IGNORECASE))
    roles = page.get_by_role("region", name="Vos rôles dans le ROR")
    expect(roles.get_by_role("listitem")).to_contain_text(ROR_REFERENT_LABEL)
    expect(roles).to_contain_text(f"FINESS {establishment.finess}")
    expect(page.get_by_role("button", name="Se déconnecter")).to_be_visible()


def expect_ror_signed_out(page: Page, timeout_s: float = 10.0) -> None:
    """Reload the ROR app's page until it shows its sign-in invitation: the portal posts
    the back-channel logout just after answering the logout, from its delivery thread."""
    invitation = page.get_by_role("link", name="Se connecter avec le portail")
    deadline = time.monotonic() + timeout_s
    while True:
        page.reload()
        if invitation.is_visible():
            break
        assert time.monotonic() < deadline, "the ROR app's session is still open after the portal's logout"
        page.wait_for_timeout(250)
    expect(page.get_by_role("heading", name=starts("Bienvenue"))).to_have_count(0)
