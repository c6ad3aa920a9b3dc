"""J8: logging in with Pro Santé Connect, and linking a CPS / e-CPS identity to an account.

- Logged out, "Se connecter avec Pro Santé Connect": a linked identity logs in at once
  (strong authentication, no emailed code); an unlinked one chooses between "J'ai déjà un
  compte sur le Portail" (log in once, then confirm the link) and "Je n'ai pas de compte"
  (the registration form, pre-filled with what PSC vouches for).
- Logged in, Mon compte: "Lier ma carte e-CPS", and "Délier" after the password.
- Conflicts (identity linked elsewhere, national identifier that disagrees, account not
  active) are refused with a French message and an audit entry.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask import session as cookie
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session
from wtforms import PasswordField

from idp.models import STATUS_ACTIVE, STATUS_DISABLED, STATUS_REJECTED, User
from idp.passwords import verify_password
from idp.psc.client import PscError, PscIdentity, psc_client
from idp.psc.models import PscLink, PscPending
from idp.sessions import login_required, start_session, token_digest
from portal import audit
from portal.clock import now
from portal.db import db
from portal.security import external_url, limiter, origin_of, safe_next

bp = Blueprint("psc", __name__, url_prefix="/psc")

FLOW_KEY = "psc_flow"
PENDING_KEY = "psc_pending"
FLOW_LIFETIME = timedelta(minutes=10)
PENDING_LIFETIME = timedelta(minutes=30)
# RFC 8176 has no value for "a national health identity provider"; "mfa" says PSC
# verified two factors (card or app + code), "psc" says who did.
AMR_PSC = ["psc", "mfa"]

ALREADY_LINKED_ELSEWHERE = ("Cette identité Pro Santé Connect est déjà liée à un autre compte du portail. "
                            "Si ce n'est pas normal, contactez l'assistance.")
ACCOUNT_HAS_OTHER_CARD = "Votre compte est déjà lié à une autre identité Pro Santé Connect. Déliez-la d'abord."
NOT_ACTIVE = {
    "review_pending": "Votre compte est en attente de validation par un administrateur : vous pourrez vous connecter "
                      "avec Pro Santé Connect une fois votre compte validé.",
    "email_pending": "Votre adresse mail n'est pas encore validée : suivez le lien reçu par mail.",
    STATUS_DISABLED: "Votre compte est désactivé. Contactez l'assistance du portail.",
    STATUS_REJECTED: "Votre demande de compte a été refusée. Contactez l'assistance du portail.",
}


def _configured():
    client = psc_client()
    if client is None:
        abort(404)
    return client


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _start(purpose: str, next_url: str):
    client = _configured()
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier, challenge = _pkce()
    try:
        url = client.authorization_url(redirect_uri=external_url("psc.callback"), state=state, nonce=nonce,
                                       code_challenge=challenge)
    except PscError as error:
        audit.record(db.session, "psc.unavailable", outcome="failure", details={"reason": error.reason})
        db.session.commit()
        flash(error.message, "error")
        return redirect(url_for("account.overview") if purpose == "link" else url_for("login.login"), code=303)
    cookie[FLOW_KEY] = {"state": state, "nonce": nonce, "verifier": verifier, "purpose": purpose,
                        "next": next_url, "started": now().isoformat(),
                        "user": g.user.public_id if purpose == "link" else None}
    return redirect(url, code=303)


@bp.get("/login")
@limiter.limit("30 per minute")
def login():
    return _start("login", safe_next(request.args.get("next"), ""))


@bp.post("/link")
@login_required
def link():
    return _start("link", "")


def _refuse(reason: str, message: str, purpose: str, user_id: int | None = None):
    audit.record(db.session, f"psc.{reason}", outcome="failure", actor_id=user_id, details={"purpose": purpose})
    db.session.commit()
    flash(message, "error")
    if purpose == "link" and g.get("user") is not None:
        return redirect(url_for("psc.manage"), code=303)
    return redirect(url_for("login.login"), code=303)


@bp.get("/callback")
@limiter.limit("30 per minute")
def callback():
    client = _configured()
    flow = cookie.pop(FLOW_KEY, None)
    purpose = flow.get("purpose", "login") if isinstance(flow, dict) else "login"
    if not isinstance(flow, dict) or not request.args.get("state") or \
            not secrets.compare_digest(str(request.args.get("state")), flow.get("state", "")):
        # No flow (replayed or forged callback) or another flow's state.
        return _refuse("state_mismatch", "La réponse de Pro Santé Connect n'est pas valide ou a déjà été utilisée. "
                                         "Recommencez la connexion.", purpose)
    try:
        started = datetime.fromisoformat(flow["started"])
    except (KeyError, ValueError):
        started = now() - FLOW_LIFETIME * 2
    if now() - started > FLOW_LIFETIME:
        return _refuse("flow_expired", "La connexion avec Pro Santé Connect a pris trop de temps. Recommencez.",
                       purpose)
    error = request.args.get("error")
    if error:
        if error == "access_denied":
            return _refuse("cancelled", "Connexion avec Pro Santé Connect annulée. Vous pouvez vous connecter avec "
                                        "votre identifiant et votre mot de passe.", purpose)
        return _refuse("error_returned", "Pro Santé Connect a refusé la connexion. Réessayez ou connectez-vous avec "
                                         "votre identifiant et votre mot de passe.", purpose)
    code = request.args.get("code")
    if not code:
        return _refuse("missing_code", "La réponse de Pro Santé Connect est incomplète. Recommencez.", purpose)
    try:
        tokens = client.exchange(code=code, redirect_uri=external_url("psc.callback"), code_verifier=flow["verifier"])
        claims = client.verify_id_token(tokens["id_token"], nonce=flow["nonce"])
        from idp.psc.client import identity_from_claims

        identity = identity_from_claims(claims, client.userinfo(tokens["access_token"]))
    except PscError as exc:
        return _refuse(f"refused.{exc.reason.split(':')[0]}", exc.message, purpose)
    if purpose == "link":
        return _finish_link(flow, identity)
    return _finish_login(flow, identity, tokens["id_token"])


def _finish_login(flow: dict, identity: PscIdentity, id_token: str):
    session = db.session
    link_row = session.scalar(sa.select(PscLink).where(PscLink.psc_subject == identity.subject))
    if link_row is None:
        token = secrets.token_urlsafe(32)
        current = now()
        session.add(PscPending(id=token_digest(token), identity=identity.to_dict(), id_token=id_token,
                               created_at=current, expires_at=current + PENDING_LIFETIME))
        audit.record(session, "psc.identity_unlinked", details={"national_id_type": identity.national_id_type})
        session.commit()
        cookie[PENDING_KEY] = token
        return redirect(url_for("psc.choice"), code=303)
    user = session.get(User, link_row.user_id)
    if user.status != STATUS_ACTIVE:
        return _refuse("account_not_active", NOT_ACTIVE.get(user.status, NOT_ACTIVE[STATUS_DISABLED]), "login",
                       user.id)
    if user.national_id and identity.national_id and user.national_id != identity.national_id:
        return _refuse("national_id_mismatch", _mismatch_message(identity), "login", user.id)
    if not user.national_id and identity.national_id:
        # PSC vouches for it: the applications receive it from now on.
        user.national_id, user.national_id_type = identity.national_id, identity.national_id_type
    link_row.last_login_at = now()
    record = start_session(session, user, AMR_PSC, identity.acr)
    record.psc_id_token = id_token
    session.commit()
    return redirect(safe_next(flow.get("next"), url_for("dashboard.apps")), code=303)


def _mismatch_message(identity: PscIdentity) -> str:
    return (f"L'identifiant national transmis par Pro Santé Connect ({identity.national_id}) ne correspond pas à celui "
            "de votre compte. Contactez l'assistance du portail pour corriger votre compte.")


def link_identity(session: Session, user: User, identity: PscIdentity) -> str | None:
    """Links the identity to the account; returns a French refusal, or None when linked."""
    existing = session.scalar(sa.select(PscLink).where(PscLink.psc_subject == identity.subject))
    if existing is not None and existing.user_id != user.id:
        return ALREADY_LINKED_ELSEWHERE
    if existing is not None:
        return None  # already linked to this very account
    if session.scalar(sa.select(PscLink.id).where(PscLink.user_id == user.id)) is not None:
        return ACCOUNT_HAS_OTHER_CARD
    if user.national_id and identity.national_id and user.national_id != identity.national_id:
        return _mismatch_message(identity)
    if not user.national_id and identity.national_id:
        # PSC vouches for it: the account takes it (RPPS/ADELI claims for the apps).
        user.national_id, user.national_id_type = identity.national_id, identity.national_id_type
    session.add(PscLink(user_id=user.id, psc_subject=identity.subject, national_id=identity.national_id,
                        linked_at=now()))
    audit.record(session, "psc.linked", actor_id=user.id, target_type="user", target_id=user.id,
                 details={"national_id_type": identity.national_id_type})
    return None


def _finish_link(flow: dict, identity: PscIdentity):
    user = g.get("user")
    if user is None or user.public_id != flow.get("user"):
        return _refuse("link_session_changed", "Votre session a changé pendant la liaison. Reconnectez-vous et "
                                               "recommencez.", "login")
    refusal = link_identity(db.session, user, identity)
    if refusal:
        db.session.rollback()
        reason = "already_linked" if refusal == ALREADY_LINKED_ELSEWHERE else "link_refused"
        return _refuse(reason, refusal, "link", user.id)
    db.session.commit()
    flash("Votre carte e-CPS est liée à votre compte : vous pouvez désormais vous connecter avec Pro Santé Connect.",
          "success")
    return redirect(url_for("psc.manage"), code=303)


# -- an unlinked identity: the seed's choice ---------------------------------------------------

def pending_identity() -> tuple[PscPending, PscIdentity] | None:
    """The PSC identity this browser brought back and has not linked yet (registration
    pre-fills from it)."""
    token = cookie.get(PENDING_KEY)
    if not token or not isinstance(token, str):
        return None
    row = db.session.get(PscPending, token_digest(token))
    if row is None or row.used_at is not None or row.expires_at <= now():
        return None
    return row, PscIdentity.from_dict(row.identity)


def forget_pending() -> None:
    cookie.pop(PENDING_KEY, None)


def link_after_registration(session: Session, user: User) -> bool:
    """Called by the registration of "Je n'ai pas de compte": the new account is linked."""
    pending = pending_identity()
    if pending is None:
        return False
    row, identity = pending
    if link_identity(session, user, identity) is not None:
        return False
    row.used_at = now()
    return True


@bp.get("/choice")
def choice():
    pending = pending_identity()
    if pending is None:
        flash("Votre connexion avec Pro Santé Connect a expiré. Recommencez.", "error")
        return redirect(url_for("login.login"), code=303)
    return render_template("idp/psc_choice.html", identity=pending[1])


class ConfirmForm(FlaskForm):
    pass


@bp.route("/confirm-link", methods=["GET", "POST"])
@login_required
def confirm_link():
    pending = pending_identity()
    if pending is None:
        flash("Votre connexion avec Pro Santé Connect a expiré. Recommencez depuis « Se connecter avec Pro Santé "
              "Connect ».", "error")
        return redirect(url_for("psc.manage"), code=303)
    row, identity = pending
    form = ConfirmForm()
    if request.method == "POST" and form.validate():
        refusal = link_identity(db.session, g.user, identity)
        if refusal:
            db.session.rollback()
            forget_pending()
            reason = "already_linked" if refusal == ALREADY_LINKED_ELSEWHERE else "link_refused"
            return _refuse(reason, refusal, "link", g.user.id)
        row.used_at = now()
        # This session now also stands for the PSC login: its logout ends PSC's session.
        g.user_session.psc_id_token = row.id_token
        db.session.commit()
        forget_pending()
        flash("Votre carte e-CPS est liée à votre compte : la prochaine fois, connectez-vous directement avec "
              "Pro Santé Connect.", "success")
        return redirect(url_for("dashboard.apps"), code=303)
    return render_template("idp/psc_confirm.html", identity=identity, form=form)


# -- Mon compte: link, unlink ---------------------------------------------------------------------

class UnlinkForm(FlaskForm):
    password = PasswordField("Mot de passe actuel")


@bp.route("/", methods=["GET"])
@login_required
def manage():
    client = _configured()
    # "Lier ma carte e-CPS" posts here, then the browser goes to PSC's login page on its
    # own host: the form-action of this page must allow it.
    try:
        g.form_action_origins = [o for o in (origin_of(client.metadata()["authorization_endpoint"]),) if o]
    except PscError:
        pass
    link_row = db.session.scalar(sa.select(PscLink).where(PscLink.user_id == g.user.id))
    return render_template("idp/psc_manage.html", link=link_row, form=UnlinkForm(formdata=None), error=None)


@bp.post("/unlink")
@login_required
@limiter.limit("10 per 10 minutes")
def unlink():
    _configured()
    form = UnlinkForm()
    link_row = db.session.scalar(sa.select(PscLink).where(PscLink.user_id == g.user.id))
    if link_row is None:
        return redirect(url_for("psc.manage"), code=303)
    if not form.validate() or not verify_password(g.user.password_hash, form.password.data or ""):
        audit.record(db.session, "psc.unlink_refused", outcome="failure", actor_id=g.user.id)
        db.session.commit()
        return render_template("idp/psc_manage.html", link=link_row, form=form,
                               error="Le mot de passe est incorrect."), 422
    db.session.delete(link_row)
    audit.record(db.session, "psc.unlinked", actor_id=g.user.id, target_type="user", target_id=g.user.id)
    db.session.commit()
    flash("Votre carte e-CPS n'est plus liée à votre compte.", "success")
    return redirect(url_for("psc.manage"), code=303)


@bp.get("/logged-out")
def logged_out():
    flash("Vous êtes déconnecté du portail et de Pro Santé Connect.", "success")
    return redirect(url_for("portal.home"), code=303)


def logout_redirect(record) -> str | None:
    """Where the portal's logout sends a browser whose session came from PSC: PSC's own
    logout, which comes back to /psc/logged-out."""
    if not getattr(record, "psc_id_token", None):
        return None
    client = psc_client()
    if client is None:
        return None
    return client.end_session_url(id_token=record.psc_id_token,
                                  post_logout_redirect_uri=external_url("psc.logged_out"))
