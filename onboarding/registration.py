"""J1 "Créer un compte": CGU, profession, identity, contacts, establishments, captcha,
then the email verification link ("Je valide mon adresse mail")."""
from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from wtforms import BooleanField, FieldList, Form, FormField, StringField
from wtforms.validators import ValidationError

from idp import identity
from idp.models import (
    CIVILITIES,
    STATUS_ACTIVE,
    STATUS_EMAIL_PENDING,
    STATUS_REVIEW_PENDING,
    User,
    UserEstablishment,
)
from idp.psc.views import forget_pending, link_after_registration, pending_identity
from idp.tokens import (
    PURPOSE_VERIFY_EMAIL,
    LinkError,
    consume_link,
    make_link_token,
    read_link_token,
)
from onboarding import captcha
from onboarding.approval import (
    ResendForm,
    activate,
    invalid_link_page,
    send_credentials,
)
from onboarding.finess import is_valid_finess
from onboarding.referentials import (
    get_establishment,
    professions,
    search_establishments,
)
from portal import audit
from portal.cgu import current_cgu
from portal.clock import now
from portal.config import current_settings
from portal.db import db
from portal.mail import queue_mail
from portal.security import external_url, limiter

log = logging.getLogger("enrs.registration")

bp = Blueprint("registration", __name__)

MAX_ESTABLISHMENTS = 5
REQUIRED = "Ce champ est obligatoire."


def _max(length: int):
    def check(form, field):
        if field.data and len(field.data) > length:
            raise ValidationError(f"{length} caractères au maximum.")
    return check


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class EstablishmentForm(Form):
    """One "Établissement d'exercice" row (establishments-N-…)."""

    query = StringField("Établissement d'exercice", filters=[_strip], validators=[_max(200)])
    finess = StringField("FINESS géographique", filters=[_strip], validators=[_max(20)])
    function_type = StringField("Type de fonction", filters=[_strip], validators=[_max(100)])
    service = StringField("Service d'exercice", filters=[_strip], validators=[_max(150)])
    not_listed = BooleanField("Mon établissement n'est pas référencé dans la liste")
    name = StringField("Nom de l'établissement", filters=[_strip], validators=[_max(255)])
    postal_code = StringField("Code postal", filters=[_strip], validators=[_max(10)])
    city = StringField("Ville", filters=[_strip], validators=[_max(100)])


class RegistrationForm(FlaskForm):
    cgu = BooleanField("J'accepte les conditions générales d'utilisation")
    # Rendered as <select> by the template (choices below); checked in check_registration.
    profession = StringField("Profession", filters=[_strip])
    profession_other = StringField("Indiquez votre profession exacte", filters=[_strip], validators=[_max(100)])
    specialty = StringField("Spécialité", filters=[_strip], validators=[_max(100)])
    civility = StringField("Civilité", filters=[_strip])
    last_name = StringField("Nom", filters=[_strip], validators=[_max(100)])
    first_name = StringField("Prénom", filters=[_strip], validators=[_max(100)])
    national_id = StringField("Identifiant national (RPPS ou ADELI)", filters=[_strip], validators=[_max(20)])
    phone_pro = StringField("Téléphone professionnel", filters=[_strip], validators=[_max(32)])
    phone_mobile = StringField("Téléphone mobile", filters=[_strip], validators=[_max(32)])
    email = StringField("Mail pour l'authentification", filters=[_strip], validators=[_max(254)])
    email_confirm = StringField("Confirmez le mail pour l'authentification", filters=[_strip], validators=[_max(254)])
    contact_email = StringField("Mail pour la communication", filters=[_strip], validators=[_max(254)])
    establishments = FieldList(FormField(EstablishmentForm), min_entries=1, max_entries=MAX_ESTABLISHMENTS)


def profession_choices() -> list[tuple[str, str]]:
    return [("", "Choisir une profession")] + [(p.code, p.label) for p in professions()]


CIVILITY_CHOICES = [("", "Choisir")] + list(CIVILITIES.items())


class Registration:
    """What a valid form says, checked and normalised."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}
        self.values: dict[str, object] = {}
        self.establishments: list[dict[str, object]] = []


def _error(reg: Registration, field, message: str) -> None:
    reg.errors.setdefault(field.id, message)
    if message not in field.errors:
        field.errors = list(field.errors) + [message]


def check_registration(session: Session, form: RegistrationForm) -> Registration:
    """Every rule of J1, each failure attached to its field in French."""
    reg = Registration()
    settings = current_settings()
    form.validate()  # length checks; the rules below need the cross-field view
    for field in form:
        if field.errors and field.name != "establishments":
            reg.errors.setdefault(field.id, field.errors[0])

    if not form.cgu.data:
        _error(reg, form.cgu, "Vous devez accepter les conditions générales d'utilisation.")

    codes = {p.code for p in professions()}
    if not form.profession.data:
        _error(reg, form.profession, "Veuillez choisir votre profession.")
    elif form.profession.data not in codes:
        _error(reg, form.profession, "Cette profession n'existe pas dans la liste.")
    elif form.profession.data == "autre" and not form.profession_other.data:
        _error(reg, form.profession_other, "Indiquez votre profession exacte.")

    if form.civility.data and form.civility.data not in CIVILITIES:
        _error(reg, form.civility, "Civilité inconnue.")
    for field in (form.last_name, form.first_name):
        if not field.data:
            _error(reg, field, REQUIRED)

    vouched = psc_identity()
    if vouched is not None and vouched.national_id:
        # Pro Santé Connect vouched for it (test identities need not look like an RPPS).
        nid = (vouched.national_id, vouched.national_id_type or "psc")
    else:
        try:
            nid = identity.national_id(form.national_id.data or "")
        except ValueError as exc:
            _error(reg, form.national_id, str(exc))
            nid = None

    phones = {}
    for field in (form.phone_pro, form.phone_mobile):
        try:
            phones[field.name] = identity.phone(field.data or "")
        except ValueError as exc:
            _error(reg, field, str(exc))

    email = None
    try:
        email = identity.authentication_email(form.email.data or "", settings.generic_mailboxes)
    except identity.InvalidEmail as exc:
        _error(reg, form.email, str(exc))
    if not form.email_confirm.data:
        _error(reg, form.email_confirm, "Veuillez saisir une seconde fois le mail pour l'authentification.")
    elif email is not None:
        try:
            confirmed = identity.normalise_email(form.email_confirm.data)
        except identity.InvalidEmail:
            confirmed = None
        if confirmed != email:
            _error(reg, form.email_confirm, "Les deux adresses mail ne sont pas identiques.")

    contact = None
    if form.contact_email.data:
        try:
            contact = identity.normalise_email(form.contact_email.data)
        except identity.InvalidEmail as exc:
            _error(reg, form.contact_email, str(exc))

    for row in form.establishments:
        reg.establishments.append(check_establishment(session, reg, row.form))

    reg.values = {
        "email": email,
        "contact_email": contact,
        "national_id": nid,
        "phones": phones,
    }
    return reg


def check_establishment(session: Session, reg: Registration, row: EstablishmentForm) -> dict[str, object]:
    for field in row:
        if field.errors:
            reg.errors.setdefault(field.id, field.errors[0])
    values: dict[str, object] = {"not_listed": bool(row.not_listed.data)}
    for field in (row.function_type, row.service):
        if not field.data:
            _error(reg, field, REQUIRED)
    values["function_type"] = row.function_type.data
    values["service"] = row.service.data
    finess = (row.finess.data or "").replace(" ", "").upper()

    if row.not_listed.data:
        if not row.name.data:
            _error(reg, row.name, "Indiquez le nom de votre établissement.")
        postal = (row.postal_code.data or "").replace(" ", "")
        if not postal:
            _error(reg, row.postal_code, REQUIRED)
        elif not (len(postal) == 5 and postal.isdigit()):
            _error(reg, row.postal_code, "Le code postal doit comporter 5 chiffres.")
        if not row.city.data:
            _error(reg, row.city, REQUIRED)
        if finess and not is_valid_finess(finess):
            _error(reg, row.finess, "Le numéro FINESS n'est pas valide (9 caractères, clé de contrôle).")
        elif finess and (listed := get_establishment(session, finess)) is not None:
            # Its name and département come from the directory, never from what is typed: the
            # département decides which admins review the requests made for it.
            _error(reg, row.finess, "Cet établissement est fermé dans le répertoire FINESS." if listed.closed_at
                   else "Cet établissement est référencé : décochez « Mon établissement n'est pas référencé dans "
                        "la liste » et choisissez-le dans la liste.")
        values.update(
            finess=finess or None, name=row.name.data, postal_code=postal, city=(row.city.data or "").upper(),
            department=_department_of_postal_code(postal),
        )
        return values

    if not finess:
        _error(reg, row.query, "Choisissez votre établissement dans la liste, ou cochez « Mon établissement "
                               "n'est pas référencé dans la liste ».")
        return values
    if not is_valid_finess(finess):
        _error(reg, row.finess, "Le numéro FINESS n'est pas valide (9 caractères, clé de contrôle).")
        return values
    establishment = get_establishment(session, finess)
    if establishment is None or establishment.closed_at is not None:
        _error(reg, row.finess, "Cet établissement n'est pas dans le répertoire FINESS. Vérifiez le numéro ou cochez "
                                "« Mon établissement n'est pas référencé dans la liste ».")
        return values
    values.update(
        finess=establishment.finess, name=establishment.name, postal_code=establishment.postal_code,
        city=establishment.city, department=establishment.department_code,
    )
    row.query.data = establishment.name
    return values


def _department_of_postal_code(postal: str) -> str | None:
    if len(postal) != 5 or not postal.isdigit():
        return None
    if postal.startswith("97"):
        return postal[:3]
    if postal.startswith("20"):
        return "2A" if int(postal) < 20200 else "2B"
    return postal[:2]


# -- persistence --------------------------------------------------------------------------


def create_registration(session: Session, form: RegistrationForm, reg: Registration) -> User | None:
    """Store the request and queue the verification mail, or, when the address already has
    an account, email its owner instead: the page shown is the same either way. Returns
    the new account (None for an address already known)."""
    email = str(reg.values["email"])
    existing = session.scalar(sa.select(User).where(User.email == email))
    if existing is not None:
        _notify_existing_owner(session, existing)
        session.commit()
        return None

    cgu = current_cgu(session)
    nid = reg.values["national_id"]
    phones = reg.values["phones"]
    user = User(
        email=email,
        contact_email=reg.values["contact_email"],
        status=STATUS_EMAIL_PENDING,
        civility=form.civility.data or None,
        first_name=form.first_name.data,
        last_name=form.last_name.data.upper(),
        profession_code=form.profession.data,
        profession_other=(form.profession_other.data or None) if form.profession.data == "autre" else None,
        specialty=form.specialty.data or None,
        national_id=nid[0] if nid else None,
        national_id_type=nid[1] if nid else None,
        phone_pro=phones.get("phone_pro"),
        phone_mobile=phones.get("phone_mobile"),
        cgu_version_id=cgu.id if cgu else None,
        cgu_accepted_at=now(),
        created_at=now(),
    )
    for position, values in enumerate(reg.establishments):
        user.establishments.append(UserEstablishment(position=position, **values))
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        # Another submission with the same address won the race: behave as a duplicate.
        session.rollback()
        existing = session.scalar(sa.select(User).where(User.email == email))
        if existing is not None:
            _notify_existing_owner(session, existing)
            session.commit()
        return None
    audit.record(session, "account.register", actor_id=user.id, actor_label=email,
                 target_type="user", target_id=user.id,
                 details={"establishments": [e.get("finess") or e.get("name") for e in reg.establishments]})
    send_verification(session, user)
    # "Je n'ai pas de compte" after Pro Santé Connect: the new account carries the link
    # (it still needs its email verified and, by default, an admin's approval).
    link_after_registration(session, user)
    session.commit()
    return user


def send_verification(session: Session, user: User) -> None:
    link = external_url("registration.verify", token=make_link_token(user, PURPOSE_VERIFY_EMAIL))
    queue_mail(session, user.email, "Validation de votre inscription", "registration_verify",
               user=user, link=link)


def _notify_existing_owner(session: Session, user: User) -> None:
    audit.record(session, "account.register_duplicate", target_type="user", target_id=user.id)
    if user.status == STATUS_EMAIL_PENDING:
        send_verification(session, user)
        return
    queue_mail(session, user.email, "Tentative d'inscription avec votre adresse", "registration_existing",
               user=user, login_url=external_url("login.login"), reset_url=external_url("reset.request_reset"))


# -- views ----------------------------------------------------------------------------------


@bp.route("/register", methods=["GET", "POST"])
# Searches and "add a row" are POSTs too, hence a roomy limit per address.
@limiter.limit("60 per hour", methods=["POST"])
def register():
    session = db.session
    form = RegistrationForm()
    captcha_error = None
    reg = None
    search_results: dict[int, list] = {}
    action = request.form.get("action") if request.method == "POST" else None
    if request.method == "POST" and captcha.refresh_requested(request.form):
        action = "refresh_captcha"  # "Nouvelle image" without JavaScript: the same form, another image

    vouched = psc_identity()
    unknown_sites: list[str] = []
    if vouched is not None:
        unknown_sites = apply_psc_identity(session, form, vouched, first_visit=request.method == "GET")
    if request.method == "POST":
        apply_search_choices(form)
        if action == "refresh_captcha":
            log.debug("captcha image refreshed without JavaScript")
        elif action == "add_establishment" and len(form.establishments) < MAX_ESTABLISHMENTS:
            form.establishments.append_entry()
        elif action and action.startswith("remove_establishment-") and len(form.establishments) > 1:
            _remove_row(form, action)
        elif action and action.startswith("search-"):
            index = row_index(action, len(form.establishments))
            if index is not None:
                query = form.establishments[index].form.query.data or ""
                search_results[index] = search_establishments(session, query, 10)
        else:  # "DEMANDER MON INSCRIPTION", or Enter in a field
            # The captcha is spent in a transaction of its own, so that an answer works
            # once even when the rest of the form is refused: end ours first.
            session.commit()
            captcha_error = captcha.verify(session, request.form)
            reg = check_registration(session, form)
            if not reg.errors and captcha_error is None:
                create_registration(session, form, reg)
                forget_pending()
                return redirect(url_for("registration.sent"), code=303)
            log.info("registration refused: %s", sorted(reg.errors))

    chosen = chosen_establishments(session, form)
    challenge = captcha.new_challenge(session)
    session.commit()
    errors = reg.errors if reg else {}
    if captcha_error:
        errors = {**errors, "captcha_answer": captcha_error}
    status = 422 if errors else 200
    return render_template(
        "onboarding/register.html",
        form=form,
        errors=errors,
        captcha=challenge,
        captcha_error=captcha_error,
        search_results=search_results,
        chosen=chosen,
        profession_choices=profession_choices(),
        civility_choices=CIVILITY_CHOICES,
        cgu=current_cgu(session),
        max_establishments=MAX_ESTABLISHMENTS,
        psc_identity=vouched,
        psc_unknown_sites=unknown_sites,
    ), status


def psc_identity():
    """The Pro Santé Connect identity of "Je n'ai pas de compte", when there is one."""
    pending = pending_identity()
    return pending[1] if pending else None


def apply_psc_identity(session: Session, form: RegistrationForm, vouched, *, first_visit: bool) -> list[str]:
    """What PSC vouches for is imposed (the fields are read-only, and a forged value is
    overwritten); the profession and the establishments are only suggested. Returns the
    FINESS numbers PSC sent that the referential does not know."""
    if vouched.family_name:
        form.last_name.data = vouched.family_name
    if vouched.given_name:
        form.first_name.data = vouched.given_name
    if vouched.national_id:
        form.national_id.data = vouched.national_id
    unknown = [finess for finess in vouched.finess_sites if get_establishment(session, finess) is None]
    if first_visit:
        if vouched.profession_code and vouched.profession_code in {p.code for p in professions()}:
            form.profession.data = vouched.profession_code
        known = [finess for finess in vouched.finess_sites if finess not in unknown][:MAX_ESTABLISHMENTS]
        for index, finess in enumerate(known):
            if index >= len(form.establishments):
                form.establishments.append_entry()
            form.establishments[index].form.finess.data = finess
    return unknown


def apply_search_choices(form: RegistrationForm) -> None:
    """Without JavaScript, the establishment is picked among search results (radios)."""
    for index, row in enumerate(form.establishments):
        choice = request.form.get(f"establishments-{index}-choice", "").strip()
        if choice:
            row.form.finess.data = choice


def chosen_establishments(session: Session, form: RegistrationForm) -> dict[int, object]:
    """The referential entry of each row whose FINESS is known, to show its address."""
    chosen = {}
    for index, row in enumerate(form.establishments):
        finess = (row.form.finess.data or "").replace(" ", "").upper()
        if not row.form.not_listed.data and is_valid_finess(finess):
            establishment = get_establishment(session, finess)
            if establishment is not None:
                chosen[index] = establishment
                row.form.finess.data = finess
                if not row.form.query.data:
                    row.form.query.data = establishment.name
    return chosen


def row_index(action: str, count: int) -> int | None:
    try:
        index = int(action.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None
    return index if 0 <= index < count else None


def _remove_row(form: RegistrationForm, action: str) -> None:
    index = row_index(action, len(form.establishments))
    if index is None:
        return
    kept = [entry.data for i, entry in enumerate(form.establishments) if i != index]
    while len(form.establishments):
        form.establishments.pop_entry()
    for data in kept:
        form.establishments.append_entry(data)


@bp.get("/register/sent")
def sent():
    return render_template("onboarding/register_sent.html")


@bp.get("/register/verify/<token>")
def verify(token: str):
    session = db.session
    try:
        claim = read_link_token(session, token, PURPOSE_VERIFY_EMAIL)
        if claim.user.status != STATUS_EMAIL_PENDING:
            raise LinkError("used", claim.user)
        consume_link(session, claim)
    except LinkError as exc:
        session.rollback()
        if exc.user is not None and exc.user.status in (STATUS_REVIEW_PENDING, STATUS_ACTIVE):
            # A mail scanner or a second click: the address is verified already.
            return render_template("onboarding/review_pending.html", already=True)
        return invalid_link_page(exc.reason)
    user = claim.user
    user.email_verified_at = now()
    audit.record(session, "account.email_verified", actor_id=user.id, actor_label=user.email,
                 target_type="user", target_id=user.id)
    if current_settings().account_approval == "none":
        activate(session, user, reviewer=None)
        session.commit()
        return render_template("onboarding/activated_by_email.html", user=user)
    user.status = STATUS_REVIEW_PENDING
    queue_mail(session, user.email, "Nous étudions votre demande", "registration_review_pending", user=user)
    session.commit()
    return render_template("onboarding/review_pending.html", already=False)


@bp.route("/register/resend", methods=["GET", "POST"])
@limiter.limit("5 per hour", methods=["POST"])
def resend():
    """A new verification or activation link, with the same answer whatever the address."""
    session = db.session
    form = ResendForm()
    if request.method == "POST" and form.validate():
        try:
            email = identity.normalise_email(form.email.data or "")
        except identity.InvalidEmail as exc:
            form.email.errors = [str(exc)]
        else:
            user = session.scalar(sa.select(User).where(User.email == email))
            if user is not None and user.status == STATUS_EMAIL_PENDING:
                send_verification(session, user)
            elif user is not None and user.status == STATUS_ACTIVE and user.password_hash is None:
                send_credentials(session, user)
            audit.record(session, "account.link_resend", target_type="user",
                         target_id=user.id if user else None, details={"known": user is not None})
            session.commit()
            flash("Si cette adresse correspond à une inscription en cours, un nouveau lien vient de lui être envoyé.",
                  "success")
            return redirect(url_for("registration.resend"), code=303)
    return render_template("onboarding/resend.html", form=form), (422 if form.errors else 200)


