"""The event lake: Parquet files under a folder or any fsspec URL, read through DuckDB.

Layout (every file is self-describing: it holds all its table's columns)::

    <lake>/events/dataset=<name>/event_date=<YYYY-MM-DD|undated>/<run_id>.parquet
    <lake>/users/dataset=<name>/<run_id>.parquet        (attribute history; view = latest)
    <lake>/items/dataset=<name>/<run_id>.parquet        (catalog history; view = latest)
    <lake>/quarantine/dataset=<name>/<run_id>.parquet   (rows kept out, with a reason)
    <lake>/_runs/<run_id>.json                          (one manifest per ingestion run)

An ingestion run only ever adds files named after its run id, so a failed run is undone
by removing them, and a person's rows are found with ``SELECT filename ... WHERE user_id``
(every events file is sorted by user id, so Parquet statistics skip most row groups).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from bespoke.features.schema import TABLES

UNDATED = "undated"

#: Views over the lake: name -> SQL over the raw table ``{raw}``.
_LATEST = "SELECT * EXCLUDE (_rank) FROM (SELECT *, row_number() OVER (PARTITION BY dataset, {key} ORDER BY ingested_at DESC, run_id DESC) AS _rank FROM {raw}) WHERE _rank = 1"
_VIEWS = {
    "events": "SELECT *, CAST(timestamp AS DATE) AS event_date FROM {raw}",
    "users": _LATEST.replace("{key}", "user_id"),
    "users_history": "SELECT * FROM {raw}",
    "items": _LATEST.replace("{key}", "item_id"),
    "items_history": "SELECT * FROM {raw}",
    "quarantine": "SELECT * FROM {raw}",
}
_VIEW_TABLE = {
    "events": "events",
    "users": "users",
    "users_history": "users",
    "items": "items",
    "items_history": "items",
    "quarantine": "quarantine",
}


_RUN_COLUMNS = ["run_id", "dataset", "source", "started_at", "finished_at"]
_RUN_SCHEMA = pa.schema([(c, pa.string()) for c in [*_RUN_COLUMNS, "manifest"]])


@dataclass
class Lake:
    """A handle on the lake at ``url``; opening it touches nothing."""

    url: str
    _fs: fsspec.AbstractFileSystem = field(init=False, repr=False)
    _root: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self._root = self._root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self._fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self._root, *parts])

    def _duckdb_path(self, path: str) -> str:
        if self.is_local:
            return path
        protocol = self._fs.protocol if isinstance(self._fs.protocol, str) else self._fs.protocol[0]
        return f"{protocol}://{path}"

    # --- reading -------------------------------------------------------------------------

    def files(self, table: str, dataset: str | None = None) -> list[str]:
        """The Parquet files of ``table`` (optionally of one dataset), sorted."""
        pattern = self._glob(table, dataset)
        return sorted(self._fs.glob(pattern))

    def _glob(self, table: str, dataset: str | None) -> str:
        where = f"dataset={dataset}" if dataset else "dataset=*"
        depth = "*/*.parquet" if table == "events" else "*.parquet"
        return self.path(table, where, depth)

    def connect(self, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the views ``events``, ``users``, ``items``,
        ``quarantine``, ``users_history``, ``items_history`` and ``ingest_runs``.

        The table views read the files there are at query time; ``ingest_runs`` is a
        snapshot, and a table that had no files yet is empty until :meth:`refresh`.
        """
        con = con or duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        if not self.is_local:
            con.register_filesystem(self._fs)
        self.refresh(con)
        return con

    def refresh(self, con: duckdb.DuckDBPyConnection) -> None:
        """(Re)create the views on ``con`` so that they cover the files there are now."""
        for table in TABLES:
            raw = f"_raw_{table}"
            if self.files(table):
                # A glob, not a list: the view sees files added later, and stays short.
                pattern = self._duckdb_path(self._glob(table, None))
                con.execute(
                    f"CREATE OR REPLACE VIEW {raw} AS SELECT * FROM read_parquet('{pattern}', "
                    "union_by_name = true, hive_partitioning = false)"
                )
            else:
                con.register(f"_empty_{table}", TABLES[table][1].empty_table())
                con.execute(f"CREATE OR REPLACE VIEW {raw} AS SELECT * FROM _empty_{table}")
        for view, sql in _VIEWS.items():
            con.execute(
                f"CREATE OR REPLACE VIEW {view} AS " + sql.format(raw=f"_raw_{_VIEW_TABLE[view]}")
            )
        runs = pa.Table.from_pylist(
            [
                {**{k: run.get(k) for k in _RUN_COLUMNS}, "manifest": json.dumps(run, default=str)}
                for run in self.runs()
            ],
            schema=_RUN_SCHEMA,
        )
        con.register("_runs_frame", runs)
        con.execute("CREATE OR REPLACE VIEW ingest_runs AS SELECT * FROM _runs_frame")

    def read_column(self, table: str, column: str, dataset: str) -> pa.Array:
        """One column of one dataset's rows of ``table`` (empty when there are none)."""
        files = self.files(table, dataset)
        if not files:
            return pa.array([], pa.string())
        data = pq.read_table(files, columns=[column], filesystem=self._fs, partitioning=None)
        return data.column(column).combine_chunks()

    def files_holding(self, dataset: str, user_id: str) -> list[str]:
        """The events files holding any of a person's rows: what a deletion request must
        rewrite. Files are sorted by user, so Parquet statistics skip most row groups."""
        if not self.files("events", dataset):
            return []
        con = self.connect()
        pattern = self._duckdb_path(self._glob("events", dataset))
        found = con.execute(
            f"SELECT DISTINCT filename FROM read_parquet('{pattern}', filename = true, "
            "hive_partitioning = false) WHERE user_id = ? ORDER BY filename",
            [user_id],
        ).fetchall()
        prefix = "" if self.is_local else self._duckdb_path("")
        return [name.removeprefix(prefix) for (name,) in found]

    def runs(self) -> list[dict[str, Any]]:
        """The manifests of all ingestion runs, oldest first."""
        manifests = []
        for path in sorted(self._fs.glob(self.path("_runs", "*.json"))):
            with self._fs.open(path, "r") as handle:
                manifests.append(json.load(handle))
        return sorted(manifests, key=lambda m: m["started_at"])

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def transaction(self, run_id: str) -> Iterator[LakeWriter]:
        """Write a run's files; if anything fails, every file of the run is removed."""
        writer = LakeWriter(self, run_id)
        with self._lock():
            try:
                yield writer
            except BaseException:
                writer.rollback()
                raise

    @contextmanager
    def _lock(self) -> Iterator[None]:
        # Two local ingestions at once would each see the other's ids as new; remote
        # stores are written by one scheduled job at a time (documented in the README).
        if not self.is_local:
            yield
            return
        Path(self._root).mkdir(parents=True, exist_ok=True)
        fd = os.open(os.path.join(self._root, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@dataclass
class LakeWriter:
    """Adds one run's files to the lake and remembers them for rollback."""

    lake: Lake
    run_id: str
    written: list[str] = field(default_factory=list)

    def write(self, table: str, data: pa.Table, dataset: str) -> int:
        """Append ``data`` (rows of one dataset) to ``table``; returns the rows written.

        Events are split into one file per day, each sorted by user: row-group statistics
        then skip most of a large file when a person's rows are looked up (deletion
        requests). Rows that arrive in that order already are not sorted again.
        """
        if data.num_rows == 0:
            return 0
        schema = TABLES[table][1]
        data = data.select(schema.names).cast(schema)
        if table != "events":
            self._write_file(self.lake.path(table, f"dataset={dataset}"), data)
            return data.num_rows
        data = in_file_order(data)
        days = _days(data)
        undated = days == _UNDATED_DAY
        starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
        ends = np.r_[starts[1:], len(days)]
        parts = []
        for start, end in zip(starts, ends, strict=True):
            day = UNDATED if undated[start] else str(np.datetime64(int(days[start]), "D"))
            folder = self.lake.path(table, f"dataset={dataset}", f"event_date={day}")
            parts.append((folder, data.slice(start, end - start)))
        # Parquet encoding releases the GIL: one writer per core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(lambda part: self._write_file(*part), parts))
        return data.num_rows

    def _write_file(self, folder: str, data: pa.Table) -> None:
        fs = self.lake._fs
        fs.makedirs(folder, exist_ok=True)
        path = f"{folder}/{self.run_id}.parquet"
        if fs.exists(path):
            raise FileExistsError(f"{path} exists: run ids must be unique")
        self.written.append(path)
        pq.write_table(data, path, filesystem=None if self.lake.is_local else fs)

    def record_run(self, manifest: dict[str, Any]) -> None:
        """Write the run's manifest; the last step of a successful run."""
        fs = self.lake._fs
        fs.makedirs(self.lake.path("_runs"), exist_ok=True)
        path = self.lake.path("_runs", f"{self.run_id}.json")
        self.written.append(path)
        with fs.open(path, "w") as handle:
            json.dump(manifest, handle, indent=2, default=str)

    def rollback(self) -> None:
        fs = self.lake._fs
        for path in reversed(self.written):
            if fs.exists(path):
                fs.rm(path)
        self.written.clear()


_UNDATED_DAY = np.iinfo(np.int64).max


def _days(events: pa.Table) -> np.ndarray:
    """Whole days since the epoch (UTC) of each event; undated events sort last."""
    micros = events.column("timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
    undated = np.isnan(micros) if micros.dtype.kind == "f" else np.zeros(len(micros), bool)
    days = np.floor_divide(np.nan_to_num(micros), 86_400_000_000).astype(np.int64)
    days[undated] = _UNDATED_DAY
    return days


def in_file_order(events: pa.Table) -> pa.Table:
    """``events`` (with ``timestamp`` and ``user_id``) ordered as the lake stores them: by
    day, then user. Sorting the few varying columns before adding constant ones is
    cheaper than sorting a whole table, so callers may do it early."""
    days = _days(events)
    users, _ = pd.factorize(
        events.column("user_id").to_pandas(types_mapper=pd.ArrowDtype), sort=True
    )
    if _is_sorted(days, users):
        return events
    return events.take(np.lexsort((users, days)))


def _is_sorted(days: np.ndarray, users: np.ndarray) -> bool:
    """Whether rows are ordered by day, then user (missing users, code -1, first)."""
    if len(days) < 2:
        return True
    later_day = days[1:] > days[:-1]
    same_day = days[1:] == days[:-1]
    return bool(np.all(later_day | (same_day & (users[1:] >= users[:-1]))))
