"""The batch engine: what runs the lake's batch queries, DuckDB in-process or Apache Spark.

Each query is written once, in DuckDB's SQL, over the lake's views (``events``,
``persons``, ``users``, ``items``, …: :func:`bespoke.features.lake.view_definitions`).
DuckDB runs it as it is; on Spark the views and the query are transpiled with SQLGlot
(:mod:`bespoke.engine.sql`) and run over the same Parquet files. ``BESPOKE_ENGINE``
chooses (``duckdb`` by default), ``BESPOKE_SPARK_MASTER`` says where Spark runs.
"""
