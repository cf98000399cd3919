"""Scoring identity resolution against the truth: pairwise precision, recall and F1.

Two things are "put together" when they land in the same cluster (person); a pairwise
score counts every such pair once. Pairs are counted from a contingency table, never
enumerated, so a person with thousands of identifiers costs nothing extra.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from bespoke.identity.graph import IdentityGraph, links_from_events
from bespoke.identity.identifiers import BLOCKED_VALUES, IDENTIFIER_COLUMNS


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def pairwise_scores(predicted: pd.Series, truth: pd.Series) -> dict[str, float]:
    """Precision, recall and F1 of the pairs put together by ``predicted`` (a cluster
    label per element) against those of ``truth`` (aligned labels)."""
    frame = pd.DataFrame({"p": np.asarray(predicted), "t": np.asarray(truth)})
    together = _pairs(frame.groupby(["p", "t"], sort=False).size().to_numpy())
    predicted_pairs = _pairs(frame.groupby("p", sort=False).size().to_numpy())
    true_pairs = _pairs(frame.groupby("t", sort=False).size().to_numpy())
    precision = together / predicted_pairs if predicted_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def link_scores(predicted: set[frozenset], truth: set[frozenset]) -> dict[str, float]:
    """Precision, recall and F1 of predicted links (pairs of ids) against true links."""
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def over_merges(predicted: pd.Series, truth: pd.Series) -> int:
    """Clusters of ``predicted`` holding elements of more than one true person."""
    frame = pd.DataFrame({"p": np.asarray(predicted), "t": np.asarray(truth)})
    return int((frame.groupby("p", sort=False)["t"].nunique() > 1).sum())


def reachable_clusters(links: pd.DataFrame, truth: pd.Series) -> pd.Series:
    """The best clustering the evidence allows: identifiers joined by ``links`` (columns
    ``left``, ``right``: labels of ``truth``'s index) that truly belong to the same
    person. An identifier never seen with another of its person's identifiers cannot be
    stitched by any rule; recall against this clustering measures the method, recall
    against the truth measures the method and the evidence together."""
    index = pd.Index(truth.index)
    left, right = index.get_indexer(links["left"]), index.get_indexer(links["right"])
    keep = (left >= 0) & (right >= 0)
    left, right = left[keep], right[keep]
    values = truth.to_numpy()
    same = values[left] == values[right]
    n = len(index)
    graph = coo_matrix((np.ones(same.sum()), (left[same], right[same])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return pd.Series(labels, index=index)


def identifier_truth(overlay: pd.DataFrame) -> pd.DataFrame:
    """Each identifier of an overlay with its true person (``"shared"`` when events of
    several people carry it, as a family tablet's do); placeholders left out."""
    frames = []
    for column, kind in IDENTIFIER_COLUMNS.items():
        if column not in overlay:
            continue
        pairs = overlay[[column, "true_person"]].dropna()
        pairs = pairs[~pairs[column].str.strip().str.lower().isin(BLOCKED_VALUES)]
        people = pairs.groupby(column, sort=False)["true_person"].agg(["first", "nunique"])
        truth = people["first"].where(people["nunique"] == 1, "shared")
        frames.append(
            pd.DataFrame(
                {"identifier_type": kind.value, "identifier": truth.index, "truth": truth.values}
            )
        )
    return pd.concat(frames, ignore_index=True)


def score_graph(
    graph: IdentityGraph, overlay: pd.DataFrame, records: pd.DataFrame | None = None
) -> dict[str, float]:
    """Stitching of ``overlay`` by ``graph`` against its truth, over identifiers:
    pairwise ``precision``, ``recall`` (against the truth), ``recall_reachable`` (against
    the best the evidence allows, :func:`reachable_clusters`), ``f1``, and
    ``over_merges`` (persons holding the accounts of two real people). ``records`` (a CRM
    export with ``crm_id`` and ``true_person``) scores the customer records joined too."""
    truth = identifier_truth(overlay)
    if records is not None:  # customer records: their CRM ids and true people
        truth = pd.concat(
            [truth, pd.DataFrame({"identifier_type": "crm_id", "identifier": records["crm_id"],
                                  "truth": records["true_person"]})],
            ignore_index=True,
        )  # fmt: skip
    table = graph.table().merge(truth, on=["identifier_type", "identifier"])
    own = table[table["truth"] != "shared"]
    scores = pairwise_scores(own["person_id"], own["truth"])
    labels = own["identifier_type"] + ":" + own["identifier"]
    links = pd.DataFrame(
        [
            (f"{k.left[0]}:{k.left[1]}", f"{k.right[0]}:{k.right[1]}")
            for k in links_from_events(overlay, graph.blocked)
        ],
        columns=["left", "right"],
    )
    reachable = reachable_clusters(
        links, pd.Series(own["truth"].to_numpy(), index=labels.to_numpy())
    )
    best = pairwise_scores(own["person_id"], reachable.to_numpy())
    accounts = table[table["identifier_type"].isin(["user_id", "crm_id"])]
    return {
        **scores,
        "recall_reachable": best["recall"],
        "over_merges": over_merges(accounts["person_id"], accounts["truth"]),
        "identifiers": len(table),
        "shared_identifiers": int((table["truth"] == "shared").sum()),
        "shared_detected": len(graph.shared),
        "persons": graph.persons(),
        "true_persons": int(overlay["true_person"].nunique()),
    }
