"""The two batch engines behind one method: ``frame(sql, params)`` → a pandas frame.

:class:`DuckDBEngine` runs the query on the lake's DuckDB connection. :class:`SparkEngine`
registers each lake table's Parquet files (read with the table's full schema, so files
written before a column existed read it as null, as DuckDB's ``union_by_name`` does),
creates the lake's views from the same definitions transpiled to Spark SQL, and runs the
transpiled query. Results come back alike: timestamps as UTC, the same column names.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd
import pyarrow as pa

from bespoke.engine.sql import Params, to_spark
from bespoke.features.lake import Lake, view_definitions
from bespoke.features.schema import TABLES
from bespoke.settings import Settings

log = logging.getLogger(__name__)

#: Spark settings of every session we start: UTC like the lake, no web UI, Arrow for the
#: hand-over to pandas, few shuffle partitions (a batch here is one dataset, not a cluster's).
SPARK_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "1g",
    "spark.sql.parquet.int96RebaseModeInRead": "CORRECTED",
}
#: Local mode stays on loopback (the machine's own address may not accept connections).
LOCAL_CONF = {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"}


#: Rows a query reads besides the lake's views, by the name it uses.
Relations = Mapping[str, pd.DataFrame | pa.Table]


class BatchEngine(Protocol):
    """What runs the lake's batch queries."""

    name: str

    def frame(
        self, sql: str, params: Params = None, relations: Relations | None = None
    ) -> pd.DataFrame:
        """The rows of ``sql`` (DuckDB's dialect, over the lake's views and ``relations``:
        name → rows the query may read besides the lake) as a frame."""
        ...


class DuckDBEngine:
    """DuckDB in-process over the lake's views (the embedded default)."""

    name = "duckdb"

    def __init__(
        self, lake: Lake | None = None, con: duckdb.DuckDBPyConnection | None = None
    ) -> None:
        if lake is None and con is None:
            raise ValueError("DuckDBEngine needs a lake or a connection with the lake's views")
        self.lake = lake
        self._con = con

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The connection the queries run on (the lake's views on first use)."""
        if self._con is None:
            assert self.lake is not None
            self._con = self.lake.connect()
        return self._con

    def frame(
        self, sql: str, params: Params = None, relations: Relations | None = None
    ) -> pd.DataFrame:
        con = self.connection()
        for name, rows in (relations or {}).items():
            con.register(name, rows)
        try:
            return con.execute(sql, params).df()
        finally:
            for name in relations or {}:
                con.unregister(name)


def spark_session(master: str, app_name: str = "bespoke") -> Any:
    """The process's Spark session at ``master`` (started on first use; a running one is
    reused, as Spark allows one per process). Needs the ``spark`` extra and Java 17."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # an optional extra, not a cycle
        raise RuntimeError(
            "Spark (BESPOKE_ENGINE=spark, the spark-als family) needs pyspark: install the "
            "`spark` extra (pip install 'bespoke[spark]', or uv sync --extra spark) and Java 17"
        ) from None
    if SparkSession.getActiveSession() is None and not _java_found():
        raise RuntimeError(
            "Spark needs Java 17 or later and finds none (no JAVA_HOME, no `java` on PATH): "
            "install openjdk-17-jre-headless (scripts/test-system-packages does it)"
        )
    builder = SparkSession.builder.master(master).appName(app_name)
    # Splink's string-similarity functions (Jaro-Winkler, …) for its Spark backend
    # (bespoke.identity.matching.splink_backend); its module imports pyspark, so here.
    from splink.backends.spark import similarity_jar_location

    conf = {**SPARK_CONF, **(LOCAL_CONF if master.startswith("local") else {}),
            "spark.jars": str(similarity_jar_location())}  # fmt: skip
    for name, value in conf.items():
        builder = builder.config(name, value)
    # The executors' Python is the driver's (local mode runs both here).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


#: Whose lake views each Spark session holds now: session id → engine id.
_VIEWS_OF: dict[int, int] = {}


def _java_found() -> bool:
    """Whether Spark's launcher will find a ``java``: JAVA_HOME's (what it prefers; the
    JVM's own variable, not a bespoke setting) or one on PATH."""
    home = os.environ.get("JAVA_HOME")
    return bool(home and (Path(home) / "bin" / "java").exists()) or shutil.which("java") is not None


class SparkEngine:
    """Apache Spark over the lake's Parquet files (any fsspec URL Spark's Hadoop file
    systems read: local folders, ``s3a://`` with hadoop-aws on the classpath, …)."""

    name = "spark"

    def __init__(self, lake: Lake | None, session: Any) -> None:
        self.lake = lake  # None: queries over their relations only
        self.session = session

    def refresh(self) -> None:
        """(Re)register the tables and views so that they cover the files there are now."""
        from pyspark.sql.pandas.types import from_arrow_schema

        if self.lake is None:
            raise ValueError("this Spark engine has no lake: its queries read their relations")
        for table, (_, schema) in TABLES.items():
            files = [self._spark_path(path) for path in self.lake.files(table)]
            spark_schema = from_arrow_schema(schema)
            if files:
                frame = self.session.read.schema(spark_schema).parquet(*files)
            else:
                frame = self.session.createDataFrame([], spark_schema)
            frame.createOrReplaceTempView(f"_raw_{table}")
        withheld = self.lake.withheld is not None and self.lake.withheld.num_rows > 0
        if withheld:
            self.session.createDataFrame(self.lake.withheld.to_pandas()).createOrReplaceTempView(
                "_withheld"
            )
        for view, sql in view_definitions(withheld=withheld).items():
            self.session.sql(f"CREATE OR REPLACE TEMPORARY VIEW {view} AS {to_spark(sql)}")
        _VIEWS_OF[id(self.session)] = id(self)

    def _spark_path(self, path: str) -> str:
        if self.lake.is_local:
            return f"file://{path}"
        url = self.lake.file_url(path)
        return "s3a://" + url.removeprefix("s3://") if url.startswith("s3://") else url

    def frame(
        self, sql: str, params: Params = None, relations: Relations | None = None
    ) -> pd.DataFrame:
        for name, rows in (relations or {}).items():
            table = (
                rows
                if isinstance(rows, pa.Table)
                else pa.Table.from_pandas(rows, preserve_index=False)
            )
            self.session.createDataFrame(table).createOrReplaceTempView(name)
        if self.lake is None:
            return _as_utc(self.session.sql(to_spark(sql, params)).toArrow())
        # The views are the session's (one per process): another engine's lake, or the
        # same lake with other people withheld, may have replaced them since.
        if _VIEWS_OF.get(id(self.session)) != id(self):
            self.refresh()
        result = self.session.sql(to_spark(sql, params))
        return _as_utc(result.toArrow())


def _as_utc(table: pa.Table) -> pd.DataFrame:
    """Spark hands timestamps over in the session's zone (UTC) without saying so: say it,
    as DuckDB's frames do; dates become midnight timestamps, as in DuckDB's frames."""
    frame = table.to_pandas()
    for field in table.schema:
        if pa.types.is_date(field.type):
            frame[field.name] = pd.to_datetime(frame[field.name])
        elif pa.types.is_timestamp(field.type):
            column = pd.to_datetime(frame[field.name])
            frame[field.name] = (
                column.dt.tz_localize("UTC")
                if column.dt.tz is None
                else column.dt.tz_convert("UTC")
            )
    return frame


def open_engine(settings: Settings, lake: Lake) -> BatchEngine:
    """The engine the settings name (``BESPOKE_ENGINE``) over ``lake``."""
    if settings.engine == "spark":
        return SparkEngine(lake, spark_session(settings.spark_master))
    return DuckDBEngine(lake)
