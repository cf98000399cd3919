"""What the running experiments remember: their state, the audit trail, and exposures.

Kept in the online store's SQLite file (one file for the service's state, shared by every
worker), in three tables:

- ``experiment_state``: per experiment, the coverage in force and whether it runs, is
  halted (a guardrail failed: everyone gets the control) or stopped (by a person). An
  experiment without a row runs at the coverage its file gives.
- ``experiment_audit``: append-only, one row per change of state (ramp, halt, stop,
  resume) with who did it and the evidence (the guardrail figures).
- ``exposures``: each person's first exposure to each experiment (experiment, variant,
  hash version, person, time), written before the answer that carries the variant is
  returned, so nothing served goes unrecorded; :meth:`ExperimentLedger.flush` moves them
  to the lake's ``exposures`` table (a re-sent flush is deduplicated by the view). Later
  exposures of an assigned person are the same assignment and are not written again.
- ``experiment_errors``: failed requests per experiment and variant (a guardrail).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa

from bespoke.features.lake import Lake
from bespoke.features.schema import EXPOSURE_SCHEMA
from bespoke.privacy.audit import AuditLog
from bespoke.serving.db import Database

Status = Literal["running", "halted", "stopped"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiment_state (
    experiment TEXT PRIMARY KEY,
    coverage REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    experiment TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS exposures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    experiment TEXT NOT NULL,
    person TEXT NOT NULL,
    anonymous INTEGER NOT NULL,
    variant TEXT NOT NULL,
    variant_index INTEGER NOT NULL,
    hash_version INTEGER NOT NULL,
    forced INTEGER NOT NULL,
    exposed_at TEXT NOT NULL,
    flushed INTEGER NOT NULL DEFAULT 0,
    UNIQUE (dataset, experiment, person, anonymous)
);
CREATE INDEX IF NOT EXISTS exposures_unflushed ON exposures (flushed, seq);
CREATE TABLE IF NOT EXISTS experiment_errors (
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (experiment, variant)
)
"""


@dataclass(frozen=True)
class State:
    """An experiment's state: the coverage in force and whether it runs."""

    experiment: str
    coverage: float
    status: Status
    reason: str | None
    updated_at: str


@dataclass(frozen=True)
class Exposure:
    """One served assignment."""

    dataset: str
    experiment: str
    person: str
    anonymous: bool
    variant: str
    variant_index: int
    hash_version: int
    forced: bool
    exposed_at: datetime


def exposure_id(dataset: str, experiment: str, person: str, anonymous: bool) -> str:
    """The lake's key of a person's exposure to an experiment (one per person)."""
    text = f"{dataset}\x1f{experiment}\x1f{'a' if anonymous else 'u'}:{person}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ExperimentLedger:
    """Experiment state, audit trail and exposures in ``database`` (the online store's)."""

    def __init__(self, database: Database, *, audit: AuditLog | None = None) -> None:
        self.database = database
        #: The installation's audit log: every change of state is recorded there too.
        self.audit_log = audit

    def _ready(self) -> Database:
        self.database.ensure("experiments", _SCHEMA)
        return self.database

    # --- state and audit ---------------------------------------------------------------

    def states(self) -> dict[str, State]:
        with self._ready().read() as con:
            rows = con.execute(
                "SELECT experiment, coverage, status, reason, updated_at FROM experiment_state"
            ).fetchall()
        return {row[0]: State(*row) for row in rows}

    def state(self, experiment: str) -> State | None:
        return self.states().get(experiment)

    def change(
        self,
        experiment: str,
        *,
        coverage: float,
        status: Status,
        action: str,
        actor: str,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> State:
        """Set an experiment's state and append the change to the audit trail, in one
        transaction."""
        at = (now or datetime.now(UTC)).isoformat()
        record = {"coverage": coverage, "status": status, "reason": reason, **(detail or {})}
        with self._ready().write() as con:
            con.execute(
                "INSERT INTO experiment_state (experiment, coverage, status, reason, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (experiment) DO UPDATE SET "
                "coverage = excluded.coverage, status = excluded.status, "
                "reason = excluded.reason, updated_at = excluded.updated_at",
                (experiment, coverage, status, reason, at),
            )
            con.execute(
                "INSERT INTO experiment_audit (at, experiment, action, actor, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                (at, experiment, action, actor, json.dumps(record, default=str, sort_keys=True)),
            )
        if self.audit_log is not None:
            self.audit_log.append(f"experiment.{action}", actor=actor, detail={
                "experiment": experiment, "coverage": coverage, "status": status,
                "reason": reason})  # fmt: skip
        return State(experiment, coverage, status, reason, at)

    def audit(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, oldest first (of one experiment, or all)."""
        where, args = ("WHERE experiment = ?", (experiment,)) if experiment else ("", ())
        with self._ready().read() as con:
            rows = con.execute(
                f"SELECT seq, at, experiment, action, actor, detail FROM experiment_audit "
                f"{where} ORDER BY seq",
                args,
            ).fetchall()
        return [
            {"seq": s, "at": at, "experiment": e, "action": a, "actor": who, **json.loads(d)}
            for s, at, e, a, who, d in rows
        ]

    # --- exposures ---------------------------------------------------------------------

    def record(self, exposures: Sequence[Exposure]) -> int:
        """Store first exposures durably (a person already exposed keeps their first row);
        returns how many were new."""
        if not exposures:
            return 0
        rows = [
            (e.dataset, e.experiment, e.person, int(e.anonymous), e.variant, e.variant_index,
             e.hash_version, int(e.forced), e.exposed_at.isoformat())
            for e in exposures
        ]  # fmt: skip
        with self._ready().write() as con:
            before = con.total_changes
            con.executemany(
                "INSERT OR IGNORE INTO exposures (dataset, experiment, person, anonymous, "
                "variant, variant_index, hash_version, forced, exposed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return con.total_changes - before

    def assigned(
        self, dataset: str, person: str, anonymous: bool, experiments: Iterable[str]
    ) -> dict[str, tuple[str, bool]]:
        """The variants already served to a person: experiment → (variant, forced)."""
        keys = list(experiments)
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        with self._ready().read() as con:
            rows = con.execute(
                f"SELECT experiment, variant, forced FROM exposures WHERE dataset = ? AND "
                f"person = ? AND anonymous = ? AND experiment IN ({marks})",
                (dataset, person, int(anonymous), *keys),
            ).fetchall()
        return {experiment: (variant, bool(forced)) for experiment, variant, forced in rows}

    def exposure_counts(self, experiment: str, *, forced: bool = False) -> dict[str, int]:
        """People exposed per variant (QA overrides excluded unless ``forced``)."""
        with self._ready().read() as con:
            rows = con.execute(
                "SELECT variant, count(*) FROM exposures WHERE experiment = ? AND forced <= ? "
                "GROUP BY variant",
                (experiment, int(forced)),
            ).fetchall()
        return dict(rows)

    def pending(self) -> int:
        with self._ready().read() as con:
            return int(
                con.execute("SELECT count(*) FROM exposures WHERE flushed = 0").fetchone()[0]
            )

    def flush(self, lake: Lake, *, chunk: int = 200_000) -> int:
        """Move the exposures not yet in the lake there (one lake run per dataset and
        chunk); rows are marked only after the run committed, so a crash re-sends them
        and the lake's view keeps one copy."""
        moved = 0
        while True:
            with self._ready().read() as con:
                rows = con.execute(
                    "SELECT seq, dataset, experiment, person, anonymous, variant, variant_index, "
                    "hash_version, forced, exposed_at FROM exposures WHERE flushed = 0 "
                    "ORDER BY seq LIMIT ?",
                    (chunk,),
                ).fetchall()
            if not rows:
                return moved
            by_dataset: dict[str, list[tuple[Any, ...]]] = {}
            for row in rows:
                by_dataset.setdefault(row[1], []).append(row)
            for dataset, part in by_dataset.items():
                run_id = f"exposures-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
                written_at = datetime.now(UTC)
                table = pa.Table.from_pylist(
                    [_lake_row(row, run_id, written_at) for row in part], schema=EXPOSURE_SCHEMA
                )
                with lake.transaction(run_id) as writer:
                    writer.write("exposures", table, dataset)
                    writer.commit(
                        {"run_id": run_id, "dataset": dataset, "source": "exposures",
                         "started_at": written_at.isoformat(),
                         "finished_at": datetime.now(UTC).isoformat(), "rows": len(part)}
                    )  # fmt: skip
                with self._ready().write() as con:
                    con.executemany(
                        "UPDATE exposures SET flushed = 1 WHERE seq = ?", [(r[0],) for r in part]
                    )
                moved += len(part)

    # --- guardrail: service errors ------------------------------------------------------

    def count_error(self, assignments: Iterable[tuple[str, str]]) -> None:
        """A request failed for a person in these (experiment, variant) assignments."""
        pairs = list(assignments)
        if not pairs:
            return
        with self._ready().write() as con:
            con.executemany(
                "INSERT INTO experiment_errors (experiment, variant, errors) VALUES (?, ?, 1) "
                "ON CONFLICT (experiment, variant) DO UPDATE SET errors = errors + 1",
                pairs,
            )

    def errors(self, experiment: str) -> dict[str, int]:
        with self._ready().read() as con:
            rows = con.execute(
                "SELECT variant, errors FROM experiment_errors WHERE experiment = ?",
                (experiment,),
            ).fetchall()
        return dict(rows)


def _lake_row(row: tuple[Any, ...], run_id: str, written_at: datetime) -> dict[str, Any]:
    """An ``exposures`` table row of the lake from a ledger row."""
    _, dataset, experiment, person, anonymous, variant, index, version, forced, at = row
    return {
        "dataset": dataset,
        "exposure_id": exposure_id(dataset, experiment, person, bool(anonymous)),
        "experiment": experiment,
        "variant": variant,
        "variant_index": index,
        "hash_version": version,
        "person": person,
        "anonymous": bool(anonymous),
        "forced": bool(forced),
        "exposed_at": datetime.fromisoformat(at),
        "run_id": run_id,
        "written_at": written_at,
    }
