"""Keeping the identity graph in the lake: incremental builds, splits, record matches.

Each build is a lake run (atomic, like an ingestion): it loads the latest snapshot of the
dataset's graph with every decision so far, observes the events of the ingestion runs no
build has covered yet, and writes a new snapshot (``identity_graph``) and the new
decisions (``identity_links``). The ``events`` view then gives every event the
``person_id`` of its strongest identifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from bespoke.features.collect import new_run_id
from bespoke.features.lake import Lake
from bespoke.features.schema import IDENTIFIER_COLUMNS, IDENTITY_GRAPH_SCHEMA, IDENTITY_LINKS_SCHEMA
from bespoke.identity.graph import (
    MATCH,
    SAME_RECORD,
    Decision,
    IdentityGraph,
    Link,
    Node,
    parse_node,
)
from bespoke.identity.identifiers import IdentifierType, blocked_pseudonyms

#: The ``source`` of an identity build's run manifest.
SOURCE = "identity"


@dataclass
class BuildResult:
    dataset: str
    run_id: str | None
    version: int
    events: int
    identifiers: int
    persons: int
    decisions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    covered_runs: list[str] = field(default_factory=list)


def _identity_runs(lake: Lake, dataset: str) -> list[dict[str, Any]]:
    return [r for r in lake.runs() if r.get("source") == SOURCE and r["dataset"] == dataset]


def load_graph(lake: Lake, dataset: str, key: bytes) -> IdentityGraph:
    """The dataset's graph as its latest build left it (empty when never built)."""
    blocked = blocked_pseudonyms(key)
    with lake.connect() as con:
        graph = con.execute("SELECT * FROM identity_graph WHERE dataset = ?", [dataset]).df()
        links = con.execute(
            "SELECT * FROM identity_links WHERE dataset = ? ORDER BY sequence", [dataset]
        ).df()
    if graph.empty:
        return IdentityGraph(dataset, blocked=blocked)
    return IdentityGraph.from_tables(dataset, graph, links, blocked=blocked)


def _new_events(lake: Lake, dataset: str, covered: set[str]) -> tuple[pd.DataFrame, list[str]]:
    columns = ", ".join(["event_id", "timestamp", "run_id", *IDENTIFIER_COLUMNS.values()])
    with lake.connect() as con:
        runs = [
            r for (r,) in con.execute(
                "SELECT DISTINCT run_id FROM _raw_events WHERE dataset = ? ORDER BY run_id", [dataset]
            ).fetchall()
        ]  # fmt: skip
        fresh = [r for r in runs if r not in covered]
        if not fresh:
            return pd.DataFrame(columns=columns.split(", ")), []
        events = con.execute(
            f"SELECT {columns} FROM _raw_events WHERE dataset = ? AND run_id IN "
            f"(SELECT unnest(?::VARCHAR[])) ORDER BY timestamp, event_id",
            [dataset, fresh],
        ).df()
    return events, fresh


def save_graph(
    lake: Lake,
    graph: IdentityGraph,
    decisions_since: int,
    manifest: dict[str, Any],
    now: datetime | None = None,
) -> str:
    """Write ``graph`` as a new snapshot with its decisions from ``decisions_since`` on,
    as one lake run; returns the run id."""
    now = now or datetime.now(UTC)
    run_id = new_run_id(now)
    snapshot = graph.table()
    decisions = graph.links_table().iloc[decisions_since:]
    with lake.transaction(run_id) as writer:
        for table, frame, schema in (
            ("identity_graph", snapshot, IDENTITY_GRAPH_SCHEMA),
            ("identity_links", decisions, IDENTITY_LINKS_SCHEMA),
        ):
            frame = frame.assign(run_id=run_id, built_at=pd.Timestamp(now))
            writer.write(
                table,
                pa.Table.from_pandas(frame, schema=schema, preserve_index=False),
                graph.dataset,
            )
        writer.commit(
            {
                "run_id": run_id,
                "dataset": graph.dataset,
                "source": SOURCE,
                "started_at": now.isoformat(),
                "finished_at": datetime.now(UTC).isoformat(),
                "version": graph.version,
                **manifest,
            }
        )
    return run_id


def build_graph(lake: Lake, dataset: str, key: bytes) -> BuildResult:
    """Bring the dataset's identity graph up to date with its events (see the module
    docstring); nothing is written when no new events arrived."""
    start = time.perf_counter()
    covered = {r for run in _identity_runs(lake, dataset) for r in run.get("event_runs", [])}
    graph = load_graph(lake, dataset, key)
    events, fresh = _new_events(lake, dataset, covered)
    if not fresh:
        return BuildResult(dataset, None, graph.version, 0, len(graph), graph.persons())
    before = len(graph.decisions())
    decisions = graph.observe_events(events)
    counts = _count(decisions)
    run_id = save_graph(
        lake, graph, before, {"event_runs": fresh, "events_read": len(events), "decisions": counts}
    )
    return BuildResult(
        dataset=dataset,
        run_id=run_id,
        version=graph.version,
        events=len(events),
        identifiers=len(graph),
        persons=graph.persons(),
        decisions=counts,
        seconds=time.perf_counter() - start,
        covered_runs=fresh,
    )


def split_identifier(lake: Lake, dataset: str, node: Node, key: bytes, reason: str) -> list[Node]:
    """Undo the merges that joined ``node`` to its person (see
    :meth:`IdentityGraph.split`) and keep the result as a new snapshot."""
    graph = load_graph(lake, dataset, key)
    before = len(graph.decisions())
    changed = graph.split(node, reason)
    save_graph(lake, graph, before, {"split": f"{node[0]}:{node[1]}", "reason": reason})
    return changed


def add_records(
    lake: Lake,
    dataset: str,
    key: bytes,
    identifiers: pd.DataFrame,
    links: pd.DataFrame,
    source: str,
) -> dict[str, int]:
    """Join customer records to the dataset's graph in the lake (see
    :func:`join_records`) and keep the result as a new snapshot."""
    graph = load_graph(lake, dataset, key)
    before = len(graph.decisions())
    counts = _count(join_records(graph, identifiers, links))
    save_graph(lake, graph, before, {"matches_from": source, "decisions": counts})
    return counts


def join_records(
    graph: IdentityGraph, identifiers: pd.DataFrame, links: pd.DataFrame
) -> list[Decision]:
    """Join customer records to ``graph`` as a new version: each row of ``identifiers``
    (``crm_id``, ``identifier_type``, ``identifier``: pseudonyms for e-mail and phone) ties
    one of a record's own identifiers to its CRM id (``same_record``); each row of
    ``links`` (``crm_id_l``, ``crm_id_r``, ``probability``, ``evidence``) is a
    probabilistic match of two records (``probabilistic_match``, with its probability)."""
    own = identifiers.dropna()
    own = own[~own["identifier"].isin(graph.blocked)]
    made = [
        Link((IdentifierType.CRM_ID, str(crm)), (IdentifierType(kind), str(value)),
             SAME_RECORD, None, f"record {crm}")
        for crm, kind, value in own[["crm_id", "identifier_type", "identifier"]].itertuples(index=False)
        if not (kind == IdentifierType.CRM_ID and value == crm)
    ]  # fmt: skip
    graph.add_identifiers(
        (IdentifierType.CRM_ID, str(crm)) for crm in identifiers["crm_id"].unique()
    )
    made += [
        Link((IdentifierType.CRM_ID, str(left)), (IdentifierType.CRM_ID, str(right)), MATCH,
             None, str(evidence), float(probability))
        for left, right, probability, evidence in links[
            ["crm_id_l", "crm_id_r", "probability", "evidence"]
        ].itertuples(index=False)
    ]  # fmt: skip
    return graph.add_links(made, new_version=False)


def _count(decisions: list[Decision]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for decision in decisions:
        counts[decision.decision] = counts.get(decision.decision, 0) + 1
    return counts


def person_report(lake: Lake, dataset: str, label: str, key: bytes) -> dict[str, Any]:
    """The person ``label`` (``type:value``) belongs to: their identifiers with evidence
    and the refused merges that involved any of them."""
    graph = load_graph(lake, dataset, key)
    node = parse_node(label)
    if node not in graph:
        raise KeyError(
            f"{label} is not in the identity graph of {dataset} (run bespoke identity build)"
        )
    person = graph.person_of(node)
    table = graph.table()
    own = table[table["person_id"] == person]
    labels = set(own["identifier_type"] + ":" + own["identifier"])
    links = graph.links_table()
    refused = links[
        (links["decision"] != "merged")
        & (
            (links["left_type"] + ":" + links["left_id"]).isin(labels)
            | (links["right_type"] + ":" + links["right_id"]).isin(labels)
        )
    ]
    columns = [
        "identifier_type",
        "identifier",
        "rule",
        "probability",
        "evidence",
        "linked_to",
        "shared",
        "first_seen",
        "last_seen",
    ]
    return {
        "person_id": person,
        "identifiers": own[columns].to_dict("records"),
        "refused": refused[
            ["decision", "left_type", "left_id", "right_type", "right_id", "reason", "evidence"]
        ].to_dict("records"),
    }
