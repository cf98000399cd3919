"""Privacy benchmark: erasing people from a real installation on ML-1M, and proving it.

The installation is built the way a user builds one: the 1,000,209 ML-1M ratings and
6,040 users ingested into a lake by ``bespoke ingest``'s code; live events for 2,000 of
them in the online store (with a browser id a login linked for each of the first
1,001); a recommender (ALS) fitted on the lake's interactions and saved where MLflow keeps
artifacts, beside a ranker-style history (Parquet with ``user_id``). Then, through
``bespoke.privacy.installation`` (what ``bespoke privacy delete`` and the service run):

- ``delete_one_s``: user 1 erased from every registered store and verified (target ≤ 10 s);
- ``delete_batch_s``: users 2–1001 erased in one request (target ≤ 60 s);
- ``verify_s``: ``bespoke privacy verify``'s scan for one person afterwards;
- ``bytes_rewritten``: bytes of the files written anew (lake Parquet, model files), per
  deletion;
- ``traces_after``: traces left of the 1,001 people in every store (must be 0);
- ``collateral_changes``: tables and model arrays where anyone else's rows differ from
  before (must be 0): checksums of every other person's lake rows, online rows, model
  rows, taken before and after.

    python bench/privacy.py --out FILE [--datasets-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

COMMAND = "python bench/privacy.py --out FILE"
DATASET = "ml-1m"
ONE = "1"
BATCH = [str(u) for u in range(2, 1002)]
LIVE_PEOPLE = [str(u) for u in range(1, 2001)]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: (inode, size), to tell which were written anew."""
    return {str(p): (p.stat().st_ino, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def _rewritten(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    return sum(
        size for path, (inode, size) in after.items() if before.get(path, (None,))[0] != inode
    )


def _checksums(lake: Any, database: Any, artifacts: Path, gone: set[str]) -> dict[str, str]:
    """A digest of everyone else's data, per lake table, online table and model array."""
    con = lake.connect()
    out = {}
    for table, column in (("events", "user_id"), ("users", "user_id")):
        row = con.execute(
            f"SELECT count(*), bit_xor(hash(t)) FROM (SELECT * EXCLUDE (run_id) FROM {table} "
            f"WHERE {column} IS NULL OR {column} NOT IN (SELECT unnest(?))) t",
            [sorted(gone)],
        ).fetchone()
        out[f"lake:{table}"] = repr(row)
    with database.read() as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in sorted(tables):
            if table in {"privacy_requests", "suppressed", "sqlite_sequence"}:
                continue  # the deletion's own records
            rows = db.execute(f"SELECT * FROM {table}").fetchall()
            kept = sorted(repr(r) for r in rows if not any(str(v) in gone for v in r))
            out[f"online:{table}"] = hashlib.sha256(repr(kept).encode()).hexdigest()
    for state in sorted(artifacts.rglob("state.npz")):
        with np.load(state) as arrays:
            users = arrays["user_ids"].astype(str)
            keep = ~np.isin(users, sorted(gone))
            seen = np.split(arrays["seen_indices"], arrays["seen_indptr"][1:-1])
            digest = hashlib.sha256(users[keep].tobytes())
            digest.update(arrays["user_factors"][keep].tobytes())
            for row in np.flatnonzero(keep):
                digest.update(seen[row].tobytes())
            digest.update(arrays["item_factors"].tobytes())
        out[f"model:{state.parent.name}"] = digest.hexdigest()
    for history in sorted(artifacts.rglob("*.parquet")):
        frame = pd.read_parquet(history)
        kept = frame[~frame["user_id"].astype(str).isin(gone)]
        out[f"history:{history.name}"] = hashlib.sha256(
            pd.util.hash_pandas_object(kept, index=False).to_numpy().tobytes()
        ).hexdigest()
    return out


def _live(store: Any) -> int:
    """Five live events each for ``LIVE_PEOPLE``; the first 1,001 browsed first with a
    browser id, then logged in (the login links it to them)."""
    from bespoke.features.schema import EventIn

    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = []
    for n, user in enumerate(LIVE_PEOPLE):
        browser = f"browser-{user}-{n:05d}" if int(user) <= 1001 else None
        for i in range(5):
            events.append(EventIn.model_validate({
                "user_id": None if (browser and i < 2) else user,
                "anonymous_id": browser, "event_type": "click", "item_id": str(1 + (n * 7 + i) % 3000),
                "consent": ["personalization"], "timestamp": (start + timedelta(minutes=n * 5 + i)).isoformat(),
            }))  # fmt: skip
    for chunk in range(0, len(events), 1000):
        store.accept_events(events[chunk : chunk + 1000], DATASET)
    return len(events)


def _fit_models(lake: Any, artifacts: Path) -> dict[str, Any]:
    """ALS on the lake's interactions, saved as the registry saves it, and a history."""
    from bespoke.training.data import interactions_frame, load_interactions
    from bespoke.training.families import family

    interactions = load_interactions(lake, DATASET)
    start = time.perf_counter()
    model = family("als")(factors=32, iterations=10).fit(interactions)
    folder = artifacts / "recommenders-ml-1m" / "models" / "m-bench" / "artifacts"
    model.save(folder / "artifacts" / "recommender")
    history = folder / "artifacts" / "history"
    history.mkdir(parents=True)
    interactions_frame(interactions).to_parquet(history / "interactions.parquet")
    (folder / "input_example.json").write_text(
        json.dumps({"columns": ["user_id", "k"], "data": [[ONE, 10]]})
    )
    return {"als_fit_s": round(time.perf_counter() - start, 2)}


def run(datasets_dir: Path, console: Console) -> dict[str, Any]:
    from bespoke.features.collect import ingest
    from bespoke.features.sources import movielens_1m
    from bespoke.privacy.installation import Installation
    from bespoke.privacy.subjects import Subject
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bespoke-privacy-bench-") as scratch:
        # Everything under the scratch folder (lake, online store, MLflow artifacts,
        # reports, BentoML's store): the erasures rewrite what they find there.
        os.environ["BESPOKE_ROOT"] = scratch
        for name in ("BESPOKE_HOME", "BESPOKE_LAKE_URL", "BESPOKE_ONLINE_STORE_URL",
                     "BESPOKE_MLFLOW_TRACKING_URI", "BESPOKE_MLFLOW_ARTIFACTS_DIR",
                     "BESPOKE_REPORTS_DIR"):  # fmt: skip
            os.environ.pop(name, None)
        home = Path(scratch)
        os.environ["BENTOML_HOME"] = str(Path(scratch) / "bentoml")
        os.environ.setdefault("BESPOKE_HMAC_KEY", "bench-privacy-key-0123456789abcdef")
        get_settings.cache_clear()
        settings = get_settings()
        from bespoke.features.lake import Lake

        lake = Lake(settings.lake_url)
        start = time.perf_counter()
        result = ingest(movielens_1m(datasets_dir / "ml-1m"), lake, settings.pseudonym_key())
        figures["ingest_s"] = round(time.perf_counter() - start, 1)
        figures["events"] = result.counts("events")["stored"]
        console.print(f"ingested {figures['events']:,} ratings in {figures['ingest_s']} s")
        store = open_store(settings)
        figures["live_events"] = _live(store)
        artifacts = Path(settings.mlflow_artifacts_dir)
        figures.update(_fit_models(lake, artifacts))
        place = Installation.from_settings(settings)
        figures["stores"] = [s.name for s in place.stores]
        gone = {ONE, *BATCH} | {f"browser-{u}-{n:05d}" for n, u in enumerate(LIVE_PEOPLE[:1001])}
        before = _checksums(lake, place.online, artifacts, gone)

        files = _files(home)
        start = time.perf_counter()
        subject, named = place.person(DATASET, user_id=ONE)
        one = place.delete(subject, named, actor="bench")
        figures["delete_one_s"] = round(time.perf_counter() - start, 2)
        after_one = _files(home)
        rewritten_one = _rewritten(files, after_one)
        console.print(f"one person: {one.status} in {figures['delete_one_s']} s")

        start = time.perf_counter()
        batch = place.delete_many([("user_id", u) for u in BATCH], DATASET, actor="bench")
        figures["delete_batch_s"] = round(time.perf_counter() - start, 2)
        rewritten_batch = _rewritten(after_one, _files(home))
        console.print(f"1,000 people: {batch.status} in {figures['delete_batch_s']} s")
        figures["statuses"] = {"one": one.status, "batch": batch.status}
        figures["removed"] = {
            "one": {s: sum((r.get("removed") or {}).values()) for s, r in one.results.items()},
            "batch": {s: sum((r.get("removed") or {}).values()) for s, r in batch.results.items()},
        }
        figures["bytes_rewritten"] = {"one": rewritten_one, "batch": rewritten_batch}

        start = time.perf_counter()
        traces_one = place.traces(Subject(DATASET, frozenset({ONE}), subject.anonymous_ids))
        figures["verify_s"] = round(time.perf_counter() - start, 2)
        everyone = Subject(
            DATASET, frozenset({ONE, *BATCH}),
            frozenset(g for g in gone if g.startswith("browser-")),
        )  # fmt: skip
        traces = place.traces(everyone)
        figures["traces_after"] = sum(n for found in traces.values() for n in found.values()) + sum(
            n for found in traces_one.values() for n in found.values()
        )
        figures["traces_by_store"] = {s: sum(found.values()) for s, found in traces.items()}
        after = _checksums(lake, place.online, artifacts, gone)
        figures["collateral_changes"] = sum(before[k] != after.get(k) for k in before)
        figures["checked"] = sorted(before)
        figures["lake_healthy"] = lake.check().healthy
        figures["audit_whole"] = place.audit.verify().ok
    return figures


def show(figures: dict[str, Any], console: Console) -> None:
    table = Table(title="Erasure on ML-1M (1,000,209 ratings, 6,040 people)", header_style="bold")
    for column in ("figure", "value", "target"):
        table.add_column(column)
    rows = [
        ("delete_one_s", f"{figures['delete_one_s']} s", "≤ 10 s"),
        ("delete_batch_s (1,000 people)", f"{figures['delete_batch_s']} s", "≤ 60 s"),
        ("verify_s", f"{figures['verify_s']} s", ""),
        ("bytes_rewritten one / batch",
         f"{figures['bytes_rewritten']['one'] / 1e6:.1f} / {figures['bytes_rewritten']['batch'] / 1e6:.1f} MB", ""),
        ("traces_after", str(figures["traces_after"]), "0"),
        ("collateral_changes", f"{figures['collateral_changes']} of {len(figures['checked'])}", "0"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    console.print(table)
    goals = {
        "delete_one_s": figures["delete_one_s"] <= 10,
        "delete_batch_s": figures["delete_batch_s"] <= 60,
        "traces_after": figures["traces_after"] == 0,
        "collateral_changes": figures["collateral_changes"] == 0,
    }
    missed = [name for name, met in goals.items() if not met]
    console.print(f"goals missed: {', '.join(missed)}" if missed else "every goal met")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets-dir", type=Path, default=os.environ.get("BESPOKE_DATASETS_DIR"))
    args = parser.parse_args()
    if args.datasets_dir is None:
        parser.error("set BESPOKE_DATASETS_DIR or pass --datasets-dir")
    console = Console()
    start = time.perf_counter()
    figures = run(Path(args.datasets_dir), console)
    figures["total_seconds"] = round(time.perf_counter() - start, 1)
    figures["command"] = COMMAND
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    show(figures, console)
    console.print(f"{figures['total_seconds']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
