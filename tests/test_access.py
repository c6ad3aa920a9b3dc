"""J5–J6: a professional asks for the ROR with a signed attestation; an admin of the
establishment's département reviews it and grants the role."""
from __future__ import annotations

import io
import re
import threading
from html import unescape

import pytest
import sqlalchemy as sa

from tests.attestation_samples import generated_pdf, png_image
from tests.conftest import body_text
from tests.journeys import captcha_answer, csrf, error_for, field_value, login

PASSWORD = "Hopital-Dreux-2026"
EMAIL = "nathalie.dupont@esante-test.fr"
ADMIN_PASSWORD = "Console-Region-2026!"


@pytest.fixture
def portal(app):
    from onboarding.accounts import create_admin, create_professional
    from onboarding.finess import load_demo_establishments
    from portal.db import db

    with app.app_context():
        load_demo_establishments(db.session)
        create_professional(db.session, email=EMAIL, password=PASSWORD, first_name="Nathalie", last_name="Dupont",
                            profession="10", finess="280503848")
        create_admin(db.session, email="admin.centre@esante-test.fr", first_name="Paul", last_name="Bernard",
                     role="regional_admin", departments=["28", "37"], actor=None, password=ADMIN_PASSWORD)
        create_admin(db.session, email="admin.idf@esante-test.fr", first_name="Lucie", last_name="Moreau",
                     role="regional_admin", departments=["75"], actor=None, password=ADMIN_PASSWORD)
        db.session.commit()
    return app


@pytest.fixture
def professional(portal, mailbox):
    client = portal.test_client()
    assert login(client, mailbox, "ndupont", PASSWORD, EMAIL).status_code == 303
    mailbox.clear()
    return client


def admin(portal, mailbox, username, email):
    client = portal.test_client()
    assert login(client, mailbox, username, ADMIN_PASSWORD, email).status_code == 303
    return client


def submit(portal, client, content: bytes, filename: str, **fields):
    page = client.get("/access/ror").get_data(as_text=True)
    data = {"csrf_token": csrf(page), **captcha_answer(portal, page), "request_type": "offre_new",
            "establishment": "280503848", **fields}
    if content is not None:
        data["attestation"] = (io.BytesIO(content), filename)
    return client.post("/access/ror", data=data, content_type="multipart/form-data")


def requests_of(portal):
    from onboarding.models import AccessRequest
    from portal.db import db

    with portal.app_context():
        return db.session.scalars(sa.select(AccessRequest).order_by(AccessRequest.id)).all()


def test_professional_requests_ror_access_with_a_pdf(portal, professional, mailbox):
    page = unescape(professional.get("/access/ror").get_data(as_text=True))
    for text in ["Quelle est votre demande", "Je souhaite accéder et être référent ROR (saisie de l'offre).",
                 "Je suis déjà habilité en tant que référent disponibilité des lits",
                 "Téléchargez l'attestation de désignation", "Déposer l'attestation",
                 "1 seul fichier. Limité à 12 Mo. Types autorisés : .jpg, .jpeg, .png, .pdf.", "DEMANDER MON INSCRIPTION"]:
        assert text in page, text
    pdf = generated_pdf()
    response = submit(portal, professional, pdf, "attestation signée.pdf")
    assert response.status_code == 303 and response.headers["Location"].endswith("/access/ror/merci")
    thanks = professional.get("/access/ror/merci").get_data(as_text=True)
    assert "MERCI !" in thanks and "Nous avons bien réceptionné votre demande" in thanks

    [item] = requests_of(portal)
    assert (item.status, item.role, item.finess, item.department) == ("pending", "ror_referent_offre", "280503848", "28")
    assert item.attestation_name == "attestation signée.pdf" and item.attestation_type == "application/pdf"
    assert item.attestation_size == len(pdf)
    import hashlib

    assert item.attestation_sha256 == hashlib.sha256(pdf).hexdigest()
    from portal.storage import store_for

    with portal.app_context():
        assert b"".join(store_for().iter_chunks(item.attestation_key)) == pdf
    assert "Demande d'accès au ROR reçue" in mailbox.last(EMAIL)["Subject"]
    follow = professional.get("/access/").get_data(as_text=True)
    assert "En attente de validation" in follow


def test_professional_requests_access_with_a_photo(portal, professional):
    response = submit(portal, professional, png_image(800, 600), "photo.png", request_type="lits_new")
    assert response.status_code == 303
    [item] = requests_of(portal)
    assert item.role == "ror_referent_lits" and item.attestation_type == "image/png"


def test_the_attestation_template_is_a_prefilled_pdf(portal, professional):
    from pypdf import PdfReader

    response = professional.get("/access/ror/attestation.pdf?establishment=280503848&request_type=lits_new")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert "attachment" in response.headers["Content-Disposition"]
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(response.data)).pages)
    for expected in ["Nathalie DUPONT", "280503848", "AIRBP IRC DREUX", "Signature et cachet du directeur"]:
        assert expected in text, expected


def test_a_13_megabyte_file_brings_the_form_back_with_a_french_message(portal, professional):
    response = submit(portal, professional, b"%PDF-1.7\n" + b"0" * (13 * 1024 * 1024), "gros.pdf",
                      request_type="lits_new")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert error_for(html, "attestation") == "Le fichier dépasse 12 Mo."
    assert re.search(r'value="lits_new"[^>]*checked', html)  # nothing typed is lost
    assert requests_of(portal) == []


@pytest.mark.parametrize("content, filename", [
    (None, None),
    (png_image(), "photo.pdf"),
    (b"MZ\x90\x00" + b"\x00" * 200, "virus.pdf"),
    (b"", "vide.pdf"),
])
def test_missing_or_wrong_attestations_are_refused_next_to_the_field(portal, professional, content, filename):
    response = submit(portal, professional, content, filename)
    assert response.status_code == 422
    assert error_for(response.get_data(as_text=True), "attestation")
    assert requests_of(portal) == []


def test_an_establishment_that_is_not_the_users_is_refused(portal, professional):
    response = submit(portal, professional, generated_pdf(), "a.pdf", establishment="370071136")
    assert error_for(response.get_data(as_text=True), "establishment") == "Choisissez l'un de vos établissements."


def test_a_second_pending_request_for_the_same_role_is_refused(portal, professional):
    assert submit(portal, professional, generated_pdf(), "a.pdf").status_code == 303
    again = submit(portal, professional, generated_pdf(), "b.pdf")
    assert again.status_code == 422
    assert "déjà une demande en attente" in error_for(again.get_data(as_text=True), "request_type")
    assert submit(portal, professional, generated_pdf(), "c.pdf", request_type="lits_new").status_code == 303


def test_the_user_cancels_a_pending_request(portal, professional, mailbox):
    submit(portal, professional, generated_pdf(), "a.pdf")
    [item] = requests_of(portal)
    page = professional.get("/access/").get_data(as_text=True)
    assert professional.post(f"/access/{item.id}/cancel", data={"csrf_token": csrf(page)}).status_code == 303
    assert requests_of(portal)[0].status == "cancelled"
    assert professional.post(f"/access/{item.id}/cancel", data={"csrf_token": csrf(page)}).status_code == 404


def test_admin_of_the_region_approves_and_the_role_is_granted(portal, professional, mailbox):
    submit(portal, professional, generated_pdf(), "attestation.pdf")
    [item] = requests_of(portal)
    centre = admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    queue = centre.get("/admin/requests").get_data(as_text=True)
    assert "Demandes d'accès (1)" in queue and "DUPONT Nathalie" in queue
    page = centre.get(f"/admin/requests/{item.id}").get_data(as_text=True)
    assert "AIRBP IRC DREUX" in page and f"/admin/requests/{item.id}/attestation" in page
    assert "object-src 'self'" in centre.get(f"/admin/requests/{item.id}").headers["Content-Security-Policy"]

    inline = centre.get(f"/admin/requests/{item.id}/attestation")
    assert inline.status_code == 200 and inline.mimetype == "application/pdf"
    assert inline.headers["Content-Disposition"].startswith("inline")
    assert inline.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in inline.headers["Content-Security-Policy"]
    download = centre.get(f"/admin/requests/{item.id}/attestation?download=1")
    assert download.headers["Content-Disposition"].startswith("attachment")

    response = centre.post(f"/admin/requests/{item.id}", data={"csrf_token": csrf(page), "decision": "approve"})
    assert response.status_code == 303
    assert "acceptée" in mailbox.last(EMAIL)["Subject"]
    roles = professional.get("/access/").get_data(as_text=True)
    assert "Référent ror (saisie de l&#39;offre)" in roles or "Référent ROR" in roles
    from idp.models import UserRole
    from portal.db import db

    with portal.app_context():
        [role] = db.session.scalars(sa.select(UserRole)).all()
        assert (role.role, role.finess, role.revoked_at) == ("ror_referent_offre", "280503848", None)


def test_rejection_needs_a_reason_which_the_user_reads(portal, professional, mailbox):
    submit(portal, professional, generated_pdf(), "attestation.pdf")
    [item] = requests_of(portal)
    centre = admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    page = centre.get(f"/admin/requests/{item.id}").get_data(as_text=True)
    refused = centre.post(f"/admin/requests/{item.id}", data={"csrf_token": csrf(page), "decision": "reject"})
    assert refused.status_code == 422
    centre.post(f"/admin/requests/{item.id}", data={"csrf_token": csrf(page), "decision": "reject",
                                                   "reason": "Attestation non signée par le directeur."})
    assert "Motif : Attestation non signée par le directeur." in body_text(mailbox.last(EMAIL))
    assert "Attestation non signée par le directeur." in professional.get("/access/").get_data(as_text=True)


def test_other_regions_and_plain_users_cannot_see_a_request_or_its_attestation(portal, professional, mailbox):
    submit(portal, professional, generated_pdf(), "attestation.pdf")
    [item] = requests_of(portal)
    idf = admin(portal, mailbox, "lmoreau", "admin.idf@esante-test.fr")
    assert "Demandes d'accès (0)" in idf.get("/admin/requests").get_data(as_text=True)
    assert idf.get(f"/admin/requests/{item.id}").status_code == 404
    assert idf.get(f"/admin/requests/{item.id}/attestation").status_code == 404
    assert professional.get(f"/admin/requests/{item.id}/attestation").status_code == 403
    assert portal.test_client().get(f"/admin/requests/{item.id}/attestation").status_code == 302


def test_two_admins_approving_at_once_make_one_decision(portal, professional, mailbox):
    from onboarding.accounts import create_admin
    from portal.db import db

    with portal.app_context():
        create_admin(db.session, email="super@esante-test.fr", first_name="Sophie", last_name="Martin",
                     role="super_admin", departments=[], actor=None, password=ADMIN_PASSWORD)
        db.session.commit()
    submit(portal, professional, generated_pdf(), "attestation.pdf")
    [item] = requests_of(portal)
    admins = [admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr"),
              admin(portal, mailbox, "smartin", "super@esante-test.fr")]
    tokens = [csrf(a.get(f"/admin/requests/{item.id}").get_data(as_text=True)) for a in admins]
    mailbox.clear()
    statuses = []

    def decide(client, token):
        statuses.append(client.post(f"/admin/requests/{item.id}", data={"csrf_token": token,
                                                                       "decision": "approve"}).status_code)

    threads = [threading.Thread(target=decide, args=pair) for pair in zip(admins, tokens, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [303, 422]
    assert len(mailbox.to(EMAIL)) == 1


def test_admins_are_told_of_new_requests_at_most_once_an_hour(portal, professional, mailbox, clock):
    submit(portal, professional, generated_pdf(), "a.pdf")
    digest = mailbox.last("admin.centre@esante-test.fr")
    assert "Demandes d'accès à valider" in digest["Subject"]
    assert "AIRBP IRC DREUX" in body_text(digest)
    assert mailbox.to("admin.idf@esante-test.fr") == []  # not their département
    submit(portal, professional, generated_pdf(), "b.pdf", request_type="lits_new")
    assert len(mailbox.to("admin.centre@esante-test.fr")) == 1
    clock.advance(minutes=61)
    from onboarding.access import send_admin_digests
    from portal.db import db

    with portal.app_context():
        assert send_admin_digests(db.session) == 1  # the second request, announced within the hour
    assert len(mailbox.to("admin.centre@esante-test.fr")) == 2


def test_admin_revokes_a_granted_role_with_a_reason(portal, professional, mailbox):
    submit(portal, professional, generated_pdf(), "attestation.pdf")
    [item] = requests_of(portal)
    centre = admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    page = centre.get(f"/admin/requests/{item.id}").get_data(as_text=True)
    centre.post(f"/admin/requests/{item.id}", data={"csrf_token": csrf(page), "decision": "approve"})
    user_page = centre.get(f"/admin/users/{item.user_id}").get_data(as_text=True)
    role_id = re.search(r"/roles/(\d+)/revoke", user_page).group(1)
    no_reason = centre.post(f"/admin/users/{item.user_id}/roles/{role_id}/revoke", data={"csrf_token": csrf(page)},
                            follow_redirects=True)
    assert "Indiquez le motif du retrait" in no_reason.get_data(as_text=True)
    centre.post(f"/admin/users/{item.user_id}/roles/{role_id}/revoke",
                data={"csrf_token": csrf(page), "reason": "Départ de l'établissement."})
    assert "Motif : Départ de l'établissement." in body_text(mailbox.last(EMAIL))
    assert "pas encore de rôle" in professional.get("/access/").get_data(as_text=True)


@pytest.fixture
def s3_storage(app_env, moto_endpoint, aws_env):
    """The portal's attestations in an S3-compatible store (moto's server on loopback)."""
    import uuid

    import boto3

    bucket = f"attestations-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    app_env.update(ENRS_STORAGE_URL=f"s3://{bucket}/enrs", ENRS_S3_ENDPOINT_URL=moto_endpoint)
    return bucket


def test_the_attestation_goes_to_an_s3_store_and_back_to_the_admin(s3_storage, portal, professional, mailbox):
    import boto3

    pdf = generated_pdf()
    assert submit(portal, professional, pdf, "attestation.pdf").status_code == 303
    [item] = requests_of(portal)
    client = boto3.client("s3", endpoint_url=portal.extensions["enrs.settings"].s3_endpoint_url)
    [stored] = client.list_objects_v2(Bucket=s3_storage)["Contents"]
    assert stored["Key"] == f"enrs/{item.attestation_key}" and stored["Size"] == len(pdf)
    centre = admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    assert centre.get(f"/admin/requests/{item.id}/attestation").data == pdf
    # A refused submission leaves nothing behind in the bucket.
    submit(portal, professional, pdf, "again.pdf")
    assert len(client.list_objects_v2(Bucket=s3_storage)["Contents"]) == 1


def test_the_periodic_sweep_announces_requests_once_the_hour_is_over(portal, professional, mailbox, clock):
    from portal.mail import _run_periodic

    submit(portal, professional, generated_pdf(), "a.pdf")
    submit(portal, professional, generated_pdf(), "b.pdf", request_type="lits_new")
    assert len(mailbox.to("admin.centre@esante-test.fr")) == 1
    clock.advance(minutes=61)
    with portal.app_context():
        _run_periodic(portal)
    from portal.mail import drain

    drain(portal)
    assert len(mailbox.to("admin.centre@esante-test.fr")) == 2


def test_enrs_access_digest_runs_from_the_command_line(portal, professional, mailbox, clock, monkeypatch):
    from click.testing import CliRunner

    from portal import cli as enrs

    submit(portal, professional, generated_pdf(), "a.pdf")
    submit(portal, professional, generated_pdf(), "b.pdf", request_type="lits_new")
    clock.advance(minutes=61)
    monkeypatch.setattr(enrs, "_app", portal)
    result = CliRunner().invoke(enrs.main, ["access", "digest"])
    assert result.exit_code == 0 and "1 administrateur(s) prévenu(s)." in result.output



def test_when_the_store_refuses_writes_the_form_comes_back_with_a_french_message(portal, professional, tmp_path):
    from portal.storage import FileStore

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    portal.extensions["enrs.storage"] = FileStore(blocked / "attestations")
    response = submit(portal, professional, png_image(800, 600), "photo.png", request_type="lits_new")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "Le dépôt de votre attestation n'a pas pu être enregistré" in html.replace("&#39;", "'")
    assert re.search(r'value="lits_new"[^>]*checked', html)  # nothing typed is lost
    assert requests_of(portal) == []


def test_files_left_by_a_killed_upload_are_swept_and_attestations_kept(portal, professional, tmp_path):
    """A process killed between writing the file and committing its row leaves an
    orphan (and maybe a temporary file): the sweep removes them, never a referenced one."""
    from datetime import datetime, timedelta, timezone

    from onboarding.maintenance import sweep_orphan_attestations
    from portal.db import db
    from portal.storage import store_for

    assert submit(portal, professional, png_image(800, 600), "photo.png").status_code == 303
    store = store_for(portal)
    orphan = store.put(io.BytesIO(b"%PDF-1.7 orphan"))
    temporary = store.path_of(orphan.key).parent / ".upload-dead.part"
    temporary.write_bytes(b"half")
    [kept] = requests_of(portal)
    with portal.app_context():
        assert sweep_orphan_attestations(db.session, store) == 0, "too young: maybe an upload in progress"
        later = datetime.now(timezone.utc) + timedelta(seconds=5)
        assert sweep_orphan_attestations(db.session, store, later) == 2
        db.session.commit()
    assert not store.exists(orphan.key) and not temporary.exists()
    assert store.exists(kept.attestation_key)


def _add_establishment(client, **fields):
    page = client.get("/account/establishments/").get_data(as_text=True)
    data = {"csrf_token": csrf(page), "establishments-0-function_type": "Cadre de santé",
            "establishments-0-service": "Direction des soins"}
    data.update({f"establishments-0-{name}": value for name, value in fields.items()})
    return client.post("/account/establishments/", data=data)


def test_a_listed_establishment_cannot_be_typed_in_under_another_departement(portal, professional, mailbox):
    # Ticking "not listed" with the FINESS of a Paris hospital and a Dreux postal code would
    # send its role request to the Centre admins, whom the Paris admins could not overrule.
    refused = _add_establishment(professional, not_listed="y", finess="750071136", name="CH Dreux annexe",
                                 postal_code="28100", city="Dreux")
    assert refused.status_code == 422
    assert "Cet établissement est référencé" in error_for(refused.get_data(as_text=True),
                                                          "establishments-0-finess")
    assert field_value(refused.get_data(as_text=True), "establishments-0-name") == "CH Dreux annexe"


def test_the_request_goes_to_the_admins_of_the_directorys_departement(portal, professional, mailbox):
    # An establishment typed in while it was not listed, listed since: its requests go to
    # the admins of the département the directory gives, whatever postal code was typed.
    from idp.models import UserEstablishment
    from portal.db import db

    assert _add_establishment(professional, not_listed="y", name="Clinique des Lilas", postal_code="28100",
                              city="Dreux").status_code == 303
    # Meanwhile, the admins see that an establishment was typed in, not chosen in the directory.
    from onboarding.referentials import get_establishment, is_valid_finess

    with portal.app_context():
        unlisted = next(number for number in (f"28{n:07d}" for n in range(10**7))
                        if is_valid_finess(number) and get_establishment(db.session, number) is None)
    assert _add_establishment(professional, not_listed="y", name="Cabinet Lilas", postal_code="28100", city="Dreux",
                              finess=unlisted).status_code == 303
    assert submit(portal, professional, generated_pdf(), "b.pdf", establishment=unlisted).status_code == 303
    [typed_in] = requests_of(portal)
    review = admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr").get(f"/admin/requests/{typed_in.id}")
    assert "Hors répertoire FINESS" in review.get_data(as_text=True) and typed_in.department == "28"
    with portal.app_context():
        entry = db.session.scalar(sa.select(UserEstablishment).where(UserEstablishment.name == "Clinique des Lilas"))
        entry.finess = "750071136"  # as if typed in before the directory listed it
        db.session.commit()
    assert submit(portal, professional, generated_pdf(), "a.pdf", establishment="750071136").status_code == 303
    [_typed_in, item] = requests_of(portal)
    assert item.department == "75" and item.establishment_name != "Clinique des Lilas"
    assert admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr").get(
        f"/admin/requests/{item.id}").status_code == 404
    assert admin(portal, mailbox, "lmoreau", "admin.idf@esante-test.fr").get(
        f"/admin/requests/{item.id}").status_code == 200


def test_an_admin_revokes_only_roles_of_their_departements(portal, professional, mailbox):
    # The professional works in Dreux (28) and in Paris (75); the Paris admin granted a role
    # on the Paris hospital. The Centre admin sees the account, not the power to withdraw it.
    assert _add_establishment(professional, finess="750071136").status_code == 303
    assert submit(portal, professional, generated_pdf(), "a.pdf", establishment="750071136").status_code == 303
    [item] = requests_of(portal)
    idf = admin(portal, mailbox, "lmoreau", "admin.idf@esante-test.fr")
    page = idf.get(f"/admin/requests/{item.id}").get_data(as_text=True)
    assert idf.post(f"/admin/requests/{item.id}", data={"csrf_token": csrf(page), "decision": "approve"}).status_code == 303
    from idp.models import UserRole
    from portal.db import db

    with portal.app_context():
        role_id = db.session.scalar(sa.select(UserRole.id).where(UserRole.finess == "750071136"))
    centre = admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    user_page = centre.get(f"/admin/users/{item.user_id}").get_data(as_text=True)
    assert f"/roles/{role_id}/revoke" not in user_page
    assert "seul un administrateur de son département peut retirer ce rôle" in user_page
    refused = centre.post(f"/admin/users/{item.user_id}/roles/{role_id}/revoke",
                          data={"csrf_token": csrf(user_page), "reason": "Départ."})
    assert refused.status_code == 404
    with portal.app_context():
        assert db.session.get(UserRole, role_id).revoked_at is None
    paris_page = idf.get(f"/admin/users/{item.user_id}").get_data(as_text=True)
    assert idf.post(f"/admin/users/{item.user_id}/roles/{role_id}/revoke",
                    data={"csrf_token": csrf(paris_page), "reason": "Départ."}).status_code == 303
    with portal.app_context():
        assert db.session.get(UserRole, role_id).revoked_at is not None


def test_admins_of_the_departement_see_who_decided_and_who_read_the_attestation(portal, professional, mailbox):
    from onboarding.accounts import create_admin
    from portal.db import db

    with portal.app_context():
        create_admin(db.session, email="admin.eure@esante-test.fr", first_name="Marc", last_name="Petit",
                     role="regional_admin", departments=["28"], actor=None, password=ADMIN_PASSWORD)
        db.session.commit()
    submit(portal, professional, generated_pdf(), "attestation.pdf")
    [item] = requests_of(portal)
    centre = admin(portal, mailbox, "pbernard", "admin.centre@esante-test.fr")
    page = centre.get(f"/admin/requests/{item.id}").get_data(as_text=True)
    assert centre.get(f"/admin/requests/{item.id}/attestation?download=1").status_code == 200
    centre.post(f"/admin/requests/{item.id}", data={"csrf_token": csrf(page), "decision": "approve"})

    def journal(client):
        html = client.get("/admin/audit/").get_data(as_text=True)
        match = re.search(r"<tbody>(.*)</tbody>", html, re.S)  # not the action filter's options
        return match.group(1) if match else ""

    colleague = journal(admin(portal, mailbox, "mpetit", "admin.eure@esante-test.fr"))
    for label in ("Demande d'accès au ROR", "Attestation consultée", "Demande d'accès acceptée"):
        assert label in unescape(colleague)
    other_region = unescape(journal(admin(portal, mailbox, "lmoreau", "admin.idf@esante-test.fr")))
    assert "Attestation consultée" not in other_region and "Demande d'accès acceptée" not in other_region
