"""API keys: created once in plaintext, stored only as SHA-256 hashes.

A key is ``bsk_`` followed by 32 random bytes in URL-safe base64 (256 bits): hashing it
without a salt is safe, since nobody can guess such a secret, and lets a request's key be
found by its hash. The table lives in the online store's SQLite file (one file for the
service's state), beside the profiles; the plaintext is shown by :func:`create_key` and
never again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from bespoke.privacy.audit import AuditLog
from bespoke.serving.db import Database

PREFIX = "bsk_"
_KEY = re.compile(r"^bsk_[A-Za-z0-9_-]{43}$")  # 32 bytes → 43 base64 characters, no padding
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""


class KeyInfo(BaseModel):
    """What is known about a key (never the key itself)."""

    name: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _info(row: tuple[str, str, str | None]) -> KeyInfo:
    name, created, revoked = row
    return KeyInfo(
        name=name,
        created_at=datetime.fromisoformat(created),
        revoked_at=None if revoked is None else datetime.fromisoformat(revoked),
    )


class ApiKeys:
    """The API keys kept in a SQLite file (a ``sqlite:///`` URL, a path or a
    :class:`~bespoke.serving.db.Database`, e.g. the online store's ``db``)."""

    def __init__(
        self, store: str | Path | Database, *, audit: AuditLog | None = None, actor: str = ""
    ) -> None:
        self._db = store if isinstance(store, Database) else Database(store)
        #: Where creations and revocations are recorded (with ``actor``).
        self.audit = audit
        self.actor = actor

    def _database(self) -> Database:
        self._db.ensure("api-keys", _SCHEMA)
        return self._db

    def create(self, name: str) -> str:
        """A new key named ``name``; the plaintext is returned here and nowhere else."""
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"invalid key name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', "
                "starting with a letter or digit"
            )
        key = PREFIX + secrets.token_urlsafe(32)
        with self._database().write() as con:
            existing = con.execute(
                "SELECT revoked_at FROM api_keys WHERE name = ?", (name,)
            ).fetchone()
            if existing is not None:
                state = "revoked" if existing[0] else "active"
                raise ValueError(f"a key named {name!r} exists ({state}); choose another name")
            con.execute(
                "INSERT INTO api_keys (name, key_sha256, created_at) VALUES (?, ?, ?)",
                (name, _hash(key), datetime.now(UTC).isoformat()),
            )
        if self.audit is not None:
            self.audit.append("api_key.created", actor=self.actor, detail={"name": name})
        return key

    def verify(self, key: str | None) -> KeyInfo | None:
        """The active key's information, or ``None`` for a missing, malformed, unknown or
        revoked key. The stored hash is compared in constant time."""
        if not key or not _KEY.fullmatch(key):
            return None
        digest = _hash(key)
        with self._database().read() as con:
            row = con.execute(
                "SELECT name, key_sha256, created_at, revoked_at FROM api_keys "
                "WHERE key_sha256 = ?",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[1], digest) or row[3] is not None:
            return None
        return _info((row[0], row[2], row[3]))

    def revoke(self, name: str) -> KeyInfo:
        """Revoke the key named ``name`` (revoking it again changes nothing)."""
        with self._database().write() as con:
            con.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (datetime.now(UTC).isoformat(), name),
            )
            row = con.execute(
                "SELECT name, created_at, revoked_at FROM api_keys WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise KeyError(f"no API key named {name!r}")
        if self.audit is not None:
            self.audit.append("api_key.revoked", actor=self.actor, detail={"name": name})
        return _info(row)

    def list(self) -> list[KeyInfo]:
        """Every key, active or revoked, oldest first."""
        with self._database().read() as con:
            rows = con.execute(
                "SELECT name, created_at, revoked_at FROM api_keys ORDER BY created_at, name"
            ).fetchall()
        return [_info(row) for row in rows]


Store = str | Path | Database


def create_key(store: Store, name: str) -> str:
    """A new key named ``name`` in ``store``; its plaintext is shown only now."""
    return ApiKeys(store).create(name)


def verify(store: Store, key: str | None) -> KeyInfo | None:
    """``key``'s information when it is an active key of ``store``, else ``None``."""
    return ApiKeys(store).verify(key)


def revoke(store: Store, name: str) -> KeyInfo:
    return ApiKeys(store).revoke(name)


def list_keys(store: Store) -> list[KeyInfo]:
    return ApiKeys(store).list()
