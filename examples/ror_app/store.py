"""Server-side sessions in a SQLite file of the instance folder.

Why server-side: back-channel logout arrives as a request from the portal, not from the
user's browser, so the application must be able to find and end a session without its
cookie. The cookie only carries a random id (signed, so garbage never reaches the
database); the database keeps a SHA-256 of it, the user's claims, and the portal's `sid`
and `sub`, indexed, so that a logout token ends the matching sessions in one statement.

Why SQLite rather than a dict in memory: the back-channel request may be served by
another worker process than the user's requests (gunicorn), and a restart should not
log everybody out. One short connection per operation keeps it thread-safe.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import BadSignature, Signer
from werkzeug.datastructures import CallbackDict

COOKIE_NAME = "ror_demo_session"  # not the portal's: both may live on 127.0.0.1, and cookies ignore ports

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    sub TEXT,
    sid TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_sessions_sid ON sessions (sid);
CREATE INDEX IF NOT EXISTS ix_sessions_sub ON sessions (sub);
CREATE TABLE IF NOT EXISTS seen_logout_tokens (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
"""


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(self, path: Path, lifetime: int) -> None:
        self.path = path
        self.lifetime = lifetime
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # Autocommit: every statement below is a transaction of its own.
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def load(self, session_id: str) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT data FROM sessions WHERE id_hash = ? AND expires_at > ?",
                             (_digest(session_id), int(time.time()))).fetchone()
        return json.loads(row[0]) if row else None

    def insert(self, session_id: str, data: dict[str, Any]) -> None:
        current = int(time.time())
        user = data.get("user") or {}
        with closing(self._connect()) as db:
            # Now and then, forget what has expired (no separate cleaning job for a demo).
            if secrets.randbelow(50) == 0:
                db.execute("DELETE FROM sessions WHERE expires_at <= ?", (current,))
                db.execute("DELETE FROM seen_logout_tokens WHERE expires_at <= ?", (current,))
            db.execute("INSERT INTO sessions (id_hash, data, sub, sid, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (_digest(session_id), json.dumps(data), user.get("sub"), user.get("sid"), current,
                        current + self.lifetime))

    def update(self, session_id: str, data: dict[str, Any]) -> bool:
        """False when the session is gone (ended by the portal meanwhile): never resurrect it."""
        user = data.get("user") or {}
        with closing(self._connect()) as db:
            cursor = db.execute("UPDATE sessions SET data = ?, sub = ?, sid = ? WHERE id_hash = ? AND expires_at > ?",
                                (json.dumps(data), user.get("sub"), user.get("sid"), _digest(session_id),
                                 int(time.time())))
            return cursor.rowcount == 1

    def delete(self, session_id: str) -> None:
        with closing(self._connect()) as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (_digest(session_id),))

    def end_matching(self, sid: str | None, sub: str | None) -> int:
        """Back-channel logout: the sessions of that portal session (`sid`, and `sub` when
        given too), or, without `sid`, every session of the user. Returns how many ended."""
        with closing(self._connect()) as db:
            if sid and sub:
                cursor = db.execute("DELETE FROM sessions WHERE sid = ? AND sub = ?", (sid, sub))
            elif sid:
                cursor = db.execute("DELETE FROM sessions WHERE sid = ?", (sid,))
            elif sub:
                cursor = db.execute("DELETE FROM sessions WHERE sub = ?", (sub,))
            else:
                return 0
            return cursor.rowcount

    def count_for(self, sub: str) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT count(*) FROM sessions WHERE sub = ? AND expires_at > ?",
                              (sub, int(time.time()))).fetchone()[0]

    def remember_jti(self, jti: str, expires_at: int) -> bool:
        """False when this logout token was already received (a replay)."""
        with closing(self._connect()) as db:
            try:
                db.execute("INSERT INTO seen_logout_tokens (jti, expires_at) VALUES (?, ?)", (jti, expires_at))
            except sqlite3.IntegrityError:
                return False
        return True


class ServerSession(CallbackDict, SessionMixin):
    def __init__(self, initial: dict | None = None, session_id: str | None = None) -> None:
        def on_update(self: ServerSession) -> None:
            self.modified = True

        super().__init__(initial, on_update)
        self.session_id = session_id
        self.modified = False
        self.rotate = False
        self.had_cookie = False

    def regenerate(self) -> None:
        """A new id at the next save (login, logout): an id seen before is never trusted again."""
        self.rotate = True
        self.modified = True


class ServerSessionInterface(SessionInterface):
    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def _signer(self, app: Flask) -> Signer:
        return Signer(app.secret_key, salt="ror-demo-session")

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        raw = request.cookies.get(COOKIE_NAME)
        session = ServerSession()
        if raw:
            try:
                session_id = self._signer(app).unsign(raw).decode()
            except BadSignature:
                session_id = None
            data = self.store.load(session_id) if session_id else None
            if data is not None:
                session = ServerSession(data, session_id)
        session.had_cookie = bool(raw)
        return session

    def save_session(self, app: Flask, session: ServerSession, response: Response) -> None:
        secure = app.config["SESSION_COOKIE_SECURE"]
        if not session:
            if session.session_id:
                self.store.delete(session.session_id)
            if session.had_cookie:  # a stale or ended session: the browser forgets the id
                response.delete_cookie(COOKIE_NAME, path="/", secure=secure, httponly=True, samesite="Lax")
            return
        if not session.modified:
            return
        data = dict(session)
        if session.session_id and not session.rotate:
            if not self.store.update(session.session_id, data):
                response.delete_cookie(COOKIE_NAME, path="/", secure=secure, httponly=True, samesite="Lax")
            return
        if session.session_id:
            self.store.delete(session.session_id)
        session_id = secrets.token_urlsafe(32)
        self.store.insert(session_id, data)
        response.set_cookie(COOKIE_NAME, self._signer(app).sign(session_id).decode(), path="/", secure=secure,
                            httponly=True, samesite="Lax")  # Lax: the portal's redirect to /callback carries it

