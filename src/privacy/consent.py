"""The consent ledger: per person and purpose, every grant and withdrawal, and their source.

A person decides per purpose (:class:`~bespoke.features.schema.ConsentPurpose`:
personalization, analytics, marketing, …); each decision is one row of the ledger — when
it was made, what it said, where it came from (the API, an event, an import, a
consent-management platform's signal, the command line) — and rows are never updated, so
the ledger is its own history. A person's **state** for a purpose is their latest
decision across every identifier they are known by: a user id, and the anonymous ids the
online store's aliases link to it (a withdrawal made while browsing anonymously holds
after logging in, and a later grant on the account overrides it).

The ledger lives in the online store's SQLite file, beside the profiles it governs, so
the service checks it in the same place it reads a profile. :mod:`bespoke.privacy.gate`
enforces it: live and batch ingestion, training sets and features, serving.

A purpose without any decision has no state (``None``): what an event's own ``consent``
field says applies then, as it always has.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from bespoke.features.schema import ConsentPurpose
from bespoke.privacy.audit import AuditLog, person_pseudonym
from bespoke.serving.db import Database, table_exists

USER = "user_id"
ANONYMOUS = "anonymous_id"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consent_ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    identifier_type TEXT NOT NULL,
    identifier TEXT NOT NULL,
    purpose TEXT NOT NULL,
    granted INTEGER NOT NULL,
    decided_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    detail TEXT,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_subject
    ON consent_ledger (dataset, identifier_type, identifier, purpose)
"""

#: A person's latest decision for a purpose across the ids the aliases link (the same
#: identities as :meth:`ConsentLedger._identities`), in one query.
_LATEST_DECISION = """
WITH users(id) AS (
    SELECT :user WHERE :user IS NOT NULL
    UNION SELECT user_id FROM aliases WHERE dataset = :dataset AND anonymous_id = :anon
), anons(id) AS (
    SELECT :anon WHERE :anon IS NOT NULL
    UNION SELECT anonymous_id FROM aliases
    WHERE dataset = :dataset AND user_id IN (SELECT id FROM users)
)
SELECT granted, decided_at, seq FROM consent_ledger
WHERE dataset = :dataset AND identifier_type = :user_type
  AND identifier IN (SELECT id FROM users) AND purpose = :purpose
UNION ALL
SELECT granted, decided_at, seq FROM consent_ledger
WHERE dataset = :dataset AND identifier_type = :anon_type
  AND identifier IN (SELECT id FROM anons) AND purpose = :purpose
ORDER BY decided_at DESC, seq DESC LIMIT 1
"""
#: The same before the online store has linked anyone.
_LATEST_DECISION_UNLINKED = """
SELECT granted, decided_at, seq FROM consent_ledger
WHERE dataset = :dataset AND identifier_type = :user_type AND identifier = :user
  AND purpose = :purpose
UNION ALL
SELECT granted, decided_at, seq FROM consent_ledger
WHERE dataset = :dataset AND identifier_type = :anon_type AND identifier = :anon
  AND purpose = :purpose
ORDER BY decided_at DESC, seq DESC LIMIT 1
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("a consent decision's time needs a time zone")
    return int((moment - _EPOCH).total_seconds() * 1_000_000)


def _moment(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


class ConsentSource(StrEnum):
    """Where a decision came from."""

    API = "api"
    EVENT = "event"
    IMPORT = "import"
    #: A consent-management platform's signal (a CMP callback, a TCF string).
    CMP = "cmp"
    CLI = "cli"


class ConsentError(ValueError):
    """A decision that cannot be recorded (no person named, no purpose, a naive time)."""


@dataclass(frozen=True)
class Decision:
    """One grant or withdrawal, as recorded."""

    purpose: ConsentPurpose
    granted: bool
    decided_at: datetime
    source: ConsentSource
    identifier_type: str
    identifier: str
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose.value,
            "granted": self.granted,
            "decided_at": self.decided_at.isoformat(),
            "source": self.source.value,
            "identifier_type": self.identifier_type,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Withdrawn:
    """Who withdrew one purpose in one dataset: their user ids and anonymous ids (a
    user's aliased anonymous ids included)."""

    dataset: str
    purpose: ConsentPurpose
    user_ids: frozenset[str] = frozenset()
    anonymous_ids: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.user_ids or self.anonymous_ids)


class ConsentLedger:
    """The ledger in the online store's ``database``; opening it touches nothing. With an
    ``audit`` log (and the pseudonym ``key``), every recorded change is also an audit
    entry naming the person by pseudonym."""

    def __init__(
        self, database: Database, *, audit: AuditLog | None = None, key: bytes | None = None
    ) -> None:
        self.database = database
        self.audit = audit
        self.key = key

    def _ready(self) -> Database:
        self.database.ensure("consent", _SCHEMA)
        return self.database

    # --- writing -------------------------------------------------------------------------

    def record(
        self,
        dataset: str,
        purposes: dict[ConsentPurpose, bool],
        *,
        source: ConsentSource,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        decided_at: datetime | None = None,
        detail: str | None = None,
        now: datetime | None = None,
        actor: str = "",
    ) -> list[Decision]:
        """Record the person's decisions (purpose → granted), all in one transaction, under
        the id that names them (a user id when both are given: an anonymous id given with
        it is linked by identify, not here)."""
        if not purposes:
            raise ConsentError("purposes: say which purposes are granted or withdrawn")
        if user_id:
            kind, value = USER, user_id
        elif anonymous_id:
            kind, value = ANONYMOUS, anonymous_id
        else:
            raise ConsentError("name the person: user_id or anonymous_id")
        recorded = now or datetime.now(UTC)
        decided = decided_at or recorded
        try:
            stamp = _micros(decided)
        except ValueError as error:
            raise ConsentError(f"decided_at: {error}") from None
        rows = [
            (dataset, kind, value, ConsentPurpose(p).value, int(bool(g)), stamp,
             ConsentSource(source).value, detail, _micros(recorded))
            for p, g in sorted(purposes.items())
        ]  # fmt: skip
        self._write(rows, actor=actor, context={"source": ConsentSource(source).value,
                                                "decided_at": decided.isoformat()})  # fmt: skip
        return [
            Decision(ConsentPurpose(p), bool(g), decided, ConsentSource(source), kind, value,
                     detail)
            for p, g in sorted(purposes.items())
        ]  # fmt: skip

    def _write(self, rows: list[tuple[Any, ...]], *, actor: str, context: dict[str, Any]) -> None:
        """Insert ledger rows in one transaction, then one audit entry per person (their
        purposes, and ``context``), appended together."""
        with self._ready().write() as con:
            con.executemany(
                "INSERT INTO consent_ledger (dataset, identifier_type, identifier, purpose, "
                "granted, decided_at, source, detail, recorded_at) VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
        if self.audit is None or self.key is None:
            return
        people: dict[tuple[str, str, str], dict[str, bool]] = {}
        for dataset, kind, value, purpose, granted, *_ in rows:
            people.setdefault((dataset, kind, value), {})[purpose] = bool(granted)
        self.audit.extend(
            [("consent.changed", person_pseudonym(self.key, dataset, f"{kind}:{value}"),
              {"purposes": purposes, **context})
             for (dataset, kind, value), purposes in people.items()],
            actor=actor,
        )  # fmt: skip

    # --- reading -------------------------------------------------------------------------

    @staticmethod
    def _identities(
        con: Any, dataset: str, user_ids: Iterable[str], anonymous_ids: Iterable[str]
    ) -> tuple[set[str], set[str]]:
        """The ids that name the same person: the users of the anonymous ids, and every
        anonymous id of those users."""
        users, anons = set(user_ids), set(anonymous_ids)
        if not table_exists(con, "aliases"):
            return users, anons
        if anons:
            marks = ",".join("?" * len(anons))
            users |= {r[0] for r in con.execute(
                f"SELECT user_id FROM aliases WHERE dataset = ? AND anonymous_id IN ({marks})",
                [dataset, *sorted(anons)])}  # fmt: skip
        if users:
            marks = ",".join("?" * len(users))
            anons |= {r[0] for r in con.execute(
                f"SELECT anonymous_id FROM aliases WHERE dataset = ? AND user_id IN ({marks})",
                [dataset, *sorted(users)])}  # fmt: skip
        return users, anons

    def history(
        self, dataset: str, *, user_id: str | None = None, anonymous_id: str | None = None
    ) -> list[Decision]:
        """Every decision of the person, oldest first (by when it was made, then recorded)."""
        with self._ready().read() as con:
            users, anons = self._identities(
                con, dataset, [user_id] if user_id else [], [anonymous_id] if anonymous_id else []
            )
            rows = self._rows(con, dataset, users, anons)
        return [
            Decision(ConsentPurpose(p), bool(g), _moment(at), ConsentSource(s), kind, ident, d)
            for kind, ident, p, g, at, s, d in rows
        ]

    @staticmethod
    def _rows(con: Any, dataset: str, users: set[str], anons: set[str]) -> list[tuple]:
        parts, args = [], [dataset]
        for kind, values in ((USER, users), (ANONYMOUS, anons)):
            if values:
                parts.append(
                    f"(identifier_type = ? AND identifier IN ({','.join('?' * len(values))}))"
                )
                args += [kind, *sorted(values)]
        if not parts:
            return []
        return con.execute(
            "SELECT identifier_type, identifier, purpose, granted, decided_at, source, detail "
            f"FROM consent_ledger WHERE dataset = ? AND ({' OR '.join(parts)}) "
            "ORDER BY decided_at, seq",
            args,
        ).fetchall()

    def state(
        self, dataset: str, *, user_id: str | None = None, anonymous_id: str | None = None
    ) -> dict[ConsentPurpose, Decision]:
        """The person's latest decision per purpose (purposes never decided are absent)."""
        latest: dict[ConsentPurpose, Decision] = {}
        for decision in self.history(dataset, user_id=user_id, anonymous_id=anonymous_id):
            latest[decision.purpose] = decision  # oldest first: the last one wins
        return latest

    def allows(
        self,
        dataset: str,
        purpose: ConsentPurpose,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
    ) -> bool | None:
        """The person's state for ``purpose``: granted, withdrawn, or None (never decided).
        One indexed query: the service asks it on every request."""
        if not (user_id or anonymous_id):
            return None
        return self.allows_in(self._ready().connection(), dataset, purpose,
                              user_id=user_id, anonymous_id=anonymous_id)  # fmt: skip

    @staticmethod
    def allows_in(
        con: Any,
        dataset: str,
        purpose: ConsentPurpose,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
    ) -> bool | None:
        """:meth:`allows` on a given connection, which may be inside a transaction (the
        online store's own writes); None also when no ledger exists yet."""
        if not table_exists(con, "consent_ledger"):
            return None
        query = _LATEST_DECISION if table_exists(con, "aliases") else _LATEST_DECISION_UNLINKED
        row = con.execute(query, {
            "dataset": dataset, "purpose": ConsentPurpose(purpose).value,
            "user": user_id, "anon": anonymous_id, "user_type": USER, "anon_type": ANONYMOUS,
        }).fetchone()  # fmt: skip
        return None if row is None else bool(row[0])

    def withdrawn(self, dataset: str, purpose: ConsentPurpose) -> Withdrawn:
        """Everyone whose latest decision for ``purpose`` withdraws it. A person is their
        user id where an alias links an anonymous id to one."""
        with self._ready().read() as con:
            aliased = (
                "(SELECT user_id FROM aliases a WHERE a.dataset = c.dataset "
                "AND a.anonymous_id = c.identifier)"
                if table_exists(con, "aliases")
                else "NULL"
            )
            rows = con.execute(
                f"SELECT CASE WHEN identifier_type = ? THEN identifier ELSE {aliased} END, "
                "identifier, granted FROM consent_ledger c WHERE dataset = ? AND purpose = ? "
                "ORDER BY decided_at, seq",
                [USER, dataset, ConsentPurpose(purpose).value],
            ).fetchall()
            latest: dict[tuple[str, str], bool] = {}
            for user, identifier, granted in rows:  # oldest first: the last one wins
                latest[(USER, user) if user else (ANONYMOUS, identifier)] = bool(granted)
            users = {v for (k, v), g in latest.items() if not g and k == USER}
            anons = {v for (k, v), g in latest.items() if not g and k == ANONYMOUS}
            if users or anons:
                users, anons = self._identities(con, dataset, users, anons)
        return Withdrawn(dataset, ConsentPurpose(purpose), frozenset(users), frozenset(anons))

    def datasets(self) -> list[str]:
        """The datasets with any decision recorded."""
        with self._ready().read() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT dataset FROM consent_ledger")]

    def people(self, dataset: str) -> int:
        """How many identifiers have any decision recorded."""
        with self._ready().read() as con:
            return con.execute(
                "SELECT count(DISTINCT identifier_type || ':' || identifier) FROM consent_ledger "
                "WHERE dataset = ?",
                [dataset],
            ).fetchone()[0]


_TRUE, _FALSE = {"true", "1", "yes", "granted"}, {"false", "0", "no", "withdrawn"}


def import_decisions(ledger: ConsentLedger, dataset: str, path: Path, *, actor: str = "") -> int:
    """Record a CSV of decisions (columns ``user_id`` or ``anonymous_id``, ``purpose``,
    ``granted``, ``decided_at`` with a time zone, optional ``source``, default ``import``):
    every row is checked first, an error names its line and column, and nothing is
    recorded unless every row is good. Returns how many were recorded."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ConsentError(f"{path}: not a readable CSV file ({error})") from None
    missing = {"purpose", "granted", "decided_at"} - set(frame.columns)
    if missing or not ({"user_id", "anonymous_id"} & set(frame.columns)):
        raise ConsentError(
            f"{path}: needs columns user_id or anonymous_id, purpose, granted, decided_at"
            + (f" (missing: {', '.join(sorted(missing))})" if missing else "")
        )
    known = ", ".join(p.value for p in ConsentPurpose)
    rows = []
    for number, row in enumerate(frame.to_dict("records"), start=2):  # line 1: the header
        where = f"{path.name}, line {number}"
        user, anon = row.get("user_id", "").strip(), row.get("anonymous_id", "").strip()
        if bool(user) == bool(anon):
            raise ConsentError(f"{where}: give exactly one of user_id, anonymous_id")
        try:
            purpose = ConsentPurpose(row["purpose"].strip().lower())
        except ValueError:
            raise ConsentError(
                f"{where}, purpose: {row['purpose']!r} is not one of {known}"
            ) from None
        granted = row["granted"].strip().lower()
        if granted not in _TRUE | _FALSE:
            raise ConsentError(f"{where}, granted: {row['granted']!r} is not true or false")
        try:
            decided = datetime.fromisoformat(row["decided_at"].strip())
            stamp = _micros(decided)
        except ValueError:
            raise ConsentError(f"{where}, decided_at: {row['decided_at']!r} is not an ISO 8601 "
                               "time with a time zone") from None  # fmt: skip
        try:
            source = ConsentSource((row.get("source") or "import").strip().lower())
        except ValueError:
            raise ConsentError(f"{where}, source: {row.get('source')!r} is not one of "
                               f"{', '.join(s.value for s in ConsentSource)}") from None  # fmt: skip
        kind, value = (USER, user) if user else (ANONYMOUS, anon)
        rows.append((dataset, kind, value, purpose.value, int(granted in _TRUE), stamp,
                     source.value, None))  # fmt: skip
    recorded = _micros(datetime.now(UTC))
    ledger._write([(*r, recorded) for r in rows], actor=actor,
                  context={"source": "import", "file": path.name})  # fmt: skip
    return len(rows)


def parse_purposes(spec: Sequence[str]) -> dict[ConsentPurpose, bool]:
    """``["personalization=false", "marketing=true"]`` (or ``+marketing``/``-analytics``) as
    purpose → granted; an unknown purpose or value raises :class:`ConsentError` naming it."""
    out: dict[ConsentPurpose, bool] = {}
    known = ", ".join(p.value for p in ConsentPurpose)
    for item in spec:
        text = item.strip()
        if text[:1] in "+-" and "=" not in text:
            name, value = text[1:], "true" if text[0] == "+" else "false"
        elif "=" in text:
            name, value = (s.strip() for s in text.split("=", 1))
        else:
            raise ConsentError(f"{item!r}: write purpose=true|false (or +purpose / -purpose)")
        try:
            purpose = ConsentPurpose(name.lower())
        except ValueError:
            raise ConsentError(f"{name!r} is not a purpose; known: {known}") from None
        if value.lower() not in {"true", "false"}:
            raise ConsentError(f"{item!r}: the value must be true or false")
        out[purpose] = value.lower() == "true"
    return out
