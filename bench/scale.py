"""Scale-out benchmark: the event stream, the batch engines, service replicas sharing Redis.

- ``stream_events_per_s``: ``{"1": …, "2": …}``: ML-100K's ratings through a real
  ``redis-server`` stream into the online store and the lake by 1 and 2 ``bespoke stream
  consume`` worker processes in one consumer group, from the first event appended to the
  last one applied and written to the lake (the backlog is appended first: a drain rate),
  into the SQLite online store; ``stream_redis_store_events_per_s`` the same into a Redis
  online store (``BESPOKE_ONLINE_STORE_URL=redis://…``);
  ``append_events_per_s``: appending to the stream (what ``/v1/events`` does with one);
- ``feature_build_s``: ``{dataset: {"duckdb": …, "spark": …}}``: the person-feature build
  (``bespoke.segments.features.build_person_features``, one SQL text for both engines)
  on DuckDB and on Spark local mode (``local[2]``) over the same lake, median of 3 warm
  runs; ``feature_build_identical`` whether the two outputs are equal (floats to 1e-9);
  ``spark_session_start_s`` the JVM's start, once; ``lake_bytes_per_event`` the events'
  Parquet bytes over their count;
- ``identity_s``: ``{"duckdb": …, "spark": …}``: Splink's linkage of Febrl 4's first 300
  originals to their duplicates on each backend (bespoke.identity.matching.splink_backend),
  ``identity_identical`` whether the accepted links are the same;
- ``replicas``: ``{"1": {"rps", "p50_ms", "p99_ms"}, "2": …}``: N ``bentoml serve``
  processes (1 worker each, as N hosts would run) sharing one Redis online store and
  answer cache, each loaded by its own client process (``POST /v1/recommend``, k = 10, a
  nonce per request so every answer is computed, 8 connections per replica);
  ``redis_bytes_per_person`` / ``redis_bytes_per_event``: Redis's ``used_memory`` grown by
  seeding every ML-100K person's attributes and history (the store's cap of recent events
  per profile applies), over people and events.

    python bench/scale.py --out FILE [--events N] [--datasets-dir DIR] [--only PART,…]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

COMMAND = "python bench/scale.py --out FILE"
BATCH = 500


def _events(datasets_dir: Path, n: int) -> list[Any]:
    from bespoke.features.schema import EventIn

    frame = pd.read_csv(datasets_dir / "ml-100k" / "u.data", sep="\t",
                        names=["user", "item", "rating", "ts"]).head(n)  # fmt: skip
    return [EventIn.model_validate({
        "user_id": str(r.user), "item_id": str(r.item), "event_type": "rate",
        "value": float(r.rating), "consent": ["personalization"],
        "timestamp": pd.Timestamp(r.ts, unit="s", tz="UTC").isoformat(),
        "source_event_id": f"ml-100k-{i}"}) for i, r in enumerate(frame.itertuples())]  # fmt: skip


def drain(
    datasets_dir: Path, workers: int, n: int, scratch: Path, store: str = "sqlite"
) -> dict[str, float]:
    from bespoke.engine.engines import DuckDBEngine
    from bespoke.features.lake import Lake
    from bespoke.serving.local import local_settings
    from bespoke.stream.events import RedisEventStream, start_redis

    home = scratch / f"home-{store}-{workers}"
    server, url = start_redis(scratch / f"redis-{store}-{workers}")
    try:
        stream = RedisEventStream(url)
        events = _events(datasets_dir, n)
        started = time.perf_counter()
        for at in range(0, len(events), 1000):
            stream.append("ml-100k", events[at : at + 1000])
        appended = time.perf_counter() - started
        env = {**os.environ, **local_settings(home).as_environment(),
               "BESPOKE_EVENT_STREAM_URL": url, "BESPOKE_SERVING_DATASET": "ml-100k"}  # fmt: skip
        if store == "redis":  # the online store in the same server's database 1
            env["BESPOKE_ONLINE_STORE_URL"] = url.removesuffix("/0") + "/1"
        bespoke = str(Path(sys.executable).with_name("bespoke"))
        begin = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    bespoke,
                    "stream",
                    "consume",
                    "--name",
                    f"w{i}",
                    "--batch",
                    str(BATCH),
                    "--until-empty",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        for proc in procs:
            proc.wait()
        drained = time.perf_counter() - begin
        lake = Lake(local_settings(home).lake_url)
        stored = DuckDBEngine(lake).frame("SELECT count(*) AS n FROM events")["n"].iloc[0]
        assert stored == n, (stored, n)  # each event in the lake once
    finally:
        server.kill()
        server.wait()
    return {"drain_s": round(drained, 2), "events_per_s": round(n / drained),
            "append_events_per_s": round(n / appended)}  # fmt: skip


def feature_build(datasets_dir: Path, scratch: Path, console: Console) -> dict[str, Any]:
    """The person-feature build on both engines over the same lakes (see the module doc)."""
    from bespoke.engine.engines import DuckDBEngine, SparkEngine, spark_session
    from bespoke.features import collect, sources
    from bespoke.features.lake import Lake
    from bespoke.segments.features import build_person_features

    cases = {"ml-100k": (sources.movielens_100k, "ml-100k", "1998-03-01"),
             "cdnow": (sources.cdnow, "cdnow", "1998-01-01")}  # fmt: skip
    started = time.perf_counter()
    session = spark_session("local[2]")
    out: dict[str, Any] = {"spark_session_start_s": round(time.perf_counter() - started, 1),
                           "feature_build_s": {}, "feature_build_identical": {},
                           "feature_build_people": {}}  # fmt: skip
    for dataset, (source, folder, as_of) in cases.items():
        lake = Lake(str(scratch / f"lake-{dataset}"))
        collect.ingest(source(datasets_dir / folder), lake, b"k" * 32)
        frames, seconds = {}, {}
        for engine in (DuckDBEngine(lake), SparkEngine(lake, session)):
            build_person_features(engine, dataset, as_of)  # warm: files listed, plans cached
            times = []
            for _ in range(3):
                begin = time.perf_counter()
                frames[engine.name] = build_person_features(engine, dataset, as_of)
                times.append(time.perf_counter() - begin)
            seconds[engine.name] = round(statistics.median(times), 2)
            console.print(f"features {dataset} on {engine.name}: {seconds[engine.name]} s")
        try:
            pd.testing.assert_frame_equal(frames["duckdb"], frames["spark"], check_dtype=False,
                                          rtol=1e-9)  # fmt: skip
            identical = True
        except AssertionError:
            identical = False
        out["feature_build_s"][dataset] = seconds
        out["feature_build_identical"][dataset] = identical
        out["feature_build_people"][dataset] = len(frames["duckdb"])
        files = lake.files("events", dataset)
        rows = DuckDBEngine(lake).frame("SELECT count(*) AS n FROM events")["n"].iloc[0]
        out.setdefault("lake_bytes_per_event", {})[dataset] = round(
            sum(os.path.getsize(f) for f in files) / rows, 1
        )
    session.stop()
    return out


def replicas(datasets_dir: Path, scratch: Path, console: Console, seconds: float) -> dict[str, Any]:
    """N service replicas sharing one Redis online store (see the module doc)."""
    import multiprocessing as mp

    import numpy as np
    from redis import Redis as redis_client

    import serving  # bench/serving.py: its preparation, servers and load generator
    from bespoke.stream.events import start_redis

    home = scratch / "replicas"
    home.mkdir()
    redis, url = start_redis(scratch / "redis-replicas")
    os.environ["BESPOKE_ONLINE_STORE_URL"] = url  # prepare() seeds the Redis store
    try:
        client = redis_client.from_url(url)
        before = client.info("memory")["used_memory"]
        prepared = serving.prepare(home, datasets_dir)
        seeded = client.info("memory")["used_memory"] - before
        env = {**prepared["env"], "BESPOKE_ONLINE_STORE_URL": url}
        out: dict[str, Any] = {}
        for n in (1, 2):
            servers = [serving.Server("bentoml-1w", home, env, "bespoke") for _ in range(n)]
            try:
                for server in servers:
                    server.wait_first_answer(prepared["key"], prepared["users"][0])
                jobs = [{"port": s.port, "key": prepared["key"], "path": "/v1/recommend",
                         "kind": "recommend", "users": prepared["users"], "concurrency": 8,
                         "warmup_s": 3.0, "seconds": seconds, "min_requests": 0}
                        for s in servers]  # fmt: skip
                pipes, processes = [], []
                for job in jobs:
                    parent, child = mp.get_context("spawn").Pipe()
                    process = mp.get_context("spawn").Process(
                        target=serving.client_process, args=(job, child)
                    )
                    process.start()
                    pipes.append(parent)
                    processes.append(process)
                results = []
                for parent in pipes:
                    parent.recv()  # "measuring"
                for parent, process in zip(pipes, processes, strict=True):
                    results.append(parent.recv())
                    process.join()
                failed = [r for r in results if "failed" in r or not r["latencies"]]
                if failed:
                    raise RuntimeError(f"replicas={n}: {failed}")
                latencies = 1000.0 * np.concatenate([r["latencies"] for r in results])
                wall = max(r["wall_s"] for r in results)
                out[str(n)] = {"rps": round(len(latencies) / wall, 1),
                               "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                               "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                               "errors": sum(len(r["errors"]) for r in results)}  # fmt: skip
                console.print(f"replicas={n}: {out[str(n)]}")
            finally:
                for server in servers:
                    server.stop()
        people, events = len(prepared["users"]), prepared["setup"]["seeded_events"]
        return {"replicas": out, "replica_users": people,
                "redis_bytes_per_person": round(seeded / people),
                "redis_bytes_per_event": round(seeded / events, 1),
                "redis_seeded": {"people": people, "events": events, "bytes": seeded}}  # fmt: skip
    finally:
        os.environ.pop("BESPOKE_ONLINE_STORE_URL", None)
        redis.kill()
        redis.wait()


def identity(datasets_dir: Path, console: Console, records: int) -> dict[str, Any]:
    """Splink's record linkage on DuckDB and on its Spark backend (local[2]): Febrl 4's
    first ``records`` originals against their first ``records`` duplicates."""
    from bespoke.engine.engines import spark_session
    from bespoke.identity.matching import RecordMapping, match_records, read_records, splink_backend
    from bespoke.settings import Settings

    mapping = RecordMapping.model_validate(FEBRL)
    folder = datasets_dir / "febrl"
    frames = [read_records(folder / f"dataset4{part}.csv", mapping).head(records)
              for part in ("a", "b")]  # fmt: skip
    spark_session("local[2]")
    out: dict[str, Any] = {"identity_records": records, "identity_s": {}}
    links = {}
    for engine in ("duckdb", "spark"):
        backend = splink_backend(Settings(engine=engine, spark_master="local[2]"))
        begin = time.perf_counter()
        result = match_records(frames, link_type="link_only", backend=backend)
        out["identity_s"][engine] = round(time.perf_counter() - begin, 1)
        links[engine] = {frozenset(pair) for pair in
                         zip(result.links["record_id_l"], result.links["record_id_r"], strict=True)}  # fmt: skip
        console.print(
            f"identity on {engine}: {out['identity_s'][engine]} s, {len(links[engine])} links"
        )
    out["identity_links"] = len(links["duckdb"])
    out["identity_identical"] = links["duckdb"] == links["spark"]
    return out


#: Febrl's columns (as tests/data/test_identity.py maps them).
FEBRL = {"record_id": "rec_id", "given_name": "given_name", "surname": "surname",
         "date_of_birth": "date_of_birth", "street_number": "street_number",
         "address": "address_1", "address_2": "address_2", "city": "suburb",
         "postcode": "postcode", "state": "state", "national_id": "soc_sec_id",
         "date_format": "%Y%m%d"}  # fmt: skip

PARTS = ("stream", "features", "replicas", "identity")


def run(
    datasets_dir: Path,
    n: int,
    console: Console,
    parts: tuple[str, ...] = PARTS,
    replica_seconds: float = 20.0,
    identity_records: int = 300,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bespoke-bench-scale-") as scratch:
        if "stream" in parts:
            figures.update(events=n, batch=BATCH)
            results = {}
            for workers in (1, 2):
                console.print(f"stream: {n} events, {workers} worker(s)…")
                results[str(workers)] = drain(datasets_dir, workers, n, Path(scratch))
            figures["stream_events_per_s"] = {k: v["events_per_s"] for k, v in results.items()}
            figures["stream_drain_s"] = {k: v["drain_s"] for k, v in results.items()}
            figures["append_events_per_s"] = results["1"]["append_events_per_s"]
            on_redis = {}
            for workers in (1, 2):
                console.print(f"stream into a Redis online store: {workers} worker(s)…")
                on_redis[str(workers)] = drain(datasets_dir, workers, n, Path(scratch), "redis")
            figures["stream_redis_store_events_per_s"] = {
                k: v["events_per_s"] for k, v in on_redis.items()
            }
        if "features" in parts:
            figures.update(feature_build(datasets_dir, Path(scratch), console))
        if "identity" in parts:
            figures.update(identity(datasets_dir, console, identity_records))
        if "replicas" in parts:
            figures.update(replicas(datasets_dir, Path(scratch), console, replica_seconds))
    return figures


def show(figures: dict[str, Any], console: Console) -> None:
    if "stream_events_per_s" in figures:
        show_stream(figures, console)
    if "feature_build_s" in figures:
        table = Table(title="Person-feature build, one SQL on both engines (median of 3, warm)",
                      header_style="bold")  # fmt: skip
        for column in ("dataset", "people", "DuckDB (s)", "Spark local[2] (s)", "identical"):
            table.add_column(column)
        for dataset, took in figures["feature_build_s"].items():
            table.add_row(dataset, str(figures["feature_build_people"][dataset]),
                          str(took["duckdb"]), str(took["spark"]),
                          str(figures["feature_build_identical"][dataset]))  # fmt: skip
        console.print(table)
    if "identity_s" in figures:
        table = Table(title=f"Record linkage with Splink: Febrl 4, {figures['identity_records']} "
                      "records a side", header_style="bold")  # fmt: skip
        for column in ("DuckDB (s)", "Spark local[2] (s)", "links", "identical"):
            table.add_column(column)
        took = figures["identity_s"]
        table.add_row(str(took["duckdb"]), str(took["spark"]), str(figures["identity_links"]),
                      str(figures["identity_identical"]))  # fmt: skip
        console.print(table)
    if "replicas" in figures:
        table = Table(title="Service replicas sharing one Redis online store (/v1/recommend)",
                      header_style="bold")  # fmt: skip
        for column in ("replicas", "req/s", "p50 ms", "p99 ms", "errors"):
            table.add_column(column)
        for n, cell in figures["replicas"].items():
            table.add_row(n, str(cell["rps"]), str(cell["p50_ms"]), str(cell["p99_ms"]),
                          str(cell["errors"]))  # fmt: skip
        console.print(table)


def show_stream(figures: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Event stream: {figures['events']} ML-100K ratings through redis-server",
                  header_style="bold")  # fmt: skip
    for column in ("figure", "1 worker", "2 workers"):
        table.add_column(column)
    rate, took = figures["stream_events_per_s"], figures["stream_drain_s"]
    table.add_row("events/s (applied + in the lake)", str(rate["1"]), str(rate["2"]))
    table.add_row("drain time (s)", str(took["1"]), str(took["2"]))
    table.add_row("append events/s", str(figures["append_events_per_s"]), "")
    if "stream_redis_store_events_per_s" in figures:
        rate = figures["stream_redis_store_events_per_s"]
        table.add_row("events/s, Redis online store", str(rate["1"]), str(rate["2"]))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--datasets-dir", type=Path, default=os.environ.get("BESPOKE_DATASETS_DIR"))
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to run: {PARTS}")
    parser.add_argument("--replica-seconds", type=float, default=20.0)
    args = parser.parse_args()
    parts = tuple(p.strip() for p in args.only.split(",") if p.strip())
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--only: unknown part(s) {sorted(unknown)}; known: {', '.join(PARTS)}")
    if args.datasets_dir is None:
        parser.error("set BESPOKE_DATASETS_DIR or pass --datasets-dir")
    if shutil.which("redis-server") is None:
        parser.error("needs redis-server (scripts/test-system-packages installs it)")
    console = Console()
    start = time.perf_counter()
    figures = run(Path(args.datasets_dir), args.events, console, parts, args.replica_seconds)
    figures["total_seconds"] = round(time.perf_counter() - start, 1)
    figures["command"] = COMMAND
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    show(figures, console)
    console.print(f"{figures['total_seconds']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
