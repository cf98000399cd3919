"""Interactions for training: the lake's events as a user × item log with index maps.

Models work on dense indices (rows of a sparse matrix); :class:`Interactions` keeps the
maps between those indices and the lake's ids, so splits and subsets never renumber
anything and a model's indices mean the same items everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bespoke.engine.engines import BatchEngine, DuckDBEngine
from bespoke.features.lake import Lake
from bespoke.features.schema import EventType

#: Event types that count as a positive interaction by default.
POSITIVE_EVENT_TYPES = (
    EventType.RATE,
    EventType.PURCHASE,
    EventType.CLICK,
    EventType.ADD_TO_CART,
    EventType.LIKE,
    EventType.VIEW,
)


@dataclass(frozen=True)
class Interactions:
    """One row per interaction: ``users[i]`` × ``items[i]`` with ``values[i]`` at
    ``timestamps[i]`` (NaT when the source has no time), over fixed id maps."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def matrix(self, weights: Literal["binary", "value"] = "binary") -> sp.csr_matrix:
        """The user × item matrix; repeated pairs are summed (binary: capped at 1)."""
        data = (
            np.ones(len(self), np.float32)
            if weights == "binary"
            else self.values.astype(np.float32)
        )
        matrix = sp.csr_matrix(
            (data, (self.users, self.items)), shape=(self.n_users, self.n_items), dtype=np.float32
        )
        matrix.sum_duplicates()
        if weights == "binary":
            matrix.data[:] = 1.0
        return matrix

    def subset(self, mask: np.ndarray) -> Interactions:
        """The interactions where ``mask`` holds, over the same id maps."""
        return replace(
            self,
            users=self.users[mask],
            items=self.items[mask],
            values=self.values[mask],
            timestamps=self.timestamps[mask],
        )

    def item_popularity(self) -> np.ndarray:
        """Share of users who interacted with each item."""
        seen = self.matrix("binary")
        return np.asarray(seen.sum(axis=0)).ravel() / max(self.n_users, 1)

    def user_index(self, user_ids: np.ndarray | list) -> np.ndarray:
        """Index of each id, -1 for ids not in the map."""
        return _index_of(self.user_ids, np.asarray(user_ids, dtype=object))

    def item_index(self, item_ids: np.ndarray | list) -> np.ndarray:
        return _index_of(self.item_ids, np.asarray(item_ids, dtype=object))

    def fingerprint(self) -> str:
        """A short hash of the interactions, logged with every run that trains on them."""
        frame = pd.DataFrame(
            {"u": self.user_ids[self.users], "i": self.item_ids[self.items], "v": self.values}
        )
        hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        return f"{np.bitwise_xor.reduce(hashed):016x}-{len(self)}"

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Interactions:
        """From columns ``user_id``, ``item_id``, optional ``value`` and ``timestamp``."""
        users, user_ids = pd.factorize(frame["user_id"].astype(str), sort=True)
        items, item_ids = pd.factorize(frame["item_id"].astype(str), sort=True)
        values = (
            frame["value"].to_numpy(np.float32, na_value=1.0)
            if "value" in frame
            else np.ones(len(frame), np.float32)
        )
        if "timestamp" in frame:
            timestamps = (
                pd.to_datetime(frame["timestamp"], utc=True)
                .dt.tz_localize(None)
                .to_numpy("datetime64[us]")
            )
        else:
            timestamps = np.full(len(frame), np.datetime64("NaT"), "datetime64[us]")
        return cls(
            user_ids=np.asarray(user_ids, dtype=object),
            item_ids=np.asarray(item_ids, dtype=object),
            users=users.astype(np.int32),
            items=items.astype(np.int32),
            values=values,
            timestamps=timestamps,
        )


def _index_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    lookup = pd.Index(ids)
    return lookup.get_indexer(wanted).astype(np.int64)


#: The training set's rows: one query for both batch engines (bespoke.engine).
INTERACTIONS_SQL = (
    "SELECT coalesce(p.user_id, e.user_id, e.person_id) AS user_id, e.item_id, e.value, "
    "e.timestamp FROM events e LEFT JOIN persons p USING (dataset, person_id) "
    "WHERE e.dataset = ? AND e.item_id IS NOT NULL AND e.person_id IS NOT NULL "
    "AND list_contains(?, e.event_type) ORDER BY e.timestamp NULLS FIRST, e.event_id"
)


def load_interactions(
    lake: Lake,
    dataset: str,
    event_types: tuple[str, ...] = tuple(e.value for e in POSITIVE_EVENT_TYPES),
    *,
    engine: BatchEngine | None = None,
) -> Interactions:
    """The dataset's positive interactions (events with an item), one row per event, keyed
    on the person (identity graph): the person's user id when they have one — so an
    anonymous visit stitched to a logged-in person counts as theirs — else their
    ``person_id``. ``engine`` runs the query (default: DuckDB over ``lake``)."""
    engine = engine or DuckDBEngine(lake)
    frame = engine.frame(INTERACTIONS_SQL, [dataset, list(event_types)])
    if frame.empty:
        raise ValueError(
            f"dataset {dataset!r} has no interactions of types {list(event_types)} in {lake.url}"
        )
    return Interactions.from_frame(frame)


def load_item_text(lake: Lake, dataset: str) -> dict[str, str]:
    """Each catalog item's text for content models: its title, then its genres, from the
    lake's ``items`` view (the latest catalog). Items with neither are left out; a
    dataset without a catalog gives ``{}``."""
    con = lake.connect()
    frame = con.execute(
        "SELECT item_id, coalesce(title, '') AS title, genres FROM items "
        "WHERE dataset = ? ORDER BY item_id",
        [dataset],
    ).df()
    texts = {}
    for item_id, title, genres in zip(
        frame["item_id"], frame["title"], frame["genres"], strict=True
    ):
        names = [str(g) for g in (genres if genres is not None else []) if g]
        text = " ".join([title.strip(), *names]).strip()
        if text:
            texts[str(item_id)] = text
    return texts


def load_users(lake: Lake, dataset: str) -> pd.DataFrame:
    """The dataset's user attributes (``user_id``, ``age``, ``gender``, ``occupation``,
    ``state``, ``region``, ``country``); empty when the source has none."""
    return (
        lake.connect()
        .execute(
            "SELECT user_id, age, gender, occupation, state, region, country FROM users "
            "WHERE dataset = ? ORDER BY user_id",
            [dataset],
        )
        .df()
    )


def event_counts(lake: Lake, dataset: str) -> tuple[int, int]:
    """How many events the dataset has, and how many of them name an item (CDNOW's
    purchases name none: there is nothing to recommend)."""
    events, items = (
        lake.connect()
        .execute("SELECT count(*), count(item_id) FROM events WHERE dataset = ?", [dataset])
        .fetchone()
    )
    return int(events), int(items)


def load_catalog(lake: Lake, dataset: str) -> pd.DataFrame:
    """The dataset's catalog (``item_id``, ``title``, ``release_year``, ``genres``,
    ``url``); empty when the source has none."""
    return (
        lake.connect()
        .execute(
            "SELECT item_id, title, release_year, genres, url FROM items WHERE dataset = ? "
            "ORDER BY item_id",
            [dataset],
        )
        .df()
    )


def catalog_categories(catalog: pd.DataFrame) -> dict[str, list[str]]:
    """Per item id, its genres (what the rules' category conditions read)."""
    return {
        str(item): [str(g) for g in (genres if genres is not None else [])]
        for item, genres in zip(catalog["item_id"], catalog["genres"], strict=True)
    }


def catalog_fields(catalog: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per item id, the catalog fields an answer carries (missing values left out)."""
    out: dict[str, dict[str, Any]] = {}
    for row in catalog.itertuples(index=False):
        fields: dict[str, Any] = {}
        if isinstance(row.title, str):
            fields["title"] = row.title
        genres = row.genres if row.genres is not None else []
        fields["categories"] = [str(g) for g in genres]
        if isinstance(getattr(row, "url", None), str):
            fields["url"] = row.url
        if getattr(row, "release_year", None) is not None and row.release_year == row.release_year:
            fields["release_year"] = int(row.release_year)
        out[str(row.item_id)] = fields
    return out


def interactions_frame(interactions: Interactions) -> pd.DataFrame:
    """The interactions as ``user_id``, ``item_id``, ``value``, ``timestamp`` columns
    (what :meth:`Interactions.from_frame` reads back)."""
    return pd.DataFrame(
        {
            "user_id": interactions.user_ids[interactions.users].astype(str),
            "item_id": interactions.item_ids[interactions.items].astype(str),
            "value": interactions.values,
            "timestamp": interactions.timestamps,
        }
    )
