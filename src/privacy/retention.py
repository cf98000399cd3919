"""Retention: person data older than its table's period is deleted, on a schedule.

``Settings.retention_days`` names a period per table (``<store>:<table>`` → days);
:func:`enforce` deletes the rows older than that, judged by the time column
:data:`RETENTION_COLUMNS` names, from the lake (each affected Parquet file rewritten
atomically, as a deletion does) and from the online store (then its write-ahead log is
checkpointed, so no old copy stays on disk). ``bespoke privacy retention`` runs it once
or ``--every`` N seconds; each run is an audit entry with what it removed.

Only tables whose rows can go without breaking what remains are eligible: events (judged
by when they happened, or were ingested when a source had no time), quarantined rows,
exposures already in the lake, segment changes, refused links and the profiles' event
copies. The consent ledger is not: it is the proof of consent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bespoke.features.lake import Lake
from bespoke.privacy.audit import AuditLog
from bespoke.privacy.stores import rewrite_parquet
from bespoke.serving.db import Database, table_exists

#: Each eligible table and the time that ages its rows (lake: SQL over the row; online:
#: a column of microseconds since the epoch).
RETENTION_COLUMNS: dict[str, str] = {
    "lake:events": "coalesce(timestamp, ingested_at)",
    "lake:quarantine": "quarantined_at",
    "lake:exposures": "exposed_at",
    "online:profile_events": "timestamp",
    "online:segment_changes": "at",
    "online:refused_aliases": "refused_at",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RetentionError(ValueError):
    """A retention setting that names no eligible table, or a period that is not positive."""


def check_periods(periods: Mapping[str, int]) -> dict[str, int]:
    """The periods, or an error naming the first bad one."""
    known = ", ".join(sorted(RETENTION_COLUMNS))
    for table, days in periods.items():
        if table not in RETENTION_COLUMNS:
            raise RetentionError(f"retention_days: {table!r} is not a table retention applies "
                                 f"to; one of {known}")  # fmt: skip
        if not isinstance(days, int) or days <= 0:
            raise RetentionError(f"retention_days: {table!r} must be a positive number of days")
    return dict(periods)


def enforce(
    periods: Mapping[str, int],
    *,
    lake: Lake,
    online: Database,
    audit: AuditLog | None = None,
    actor: str = "",
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Delete (or, with ``dry_run``, count) the rows older than each table's period;
    returns rows per table."""
    now = now or datetime.now(UTC)
    removed: dict[str, int] = {}
    for table, days in sorted(check_periods(periods).items()):
        cutoff = now - timedelta(days=days)
        store, name = table.split(":", 1)
        if store == "lake":
            removed[table] = _lake(lake, name, RETENTION_COLUMNS[table], cutoff, dry_run)
        else:
            removed[table] = _online(online, name, RETENTION_COLUMNS[table], cutoff, dry_run)
    if not dry_run:
        if any(removed.get(t) for t in removed if t.startswith("online:")):
            online.checkpoint()
        if audit is not None:
            audit.append("retention", actor=actor, detail={
                "removed": removed, "periods": dict(periods), "at": now.isoformat()})  # fmt: skip
    return removed


def _lake(lake: Lake, table: str, column: str, cutoff: datetime, dry_run: bool) -> int:
    files = lake.files(table)
    if not files:
        return 0
    condition = f"{column} < $cutoff"
    if dry_run:
        return (
            lake.connect()
            .execute(
                f"SELECT count(*) FROM read_parquet({files!r}, union_by_name = true, "
                f"hive_partitioning = false) WHERE {condition}",
                {"cutoff": cutoff},
            )
            .fetchone()[0]
        )
    with lake.exclusive():
        con = lake.connect()
        return sum(
            rewrite_parquet(Path(path), table, condition, {"cutoff": cutoff}, lake, con)
            for path in lake.files(table)
        )


def _online(database: Database, table: str, column: str, cutoff: datetime, dry_run: bool) -> int:
    micros = int((cutoff - _EPOCH).total_seconds() * 1_000_000)
    with database.read() as con:
        if not table_exists(con, table):
            return 0
    if dry_run:
        with database.read() as con:
            return con.execute(
                f"SELECT count(*) FROM {table} WHERE {column} < ?", (micros,)
            ).fetchone()[0]
    database.connection().execute("PRAGMA secure_delete = ON")  # zero the freed pages
    with database.write() as con:
        return con.execute(f"DELETE FROM {table} WHERE {column} < ?", (micros,)).rowcount
