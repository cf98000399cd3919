"""The PII vault: raw personal values encrypted at rest, one data key per person.

Matching needs raw names, addresses, e-mails; the lake keeps only pseudonyms. The vault
keeps the raw values of each record encrypted with AES-256-GCM (``cryptography``) under
its person's own data key. Data keys are stored wrapped (AES key wrap) by the vault's
master key, in a separate file from the ciphertexts: destroying one person's key makes
every copy of their records unreadable — backups of the records file included — which is
how erasure reaches data nobody can find to delete.

Subjects: a data key belongs to a *subject* (the person id when the record was stored)
and lists the identifiers it covers (pseudonyms), so that a deletion that resolves a
person through the identity graph finds every key of theirs.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from bespoke.identity.identifiers import IdentityError
from bespoke.settings import Settings, kept_secret

_KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_keys (
    subject TEXT PRIMARY KEY,
    wrapped BLOB,              -- NULL once destroyed
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    destroyed_at TEXT
);
CREATE TABLE IF NOT EXISTS subject_identifiers (
    identifier TEXT NOT NULL,  -- "type:pseudonym"
    subject TEXT NOT NULL,
    PRIMARY KEY (identifier, subject)
);
"""
_RECORDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    subject TEXT NOT NULL,
    record_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    PRIMARY KEY (subject, record_id)
);
"""


class SubjectErased(IdentityError):
    """The subject's data key was destroyed: their records can no longer be read."""


@dataclass(frozen=True)
class Vault:
    """The vault in ``folder`` (``keys.db`` and ``records.db``), with the master key in
    ``master_key_file`` (created, 256 random bits, mode 0600, on first use)."""

    folder: Path
    master_key_file: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        return cls(settings.vault_dir, settings.vault_key_file)

    @contextmanager
    def _connect(self, name: str, schema: str) -> Iterator[sqlite3.Connection]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.folder / name, timeout=30)) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(schema)
            with con:
                yield con

    def _master_key(self) -> bytes:
        return bytes.fromhex(kept_secret(self.master_key_file))

    def _data_key(self, keys: sqlite3.Connection, subject: str, create: bool) -> bytes:
        row = keys.execute(
            "SELECT wrapped, destroyed_at FROM data_keys WHERE subject = ?", (subject,)
        ).fetchone()
        if row is not None and row[0] is None:
            raise SubjectErased(f"subject {subject} was erased at {row[1]}")
        if row is not None:
            return aes_key_unwrap(self._master_key(), row[0])
        if not create:
            raise KeyError(subject)
        key = AESGCM.generate_key(bit_length=256)
        keys.execute(
            "INSERT INTO data_keys (subject, wrapped) VALUES (?, ?)",
            (subject, aes_key_wrap(self._master_key(), key)),
        )
        return key

    def put(
        self,
        subject: str,
        records: Iterable[tuple[str, dict[str, Any]]],
        identifiers: Iterable[str] = (),
    ) -> int:
        """Encrypt and keep ``records`` (record id → raw fields) under ``subject``'s key
        (created on first use); ``identifiers`` (``type:pseudonym``) find the subject
        later. Returns the records written (a record id written again is replaced)."""
        with self._connect("keys.db", _KEYS_SCHEMA) as keys:
            key = self._data_key(keys, subject, create=True)
            keys.executemany(
                "INSERT OR IGNORE INTO subject_identifiers VALUES (?, ?)",
                [(identifier, subject) for identifier in identifiers],
            )
        cipher = AESGCM(key)
        rows = []
        for record_id, fields in records:
            nonce = os.urandom(12)
            plain = json.dumps(fields, sort_keys=True, default=str).encode()
            # The subject and record id are bound to the ciphertext (associated data).
            aad = f"{subject}\x00{record_id}".encode()
            rows.append((subject, record_id, nonce, cipher.encrypt(nonce, plain, aad)))
        with self._connect("records.db", _RECORDS_SCHEMA) as con:
            con.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def get(self, subject: str) -> dict[str, dict[str, Any]]:
        """The decrypted records of ``subject`` (record id → fields);
        :class:`SubjectErased` once its key was destroyed."""
        with self._connect("keys.db", _KEYS_SCHEMA) as keys:
            try:
                key = self._data_key(keys, subject, create=False)
            except KeyError:
                return {}
        cipher = AESGCM(key)
        with self._connect("records.db", _RECORDS_SCHEMA) as con:
            rows = con.execute(
                "SELECT record_id, nonce, ciphertext FROM records WHERE subject = ?", (subject,)
            ).fetchall()
        return {
            record_id: json.loads(cipher.decrypt(nonce, data, f"{subject}\x00{record_id}".encode()))
            for record_id, nonce, data in rows
        }

    def subjects_of(self, identifiers: Iterable[str]) -> list[str]:
        """The subjects whose keys cover any of ``identifiers`` (``type:pseudonym``)."""
        wanted = list(identifiers)
        if not wanted:
            return []
        with self._connect("keys.db", _KEYS_SCHEMA) as keys:
            marks = ",".join("?" * len(wanted))
            rows = keys.execute(
                f"SELECT DISTINCT subject FROM subject_identifiers WHERE identifier IN ({marks})",
                wanted,
            ).fetchall()
        return sorted(r[0] for r in rows)

    def identifiers(self) -> list[str]:
        """Every identifier (``type:pseudonym``) some subject's key covers."""
        with self._connect("keys.db", _KEYS_SCHEMA) as keys:
            rows = keys.execute("SELECT DISTINCT identifier FROM subject_identifiers").fetchall()
        return sorted(r[0] for r in rows)

    def rename_identifiers(self, renamed: Callable[[str], str]) -> int:
        """Rename every covered identifier (an HMAC key rotation re-keys the pseudonyms);
        subjects and ciphertexts stay as they are (a subject is bound to its records).
        Returns how many changed."""
        with self._connect("keys.db", _KEYS_SCHEMA) as keys:
            rows = keys.execute("SELECT identifier, subject FROM subject_identifiers").fetchall()
            moved = [(renamed(i), s, i) for i, s in rows if renamed(i) != i]
            keys.executemany(
                "UPDATE subject_identifiers SET identifier = ? WHERE subject = ? AND identifier = ?",
                [(new, subject, old) for new, subject, old in moved],
            )
        return len(moved)

    def destroy(self, subject: str) -> bool:
        """Destroy ``subject``'s data key (crypto-shredding) and drop its ciphertexts;
        copies of the records file elsewhere stay unreadable. True when a key existed."""
        with self._connect("keys.db", _KEYS_SCHEMA) as keys:
            changed = keys.execute(
                "UPDATE data_keys SET wrapped = NULL, "
                "destroyed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                "WHERE subject = ? AND wrapped IS NOT NULL",
                (subject,),
            ).rowcount
            keys.execute("DELETE FROM subject_identifiers WHERE subject = ?", (subject,))
        with self._connect("records.db", _RECORDS_SCHEMA) as con:
            con.execute("DELETE FROM records WHERE subject = ?", (subject,))
        return bool(changed)
