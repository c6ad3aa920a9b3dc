"""The reads and writes of the token endpoint, in SQLAlchemy Core.

`POST /oauth/token` is the provider's hottest path: every application back end calls it
at each login and every few minutes per user to refresh. Profiled, the ORM's per-statement
work (identity map, entity loading, unit of work) was half of the request. Here each
statement is built once, run on the session's connection (same transaction, so the view's
commit or rollback still decides), and its row becomes a plain record carrying the
methods authlib asks for (the same mixins as the ORM models).
"""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from idp.models import User
from idp.provider.models import AuthorizationCode, Client, ClientRules, CodeRules, Token, TokenRules
from idp.sessions import UserSession


class Record:
    """A row read with Core: one attribute per selected column."""

    def __init__(self, row: Row) -> None:
        self.__dict__.update(row._mapping)


class ClientRecord(ClientRules, Record):
    pass


class CodeRecord(CodeRules, Record):
    pass


class TokenRecord(TokenRules, Record):
    pass


class SessionRecord(Record):
    """A portal session with its user (`.user`), what a token needs of both."""

    user: Record


_clients = Client.__table__
_codes = AuthorizationCode.__table__
_tokens = Token.__table__
_sessions = UserSession.__table__
_users = User.__table__

_CLIENT_BY_ID = sa.select(_clients).where(_clients.c.client_id == sa.bindparam("client_id"),
                                          _clients.c.disabled_at.is_(None))
# A code is claimed by a conditional UPDATE that returns it: of concurrent exchanges of
# one code, exactly one gets the row (PostgreSQL, and SQLite ≥ 3.35).
_CLAIM_CODE = (
    _codes.update()
    .where(_codes.c.code_hash == sa.bindparam("b_code"), _codes.c.client_pk == sa.bindparam("b_client"),
           _codes.c.used_at.is_(None), _codes.c.expires_at > sa.bindparam("b_now"))
    .values(used_at=sa.bindparam("b_now"))
    .returning(*_codes.c)
)
# A refresh token is rotated the same way, when it is this client's, live and unrotated.
_ROTATE_REFRESH = (
    _tokens.update()
    .where(_tokens.c.refresh_token_hash == sa.bindparam("b_hash"), _tokens.c.client_pk == sa.bindparam("b_client"),
           _tokens.c.rotated_at.is_(None), _tokens.c.revoked_at.is_(None),
           _tokens.c.refresh_expires_at > sa.bindparam("b_now"))
    .values(rotated_at=sa.bindparam("b_now"))
    .returning(*_tokens.c)
)
_TOKEN_BY_REFRESH = sa.select(_tokens.c.client_pk, _tokens.c.family_id, _tokens.c.user_id,
                              _tokens.c.rotated_at).where(_tokens.c.refresh_token_hash == sa.bindparam("b_hash"))
_INSERT_TOKEN = _tokens.insert()
_USER_COLUMNS = ("id", "public_id", "status", "login", "email", "email_verified_at", "first_name", "last_name",
                 "profession_code", "profession_other", "national_id", "national_id_type")
_SESSION_WITH_USER = (
    sa.select(_sessions.c.id, _sessions.c.public_id, _sessions.c.created_at, _sessions.c.last_seen_at,
              _sessions.c.expires_at, _sessions.c.revoked_at, _sessions.c.acr, _sessions.c.amr,
              *(_users.c[name].label(f"user_{name}") for name in _USER_COLUMNS))
    .join_from(_sessions, _users, _sessions.c.user_id == _users.c.id)
    .where(_sessions.c.id == sa.bindparam("session_id"))
)
_ACCESS_TOKEN = (
    sa.select(_tokens.c.id, _tokens.c.client_pk, _tokens.c.scope, _tokens.c.revoked_at,
              _tokens.c.access_expires_at,
              *(_sessions.c[name].label(f"session_{name}") for name in
                ("id", "public_id", "created_at", "last_seen_at", "expires_at", "revoked_at")),
              *(_users.c[name].label(f"user_{name}") for name in _USER_COLUMNS))
    .join_from(_tokens, _sessions, _tokens.c.session_id == _sessions.c.id)
    .join(_users, _sessions.c.user_id == _users.c.id)
    .where(_tokens.c.access_token_hash == sa.bindparam("b_hash"))
)
_TOUCH_SESSION = (_sessions.update().where(_sessions.c.id == sa.bindparam("b_id"))
                  .values(last_seen_at=sa.bindparam("b_now")))


def client_by_id(connection: Connection, client_id: str) -> ClientRecord | None:
    row = connection.execute(_CLIENT_BY_ID, {"client_id": client_id}).first()
    return ClientRecord(row) if row is not None else None


def claim_code(connection: Connection, code_hash: str, client_pk: int, current: datetime) -> CodeRecord | None:
    row = connection.execute(_CLAIM_CODE, {"b_code": code_hash, "b_client": client_pk, "b_now": current}).first()
    return CodeRecord(row) if row is not None else None


def rotate_refresh_token(connection: Connection, refresh_hash: str, client_pk: int,
                         current: datetime) -> TokenRecord | None:
    row = connection.execute(_ROTATE_REFRESH, {"b_hash": refresh_hash, "b_client": client_pk,
                                               "b_now": current}).first()
    return TokenRecord(row) if row is not None else None


def refresh_token_owner(connection: Connection, refresh_hash: str) -> Row | None:
    """What a refresh token that could not be rotated was: client, family, user, rotated_at."""
    return connection.execute(_TOKEN_BY_REFRESH, {"b_hash": refresh_hash}).first()


def _split(row: Row, record: Record) -> Record:
    """Fills `record` from a joined row: `session_*` columns go to `.portal_session`,
    `user_*` ones to its (or the record's) `.user`."""
    user = Record.__new__(Record)
    portal_session = None
    for key, value in row._mapping.items():
        if key.startswith("user_"):
            setattr(user, key[5:], value)
        elif key.startswith("session_"):
            if portal_session is None:
                portal_session = SessionRecord.__new__(SessionRecord)
            setattr(portal_session, key[8:], value)
        else:
            setattr(record, key, value)
    if portal_session is not None:
        portal_session.user = user
        record.portal_session = portal_session
    else:
        record.user = user
    return record


def session_with_user(connection: Connection, session_id: str) -> SessionRecord | None:
    row = connection.execute(_SESSION_WITH_USER, {"session_id": session_id}).first()
    return _split(row, SessionRecord.__new__(SessionRecord)) if row is not None else None


def access_token(connection: Connection, access_hash: str) -> TokenRecord | None:
    """An access token with its portal session (`.portal_session`) and user: what a bearer
    call (userinfo) needs, in one query."""
    row = connection.execute(_ACCESS_TOKEN, {"b_hash": access_hash}).first()
    return _split(row, TokenRecord.__new__(TokenRecord)) if row is not None else None


def touch_session(connection: Connection, session_id: str, current: datetime) -> None:
    connection.execute(_TOUCH_SESSION, {"b_id": session_id, "b_now": current})


def insert_token(connection: Connection, values: dict) -> None:
    connection.execute(_INSERT_TOKEN, values)
