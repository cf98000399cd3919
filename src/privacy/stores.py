"""The one registry of every store that holds person data (PostHog keeps one too).

Each :class:`PersonStore` declares what it covers (tables, files), and how it exports,
deletes and verifies one person's data. A deletion, an export or a verification walks
:func:`registry` — nothing else — so a store that is not registered is a store a deletion
would miss: ``tests/code/test_privacy_registry.py`` fails when any table of the online
store's database, the vault or the lake holds person data without a handler.

Stores here:

- **online** (the online store's SQLite file, shared with the experiment ledger and the
  webhook outbox): every table with a person column, matched by the person's identifiers;
  deletion runs with ``secure_delete`` (freed pages are zeroed), then the write-ahead log
  is checkpointed and truncated and the file vacuumed, so no old copy of a row stays on
  disk; verification counts rows and scans the bytes of the file and its log.
- **lake**: every lake table with a person column; deletion rewrites each Parquet file that
  holds the person's rows without them, atomically (a new file renamed over the old), so
  a reader sees the old file or the new one, never a half-written one.
- **vault**: the person's data keys are destroyed (crypto-shredding) and ciphertexts
  dropped.
- **online_redis** (the online store on Redis, when ``BESPOKE_ONLINE_STORE_URL`` names
  one; its control plane stays in the SQL file above): every kind of key holding person
  data (:data:`REDIS_PERSONAL`), found by the person's identifiers and the logins Redis
  links to them; verification also reads every key and value of the dataset for their
  identifiers, and a deletion asks Redis to rewrite its append-only file (no old copy
  kept on its disk). **shared_answers**: the answers the replicas share in that Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from bespoke.features.lake import TMP_SUFFIX, Lake
from bespoke.features.privacy import PSEUDONYM_KINDS, Rekeying
from bespoke.features.schema import TABLES
from bespoke.privacy.subjects import ANONYMOUS, USER, Subject
from bespoke.serving.db import Database
from bespoke.serving.redis_store import RedisKeys, RedisStore
from bespoke.serving.shared_state import RedisAnswerCache
from bespoke.serving.store_parts import ANONYMOUS as LIVE_ANONYMOUS
from bespoke.serving.store_parts import INBOX_FIELDS
from bespoke.serving.store_parts import USER as LIVE_USER

#: Identifiers shorter than this are not searched for as raw bytes (``"7"`` is in every
#: file); the row-level checks cover them.
MIN_SCANNED_LENGTH = 6


class PersonStore(Protocol):
    """A place that holds person data, and how to export, delete and verify it."""

    name: str

    def covers(self) -> set[str]:
        """What it answers for: ``<store>:<table>`` names (the completeness test's unit)."""
        ...

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]: ...

    def delete(self, subject: Subject) -> dict[str, int]:
        """Erase the person; returns rows (or keys) removed per table."""
        ...

    def verify(self, subject: Subject) -> dict[str, int]:
        """Traces of the person left, per table (and ``bytes:<file>``); all 0 after a
        deletion."""
        ...

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        """Replace every old pseudonym held by new ones (an HMAC key rotation,
        ``bespoke.privacy.rotation``); how many values changed, per table or kind. Applying
        it again changes nothing more."""
        ...


@runtime_checkable
class PseudonymSource(Protocol):
    """A store where pseudonyms are first written (the others hold copies of them)."""

    def pseudonyms(self) -> dict[str, str]:
        """Every pseudonym held, with its kind (``email``, ``phone``, ``ip``, ``zip``)."""
        ...


def _pseudonym_columns(names: list[str]) -> list[tuple[str, str]]:
    """(value column, its kind — a literal ``'kind'`` or the column naming the type) for
    each column of a table that can hold pseudonyms: ``email_hash``…, ``identifier`` with
    ``identifier_type``, ``left_id`` with ``left_type``."""
    out = []
    for name in names:
        if name.endswith("_hash") and name.removesuffix("_hash") in PSEUDONYM_KINDS:
            out.append((name, f"'{name.removesuffix('_hash')}'"))
        elif name == "identifier" and "identifier_type" in names:
            out.append((name, "identifier_type"))
        elif name.endswith("_id") and f"{name.removesuffix('_id')}_type" in names:
            out.append((name, f"{name.removesuffix('_id')}_type"))
    return out


def _kinds_sql() -> str:
    return ", ".join(f"'{k}'" for k in PSEUDONYM_KINDS)


# --- the online store's SQLite file -------------------------------------------------------

#: A column that names the person, by what it holds: a user id, an anonymous id, any
#: identifier value (``subject``), an identifier type's values, or JSON with a user id.
_ANY = "any"
_JSON_USER = "json:user_id"

#: Every table of the online store's file that holds person data, and its person columns.
ONLINE_TABLES: dict[str, dict[str, str]] = {
    "inbox": {"user_id": USER, "anonymous_id": ANONYMOUS, "subject": _ANY, "email_hash": "email",
              "phone_hash": "phone", "device_id": "device_id", "crm_id": "crm_id"},
    "profile_events": {"subject": _ANY},
    "profiles": {"subject": _ANY},
    "last_events": {"subject": _ANY},
    "aliases": {"anonymous_id": ANONYMOUS, "user_id": USER},
    "refused_aliases": {"anonymous_id": ANONYMOUS, "user_id": USER},
    "person_identifiers": {"user_id": USER, "identifier": _ANY},
    "person_scores": {"user_id": USER},
    "person_counters": {"user_id": USER},
    "attributes": {"user_id": USER},
    "segment_changes": {"user_id": USER},
    "outbox": {"payload": _JSON_USER},
    "exposures": {"person": _ANY},
    "consent_ledger": {"identifier": _ANY},
    "campaign_sends": {"user_id": USER},
    "cart_alerts": {"subject": _ANY},
}  # fmt: skip
#: Tables of the same file that hold no person data, and why.
ONLINE_NOT_PERSONAL: dict[str, str] = {
    "flushed": "per-dataset watermarks of the inbox",
    "api_keys": "API keys of applications (names and hashes), not of people",
    "experiment_state": "each experiment's coverage and status",
    "experiment_audit": "changes of experiments' state by operators, with aggregate evidence",
    "experiment_errors": "failed answers counted per experiment and variant",
    "sqlite_sequence": "SQLite's own counters",
    "suppressed": "erased people's identifiers as keyed pseudonyms of a namespace of their "
    "own (and sealed, for a key rotation), kept so that re-imported old data cannot bring "
    "them back",
    "privacy_requests": "deletion requests: keyed pseudonyms and per-store outcomes (the "
    "identifiers a running one needs wait outside this file)",
    "campaign_runs": "each campaign run's folder and count (the e-mails in it: campaigns)",
}


def _values(subject: Subject, kind: str) -> list[str]:
    if kind == _ANY:
        return sorted(subject.ids)
    if kind == _JSON_USER:
        return sorted(subject.user_ids)
    return sorted(subject.values_of(kind))


def _where(columns: Mapping[str, str], subject: Subject) -> tuple[str, list[Any]]:
    """A SQL condition matching the person's rows (``0`` when they have no such id)."""
    parts, args = [], []
    for column, kind in columns.items():
        values = _values(subject, kind)
        if not values:
            continue
        marks = ",".join("?" * len(values))
        target = f"json_extract({column}, '$.user_id')" if kind == _JSON_USER else column
        parts.append(f"{target} IN ({marks})")
        args += values
    return (" OR ".join(parts) or "0"), args


def _dataset(con: Any, table: str) -> str:
    columns = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
    return "dataset = ? AND " if "dataset" in columns else ""


def scan_bytes(paths: Iterable[Path], needles: Iterable[str]) -> dict[str, int]:
    """How many times each file holds any of ``needles`` (UTF-8 bytes), per file."""
    wanted = [n.encode() for n in needles if len(n) >= MIN_SCANNED_LENGTH]
    found = {}
    for path in paths:
        if not path.exists():
            continue
        data = path.read_bytes()
        found[f"bytes:{path.name}"] = sum(data.count(n) for n in wanted)
    return found


@dataclass
class OnlineStore:
    """The online store's SQLite file (profiles, inbox, ledger, outbox)."""

    database: Database
    name: str = "online"

    def _tables(self, con: Any) -> set[str]:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def covers(self) -> set[str]:
        return {f"{self.name}:{t}" for t in ONLINE_TABLES}

    def _matching(self, con: Any, subject: Subject, verb: str) -> Iterator[tuple[str, Any]]:
        """``verb FROM table WHERE <the person's rows>`` run on each present table."""
        present = self._tables(con)
        for table, columns in ONLINE_TABLES.items():
            if table not in present:
                continue
            where, args = _where(columns, subject)
            scope = _dataset(con, table)
            yield (
                table,
                con.execute(
                    f"{verb} FROM {table} WHERE {scope}({where})",
                    [subject.dataset] * bool(scope) + args,
                ),
            )

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        out = {}
        with self.database.read() as con:
            for table, cursor in self._matching(con, subject, "SELECT *"):
                names = [d[0] for d in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                if rows:
                    out[table] = rows
        return out

    def delete(self, subject: Subject) -> dict[str, int]:
        self.database.connection().execute("PRAGMA secure_delete = ON")  # zero freed pages
        with self.database.write() as con:
            removed = {t: c.rowcount for t, c in self._matching(con, subject, "DELETE")}
        # no old copy of a row may stay in the log or in free pages
        self.database.checkpoint()
        self.database.connection().execute("VACUUM")
        self.database.checkpoint()
        return removed

    def verify(self, subject: Subject) -> dict[str, int]:
        with self.database.read() as con:
            traces = {
                t: c.fetchone()[0] for t, c in self._matching(con, subject, "SELECT count(*)")
            }
        path = self.database.path
        files = [path, path.with_name(path.name + "-wal")]
        traces.update(scan_bytes(files, subject.ids))
        return traces

    def pseudonyms(self) -> dict[str, str]:
        found: dict[str, str] = {}
        with self.database.read() as con:
            present = self._tables(con)
            for table in ONLINE_TABLES:
                if table not in present:
                    continue
                names = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
                for column, kind in _pseudonym_columns(names):
                    found.update(con.execute(
                        f"SELECT DISTINCT {column}, {kind} FROM {table} "
                        f"WHERE {column} IS NOT NULL AND {kind} IN ({_kinds_sql()})"
                    ).fetchall())  # fmt: skip
        return found

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        def rekeyed(value: Any) -> Any:
            return rekeying.text(value) if isinstance(value, str) else value

        changed = {}
        self.database.connection().execute("PRAGMA secure_delete = ON")
        with self.database.write() as con:
            con.create_function("rekeyed", 1, rekeyed, deterministic=True)
            present = self._tables(con)
            for table in ONLINE_TABLES:
                if table not in present:
                    continue
                text = [r[1] for r in con.execute(f"PRAGMA table_info({table})")
                        if r[2].upper() in ("TEXT", "")]  # fmt: skip
                sets = ", ".join(f"{c} = rekeyed({c})" for c in text)
                moved = " OR ".join(f"{c} IS NOT rekeyed({c})" for c in text)
                changed[table] = con.execute(f"UPDATE {table} SET {sets} WHERE {moved}").rowcount
        # no old pseudonym may stay in the log or in free pages
        self.database.checkpoint()
        self.database.connection().execute("VACUUM")
        self.database.checkpoint()
        return changed


# --- the lake -------------------------------------------------------------------------------

#: Every lake table that holds person data: a DuckDB condition over a row, given the lists
#: ``$users``, ``$anons``, ``$typed`` (``type:value``), ``$persons`` and ``$ids``.
LAKE_TABLES: dict[str, str] = {
    "events": "user_id IN (SELECT unnest($users)) OR anonymous_id IN (SELECT unnest($anons)) "
              "OR email_hash IN (SELECT unnest($ids)) OR phone_hash IN (SELECT unnest($ids)) "
              "OR device_id IN (SELECT unnest($ids)) OR crm_id IN (SELECT unnest($ids))",
    "users": "user_id IN (SELECT unnest($users))",
    "quarantine": "json_extract_string(record, '$.user_id') IN (SELECT unnest($users)) "
                  "OR json_extract_string(record, '$.anonymous_id') IN (SELECT unnest($anons))",
    "identity_graph": "person_id IN (SELECT unnest($persons)) "
                      "OR identifier_type || ':' || identifier IN (SELECT unnest($typed))",
    "identity_links": "person_id IN (SELECT unnest($persons)) "
                      "OR left_type || ':' || left_id IN (SELECT unnest($typed)) "
                      "OR right_type || ':' || right_id IN (SELECT unnest($typed))",
    "segments": "person IN (SELECT unnest($users)) OR person IN (SELECT unnest($persons))",
    "exposures": "(NOT anonymous AND person IN (SELECT unnest($users))) "
                 "OR (anonymous AND person IN (SELECT unnest($anons)))",
}  # fmt: skip
#: Lake tables without person data, and why.
LAKE_NOT_PERSONAL: dict[str, str] = {"items": "the catalog"}


def _parameters(subject: Subject, table: str) -> dict[str, list[str]]:
    """The lists ``LAKE_TABLES[table]`` uses (DuckDB refuses parameters a query lacks)."""
    lists = {
        "users": sorted(subject.user_ids),
        "anons": sorted(subject.anonymous_ids),
        "typed": sorted(subject.typed),
        "persons": sorted(subject.person_ids),
        "ids": sorted(subject.ids),
    }
    return {name: values for name, values in lists.items() if f"${name}" in LAKE_TABLES[table]}


@dataclass
class LakeStore:
    """The lake's tables (Parquet files on a local folder)."""

    lake: Lake
    name: str = "lake"

    def covers(self) -> set[str]:
        return {f"{self.name}:{t}" for t in LAKE_TABLES}

    def _query(self, table: str, select: str, subject: Subject, group: str = "") -> Any:
        """``SELECT select`` over the person's rows of ``table`` (None: it has no files)."""
        files = self.lake.files(table, subject.dataset)
        if not files:
            return None
        con = self.lake.connect()
        source = f"read_parquet({files!r}, filename = true, union_by_name = true, hive_partitioning = false)"
        return con.execute(
            f"SELECT {select} FROM {source} WHERE dataset = $dataset AND ({LAKE_TABLES[table]}) "
            f"{group}",
            {"dataset": subject.dataset, **_parameters(subject, table)},
        )

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for table in LAKE_TABLES:
            result = self._query(table, "* EXCLUDE (filename)", subject)
            if result is None:
                continue
            rows = result.to_arrow_table().to_pylist()
            if rows:
                out[table] = rows
        return out

    def delete(self, subject: Subject) -> dict[str, int]:
        removed = {}
        with self.lake.exclusive():  # no ingestion meanwhile; crashed writes settled
            for table in LAKE_TABLES:
                result = self._query(
                    table, "filename, count(*)", subject, group="GROUP BY filename"
                )
                if result is None:
                    continue
                counts = dict(result.fetchall())
                removed[table] = sum(counts.values())
                con = self.lake.connect() if counts else None
                for path in counts:
                    _rewrite_without(Path(path), table, subject, self.lake, con)
        return removed

    def verify(self, subject: Subject) -> dict[str, int]:
        traces = {}
        for table in LAKE_TABLES:
            result = self._query(table, "count(*)", subject)
            traces[table] = 0 if result is None else result.fetchone()[0]
        # files under a temporary name (a write in progress, or a crashed one's): readers
        # never see them, but they are on disk
        traces["leftovers"] = sum(
            self._leftover(Path(p), subject) for p in self.lake.temporary_files()
        )
        return traces

    def pseudonyms(self) -> dict[str, str]:
        return _lake_pseudonyms(self.lake)

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        changed = {}
        with self.lake.exclusive():  # no ingestion meanwhile; crashed writes settled
            for table in LAKE_TABLES:
                changed[table] = 0
                for name in self.lake.files(table):
                    path = Path(name)
                    rekeyed, moved = rekeying.table(pq.ParquetFile(path).read())
                    if moved:
                        _replace_parquet(path, rekeyed)
                        changed[table] += moved
        return changed

    def _leftover(self, path: Path, subject: Subject) -> int:
        """Rows of the person in a temporary lake file (its bytes searched for their longer
        ids when it cannot be read as Parquet)."""
        table = path.relative_to(Path(self.lake.path())).parts[0] if self.lake.is_local else ""
        if table not in LAKE_TABLES:
            return 0
        try:
            return (
                self.lake.connect()
                .execute(
                    f"SELECT count(*) FROM read_parquet('{path}', hive_partitioning = false) "
                    f"WHERE dataset = $dataset AND ({LAKE_TABLES[table]})",
                    {"dataset": subject.dataset, **_parameters(subject, table)},
                )
                .fetchone()[0]
            )
        except Exception:  # a half-written file
            return sum(scan_bytes([path], subject.ids).values())


def _lake_pseudonyms(lake: Lake) -> dict[str, str]:
    """Every pseudonym the lake's person tables hold (quarantined records' included)."""
    found: dict[str, str] = {}
    con = lake.connect()
    for table in LAKE_TABLES:
        files = lake.files(table)
        if not files:
            continue
        source = f"read_parquet({files!r}, union_by_name = true, hive_partitioning = false)"
        names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
        for column, kind in _pseudonym_columns(names):
            found.update(con.execute(
                f"SELECT DISTINCT {column}, {kind} FROM {source} "
                f"WHERE {column} IS NOT NULL AND {kind} IN ({_kinds_sql()})"
            ).fetchall())  # fmt: skip
        if "record" in names:  # a quarantined row, as JSON
            for kind in PSEUDONYM_KINDS:
                pattern = f'"{kind}_hash": *"([0-9a-f]{{64}})"'
                found.update(con.execute(
                    f"SELECT DISTINCT unnest(regexp_extract_all(record, '{pattern}', 1)), "
                    f"'{kind}' FROM {source}"
                ).fetchall())  # fmt: skip
    return found


def _replace_parquet(path: Path, table: pa.Table) -> None:
    """Write ``table`` to a new file beside ``path``, fsynced, then rename it over
    ``path`` (a reader sees the old file or the new one)."""
    temporary = path.with_name(path.name + TMP_SUFFIX)
    pq.write_table(table, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _rewrite_without(path: Path, table: str, subject: Subject, lake: Lake, con: Any = None) -> None:
    """Write ``path`` again without the person's rows: a new file, then renamed over it."""
    # NULL ids make the condition NULL, not false: such rows are someone else's
    rewrite_parquet(
        path, table, f"coalesce(dataset = $dataset AND ({LAKE_TABLES[table]}), false)",
        {"dataset": subject.dataset, **_parameters(subject, table)}, lake, con,
    )  # fmt: skip


def rewrite_parquet(
    path: Path,
    table: str,
    drop: str,
    parameters: Mapping[str, Any],
    lake: Lake,
    con: Any = None,
) -> int:
    """Write the lake file ``path`` of ``table`` again without the rows where the DuckDB
    condition ``drop`` holds: a new file, fsynced, then renamed over the old one, so a
    reader sees the old file or the new one. Returns the rows dropped. ``con``: a lake
    connection to reuse over many files."""
    con = con or lake.connect()
    source = f"read_parquet('{path}', hive_partitioning = false)"
    keep = con.execute(
        f"SELECT * FROM {source} WHERE NOT ({drop})", dict(parameters)
    ).to_arrow_table()
    total = pq.ParquetFile(path).metadata.num_rows
    if keep.num_rows == total:
        return 0
    schema = TABLES[table][1]
    keep = keep.select([n for n in schema.names if n in keep.column_names])
    _replace_parquet(path, keep.cast(pa.schema([schema.field(n) for n in keep.column_names])))
    return total - keep.num_rows


# --- the vault -----------------------------------------------------------------------------


@dataclass
class VaultStore:
    """The PII vault: raw values, encrypted under one key per person."""

    vault: Any  # bespoke.identity.vault.Vault
    name: str = "vault"

    def covers(self) -> set[str]:
        return {
            f"{self.name}:records",
            f"{self.name}:subject_identifiers",
            f"{self.name}:data_keys",
        }

    def _subjects(self, subject: Subject) -> list[str]:
        return self.vault.subjects_of(sorted(subject.typed))

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        records = []
        for owner in self._subjects(subject):
            for record_id, values in self.vault.get(owner).items():
                records.append({"record_id": record_id, **values})
        return {"records": records} if records else {}

    def delete(self, subject: Subject) -> dict[str, int]:
        return {"data_keys": sum(self.vault.destroy(owner) for owner in self._subjects(subject))}

    def verify(self, subject: Subject) -> dict[str, int]:
        return {"subject_identifiers": len(self._subjects(subject))}

    def pseudonyms(self) -> dict[str, str]:
        pairs = (i.split(":", 1) for i in self.vault.identifiers())
        return {value: kind for kind, value in pairs if kind in PSEUDONYM_KINDS}

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        return {"subject_identifiers": self.vault.rename_identifiers(rekeying.text)}


# --- the service's answer caches ----------------------------------------------------------


@dataclass
class AnswerCaches:
    """The answers each service worker keeps in memory for a minute (keyed by person). No
    other process can reach into a worker's memory, so a deletion advances a mark beside
    the online store's file, and every worker empties its whole cache at its next request
    when the mark has moved (``bespoke.serving.service``): one ``stat`` per request."""

    database: Database
    name: str = "answer_caches"

    @property
    def path(self) -> Path:
        return self.database.path.with_name(self.database.path.name + ".erasures")

    def mark(self) -> int:
        """The mark now (0 before any deletion)."""
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def covers(self) -> set[str]:
        return {f"{self.name}:workers"}

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        return {}  # copies of answers computed from the other stores, which export them

    def delete(self, subject: Subject) -> dict[str, int]:
        self._advance()
        return {}  # what the workers drop is not counted here

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        self._advance()  # cached answers were computed under the old pseudonyms
        return {}

    def _advance(self) -> None:
        before = self.mark()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(".")  # no person's id: only the time moves
            handle.flush()
            os.fsync(handle.fileno())
        os.utime(self.path, ns=(max(before + 1, self.mark()),) * 2)

    def verify(self, subject: Subject) -> dict[str, int]:
        """Nothing here can look into the workers' memory: each worker checks the mark
        before it answers (``tests/model/test_service_privacy.py`` proves a cached answer
        is gone from every worker at once); a deletion leaves the mark moved."""
        return {"workers": 0}


# --- the online store on Redis ----------------------------------------------------------

#: The kinds of key of the Redis online store (:attr:`RedisKeys.PARTS`) that hold person
#: data, and what of theirs.
REDIS_PERSONAL: dict[str, str] = {
    "inbox": "their events not yet dropped after the flush (pseudonyms, ids)",
    "sent": "the sender ids of their events (dropped with the events)",
    "events": "their profile's latest events",
    "last": "their last time per event type",
    "alias": "the user each of their anonymous ids became",
    "logins": "the anonymous ids each user logged in with",
    "refused": "refused logins (a cookie of another user)",
    "attributes": "their attributes from the lake",
    "identifiers": "their identifiers from the identity graph",
    "scores": "their live segment, churn probability and value",
    "counters": "their running counters",
    "carts": "when they last added to their cart",
}
#: Kinds of key of the same store that hold no person data, and why.
REDIS_NOT_PERSONAL: dict[str, str] = {
    "flushed": "the id of the last inbox entry in the lake",
    "sequence": "a counter ordering profile events",
    "flush-lock": "a running flush's lock token",
}


@dataclass
class RedisOnlineStore:
    """The online store's data in Redis (profiles, inbox, logins, scores)."""

    store: RedisStore
    name: str = "online_redis"

    def covers(self) -> set[str]:
        return {f"{self.name}:{part}" for part in REDIS_PERSONAL}

    def _linked(self, subject: Subject) -> tuple[set[str], set[str]]:
        """(user ids, anonymous ids) of the person, with the logins Redis links to them
        (an anonymous id that became one of their users, and back)."""
        keys, client = RedisKeys(subject.dataset), self.store.client
        users, anons = set(subject.user_ids) | subject.ids, set(subject.anonymous_ids)
        for cookie in sorted(anons):
            if owner := client.get(keys.alias(cookie)):
                users.add(owner)
        for user in sorted(users):
            anons |= set(client.hkeys(keys.logins(user)))
        return users, anons

    def _found(self, subject: Subject) -> dict[str, dict[str, Any]]:
        """Per kind of key: the person's keys (or hash fields, entries) and their content."""
        keys, client = RedisKeys(subject.dataset), self.store.client
        users, anons = self._linked(subject)
        everyone = users | anons
        values: dict[str, dict[str, Any]] = {part: {} for part in REDIS_PERSONAL}
        kinds = {column: subject.values_of(kind) for column, kind in (
            ("email_hash", "email"), ("phone_hash", "phone"), ("device_id", "device_id"),
            ("crm_id", "crm_id"))}  # fmt: skip
        position = {name: 1 + i for i, name in enumerate(INBOX_FIELDS)}
        for entry_id, row in self.store.inbox(subject.dataset):
            mine = (row[position["user_id"]] in users or row[position["anonymous_id"]] in anons
                    or row[position["subject"]] in everyone
                    or any(row[position[c]] in v for c, v in kinds.items() if v))  # fmt: skip
            if mine:
                values["inbox"][entry_id] = dict(zip(INBOX_FIELDS, row[1:], strict=True))
                sender = row[position["source_event_id"]]
                if sender is not None and client.exists(keys.sent(sender)):
                    values["sent"][keys.sent(sender)] = sender
        for person in sorted(everyone):
            for kind in (LIVE_USER, LIVE_ANONYMOUS):
                if found := client.zrange(keys.events(kind, person), 0, -1, withscores=True):
                    values["events"][keys.events(kind, person)] = found
                if found := client.hgetall(keys.last(kind, person)):
                    values["last"][keys.last(kind, person)] = found
            for part, key in (("scores", keys.scores(person)), ("logins", keys.logins(person))):
                if found := client.hgetall(key):
                    values[part][key] = found
            if found := client.get(keys.counters(person)):
                values["counters"][keys.counters(person)] = found
            for part, key in (("attributes", keys.attributes), ("identifiers", keys.identifiers)):
                if found := client.hget(key, person):
                    values[part][f"{key}#{person}"] = found
        for cookie in sorted(anons):
            if found := client.get(keys.alias(cookie)):
                values["alias"][keys.alias(cookie)] = found
        for kind in (LIVE_USER, LIVE_ANONYMOUS):
            for person in sorted(users if kind == LIVE_USER else anons):
                member = RedisKeys.cart_member(kind, person)
                if (added := client.zscore(keys.carts, member)) is not None:
                    values["carts"][member] = added
        for index, text in enumerate(client.lrange(keys.refused, 0, -1)):
            refusal = json.loads(text)
            if refusal["anonymous_id"] in anons or refusal["user_id"] in users:
                values["refused"][f"{index}"] = text
        return values

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        return {part: [{"key": k, "value": v} for k, v in found.items()]
                for part, found in self._found(subject).items() if found}  # fmt: skip

    def delete(self, subject: Subject) -> dict[str, int]:
        keys, client = RedisKeys(subject.dataset), self.store.client
        found = self._found(subject)
        pipe = client.pipeline(transaction=True)
        if found["inbox"]:
            pipe.xdel(keys.inbox, *found["inbox"])
        for part in ("sent", "events", "last", "scores", "logins", "counters", "alias"):
            if found[part]:
                pipe.delete(*found[part])
        for part, key in (("attributes", keys.attributes), ("identifiers", keys.identifiers)):
            people = [name.split("#", 1)[1] for name in found[part]]
            if people:
                pipe.hdel(key, *people)
        for text in found["refused"].values():
            pipe.lrem(keys.refused, 0, text)
        if found["carts"]:
            pipe.zrem(keys.carts, *found["carts"])
        pipe.execute()
        # the append-only file holds the deleted values until rewritten (a rewrite already
        # running writes the current data too)
        with contextlib.suppress(redis.ResponseError):
            client.bgrewriteaof()
        return {part: len(values) for part, values in found.items()}

    def verify(self, subject: Subject) -> dict[str, int]:
        traces = {part: len(values) for part, values in self._found(subject).items()}
        traces["keys_and_values"] = self._scan(subject)
        return traces

    def _scan(self, subject: Subject) -> int:
        """Keys of the dataset whose name or content holds one of the person's longer
        identifiers (the raw scan the SQLite store gets as bytes of its file)."""
        client = self.store.client
        needles = [i for i in subject.ids if len(i) >= MIN_SCANNED_LENGTH]
        if not needles:
            return 0
        found = 0
        for name in client.scan_iter(match=RedisKeys(subject.dataset).prefix + "*", count=1000):
            text = name + "\n" + "\n".join(_redis_values(client, name))
            found += any(n in text for n in needles)
        return found

    def pseudonyms(self) -> dict[str, str]:
        found: dict[str, str] = {}
        client = self.store.client
        for dataset in self.store.datasets():
            for _, row in self.store.inbox(dataset):
                values = dict(zip(INBOX_FIELDS, row[1:], strict=True))
                for kind in ("email", "phone", "ip"):
                    if values[f"{kind}_hash"] is not None:
                        found[values[f"{kind}_hash"]] = kind
            for text in client.hvals(RedisKeys(dataset).identifiers):
                for kind, value, *_ in json.loads(text):
                    if kind in PSEUDONYM_KINDS:
                        found[value] = kind
        return found

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        """Every key's name and content re-keyed (a person named after a pseudonym has
        keys named after it); the inbox stream rebuilt with the same entry ids."""
        client = self.store.client
        changed: dict[str, int] = defaultdict(int)
        for dataset in self.store.datasets():
            for name in list(client.scan_iter(match=RedisKeys(dataset).prefix + "*", count=1000)):
                if _rekey_key(client, name, rekeying):
                    changed[RedisKeys.part(name) or "other"] += 1
        return dict(changed)


def _redis_values(client: Any, name: str) -> list[str]:
    """Everything a key holds, as text, whatever its type."""
    kind = client.type(name)
    if kind == "string":
        return [client.get(name) or ""]
    if kind == "hash":
        return [text for pair in client.hgetall(name).items() for text in pair]
    if kind == "list":
        return client.lrange(name, 0, -1)
    if kind == "set":
        return sorted(client.smembers(name))
    if kind == "zset":
        return client.zrange(name, 0, -1)
    if kind == "stream":
        return [t for _, fields in client.xrange(name) for pair in fields.items() for t in pair]
    return []


def _rekey_key(client: Any, name: str, rekeying: Rekeying) -> bool:
    """Re-key one key's name and content in one transaction; whether anything changed."""
    new_name = rekeying.text(name)
    kind = client.type(name)
    pipe = client.pipeline(transaction=True)
    if kind == "string":
        value = client.get(name)
        new, moved = rekeying.text(value), rekeying.text(value) != value
        pipe.delete(name)
        pipe.set(new_name, new)
    elif kind == "hash":
        fields = client.hgetall(name)
        new = {rekeying.text(k): rekeying.text(v) for k, v in fields.items()}
        moved = new != fields
        pipe.delete(name)
        pipe.hset(new_name, mapping=new)
    elif kind == "list":
        items = client.lrange(name, 0, -1)
        new = [rekeying.text(v) for v in items]
        moved = new != items
        pipe.delete(name)
        pipe.rpush(new_name, *new)
    elif kind == "set":
        members = client.smembers(name)
        new = {rekeying.text(v) for v in members}
        moved = new != members
        pipe.delete(name)
        pipe.sadd(new_name, *new)
    elif kind == "zset":
        scored = client.zrange(name, 0, -1, withscores=True)
        new = {rekeying.text(m): score for m, score in scored}
        moved = set(new) != {m for m, _ in scored}
        pipe.delete(name)
        pipe.zadd(new_name, new)
    elif kind == "stream":
        entries = client.xrange(name)
        new = [(entry_id, {k: rekeying.text(v) for k, v in fields.items()})
               for entry_id, fields in entries]  # fmt: skip
        moved = new != entries
        if not moved and new_name == name:
            return False
        pipe.delete(name)
        for entry_id, fields in new:  # the same ids: the flush's watermark still holds
            pipe.xadd(new_name, fields, id=entry_id)
    else:
        return False
    if not moved and new_name == name:
        pipe.reset()
        return False
    pipe.execute()
    return True


@dataclass
class SharedAnswerCache:
    """The answers service replicas share in Redis (beside a Redis online store): a
    deletion drops them all, as every worker drops its own (:class:`AnswerCaches`), and
    its verification searches what is cached meanwhile for the person's identifiers."""

    cache: RedisAnswerCache
    name: str = "shared_answers"

    def covers(self) -> set[str]:
        return {f"{self.name}:entries"}

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        return {}  # copies of answers computed from the other stores, which export them

    def delete(self, subject: Subject) -> dict[str, int]:
        naming = self.cache.naming(subject.ids)
        self.cache.clear()
        return {"entries": naming}

    def verify(self, subject: Subject) -> dict[str, int]:
        return {"entries": self.cache.naming(subject.ids)}

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        self.cache.clear()  # computed under the old pseudonyms
        return {}


# --- models that embed histories ----------------------------------------------------------

#: The files of a logged model that hold people, by what they are.
_EXAMPLES = {"input_example.json", "serving_input_example.json"}
#: What an erased person's id becomes in a model's input example.
EXAMPLE_PLACEHOLDER = "example-user"


@dataclass
class ModelStore:
    """Models that embed people: every recommender's saved state (its user index, the
    items each user was seen with, per-user factors), the ranker's stored histories
    (Parquet with a ``user_id`` column) and the input examples MLflow keeps with a model
    (a user id). Both copies are covered: the MLflow artifact store and BentoML's model
    store and Bentos (``bespoke-*``). A deletion re-exports each file without the person,
    atomically, in place: the version keeps serving, now without them."""

    roots: list[Path]
    name: str = "models"

    @classmethod
    def of(cls, mlflow_artifacts: Path | None, bentoml_home: Path | None) -> ModelStore:
        roots = [mlflow_artifacts] if mlflow_artifacts else []
        if bentoml_home is not None:
            for part in ("models", "bentos"):
                folder = bentoml_home / part
                if folder.is_dir():
                    roots += sorted(folder.glob("bespoke*"))
        return cls(roots)

    def covers(self) -> set[str]:
        return {f"{self.name}:{kind}" for kind in ("user_index", "histories", "input_examples")}

    def _files(self, dataset: str | None = None) -> Iterator[tuple[str, Path]]:
        """The model files that can hold people: of ``dataset``'s models only (an MLflow
        experiment or a registered/BentoML model named after it), or of every model."""
        from bespoke.training.base import STATE_FILE

        folders = _model_folders(dataset) if dataset is not None else None
        for root in self.roots:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                if path.is_symlink() or not path.is_file():
                    continue
                named = (root.name, *path.relative_to(root).parts[:2])
                if folders is not None and folders.isdisjoint(named):
                    continue
                if path.name == STATE_FILE:
                    yield "user_index", path
                elif path.suffix == ".parquet" and "user_id" in pq.read_schema(path).names:
                    yield "histories", path
                elif path.name in _EXAMPLES:
                    yield "input_examples", path

    def _count(self, kind: str, path: Path, users: list[str]) -> int:
        from bespoke.training.base import saved_users

        if kind == "user_index":
            return saved_users(path, users)
        if kind == "histories":
            column = pq.read_table(path, columns=["user_id"]).column("user_id").cast(pa.string())
            return pc.sum(pc.is_in(column, value_set=pa.array(users))).as_py() or 0
        return sum(1 for _ in _example_rows(json.loads(path.read_text()), users))

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        users = sorted(subject.user_ids)
        out: dict[str, list[dict[str, Any]]] = {}
        if not users:
            return out
        for kind, path in self._files(subject.dataset):
            if count := self._count(kind, path, users):
                out.setdefault(kind, []).append({"file": str(path), "entries": count})
        return out

    def delete(self, subject: Subject) -> dict[str, int]:
        from bespoke.training.base import remove_saved_users

        users = sorted(subject.user_ids)
        removed = dict.fromkeys(("user_index", "histories", "input_examples"), 0)
        if not users:
            return removed
        for kind, path in self._files(subject.dataset):
            if kind == "user_index":
                removed[kind] += remove_saved_users(path, users)
            elif kind == "histories" and (count := self._count(kind, path, users)):
                table = pq.read_table(path)
                mine = pc.is_in(
                    table.column("user_id").cast(pa.string()), value_set=pa.array(users)
                )
                kept = table.filter(pc.invert(mine))
                sink = pa.BufferOutputStream()
                pq.write_table(kept, sink)
                _replace(path, sink.getvalue().to_pybytes())
                removed[kind] += count
            elif kind == "input_examples":
                document = json.loads(path.read_text())
                rows = list(_example_rows(document, users))
                for row, position in rows:
                    row[position] = EXAMPLE_PLACEHOLDER
                if rows:
                    _replace(path, json.dumps(document).encode())
                removed[kind] += len(rows)
        return removed

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        """User ids keyed on an e-mail pseudonym, in every model file (all datasets)."""
        from bespoke.training.base import rename_saved_users

        changed = dict.fromkeys(("user_index", "histories", "input_examples"), 0)
        for kind, path in self._files():
            if kind == "user_index":
                changed[kind] += rename_saved_users(path, rekeying.text)
            elif kind == "histories":
                table, moved = rekeying.table(pq.read_table(path))
                if moved:
                    sink = pa.BufferOutputStream()
                    pq.write_table(table, sink)
                    _replace(path, sink.getvalue().to_pybytes())
                    changed[kind] += moved
            else:
                text = path.read_text()
                if (rekeyed := rekeying.text(text)) != text:
                    _replace(path, rekeyed.encode())
                    changed[kind] += 1
        return changed

    def verify(self, subject: Subject) -> dict[str, int]:
        users = sorted(subject.user_ids)
        traces = dict.fromkeys(("user_index", "histories", "input_examples"), 0)
        if users:
            for kind, path in self._files(subject.dataset):
                traces[kind] += self._count(kind, path, users)
        return traces


def _model_folders(dataset: str) -> set[str]:
    """The folder names a dataset's models are kept under: its MLflow experiments and its
    registered (and BentoML) model names."""
    from typing import get_args

    from bespoke.training.registry import Kind, experiment_name, registered_name

    kinds = get_args(Kind)
    return {experiment_name(k, dataset) for k in kinds} | {
        registered_name(k, dataset) for k in kinds
    }


def _example_rows(document: Any, users: list[str]) -> Iterator[tuple[list[Any], int]]:
    """(row, position) of each user id of ``users`` in an MLflow input example (pandas
    ``split`` orient, at the top or under ``dataframe_split``)."""
    if isinstance(document, dict):
        columns, data = document.get("columns"), document.get("data")
        if isinstance(columns, list) and "user_id" in columns and isinstance(data, list):
            position = columns.index("user_id")
            for row in data:
                if isinstance(row, list) and len(row) > position and str(row[position]) in users:
                    yield row, position
        for value in document.values():
            if isinstance(value, dict | list):
                yield from _example_rows(value, users)


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file, then rename it over ``path``."""
    temporary = path.with_name(path.name + TMP_SUFFIX)
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


# --- logs and reports ---------------------------------------------------------------------

#: Fields that name a person in a structured log line, a JSON report or a CSV export.
PERSON_FIELDS = frozenset({"user_id", "anonymous_id", "person", "person_id", "subject"})


@dataclass
class FileStore:
    """Files that may name people: the service's and jobs' logs (``*.log``, ``*.jsonl``)
    and the reports folder (HTML, JSON, CSV). Structured content is read as such — a log
    line or JSON object naming the person in a person field, a CSV row with them in a
    person column — and any file is also searched for the person's longer identifiers as
    text. A deletion drops those lines, objects and rows (each file rewritten atomically),
    and removes a report file that names them in free text (reports are recomputed)."""

    name: str
    roots: list[Path]
    patterns: tuple[str, ...] = ("*.log", "*.jsonl", "*.json", "*.csv", "*.html")

    def covers(self) -> set[str]:
        return {f"{self.name}:files"}

    def _files(self) -> Iterator[Path]:
        for root in self.roots:
            if root.is_file():
                yield root
            elif root.is_dir():
                for pattern in self.patterns:
                    yield from (p for p in sorted(root.rglob(pattern)) if p.is_file())

    def _scan(self, path: Path, subject: Subject) -> tuple[int, str | None]:
        """(entries naming the person, the file's text without them — None: remove the
        file)."""
        ids = subject.ids
        long_ids = [i for i in ids if len(i) >= MIN_SCANNED_LENGTH]
        text = path.read_text(errors="replace")
        if path.suffix in {".log", ".jsonl"}:
            lines = text.splitlines(keepends=True)
            kept = [line for line in lines if not _names(line, ids, long_ids)]
            return len(lines) - len(kept), "".join(kept)
        if path.suffix == ".csv":
            import csv
            import io

            rows = list(csv.reader(io.StringIO(text)))
            if not rows:
                return 0, text
            columns = [i for i, c in enumerate(rows[0]) if c in PERSON_FIELDS]
            kept = [rows[0]] + [r for r in rows[1:] if not any(
                i < len(r) and r[i] in ids for i in columns) and not any(x in ",".join(r) for x in long_ids)]  # fmt: skip
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(kept)
            return len(rows) - len(kept), out.getvalue()
        if path.suffix == ".json":
            try:
                document = json.loads(text)
            except ValueError:
                document = None
            if isinstance(document, dict) and any(
                str(document.get(f)) in ids for f in PERSON_FIELDS if f in document
            ):
                return 1, None  # the whole file is about them
            if document is not None:
                found = _drop_people(document, ids)
                rest = json.dumps(document, indent=2)
                extra = sum(rest.count(x) for x in long_ids)
                return found + extra, (None if extra else rest)
        found = sum(text.count(x) for x in long_ids)
        return found, (None if found else text)

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        files = [{"file": str(p), "entries": n} for p in self._files()
                 if (n := self._scan(p, subject)[0])]  # fmt: skip
        return {"files": files} if files else {}

    def delete(self, subject: Subject) -> dict[str, int]:
        removed = 0
        for path in list(self._files()):
            count, rest = self._scan(path, subject)
            if not count:
                continue
            removed += count
            if rest is None:
                path.unlink()
            else:
                _replace(path, rest.encode())
        return {"files": removed}

    def verify(self, subject: Subject) -> dict[str, int]:
        return {"files": sum(self._scan(p, subject)[0] for p in self._files())}

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        changed = 0
        for path in list(self._files()):
            text = path.read_text(errors="replace")
            if (rekeyed := rekeying.text(text)) != text:
                _replace(path, rekeyed.encode())
                changed += 1
        return {"files": changed}


def _names(line: str, ids: frozenset[str], long_ids: list[str]) -> bool:
    """Whether a log line names the person: a person field of a JSON line, or one of
    their longer ids anywhere in it."""
    if any(x in line for x in long_ids):
        return True
    if line.lstrip().startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return False
        return isinstance(record, dict) and _drop_people(dict(record), ids) > 0
    return False


def _drop_people(document: Any, ids: frozenset[str]) -> int:
    """Remove, in place, every object of ``document`` with a person field naming one of
    ``ids`` from the list holding it; returns how many objects name them (an object at
    the top counts without being removable)."""
    found = 0
    if isinstance(document, dict):
        if any(str(document.get(f)) in ids for f in PERSON_FIELDS if f in document):
            return 1
        for value in document.values():
            found += _drop_people(value, ids)
    elif isinstance(document, list):
        keep = []
        for item in document:
            if isinstance(item, dict) and any(
                str(item.get(f)) in ids for f in PERSON_FIELDS if f in item
            ):
                found += 1
            else:
                found += _drop_people(item, ids)
                keep.append(item)
        document[:] = keep
    return found


# --- rendered e-mail campaigns ------------------------------------------------------------


@dataclass
class CampaignFiles:
    """The e-mails campaigns rendered (``bespoke.channels.campaigns``): every run's folder
    (listed in the online store's ``campaign_runs``) holds one file per person and a
    ``manifest.jsonl`` naming who got which file. A deletion removes the person's e-mails
    and their manifest lines (each manifest rewritten atomically)."""

    database: Database
    name: str = "campaigns"

    def covers(self) -> set[str]:
        return {f"{self.name}:emails", f"{self.name}:manifests"}

    def _manifests(self) -> list[Path]:
        with self.database.read() as con:
            if not con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'campaign_runs'"
            ).fetchone():
                return []
            folders = [
                Path(r[0]) for r in con.execute("SELECT DISTINCT out_dir FROM campaign_runs")
            ]
        return [f / "manifest.jsonl" for f in folders if (f / "manifest.jsonl").is_file()]

    def _entries(self, subject: Subject) -> Iterator[tuple[Path, list[str], list[int]]]:
        """Per manifest: its lines, and the positions of the person's."""
        users = subject.user_ids
        for manifest in self._manifests():
            lines = manifest.read_text().splitlines(keepends=True)
            mine = [i for i, line in enumerate(lines)
                    if json.loads(line).get("user_id") in users]  # fmt: skip
            yield manifest, lines, mine

    def export(self, subject: Subject) -> dict[str, list[dict[str, Any]]]:
        rows = [json.loads(lines[i]) | {"folder": str(m.parent)}
                for m, lines, mine in self._entries(subject) for i in mine]  # fmt: skip
        return {"emails": rows} if rows else {}

    def delete(self, subject: Subject) -> dict[str, int]:
        removed = {"emails": 0, "manifests": 0}
        for manifest, lines, mine in self._entries(subject):
            if not mine:
                continue
            for i in mine:
                email = manifest.parent / json.loads(lines[i])["file"]
                if email.exists():
                    email.unlink()
                    removed["emails"] += 1
            kept = [line for i, line in enumerate(lines) if i not in set(mine)]
            _replace(manifest, "".join(kept).encode())
            removed["manifests"] += len(mine)
        return removed

    def verify(self, subject: Subject) -> dict[str, int]:
        traces = {"emails": 0, "manifests": 0}
        for manifest, lines, mine in self._entries(subject):
            traces["manifests"] += len(mine)
            traces["emails"] += sum(
                (manifest.parent / json.loads(lines[i])["file"]).exists() for i in mine
            )
        return traces

    def rekey(self, rekeying: Rekeying) -> dict[str, int]:
        changed = 0
        for manifest in self._manifests():
            text = manifest.read_text()
            if (rekeyed := rekeying.text(text)) != text:
                _replace(manifest, rekeyed.encode())
                changed += 1
        return {"manifests": changed}


def registry(
    *,
    online: Database | None,
    lake: Lake | None,
    vault: Any | None,
    models: ModelStore | None = None,
    files: Iterable[FileStore] = (),
    redis: RedisStore | None = None,
) -> list[PersonStore]:
    """Every store holding person data that this installation has (``online``: the
    SQLite online store's file, or the control database beside a ``redis`` one)."""
    stores: list[PersonStore] = []
    if online is not None:
        stores.append(OnlineStore(online))
        stores.append(AnswerCaches(online))
        stores.append(CampaignFiles(online))
    if redis is not None:
        stores.append(RedisOnlineStore(redis))
        stores.append(SharedAnswerCache(RedisAnswerCache(redis.url)))
    if lake is not None:
        stores.append(LakeStore(lake))
    if vault is not None:
        stores.append(VaultStore(vault))
    if models is not None:
        stores.append(models)
    stores.extend(files)
    return stores


def export_subject(subject: Subject, stores: Iterable[PersonStore]) -> dict[str, Any]:
    """Everything held about the person (the right of access), from every store."""
    return {
        "subject": subject.as_dict(),
        "stores": {store.name: store.export(subject) for store in stores},
    }


def as_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, default=str, sort_keys=True)
