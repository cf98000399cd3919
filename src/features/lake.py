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

Writes are crash-safe (kill -9 included). A run writes each file under a temporary name
(``<run_id>.parquet.tmp``, which no reader's glob matches) and fsyncs it; then it commits
by writing its manifest (temporary name, fsync, atomic rename): the one step that makes
the run exist. Only then are its files renamed to their final names. Whatever a crash
leaves is settled by the next writer, under the writers' lock, before it reads anything:
files of a committed run are renamed into place (rolled forward), files of a run with no
manifest are removed (rolled back). Readers never see a partial file, a crashed run that
had not committed leaves nothing visible, and a rerun stores each event exactly once.
:meth:`Lake.check` and :meth:`Lake.repair` (``bespoke data doctor``) list and settle
leftovers, and move aside files no reader can open.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
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

from bespoke.features.schema import BLOCKED_IDENTIFIER_VALUES, IDENTIFIER_COLUMNS, TABLES

UNDATED = "undated"
#: The suffix of a file still being written, or left by a writer that crashed.
TMP_SUFFIX = ".tmp"
#: Where :meth:`Lake.repair` moves files that no reader can open (outside every view).
DAMAGED_DIR = "_damaged"

log = logging.getLogger(__name__)

#: Views over the lake: name -> SQL over the raw table ``{raw}``.
_LATEST = "SELECT * EXCLUDE (_rank) FROM (SELECT *, row_number() OVER (PARTITION BY dataset, {key} ORDER BY ingested_at DESC, run_id DESC) AS _rank FROM {raw}) WHERE _rank = 1"


def _strongest_identifier_sql() -> str:
    """SQL for an event's strongest identifier as ``type:value`` (placeholders skipped)."""
    blocked = ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(BLOCKED_IDENTIFIER_VALUES))
    # A user id equal to the event's e-mail pseudonym is ingestion keying an event without
    # one on its e-mail (see bespoke.identity.graph): the e-mail, not an account.
    cases = " ".join(
        f"WHEN {column} IS NOT NULL AND lower(trim({column})) NOT IN ({blocked}) "
        + ("AND user_id IS DISTINCT FROM email_hash " if column == "user_id" else "")
        + f"THEN '{kind}:' || {column}"
        for kind, column in IDENTIFIER_COLUMNS.items()
    )
    return f"CASE {cases} END"


#: The latest snapshot of each dataset's identity graph. (The views are written without
#: DuckDB's QUALIFY so that bespoke.engine can run them on Spark unchanged.)
_LATEST_GRAPH = "SELECT * EXCLUDE (_latest) FROM (SELECT *, max(built_at) OVER (PARTITION BY dataset) AS _latest FROM {raw}) WHERE built_at = _latest"
#: Events with the person they belong to: that of their strongest identifier in the
#: identity graph, or, for an identifier no graph has seen yet, the person it would name
#: alone (``bespoke.features.schema.person_id_of`` in SQL).
_EVENTS = f"""
SELECT e.* EXCLUDE (_identifier), CAST(e.timestamp AS DATE) AS event_date,
       COALESCE(g.person_id, 'p-' || substr(sha256(e._identifier), 1, 16)) AS person_id
FROM (SELECT *, {_strongest_identifier_sql()} AS _identifier FROM {{raw}}) e
LEFT JOIN (
    SELECT dataset, identifier_type || ':' || identifier AS _identifier, person_id
    FROM ({_LATEST_GRAPH.replace("{raw}", "_raw_identity_graph")})
) g ON g.dataset = e.dataset AND g._identifier = e._identifier
"""
#: The events of people not withheld: neither their ids nor their person (any event the
#: identity graph gives them) is among ``_withheld``'s.
_NOT_WITHHELD = f"""
ev WHERE NOT EXISTS (SELECT 1 FROM _withheld w WHERE w.dataset = ev.dataset
                  AND ((w.identifier_type = 'user_id' AND w.identifier = ev.user_id)
                       OR (w.identifier_type = 'anonymous_id' AND w.identifier = ev.anonymous_id)))
AND ev.person_id NOT IN (
    SELECT g.person_id FROM ({_LATEST_GRAPH.replace("{raw}", "_raw_identity_graph")}) g
    JOIN _withheld w ON w.dataset = g.dataset AND w.identifier_type = g.identifier_type
                     AND w.identifier = g.identifier)
"""
#: Each person of the identity graph with their user id (a person has at most one).
_PERSONS = f"""
SELECT dataset, person_id, min(identifier) FILTER (WHERE identifier_type = 'user_id') AS user_id,
       count(*) AS identifiers, min(first_seen) AS first_seen, max(last_seen) AS last_seen
FROM ({_LATEST_GRAPH}) GROUP BY dataset, person_id
"""
_VIEWS = {
    "events": _EVENTS,
    "identity_graph": _LATEST_GRAPH,
    "persons": _PERSONS,
    "identity_links": "SELECT * FROM {raw}",
    # A person's latest assignment, and every assignment with the time the next one
    # replaced it (valid_to; open while none has).
    "segments": "SELECT * EXCLUDE (_latest) FROM (SELECT *, max(valid_from) OVER (PARTITION BY dataset, person) AS _latest FROM {raw}) WHERE valid_from = _latest",
    "segments_history": "SELECT *, lead(valid_from) OVER (PARTITION BY dataset, person ORDER BY valid_from) AS valid_to FROM {raw}",
    "users": _LATEST.replace("{key}", "user_id"),
    "users_history": "SELECT * FROM {raw}",
    "items": _LATEST.replace("{key}", "item_id"),
    "items_history": "SELECT * FROM {raw}",
    "quarantine": "SELECT * FROM {raw}",
    # A re-sent flush writes an exposure again: the earliest copy counts.
    "exposures": "SELECT * EXCLUDE (_rank) FROM (SELECT *, row_number() OVER (PARTITION BY dataset, exposure_id ORDER BY exposed_at, written_at) AS _rank FROM {raw}) WHERE _rank = 1",
}
_VIEW_TABLE = {
    "events": "events",
    "identity_graph": "identity_graph",
    "persons": "identity_graph",
    "identity_links": "identity_links",
    "segments": "segments",
    "segments_history": "segments",
    "users": "users",
    "users_history": "users",
    "items": "items",
    "items_history": "items",
    "quarantine": "quarantine",
    "exposures": "exposures",
}


def view_definitions(*, withheld: bool = False) -> dict[str, str]:
    """The lake's views as SQL (DuckDB's dialect) over ``_raw_<table>`` relations of each
    table's Parquet files, in creation order; with ``withheld``, ``events`` also leaves out
    the people of a ``_withheld`` relation (see :attr:`Lake.withheld`). DuckDB runs them
    as they are; :mod:`bespoke.engine` transpiles them for Spark."""
    views = {view: sql.format(raw=f"_raw_{_VIEW_TABLE[view]}") for view, sql in _VIEWS.items()}
    if withheld:
        views["events"] = f"SELECT * FROM ({views['events']}) {_NOT_WITHHELD}"
    return views


_RUN_COLUMNS = ["run_id", "dataset", "source", "started_at", "finished_at"]
_RUN_SCHEMA = pa.schema([(c, pa.string()) for c in [*_RUN_COLUMNS, "manifest"]])


@dataclass
class Lake:
    """A handle on the lake at ``url``; opening it touches nothing."""

    url: str
    #: People its ``events`` view leaves out: rows of (dataset, identifier_type
    #: ``user_id``|``anonymous_id``, identifier), with every event of theirs the identity
    #: graph links to them — those who withdrew the purpose this reader works for
    #: (``bespoke.privacy.gate.consented_lake``). None: everyone.
    withheld: pa.Table | None = field(default=None, repr=False)
    _fs: fsspec.AbstractFileSystem = field(init=False, repr=False)
    _root: str = field(init=False, repr=False)
    #: How deep this handle is inside :meth:`exclusive` (it may be entered again).
    _exclusive_depth: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self._root = self._root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self._fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self._root, *parts])

    def file_url(self, path: str) -> str:
        """``path`` (of this lake's file system) as a URL other readers open: the path
        itself for a local lake, ``<protocol>://path`` otherwise (DuckDB, Spark)."""
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
        self._report_leftovers()
        return con

    def _report_leftovers(self) -> None:
        """Warn about files an interrupted write left; readers never see them, and the next
        writer settles them. Files of a write in progress (the lock is held) are not
        leftovers."""
        leftovers = self.temporary_files()
        if not leftovers or self._writer_active():
            return
        log.warning(
            "lake %s: %d file(s) left by an interrupted write, invisible to readers; the "
            "next write settles them, or run `bespoke data doctor --fix`",
            self.url,
            len(leftovers),
        )

    def refresh(self, con: duckdb.DuckDBPyConnection) -> None:
        """(Re)create the views on ``con`` so that they cover the files there are now."""
        for table in TABLES:
            raw = f"_raw_{table}"
            con.register(f"_empty_{table}", TABLES[table][1].empty_table())
            if self.files(table):
                # A glob, not a list: the view sees files added later, and stays short.
                # Unioned by name with the empty table, so that a column added to the
                # schema after files were written reads as missing in those files.
                pattern = self.file_url(self._glob(table, None))
                con.execute(
                    f"CREATE OR REPLACE VIEW {raw} AS SELECT * FROM read_parquet('{pattern}', "
                    f"union_by_name = true, hive_partitioning = false) "
                    f"UNION ALL BY NAME SELECT * FROM _empty_{table}"
                )
            else:
                con.execute(f"CREATE OR REPLACE VIEW {raw} AS SELECT * FROM _empty_{table}")
        withheld = self.withheld is not None and self.withheld.num_rows > 0
        if withheld:
            con.register("_withheld", self.withheld)
        for view, sql in view_definitions(withheld=withheld).items():
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {sql}")
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
        pattern = self.file_url(self._glob("events", dataset))
        found = con.execute(
            f"SELECT DISTINCT filename FROM read_parquet('{pattern}', filename = true, "
            "hive_partitioning = false) WHERE user_id = ? ORDER BY filename",
            [user_id],
        ).fetchall()
        prefix = "" if self.is_local else self.file_url("")
        return [name.removeprefix(prefix) for (name,) in found]

    def runs(self) -> list[dict[str, Any]]:
        """The manifests of all ingestion runs, oldest first."""
        manifests = []
        for path in sorted(self._fs.glob(self.path("_runs", "*.json"))):
            with self._fs.open(path, "r") as handle:
                manifests.append(json.load(handle))
        return sorted(manifests, key=lambda m: m["started_at"])

    # --- health --------------------------------------------------------------------------

    def temporary_files(self) -> list[str]:
        """Files under a temporary name: being written now, or left by a crashed writer."""
        patterns = [self._glob(table, None) + TMP_SUFFIX for table in TABLES]
        patterns.append(self.path("_runs", f"*{TMP_SUFFIX}"))
        return sorted({path for pattern in patterns for path in self._fs.glob(pattern)})

    def check(self) -> LakeHealth:
        """What an interrupted or damaged write left (changes nothing): temporary files
        with what :meth:`repair` would do to each, visible files that no reader can open,
        and files a committed run's manifest lists but the lake lacks."""
        health = self._leftovers(self.temporary_files())
        health.writer_active = self._writer_active()
        for table in TABLES:
            for path in self.files(table):
                try:
                    pq.read_metadata(path, filesystem=self._fs)
                except Exception as error:  # any reason a reader would fail
                    health.unreadable[path] = f"{type(error).__name__}: {error}"
        pending = set(health.to_publish)
        for run in self.runs():
            for relative in run.get("lake_files", []):
                path = self.path(relative)
                if path + TMP_SUFFIX in pending or self._fs.exists(path):
                    continue
                if self._fs.exists(self.path(DAMAGED_DIR, relative)):
                    health.damaged.append(path)
                else:
                    health.missing.append(path)
        return health

    def repair(self) -> LakeHealth:
        """Settle what :meth:`check` finds, under the writers' lock: publish the files of
        committed runs, remove those of runs that never committed, and move unreadable
        files under ``<lake>/_damaged/`` (same relative path), where no view reads them.
        Returns what was found (and is now settled); ``missing`` files cannot be repaired."""
        with self._lock():
            health = self.check()
            health.writer_active = False  # we hold the lock: no other writer runs
            self._settle(health)
            for path in health.unreadable:
                target = self.path(DAMAGED_DIR, posixpath.relpath(path, self._root))
                self._fs.makedirs(posixpath.dirname(target), exist_ok=True)
                self._fs.mv(path, target)
        return health

    def recover(self) -> LakeHealth:
        """Settle what crashed writers left (publish committed runs' files, remove the
        rest), under the writers' lock; a no-op on a healthy lake. Ingestion calls it
        before it reads the lake, so that a rerun sees every committed event."""
        if not self._fs.exists(self._root):
            return LakeHealth()
        with self._lock():
            return self._recover_locked()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The writers' lock, with what crashed writers left settled first: for rewriting
        files in place (an erasure, retention), so no ingestion runs meanwhile and no
        leftover of an old write keeps rows the rewrite removed. Entered again through the
        same handle (a key rotation holds it around every store's rewrite), it holds the
        lock it has."""
        if self._exclusive_depth:
            self._exclusive_depth += 1
            try:
                yield
            finally:
                self._exclusive_depth -= 1
            return
        with self._lock():
            self._recover_locked()
            self._exclusive_depth = 1
            try:
                yield
            finally:
                self._exclusive_depth = 0

    def _recover_locked(self) -> LakeHealth:
        leftovers = self.temporary_files()
        if not leftovers:
            return LakeHealth()
        health = self._leftovers(leftovers)
        self._settle(health)
        log.warning(
            "lake %s: settled an interrupted write: %d file(s) of committed runs published, "
            "%d of uncommitted runs removed",
            self.url,
            len(health.to_publish),
            len(health.to_remove),
        )
        return health

    def _leftovers(self, temporary: list[str]) -> LakeHealth:
        """Temporary files sorted by what settling does to them: those of a committed run
        are published, the rest (a manifest never renamed included) removed."""
        committed = self._committed_runs()
        health = LakeHealth()
        for path in temporary:
            if _run_of(path) in committed and not path.startswith(self.path("_runs")):
                health.to_publish.append(path)
            else:
                health.to_remove.append(path)
        return health

    def _settle(self, health: LakeHealth) -> None:
        for path in health.to_publish:
            self._publish(path)
        for path in health.to_remove:
            self._fs.rm(path)
        self._sync_folders({posixpath.dirname(p) for p in health.to_publish + health.to_remove})

    def _committed_runs(self) -> set[str]:
        return {_run_of(path) for path in self._fs.glob(self.path("_runs", "*.json"))}

    def _publish(self, temporary: str) -> None:
        """Rename a temporary file to its final name (atomic on a local disk)."""
        final = temporary.removesuffix(TMP_SUFFIX)
        if self.is_local:
            os.replace(temporary, final)
        else:
            self._fs.mv(temporary, final)

    def _sync_file(self, path: str) -> None:
        """Make a written file durable before it is renamed (local disks only: an object
        store's write is durable when it returns)."""
        if self.is_local:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _sync_folders(self, folders: set[str]) -> None:
        """Make renames and removals in ``folders`` durable (local disks only)."""
        if not self.is_local:
            return
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def transaction(self, run_id: str) -> Iterator[LakeWriter]:
        """Write a run's files (see the module docstring); the run exists once
        :meth:`LakeWriter.commit` returns. If the block fails before that, or ends without
        committing, every file of the run is removed."""
        writer = LakeWriter(self, run_id)
        with self._lock():
            self._recover_locked()
            try:
                yield writer
            except BaseException:
                writer.rollback()
                raise
            if not writer.committed:
                writer.rollback()

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

    def _writer_active(self) -> bool:
        """Whether a writer holds the lock now (always ``False`` for a remote lake)."""
        lock = os.path.join(self._root, ".lock")
        if not self.is_local or not os.path.exists(lock):
            return False
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)


@dataclass
class LakeHealth:
    """What :meth:`Lake.check` found. ``to_publish``: temporary files of committed runs
    (a crash between commit and rename); ``to_remove``: temporary files of runs that never
    committed; ``unreadable``: visible file -> why no reader can open it; ``missing``:
    files a committed run lists that are gone; ``damaged``: such files that an earlier
    repair moved under ``_damaged/`` (their rows are out of the views: ingesting their
    source again restores exactly them); ``writer_active``: a write is in progress, so
    temporary files may be its own."""

    to_publish: list[str] = field(default_factory=list)
    to_remove: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    writer_active: bool = False

    @property
    def healthy(self) -> bool:
        return not (self.to_publish or self.to_remove or self.unreadable or self.missing)


def _run_of(path: str) -> str:
    """The run id a lake file is named after (``<run_id>.parquet[.tmp]``, ``<run_id>.json``)."""
    name = posixpath.basename(path).removesuffix(TMP_SUFFIX)
    return name.rsplit(".", 1)[0]


@dataclass
class LakeWriter:
    """Adds one run's files to the lake under temporary names, then commits them."""

    lake: Lake
    run_id: str
    #: Temporary files written so far (removed by :meth:`rollback`).
    staged: list[str] = field(default_factory=list)
    committed: bool = False

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
        final = f"{folder}/{self.run_id}.parquet"
        if fs.exists(final):
            raise FileExistsError(f"{final} exists: run ids must be unique")
        temporary = final + TMP_SUFFIX
        self.staged.append(temporary)
        pq.write_table(data, temporary, filesystem=None if self.lake.is_local else fs)
        self.lake._sync_file(temporary)

    def commit(self, manifest: dict[str, Any]) -> None:
        """Make the run exist: write its manifest (``manifest`` gains ``lake_files``, the
        files it adds, relative to the lake) atomically, then rename its files into place.
        The last step of a successful run."""
        if self.committed:
            raise RuntimeError(f"run {self.run_id} is already committed")
        lake, fs = self.lake, self.lake._fs
        finals = sorted(path.removesuffix(TMP_SUFFIX) for path in self.staged)
        manifest["lake_files"] = [posixpath.relpath(path, lake._root) for path in finals]
        fs.makedirs(lake.path("_runs"), exist_ok=True)
        path = lake.path("_runs", f"{self.run_id}.json")
        with fs.open(path + TMP_SUFFIX, "w") as handle:
            json.dump(manifest, handle, indent=2, default=str)
        lake._sync_file(path + TMP_SUFFIX)
        lake._publish(path + TMP_SUFFIX)  # the commit point
        lake._sync_folders({lake.path("_runs")})
        self.committed = True
        # From here on a crash is rolled forward by the next writer (Lake.recover).
        for temporary in self.staged:
            lake._publish(temporary)
        lake._sync_folders({posixpath.dirname(p) for p in self.staged})

    def rollback(self) -> None:
        """Remove the run's temporary files; a committed run is left to be rolled forward."""
        if self.committed:
            return
        fs = self.lake._fs
        for path in reversed(self.staged):
            if fs.exists(path):
                fs.rm(path)
        manifest = self.lake.path("_runs", f"{self.run_id}.json{TMP_SUFFIX}")
        if fs.exists(manifest):
            fs.rm(manifest)
        self.staged.clear()


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
