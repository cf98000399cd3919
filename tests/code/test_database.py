"""The online store's SQLite file: its write-ahead log stays bounded under steady writes
while readers never pause (the case where SQLite's own checkpoints cannot start the log
over)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bespoke.serving.db import Database

LIMIT = 512 * 1024
COMMITS = 600
ROW_BYTES = 8192


def _peak_wal(path: Path, limit: int | None) -> int:
    """The largest log seen after each of COMMITS writes, while two readers take turns
    holding a read transaction, so that at every moment one of them is reading."""
    db = Database(path, wal_limit_bytes=limit)
    with db.write() as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, blob BLOB)")
    stop = threading.Event()

    def reader(delay: float) -> None:
        time.sleep(delay)
        while not stop.is_set():
            with db.read() as con:
                con.execute("SELECT count(*) FROM t").fetchone()
                time.sleep(0.05)

    readers = [threading.Thread(target=reader, args=(delay,)) for delay in (0.0, 0.025)]
    for thread in readers:
        thread.start()
    peak = 0
    try:
        for _ in range(COMMITS):
            with db.write() as con:
                con.execute("INSERT INTO t (blob) VALUES (?)", (os.urandom(ROW_BYTES),))
            peak = max(peak, db.wal_bytes())
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    with db.read() as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (COMMITS,)
    return peak


def test_the_write_ahead_log_stays_bounded_while_readers_never_pause(tmp_path: Path) -> None:
    unbounded = _peak_wal(tmp_path / "sqlite-alone.db", None)
    # the case is real: left to SQLite, the log holds every commit
    assert unbounded > COMMITS * ROW_BYTES
    bounded = _peak_wal(tmp_path / "bounded.db", LIMIT)
    assert bounded <= LIMIT + 4 * ROW_BYTES, (bounded, unbounded)


def test_a_checkpoint_empties_the_log(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", wal_limit_bytes=None)
    with db.write() as con:
        con.execute("CREATE TABLE t (x)")
        con.executemany("INSERT INTO t VALUES (?)", [(os.urandom(1000),) for _ in range(100)])
    assert db.wal_bytes() > 100_000
    assert db.checkpoint()
    assert db.wal_bytes() == 0
