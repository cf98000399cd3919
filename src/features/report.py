"""What is in the lake: rows per source and type, date ranges, quarantine, imputation."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from bespoke.features.lake import Lake


@dataclass
class DataReport:
    """Each part is a DataFrame, so notebooks show them as they are and the CLI as tables."""

    events: pd.DataFrame
    """Per dataset, source and event type: rows, users, items, first and last timestamp."""
    tables: pd.DataFrame
    """Per dataset: users and items in the current attribute/catalog tables."""
    quarantine: pd.DataFrame
    """Per dataset, entity and reason: quarantined rows."""
    imputed: pd.DataFrame
    """Per dataset, table and field: stored rows whose value was imputed."""
    consent: pd.DataFrame
    """Per dataset and source: events kept out for lack of personalization consent, a
    withdrawal, or an erasure."""


def data_report(lake: Lake, dataset: str | None = None) -> DataReport:
    """Summarise ``lake`` (or one dataset of it)."""
    con = lake.connect()
    known = {row[0] for row in con.execute("SELECT DISTINCT dataset FROM ingest_runs").fetchall()}
    if dataset is not None and dataset not in known:
        raise KeyError(
            f"no dataset {dataset!r} in the lake at {lake.url}; it has {sorted(known) or 'none'}"
        )
    where = "WHERE dataset = $dataset" if dataset else ""
    params = {"dataset": dataset} if dataset else {}

    def frame(sql: str) -> pd.DataFrame:
        return con.execute(sql.format(where=where), params).df()

    events = frame(
        """
        SELECT e.dataset, r.source, e.event_type, count(*) AS rows,
               count(DISTINCT coalesce(e.user_id, e.anonymous_id)) AS people,
               count(DISTINCT e.item_id) AS items,
               min(e.timestamp) AS first, max(e.timestamp) AS last
        FROM (SELECT * FROM events {where}) e LEFT JOIN ingest_runs r USING (run_id)
        GROUP BY ALL ORDER BY ALL
        """
    )
    tables = frame(
        """
        SELECT dataset, 'users' AS "table", count(*) AS rows FROM users {where} GROUP BY ALL
        UNION ALL
        SELECT dataset, 'items', count(*) FROM items {where} GROUP BY ALL
        ORDER BY ALL
        """
    )
    quarantine = frame(
        "SELECT dataset, entity, reason, count(*) AS rows FROM quarantine {where} "
        "GROUP BY ALL ORDER BY dataset, entity, rows DESC"
    )
    imputed = frame(
        """
        SELECT dataset, "table", field, count(*) AS rows FROM (
            SELECT dataset, 'events' AS "table", unnest(imputed) AS field FROM events {where}
            UNION ALL SELECT dataset, 'users', unnest(imputed) FROM users {where}
            UNION ALL SELECT dataset, 'items', unnest(imputed) FROM items {where}
        ) GROUP BY ALL ORDER BY ALL
        """
    )
    runs = [r for r in lake.runs() if dataset is None or r["dataset"] == dataset]
    consent_rows = [
        {
            "dataset": r["dataset"],
            "source": r["source"],
            **{k: r.get("events", {}).get(k, 0) for k in EXCLUDED},
        }
        for r in runs
        if "events" in r
    ]
    consent = (
        pd.DataFrame(consent_rows).groupby(["dataset", "source"], as_index=False).sum()
        if consent_rows
        else pd.DataFrame(columns=["dataset", "source", *EXCLUDED])
    )
    return DataReport(
        events=events, tables=tables, quarantine=quarantine, imputed=imputed, consent=consent
    )


#: Events kept out of the lake before cleaning, and why (ingestion's manifest keys).
EXCLUDED = {
    "excluded_no_consent": "without consent",
    "excluded_withdrawn": "of people who withdrew personalization",
    "excluded_erased": "of erased people (suppressed)",
}


def manifest_summary(manifest: dict) -> str:
    """One line per table of an ingestion manifest, for logs and the CLI."""
    lines = []
    for entity in ("events", "users", "items"):
        counts = manifest.get(entity)
        if not counts:
            continue
        quarantined = sum(counts.get("quarantined", {}).values())
        extra = "".join(
            f", {counts[key]} {why}" for key, why in EXCLUDED.items() if counts.get(key)
        )
        lines.append(
            f"{entity}: {counts['read']} read, {counts['stored']} stored, "
            f"{counts['already_present']} already present, {quarantined} quarantined{extra}"
            + (f", imputed {json.dumps(counts['imputed'])}" if counts.get("imputed") else "")
        )
    return "\n".join(lines)
