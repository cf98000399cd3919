"""API keys: created once in plaintext, stored only as SHA-256 hashes.

A key is ``bsk_`` followed by 32 random bytes in URL-safe base64 (256 bits): hashing it
without a salt is safe, since nobody can guess such a secret, and lets a request's key be
found by its hash. The table lives in the online store's SQLite file (one file for the
service's state), beside the profiles; the plaintext is shown by :func:`create_key` and
never again.

Two kinds. A **secret** key (``bsk_``) is for servers and jobs and reaches every route. A
**publishable** key (``bpk_``) is meant to sit in a web page, where anyone can read it: it
works only from the origins it lists (CORS), only for events, identify, consent and
personalize about the browser's own anonymous id, and within a rate per client and per key
(:mod:`bespoke.serving.middleware` enforces all of it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from bespoke.privacy.audit import AuditLog
from bespoke.serving.db import Database

PREFIX = "bsk_"
PUBLISHABLE_PREFIX = "bpk_"
_KEY = re.compile(r"^b[sp]k_[A-Za-z0-9_-]{43}$")  # 32 bytes → 43 base64 characters, no padding
#: Requests a publishable key may make per minute, by default: from one client (an IP
#: address) and in all.
CLIENT_RATE_PER_MINUTE = 300
KEY_RATE_PER_MINUTE = 30_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    kind TEXT NOT NULL DEFAULT 'secret',
    origins TEXT,              -- a publishable key's allowed origins (JSON list)
    client_rate INTEGER,       -- its requests per minute per client
    key_rate INTEGER           -- and in all
)
"""
_ADDED = {"api_keys": {"kind": "TEXT NOT NULL DEFAULT 'secret'", "origins": "TEXT",
                       "client_rate": "INTEGER", "key_rate": "INTEGER"}}  # fmt: skip
_COLUMNS = "name, created_at, revoked_at, kind, origins, client_rate, key_rate"


class KeyInfo(BaseModel):
    """What is known about a key (never the key itself)."""

    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    kind: Literal["secret", "publishable"] = "secret"
    origins: list[str] = []
    client_rate: int | None = None
    key_rate: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def publishable(self) -> bool:
        return self.kind == "publishable"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _info(row: tuple[Any, ...]) -> KeyInfo:
    name, created, revoked, kind, origins, client_rate, key_rate = row
    return KeyInfo(
        name=name,
        created_at=datetime.fromisoformat(created),
        revoked_at=None if revoked is None else datetime.fromisoformat(revoked),
        kind=kind or "secret",
        origins=json.loads(origins) if origins else [],
        client_rate=client_rate,
        key_rate=key_rate,
    )


def origin_of(text: str) -> str:
    """A web origin in its canonical spelling (``scheme://host[:port]``, lower case, no
    default port); a clear ValueError otherwise."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"an origin is http(s)://host[:port], got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"an origin has no path, query or user: {text!r}")
    default = {"http": 80, "https": 443}[parts.scheme]
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme}://{parts.hostname.lower()}{port}"


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
        self._db.ensure("api-keys", _SCHEMA, _ADDED)
        return self._db

    def create(
        self,
        name: str,
        *,
        publishable: bool = False,
        origins: Sequence[str] = (),
        client_rate: int = CLIENT_RATE_PER_MINUTE,
        key_rate: int = KEY_RATE_PER_MINUTE,
    ) -> str:
        """A new key named ``name``; the plaintext is returned here and nowhere else. A
        publishable one needs the origins of the pages it is used from, and takes at most
        ``client_rate`` requests a minute from one client and ``key_rate`` in all."""
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"invalid key name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', "
                "starting with a letter or digit"
            )
        if publishable and not origins:
            raise ValueError("a publishable key needs the origins of its pages (--origin)")
        if not publishable and origins:
            raise ValueError("origins are for publishable keys (--publishable)")
        allowed = sorted({origin_of(o) for o in origins})
        for rate in (client_rate, key_rate):
            if rate < 1:
                raise ValueError(f"a rate is at least 1 request a minute, got {rate}")
        key = (PUBLISHABLE_PREFIX if publishable else PREFIX) + secrets.token_urlsafe(32)
        with self._database().write() as con:
            existing = con.execute(
                "SELECT revoked_at FROM api_keys WHERE name = ?", (name,)
            ).fetchone()
            if existing is not None:
                state = "revoked" if existing[0] else "active"
                raise ValueError(f"a key named {name!r} exists ({state}); choose another name")
            con.execute(
                "INSERT INTO api_keys (name, key_sha256, created_at, kind, origins, "
                "client_rate, key_rate) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, _hash(key), datetime.now(UTC).isoformat(),
                 "publishable" if publishable else "secret",
                 json.dumps(allowed) if publishable else None,
                 client_rate if publishable else None, key_rate if publishable else None),
            )  # fmt: skip
        if self.audit is not None:
            detail = {"name": name, "kind": "publishable" if publishable else "secret"}
            if publishable:
                detail["origins"] = allowed
            self.audit.append("api_key.created", actor=self.actor, detail=detail)
        return key

    def verify(self, key: str | None) -> KeyInfo | None:
        """The active key's information, or ``None`` for a missing, malformed, unknown or
        revoked key. The stored hash is compared in constant time."""
        if not key or not _KEY.fullmatch(key):
            return None
        digest = _hash(key)
        with self._database().read() as con:
            row = con.execute(
                f"SELECT key_sha256, {_COLUMNS} FROM api_keys WHERE key_sha256 = ?", (digest,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest) or row[3] is not None:
            return None
        return _info(row[1:])

    def origins(self) -> frozenset[str]:
        """Every origin some active publishable key allows (a CORS preflight names no key)."""
        with self._database().read() as con:
            rows = con.execute(
                "SELECT origins FROM api_keys WHERE kind = 'publishable' AND revoked_at IS NULL"
            ).fetchall()
        return frozenset(o for (text,) in rows for o in json.loads(text or "[]"))

    def revoke(self, name: str) -> KeyInfo:
        """Revoke the key named ``name`` (revoking it again changes nothing)."""
        with self._database().write() as con:
            con.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (datetime.now(UTC).isoformat(), name),
            )
            row = con.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(f"no API key named {name!r}")
        if self.audit is not None:
            self.audit.append("api_key.revoked", actor=self.actor, detail={"name": name})
        return _info(row)

    def list(self) -> list[KeyInfo]:
        """Every key, active or revoked, oldest first."""
        with self._database().read() as con:
            rows = con.execute(
                f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, name"
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
