"""The suppression list: who was erased, as keyed pseudonyms, so that old data of theirs
cannot come back.

Erasing a person removes their rows; it does not stop a source that still holds old
events of theirs (last year's CSV export, a replayed event log) from bringing them back at
the next import. Each erasure therefore adds a pseudonym of every identifier of the person
(``HMAC(key, "suppressed:<dataset>:<type>:<value>")``, a namespace of its own, so that no
other store's pseudonym, e-mail pseudonyms included, can be found in it) with the time of
the erasure. Ingestion, live and batch, leaves out events whose identifier is on the list
and which happened before that time; what the person does after it is new data, gated by
consent like anyone's.

An HMAC key rotation must carry the list over, but a pseudonym of an e-mail pseudonym
cannot be re-keyed without that e-mail pseudonym. Each entry therefore also keeps its
identifier sealed (AES-GCM under a key derived from the installation's HMAC key, which no
rotation changes): the rotation opens it, re-keys it like every stored pseudonym and
writes the entry again (:meth:`SuppressionList.rekey`). The sealed bytes hold no
identifier a trace scan could find.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime

import pandas as pd
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bespoke.features.privacy import PSEUDONYM_KINDS, Rekeying, pseudonym, rekeyed
from bespoke.features.schema import IDENTIFIER_COLUMNS
from bespoke.serving.db import Database
from bespoke.settings import PseudonymKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressed (
    dataset TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    erased_at INTEGER NOT NULL,
    sealed BLOB,                 -- the identifier, sealed (nonce + AES-GCM)
    key_version INTEGER,         -- the HMAC key version of the pseudonym (NULL: 1)
    PRIMARY KEY (dataset, pseudonym)
) WITHOUT ROWID
"""
_ADDED = {"suppressed": {"sealed": "BLOB", "key_version": "INTEGER"}}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Event columns by the identifier type they hold (``email_hash`` holds ``email``).
COLUMN_TYPES = {column: kind for kind, column in IDENTIFIER_COLUMNS.items()}


def _micros(moment: datetime) -> int:
    return int((moment - _EPOCH).total_seconds() * 1_000_000)


class SuppressionList:
    """The list in the online store's ``database``; opening it touches nothing."""

    def __init__(self, database: Database, key: bytes) -> None:
        self.database = database
        self.key = key

    def _ready(self) -> Database:
        self.database.ensure("suppressed", _SCHEMA, _ADDED)
        return self.database

    def pseudonym(self, dataset: str, identifier_type: str, value: str) -> str:
        return pseudonym(self.key, "suppressed", f"{dataset}:{identifier_type}:{value}")

    def _cipher(self) -> AESGCM:
        # from version 1's key, which rotations keep: entries stay openable after one
        derived = HKDF(hashes.SHA256(), 32, salt=None, info=b"bespoke suppression seal")
        return AESGCM(derived.derive(bytes(self.key)))

    def _seal(self, dataset: str, identifier: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._cipher().encrypt(nonce, identifier.encode(), dataset.encode())

    def _open(self, dataset: str, sealed: bytes) -> str:
        return self._cipher().decrypt(sealed[:12], sealed[12:], dataset.encode()).decode()

    def rekey(self, rekeying: Rekeying, new_key: PseudonymKey) -> dict[str, int]:
        """Write every entry again under ``new_key`` (the key after a rotation), its
        identifier re-keyed by ``rekeying``. An entry made before entries were sealed
        can only follow the rotation when its identifier is no pseudonym (a user id):
        it is re-keyed as a pseudonym of the old key; returns how many were of each."""
        after = SuppressionList(self.database, new_key)
        with self._ready().write() as con:
            rows = con.execute(
                "SELECT dataset, pseudonym, erased_at, sealed FROM suppressed"
            ).fetchall()
            renewed, unsealed = [], 0
            for dataset, old, erased_at, sealed in rows:
                if sealed is None:
                    unsealed += 1
                    renewed.append((dataset, rekeyed(new_key.rotations[-1], old), erased_at, None))
                    continue
                kind, value = self._open(dataset, sealed).split(":", 1)
                # an erased person's e-mail pseudonym is held nowhere else, so it is not in
                # the map: it is re-keyed here
                value = (rekeyed(new_key.rotations[-1], value) if kind in PSEUDONYM_KINDS
                         else rekeying.text(value))  # fmt: skip
                renewed.append((dataset, after.pseudonym(dataset, kind, value), erased_at,
                                after._seal(dataset, f"{kind}:{value}"), new_key.version))  # fmt: skip
            con.executemany(
                "DELETE FROM suppressed WHERE dataset = ? AND pseudonym = ?",
                [(dataset, old) for dataset, old, *_ in rows],
            )
            con.executemany(
                "INSERT INTO suppressed (dataset, pseudonym, erased_at, sealed, key_version) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (dataset, pseudonym) DO UPDATE SET "
                "erased_at = max(erased_at, excluded.erased_at)",
                renewed,
            )
        return {"sealed": len(rows) - unsealed, "unsealed": unsealed}

    def add(self, dataset: str, typed: Iterable[str], erased_at: datetime | None = None) -> int:
        """Suppress each ``type:value`` identifier from ``erased_at`` back (a later erasure
        of the same identifier moves the time forward); returns how many were new."""
        stamp = _micros(erased_at or datetime.now(UTC))
        version = getattr(self.key, "version", 1)
        rows = [
            (dataset, self.pseudonym(dataset, *item.split(":", 1)), stamp,
             self._seal(dataset, item), version)
            for item in sorted(typed)
        ]  # fmt: skip
        with self._ready().write() as con:
            before = con.total_changes
            con.executemany(
                "INSERT INTO suppressed (dataset, pseudonym, erased_at, sealed, key_version) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (dataset, pseudonym) "
                "DO UPDATE SET erased_at = max(erased_at, excluded.erased_at), "
                "sealed = excluded.sealed, key_version = excluded.key_version",
                rows,
            )
            new = con.total_changes - before
        return new

    def _erased_at(self, dataset: str, pseudonyms: list[str] | None) -> dict[str, int]:
        with self._ready().read() as con:
            if pseudonyms is None:
                rows = con.execute(
                    "SELECT pseudonym, erased_at FROM suppressed WHERE dataset = ?", [dataset]
                ).fetchall()
            elif not pseudonyms:
                return {}
            else:
                marks = ",".join("?" * len(pseudonyms))
                rows = con.execute(
                    "SELECT pseudonym, erased_at FROM suppressed WHERE dataset = ? AND "
                    f"pseudonym IN ({marks})",
                    [dataset, *pseudonyms],
                ).fetchall()
        return dict(rows)

    def count(self, dataset: str) -> int:
        with self._ready().read() as con:
            return con.execute(
                "SELECT count(*) FROM suppressed WHERE dataset = ?", [dataset]
            ).fetchone()[0]

    def suppressed(self, dataset: str, events: pd.DataFrame) -> pd.Series:
        """Per row of ``events`` (identifier columns and ``timestamp``): whether it is an
        erased person's event from before their erasure. Each distinct value is hashed
        once."""
        out = pd.Series(False, index=events.index)
        listed = self._erased_at(dataset, None)
        if not listed:
            return out
        moments = pd.to_datetime(events["timestamp"], utc=True, errors="coerce")
        micros = ((moments - pd.Timestamp(_EPOCH)) // pd.Timedelta(microseconds=1)).astype(
            "Float64"
        )
        for column, kind in COLUMN_TYPES.items():
            if column not in events:
                continue
            values = events[column].dropna().astype(str)
            distinct = values.unique()
            erased = {
                v: listed[p] for v in distinct if (p := self.pseudonym(dataset, kind, v)) in listed
            }
            if not erased:
                continue
            limit = values.map(erased).reindex(events.index).astype("Float64")
            # an event without a time is old data: it cannot have happened after
            out |= (limit.notna() & (micros.isna() | (micros <= limit))).fillna(False).astype(bool)
        return out

    def erased(
        self, dataset: str, events: list[tuple[dict[str, str | None], datetime]]
    ) -> list[bool]:
        """Per event (identifier column → value, time): whether it is an erased person's
        from before their erasure (the live path: one look-up for the whole batch)."""
        wanted = [
            {self.pseudonym(dataset, COLUMN_TYPES[c], v) for c, v in ids.items()
             if v is not None and c in COLUMN_TYPES}
            for ids, _ in events
        ]  # fmt: skip
        listed = self._erased_at(dataset, sorted(set().union(*wanted)) if wanted else [])
        if not listed:
            return [False] * len(events)
        return [
            any(_micros(moment) <= listed[p] for p in names if p in listed)
            for names, (_, moment) in zip(wanted, events, strict=True)
        ]
