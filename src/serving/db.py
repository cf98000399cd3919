"""One SQLite file shared by the service's worker processes: connections and transactions.

Every process (and thread) opens its own connection on first use; a forked child never
reuses its parent's. Each connection is set up the same way:

- ``journal_mode=WAL``: readers never block the writer nor each other, so profile reads
  go on while a batch of events is being written;
- ``synchronous=FULL``: every commit fsyncs the write-ahead log before it returns, so an
  event acknowledged to a client survives a power cut or an OS crash, not only a crash of
  the process (``NORMAL`` would only survive the latter in WAL mode). The cost is one
  fsync per transaction, which a batch of up to 1,000 events shares;
- a busy timeout, so a writer waits for another process's transaction instead of
  failing; writes start with ``BEGIN IMMEDIATE``, taking the write lock up front, so two
  transactions can never deadlock upgrading a read lock.

- a bounded write-ahead log. SQLite's own checkpoints (every 1,000 pages) copy the log
  into the database but can only start the log over when no reader is using it; under a
  steady stream of profile reads that never happens, and the log grew past the database
  (384 MB seen). So after a commit that leaves the log above ``wal_limit_bytes``, the
  writer runs ``wal_checkpoint(TRUNCATE)``, waiting at most ``CHECKPOINT_WAIT_S`` for the
  readers of the moment to finish (new ones read the database file and do not block it);
  ``journal_size_limit`` truncates the log whenever SQLite itself starts it over.

Opening a :class:`Database` touches nothing; the file (and its folder) is created by the
first statement.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bespoke.settings import SQLITE_PREFIX

#: How long a statement waits for another process's write transaction before failing.
BUSY_TIMEOUT_S = 30.0
#: The write-ahead log size above which a commit is followed by a checkpoint.
WAL_LIMIT_BYTES = 32 * 1024 * 1024
#: How long that checkpoint waits for the readers of the moment (writers wait meanwhile).
CHECKPOINT_WAIT_S = 0.25
#: Connections a forked process inherited: kept referenced so that they are never closed
#: (closing would act on the parent's file locks and shared memory).
_INHERITED: list[sqlite3.Connection] = []


def sqlite_path(url: str | Path) -> Path:
    """The file a ``sqlite:///path`` URL (or a plain path) names, made absolute."""
    text = str(url)
    if text.startswith(SQLITE_PREFIX):
        text = text.removeprefix(SQLITE_PREFIX)
    elif "://" in text:
        raise ValueError(f"{text!r} is not a SQLite URL (expected {SQLITE_PREFIX}<path>)")
    if not text or text == ":memory:":
        raise ValueError(
            f"the online store must be a file that every worker process can open, not {str(url)!r}"
        )
    return Path(text).expanduser().resolve()


def table_exists(con: sqlite3.Connection, name: str) -> bool:
    """Whether the file behind ``con`` has the table ``name`` (stores create theirs on
    first use, so a reader may come first)."""
    return (
        con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        is not None
    )


class Database:
    """A SQLite file with per-process, per-thread connections in WAL mode."""

    def __init__(
        self,
        path: str | Path,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        wal_limit_bytes: int | None = WAL_LIMIT_BYTES,
    ) -> None:
        self.path = sqlite_path(path)
        self.busy_timeout_s = busy_timeout_s
        #: ``None``: leave checkpoints to SQLite alone (the unbounded behaviour).
        self.wal_limit_bytes = wal_limit_bytes
        self._wal = self.path.with_name(self.path.name + "-wal")
        self._local = threading.local()
        self._schemas: set[str] = set()
        self._schema_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str | Path) -> Database:
        return cls(url)

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (in autocommit mode: transactions are explicit)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            if self._local.pid == os.getpid():
                return con
            # Inherited through fork: SQLite forbids using or closing it in the child.
            _INHERITED.append(con)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        con.execute("PRAGMA synchronous = FULL")
        con.execute("PRAGMA foreign_keys = ON")
        if self.wal_limit_bytes is not None:
            con.execute(f"PRAGMA journal_size_limit = {int(self.wal_limit_bytes)}")
        self._local.con, self._local.pid = con, os.getpid()
        return con

    def ensure(
        self, name: str, script: str, added: dict[str, dict[str, str]] | None = None
    ) -> None:
        """Run the idempotent DDL ``script`` (``CREATE … IF NOT EXISTS``) once per handle,
        then add the columns of ``added`` (table → column → type) that a file written by
        an older version lacks: the only schema change the stores make."""
        if name in self._schemas:
            return
        with self._schema_lock:
            if name in self._schemas:
                return
            with self.write() as con:
                for statement in script.split(";"):
                    if statement.strip():
                        con.execute(statement)
                for table, columns in (added or {}).items():
                    present = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
                    for column, kind in columns.items():
                        if column not in present:
                            con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._schemas.add(name)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (and fsynced) when the block ends, rolled back
        entirely if it raises."""
        con = self.connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:  # SQLite may have rolled back already (disk full, …)
                con.execute("ROLLBACK")
            raise
        self._bound_wal()

    def wal_bytes(self) -> int:
        """The write-ahead log's size now (0 when there is none)."""
        try:
            return self._wal.stat().st_size
        except FileNotFoundError:
            return 0

    def checkpoint(self, wait_s: float = CHECKPOINT_WAIT_S) -> bool:
        """Copy the log into the database and truncate it, waiting at most ``wait_s`` for
        the readers of the moment; returns whether it completed (it is retried after a
        later commit otherwise)."""
        con = self.connection()
        con.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        try:
            busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:  # locked by another checkpoint or writer
            return False
        finally:
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        return busy == 0

    def _bound_wal(self) -> None:
        if self.wal_limit_bytes is not None and self.wal_bytes() > self.wal_limit_bytes:
            self.checkpoint()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query in the block sees the same snapshot."""
        con = self.connection()
        con.execute("BEGIN")
        try:
            yield con
        finally:
            if con.in_transaction:
                con.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            con.close()
        self._local.con = None
