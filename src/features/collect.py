"""Ingestion: schema check → PII pseudonymisation → consent gate → dedupe → clean → lake.

Adapters (:mod:`bespoke.features.sources`) turn a source into a :class:`SourceBatch` of
typed frames; :func:`ingest` does the rest in one run. Structural problems (a missing
column, a value of the wrong type, an unreadable file) raise :class:`IngestError` naming
the file, column and row before anything is written. Row-level anomalies go to
quarantine. Event ids are content hashes, so ingesting the same source again adds
nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc
from pandera.engines import pandas_engine

from bespoke.features import clean, geo, privacy
from bespoke.features.lake import Lake
from bespoke.features.schema import (
    EVENT_SCHEMA,
    ITEM_SCHEMA,
    PERSONALIZATION,
    PII_FIELDS,
    QUARANTINE_SCHEMA,
    TEXT,
    USER_SCHEMA,
    Channel,
    ConsentPurpose,
    check_dataset_name,
)

#: ``callback(stage, done, total)``: the single progress hook of long work.
Callback = Callable[[str, int, int], None]


class IngestError(ValueError):
    """Bad input. Raised before anything is written: the lake is unchanged."""


# --- reading and type checks -----------------------------------------------------------

ROW = "_row"  # 1-based line number in the source file, for messages and quarantine
SOURCE = "_source"  # the source file's name


def read_delimited(
    path: str | Path,
    *,
    sep: str,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    header_lines: int | None = None,
) -> pd.DataFrame:
    """A delimited text file as strings, with its line numbers in ``_row``.

    ``names`` given: the file has ``header_lines`` (default 0) lines before the data.
    ``names`` absent: the first line is the header.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    skip = header_lines if header_lines is not None else (0 if names else 1)
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            names=list(names) if names else None,
            header=None if names else 0,
            skiprows=skip if names else None,
            dtype=TEXT,
            keep_default_na=False,
            na_values=[""],
            encoding=encoding,
            engine="python" if len(sep) > 1 and sep != r"\s+" else "c",
            skipinitialspace=True,
        )
    except UnicodeDecodeError as error:
        line, offset = _first_undecodable_line(path, encoding)
        raise IngestError(
            f"{path}: line {line} is not valid {encoding} text (byte {offset} of the file); "
            f"convert it to {encoding}"
        ) from error
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as error:
        raise IngestError(f"{path}: unreadable as a {sep!r}-separated table: {error}") from error
    if names is None:
        frame.columns = [str(c).strip() for c in frame.columns]
    frame[ROW] = np.arange(len(frame), dtype=np.int64) + skip + 1
    frame[SOURCE] = path.name
    return frame


def _first_undecodable_line(path: Path, encoding: str) -> tuple[int, int]:
    """(line number, file byte offset) of the first byte that ``encoding`` cannot decode."""
    offset = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as error:
                return number, offset + error.start
            offset += len(line)
    return 0, offset


def read_table_file(path: str | Path) -> pd.DataFrame:
    """A CSV/TSV (header line) or Parquet file as strings, with ``_row`` and ``_source``."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    if path.suffix.lower() in {".parquet", ".pq"}:
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several types for a bad file
            raise IngestError(f"{path}: unreadable as Parquet: {error}") from error
        frame = frame.astype({c: TEXT for c in frame.columns if frame[c].dtype == object})
        frame[ROW] = np.arange(len(frame), dtype=np.int64) + 1
        frame[SOURCE] = path.name
        return frame
    sep = "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","
    return read_delimited(path, sep=sep)


def require_columns(frame: pd.DataFrame, required: Sequence[str], source: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        present = [c for c in frame.columns if not c.startswith("_")]
        raise IngestError(f"{source}: missing column(s) {missing}; the file has {present}")


def unix_seconds() -> pandas_engine.DateTime:
    return pandas_engine.DateTime(to_datetime_kwargs={"unit": "s"}, tz="UTC")


def date_format(fmt: str) -> pandas_engine.DateTime:
    return pandas_engine.DateTime(to_datetime_kwargs={"format": fmt}, tz="UTC")


def iso_datetime() -> pandas_engine.DateTime:
    return pandas_engine.DateTime(to_datetime_kwargs={"format": "ISO8601", "utc": True}, tz="UTC")


def coerce(frame: pd.DataFrame, types: Mapping[str, Any], source: str) -> pd.DataFrame:
    """Cast columns to ``types`` with pandera; any value that does not fit raises
    :class:`IngestError` naming the file, line and column of the first few."""
    present = {c: t for c, t in types.items() if c in frame.columns}
    # Epoch times arrive as text: checked as whole numbers, then turned into instants.
    epochs = {c: t.to_datetime_kwargs["unit"] for c, t in present.items() if _epoch_unit(t)}
    schema = pandera.DataFrameSchema(
        {
            c: pandera.Column("Int64" if c in epochs else t, coerce=True, nullable=True)
            for c, t in present.items()
        }
    )
    try:
        frame = schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as errors:
        cases = errors.failure_cases.drop_duplicates(["column", "index"])
        found = []
        for case in cases.head(5).itertuples():
            row = (
                frame.loc[case.index, ROW]
                if ROW in frame and case.index in frame.index
                else case.index
            )
            found.append(
                f"line {row}, column {case.column!r}: {case.failure_case!r} is not "
                + _describe(types[case.column])
            )
        more = f" (and {len(cases) - len(found)} more)" if len(cases) > len(found) else ""
        raise IngestError(f"{source}: " + "; ".join(found) + more) from None
    for column, unit in epochs.items():
        frame[column] = pd.to_datetime(frame[column], unit=unit, utc=True)
    return frame


def _epoch_unit(kind: Any) -> str | None:
    return kind.to_datetime_kwargs.get("unit") if isinstance(kind, pandas_engine.DateTime) else None


def _describe(kind: Any) -> str:
    if isinstance(kind, pandas_engine.DateTime):
        kwargs = kind.to_datetime_kwargs
        return "a unix time" if kwargs.get("unit") else f"a date ({kwargs.get('format', 'any')})"
    return {"Int64": "a whole number", "float64": "a number", TEXT: "text"}.get(
        str(kind), str(kind)
    )


# --- batches and results -----------------------------------------------------------------

EVENT_INPUT_COLUMNS = [
    "source_event_id", "timestamp", "user_id", "anonymous_id", "event_type", "item_id",
    "value", "quantity", "channel", "device", "geo", "page", "referrer", "ip", "email",
    "phone", "consent",
]  # fmt: skip
EVENT_INPUT_TYPES: dict[str, Any] = {
    **{c: TEXT for c in EVENT_INPUT_COLUMNS},
    "timestamp": iso_datetime(),
    "value": "float64",
    "quantity": "Int64",
}


@dataclass
class SourceBatch:
    """What an adapter hands to :func:`ingest`: typed frames and where they came from.

    ``events`` holds :data:`EVENT_INPUT_COLUMNS` (missing ones are empty) plus ``_row``
    and ``_source``; ``users`` and ``items`` hold the attribute and catalog columns.
    """

    dataset: str
    source: str
    files: list[Path] = field(default_factory=list)
    events: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    has_timestamps: bool = True
    rating_scale: tuple[float, float] | None = None
    #: Consent purposes for rows with none of their own: the terms the source was
    #: collected under. Empty means every row must carry its own.
    default_consent: tuple[ConsentPurpose, ...] = ()
    default_channel: Channel = Channel.BATCH


@dataclass
class IngestResult:
    """What one run did; ``manifest`` is also stored under ``<lake>/_runs/``."""

    run_id: str
    dataset: str
    manifest: dict[str, Any]

    def counts(self, entity: str = "events") -> dict[str, Any]:
        return self.manifest.get(entity, {})


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:8]}"


def fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- ingestion -----------------------------------------------------------------------------


def ingest(
    batch: SourceBatch,
    lake: Lake,
    key: bytes,
    *,
    now: datetime | None = None,
    callback: Callback | None = None,
) -> IngestResult:
    """Validate, clean and add ``batch`` to ``lake`` in one run; see the module docstring."""
    check_dataset_name(batch.dataset)
    now = now or datetime.now(UTC)
    run_id = new_run_id(now)
    progress = callback or (lambda stage, done, total: None)
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "dataset": batch.dataset,
        "source": batch.source,
        "files": [
            {"name": p.name, "bytes": p.stat().st_size, "sha256": fingerprint(p)}
            for p in batch.files
        ],
        "started_at": now.isoformat(),
    }
    stamp = pd.Timestamp(now)
    entities = [
        e
        for e, f in (("users", batch.users), ("items", batch.items), ("events", batch.events))
        if f is not None
    ]
    total = len(entities) + 1
    progress("validating " + ", ".join(entities), 0, total)
    prepared: dict[str, tuple[pa.Table, pd.DataFrame, dict[str, Any]]] = {}
    if batch.users is not None:
        prepared["users"] = _prepare_users(batch.users, batch, lake, key, run_id, stamp, now)
        progress("validated users", len(prepared), total)
    if batch.items is not None:
        prepared["items"] = _prepare_items(batch.items, batch, lake, run_id, stamp, now)
        progress("validated items", len(prepared), total)
    known_items: frozenset[str] | None = None
    if batch.items is not None or lake.files("items", batch.dataset):
        known_items = _lake_ids(lake, "items", "item_id", batch.dataset)
        if "items" in prepared:
            known_items |= frozenset(prepared["items"][0].column("item_id").to_pylist())
    if batch.events is not None:
        prepared["events"] = _prepare_events(
            batch.events, batch, lake, key, run_id, stamp, now, known_items
        )
    outputs = [(entity, prepared[entity][0]) for entity in entities]
    quarantined = [prepared[entity][1] for entity in entities]
    for entity in entities:
        manifest[entity] = prepared[entity][2]
    done = len(entities)

    progress("writing", done, total)
    flagged = [frame for frame in quarantined if not frame.empty]
    quarantine = _new_quarantine(pd.concat(flagged) if flagged else None, lake, batch.dataset)
    with lake.transaction(run_id) as writer:
        for entity, table in outputs:
            writer.write(entity, table, batch.dataset)
        writer.write("quarantine", quarantine, batch.dataset)
        manifest["quarantine_written"] = quarantine.num_rows
        manifest["finished_at"] = datetime.now(UTC).isoformat()
        writer.record_run(manifest)
    progress("done", total, total)
    return IngestResult(run_id=run_id, dataset=batch.dataset, manifest=manifest)


def _lake_ids(lake: Lake, table: str, column: str, dataset: str) -> frozenset[str]:
    return frozenset(lake.read_column(table, column, dataset).to_pylist())


def _prepare_events(
    raw: pd.DataFrame,
    batch: SourceBatch,
    lake: Lake,
    key: bytes,
    run_id: str,
    stamp: pd.Timestamp,
    now: datetime,
    known_items: frozenset[str] | None,
) -> tuple[pa.Table, pd.DataFrame, dict[str, Any]]:
    df = raw.copy()
    for column in EVENT_INPUT_COLUMNS:
        if column not in df:
            kind = EVENT_INPUT_TYPES[column]
            df[column] = _missing(kind, df.index)
    source = batch.source
    for column in ("user_id", "anonymous_id"):
        if privacy.looks_like_email(df[column]):
            raise IngestError(
                f"{source}: column {column!r} looks like e-mail addresses; map that column "
                "to 'email' instead so that it is stored only as a keyed pseudonym"
            )
    text = [
        "user_id",
        "anonymous_id",
        "event_type",
        "item_id",
        "channel",
        "device",
        "geo",
        "page",
        "referrer",
        "source_event_id",
    ]
    df = clean.standardise_strings(df, text, lower=["event_type", "channel"])
    counts: dict[str, Any] = {"read": len(df)}

    # PII never goes further than this function: pseudonyms replace it.
    for raw_field in ("email", "phone", "ip"):
        df[PII_FIELDS[raw_field]] = privacy.pseudonymise_series(key, raw_field, df.pop(raw_field))
    # A log keyed only by e-mail still gets a stable user id: its pseudonym.
    df["user_id"] = df["user_id"].fillna(df["email_hash"])

    df["consent"] = _consent(df, batch)
    allowed = df["consent"].str.contains(PERSONALIZATION.value, regex=False).fillna(False)
    counts["excluded_no_consent"] = int((~allowed).sum())
    if counts["excluded_no_consent"]:
        df = df[allowed.to_numpy()]

    df["dataset"] = batch.dataset
    df["event_id"] = event_ids(df)
    ctx = clean.RuleContext(
        now=now,
        has_timestamps=batch.has_timestamps,
        known_items=known_items,
        rating_scale=batch.rating_scale,
    )
    flagged = clean.flag(df, clean.EVENT_RULES, ctx)
    quarantine = _quarantine_frame(
        df.loc[flagged.index], flagged, "events", "event_id", batch.dataset, run_id, stamp
    )
    counts["quarantined"] = flagged["reason"].value_counts().to_dict()

    good = df.drop(index=flagged.index) if len(flagged) else df
    good, imputed = clean.impute(good, clean.EVENT_IMPUTATIONS)
    good["channel"] = good["channel"].fillna(batch.default_channel.value)
    existing = lake.read_column("events", "event_id", batch.dataset)
    fresh = np.ones(len(good), bool)
    if len(existing):
        present = pc.is_in(pa.array(good["event_id"]), value_set=existing)
        fresh = ~present.to_numpy(zero_copy_only=False)
    counts["already_present"] = int((~fresh).sum())
    if counts["already_present"]:
        good = good[fresh]
    counts["stored"] = len(good)
    counts["imputed"] = {
        k: int(good["imputed"].str.contains(k, regex=False).sum()) for k in imputed
    }
    good["run_id"] = run_id
    good["ingested_at"] = stamp
    return _to_arrow(good, EVENT_SCHEMA), quarantine, counts


def _consent(df: pd.DataFrame, batch: SourceBatch) -> pd.Series:
    """Each row's consent purposes as a sorted "|"-joined string; unknown purposes raise."""
    default = "|".join(sorted(p.value for p in batch.default_consent))
    if df["consent"].isna().all():
        return pd.Series(pd.array([default] * len(df), dtype=TEXT), index=df.index)
    values = df["consent"].astype(TEXT).str.lower().fillna(default)
    codes, distinct = pd.factorize(values)
    known = {p.value for p in ConsentPurpose}
    spelled: list[str] = []
    for text in distinct:
        parts = sorted(
            {p.strip() for p in str(text).replace(",", "|").replace(";", "|").split("|")} - {""}
        )
        unknown = [p for p in parts if p not in known]
        if unknown:
            row = df.loc[values == text, ROW].iloc[0] if ROW in df else "?"
            raise IngestError(
                f"{batch.source}: line {row}, column 'consent': unknown purpose(s) {unknown}; "
                f"known: {sorted(known)}"
            )
        spelled.append("|".join(parts))
    return pd.Series(pd.array(spelled, dtype=TEXT).take(codes), index=df.index)


def _missing(kind: Any, index: pd.Index) -> pd.Series:
    """An all-missing column of an input type, built without a per-row loop."""
    n = len(index)
    if kind == TEXT:
        values = pd.arrays.ArrowStringArray(pa.chunked_array([pa.nulls(n, pa.string())]))
    elif kind == "Int64":
        values = pd.arrays.IntegerArray(np.zeros(n, np.int64), np.ones(n, bool))
    elif kind == "float64":
        values = np.full(n, np.nan)
    else:  # a timestamp
        values = pd.arrays.DatetimeArray._from_sequence(
            np.full(n, np.datetime64("NaT", "ns")), dtype="datetime64[ns, UTC]"
        )
    return pd.Series(values, index=index)


#: The fields an event id covers, each with a short tag for the canonical string.
_ID_FIELDS = {
    "dataset": "d", "user_id": "u", "anonymous_id": "a", "event_type": "t", "item_id": "i",
    "channel": "c", "device": "dv", "geo": "g", "page": "p", "referrer": "r", "ip_hash": "ip",
    "email_hash": "e", "phone_hash": "ph", "timestamp": "ts", "value": "v", "quantity": "q",
}  # fmt: skip


def event_ids(df: pd.DataFrame) -> pd.api.extensions.ExtensionArray:
    """Deterministic event ids: the md5 of the sender's id when there is one, otherwise of
    the canonical content string ``tag=value`` for every present field, in a fixed order
    (so exact duplicates share an id, whatever columns a source happens to carry)."""
    if df.empty:
        return pd.array([], dtype=TEXT)

    def tagged(column: str) -> str | None:
        tag = _ID_FIELDS[column]
        values = df[column]
        if values.isna().all():
            return None  # a missing field adds nothing to the string
        if column in ("dataset", "event_type") and values.nunique() == 1:
            return "'" + f"{tag}={values.iloc[0]}".replace("'", "''") + "'"
        expression = {"timestamp": 'epoch_us("timestamp")'}.get(column, f'"{column}"')
        return f"'{tag}=' || CAST({expression} AS VARCHAR)"

    parts = [p for p in map(tagged, _ID_FIELDS) if p]
    content = "md5(concat_ws(chr(31), " + ", ".join(parts) + "))"
    if df["source_event_id"].notna().any():
        sender = "md5(concat_ws(chr(31), 'd=' || dataset, 's=' || source_event_id))"
        content = f"CASE WHEN source_event_id IS NULL THEN {content} ELSE {sender} END"
    columns = [c for c in [*_ID_FIELDS, "source_event_id"] if df[c].notna().any()]
    table = pa.Table.from_pandas(df[columns], preserve_index=False)
    # Several record batches, so that DuckDB hashes them on every core (order is kept).
    frame = pa.Table.from_batches(table.to_batches(max_chunksize=65_536))  # noqa: F841 - SQL
    with duckdb.connect() as con:
        ids = con.execute(f"SELECT {content} AS id FROM frame").to_arrow_table().column("id")
    return pd.array(ids, dtype=TEXT)


def _quarantine_frame(
    rows: pd.DataFrame,
    flagged: pd.DataFrame,
    entity: str,
    id_column: str,
    dataset: str,
    run_id: str,
    stamp: pd.Timestamp,
) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame(columns=QUARANTINE_SCHEMA.names)
    body = rows.drop(columns=[c for c in (ROW, SOURCE, "dataset") if c in rows])
    records = body.to_json(orient="records", lines=True, date_format="iso").splitlines()
    occurrence = rows.groupby(id_column).cumcount().astype(str)
    ids = (entity + "\x1f" + rows[id_column].astype(str) + "\x1f" + occurrence).map(
        lambda text: hashlib.md5(text.encode()).hexdigest()
    )
    return pd.DataFrame(
        {
            "quarantine_id": ids.to_numpy(),
            "dataset": dataset,
            "entity": entity,
            "reason": flagged["reason"].to_numpy(),
            "reasons": flagged["reasons"].to_numpy(),
            "record": records,
            "source": rows[SOURCE].to_numpy() if SOURCE in rows else None,
            "source_row": rows[ROW].to_numpy() if ROW in rows else None,
            "run_id": run_id,
            "quarantined_at": stamp,
        }
    )


def _new_quarantine(frame: pd.DataFrame | None, lake: Lake, dataset: str) -> pa.Table:
    if frame is None or frame.empty:
        return QUARANTINE_SCHEMA.empty_table()
    existing = lake.read_column("quarantine", "quarantine_id", dataset)
    if len(existing):
        present = pc.is_in(pa.array(frame["quarantine_id"], pa.string()), value_set=existing)
        frame = frame[~present.to_numpy(zero_copy_only=False)]
    return _to_arrow(frame, QUARANTINE_SCHEMA)


def _to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``df`` as a table of ``schema``; list columns arrive as "|"-joined strings."""
    lists = [f.name for f in schema if pa.types.is_list(f.type)]
    flat = pa.Table.from_pandas(
        df[[c for c in schema.names if c not in lists]].reset_index(drop=True),
        schema=pa.schema([f for f in schema if f.name not in lists]),
        preserve_index=False,
    )
    for name in lists:
        # Few distinct spellings ("personalization|analytics", ""): split each once.
        codes, spellings = pd.factorize(df[name].fillna(""), use_na_sentinel=False)
        lists_ = pa.array(
            [[p for p in str(s).split("|") if p] for s in spellings], pa.list_(pa.string())
        )
        flat = flat.append_column(schema.field(name), lists_.take(pa.array(codes)))
    return flat.select(schema.names)


# --- users and items -------------------------------------------------------------------

_USER_ATTRIBUTES = ["age", "gender", "occupation", "zip_hash", "state", "region", "country"]
_ITEM_ATTRIBUTES = ["title", "release_date", "release_year", "genres", "url"]


def _prepare_users(
    raw: pd.DataFrame,
    batch: SourceBatch,
    lake: Lake,
    key: bytes,
    run_id: str,
    stamp: pd.Timestamp,
    now: datetime,
) -> tuple[pa.Table, pd.DataFrame, dict[str, Any]]:
    df = clean.standardise_strings(
        raw.copy(), ["user_id", "gender", "occupation", "zip"], lower=["occupation"]
    )
    for column in ("age", "gender", "occupation", "zip"):
        if column not in df:
            df[column] = pd.NA
    located = geo.locate_series(df["zip"])
    df[["state", "region", "country"]] = located.astype(TEXT)
    df["zip_hash"] = privacy.pseudonymise_series(key, "zip", df["zip"])
    df = df.drop(columns=["zip"])
    df["dataset"] = batch.dataset
    counts: dict[str, Any] = {"read": len(df)}
    flagged = clean.flag(df, clean.USER_RULES, clean.RuleContext(now=now))
    quarantine = _quarantine_frame(
        df.loc[flagged.index], flagged, "users", "user_id", batch.dataset, run_id, stamp
    )
    counts["quarantined"] = flagged["reason"].value_counts().to_dict()
    good, _ = clean.impute(df.drop(index=flagged.index), clean.USER_IMPUTATIONS)
    return (
        _changed_only(
            good,
            lake,
            "users",
            "user_id",
            _USER_ATTRIBUTES,
            USER_SCHEMA,
            batch.dataset,
            run_id,
            stamp,
            counts,
        ),
        quarantine,
        counts,
    )


def _prepare_items(
    raw: pd.DataFrame,
    batch: SourceBatch,
    lake: Lake,
    run_id: str,
    stamp: pd.Timestamp,
    now: datetime,
) -> tuple[pa.Table, pd.DataFrame, dict[str, Any]]:
    df = clean.standardise_strings(raw.copy(), ["item_id", "title", "url"], lower=[])
    for column in _ITEM_ATTRIBUTES:
        if column not in df:
            df[column] = pd.NA
    df["dataset"] = batch.dataset
    counts: dict[str, Any] = {"read": len(df)}
    flagged = clean.flag(df, clean.ITEM_RULES, clean.RuleContext(now=now))
    quarantine = _quarantine_frame(
        df.loc[flagged.index], flagged, "items", "item_id", batch.dataset, run_id, stamp
    )
    counts["quarantined"] = flagged["reason"].value_counts().to_dict()
    good, _ = clean.impute(df.drop(index=flagged.index), clean.ITEM_IMPUTATIONS)
    return (
        _changed_only(
            good,
            lake,
            "items",
            "item_id",
            _ITEM_ATTRIBUTES,
            ITEM_SCHEMA,
            batch.dataset,
            run_id,
            stamp,
            counts,
        ),
        quarantine,
        counts,
    )


def _changed_only(
    good: pd.DataFrame,
    lake: Lake,
    table: str,
    key: str,
    attributes: list[str],
    schema: pa.Schema,
    dataset: str,
    run_id: str,
    stamp: pd.Timestamp,
    counts: dict[str, Any],
) -> pa.Table:
    """Rows that are new or differ from their latest stored version (attribute history)."""
    good = good.assign(run_id=run_id, ingested_at=stamp)
    candidate = _to_arrow(good, schema)
    if lake.files(table, dataset):
        con = lake.connect()
        con.register("candidate", candidate)
        same = " AND ".join(f"c.{a} IS NOT DISTINCT FROM l.{a}" for a in attributes)
        candidate = (
            con.execute(
                f"SELECT c.* FROM candidate c ANTI JOIN (SELECT * FROM {table} WHERE dataset = ?) l "
                f"ON c.{key} = l.{key} AND {same}",
                [dataset],
            )
            .to_arrow_table()
            .select(schema.names)
            .cast(schema)
        )
    counts["already_present"] = (
        counts["read"] - sum(counts["quarantined"].values()) - candidate.num_rows
    )
    counts["stored"] = candidate.num_rows
    fields = pc.list_flatten(candidate.column("imputed")).value_counts().to_pylist()
    counts["imputed"] = {f["values"]: f["counts"] for f in fields}
    return candidate
