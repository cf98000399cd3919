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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bespoke.features import clean, geo, privacy
from bespoke.features.lake import Lake, in_file_order
from bespoke.features.parse import ROW, SOURCE, IngestError, iso_datetime
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


EVENT_INPUT_COLUMNS = [
    "source_event_id", "timestamp", "user_id", "anonymous_id", "event_type", "item_id",
    "value", "quantity", "channel", "device", "geo", "page", "referrer", "ip", "email",
    "phone", "consent", "device_id", "crm_id",
]  # fmt: skip
EVENT_INPUT_TYPES: dict[str, Any] = {
    **{c: TEXT for c in EVENT_INPUT_COLUMNS},
    "timestamp": iso_datetime(),
    "value": "float64",
    "quantity": "Int64",
}


class PersonGate(Protocol):
    """Who may not be stored (``bespoke.privacy.gate.PersonGate``): per event row, why
    (``consent_withdrawn``, ``erased``) or missing."""

    def batch_reasons(self, dataset: str, events: pd.DataFrame) -> pd.Series: ...


@dataclass
class SourceBatch:
    """What an adapter hands to :func:`ingest`: typed frames and where they came from.

    ``events`` holds :data:`EVENT_INPUT_COLUMNS` (missing ones are empty) plus ``_row``
    and ``_source``; ``users`` and ``items`` hold the attribute and catalog columns. A
    source that holds pseudonyms instead of raw PII (the service's event inbox) gives
    ``email_hash``, ``phone_hash`` and ``ip_hash`` in place of ``email``, ``phone``, ``ip``.
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
    gate: PersonGate | None = None,
) -> IngestResult:
    """Validate, clean and add ``batch`` to ``lake`` in one run; see the module docstring.
    With a ``gate`` (``bespoke.privacy.gate.PersonGate``), events of people who withdrew
    personalization, and erased people's old events, are left out and counted."""
    check_dataset_name(batch.dataset)
    now = now or datetime.now(UTC)
    run = _Run(batch=batch, lake=lake, key=key, run_id=new_run_id(now), now=now, gate=gate)
    progress = callback or (lambda stage, done, total: None)
    manifest: dict[str, Any] = {
        "run_id": run.run_id,
        "dataset": batch.dataset,
        "source": batch.source,
        "files": [
            {"name": p.name, "bytes": p.stat().st_size, "sha256": fingerprint(p)}
            for p in batch.files
        ],
        "started_at": now.isoformat(),
    }
    steps = [
        (entity, frame, prepare)
        for entity, frame, prepare in (
            ("users", batch.users, _prepare_users),
            ("items", batch.items, _prepare_items),
            ("events", batch.events, _prepare_events),
        )
        if frame is not None
    ]
    total = len(steps) + 1
    # A crashed earlier run is settled first, so that what follows sees every committed
    # event (and stores none of them twice).
    lake.recover()
    outputs: list[tuple[str, pa.Table]] = []
    flagged: list[pa.Table] = []
    with lake.connect() as con:
        for done, (entity, frame, prepare) in enumerate(steps):
            progress(f"validating {entity}", done, total)
            table, quarantined, counts = prepare(con, frame, run)
            outputs.append((entity, table))
            flagged.append(quarantined)
            manifest[entity] = counts
    progress("writing", len(steps), total)
    quarantine = _new_quarantine(flagged, lake, batch.dataset)
    with lake.transaction(run.run_id) as writer:
        for entity, table in outputs:
            writer.write(entity, table, batch.dataset)
        writer.write("quarantine", quarantine, batch.dataset)
        manifest["quarantine_written"] = quarantine.num_rows
        manifest["finished_at"] = datetime.now(UTC).isoformat()
        writer.commit(manifest)
    progress("done", total, total)
    return IngestResult(run_id=run.run_id, dataset=batch.dataset, manifest=manifest)


@dataclass
class _Run:
    """What the steps of one ingestion run share."""

    batch: SourceBatch
    lake: Lake
    key: bytes
    run_id: str
    now: datetime
    gate: PersonGate | None = None

    def sql(self, con: duckdb.DuckDBPyConnection, query: str) -> duckdb.DuckDBPyConnection:
        """Run ``query`` with the run's parameters that it names: ``$dataset``,
        ``$run_id`` and ``$stamp`` (the run's start, written into every row)."""
        return con.execute(query, self.params(query))

    def params(self, query: str) -> dict[str, Any]:
        """The run's parameters that ``query`` names."""
        params = {"dataset": self.batch.dataset, "run_id": self.run_id, "stamp": self.now}
        return {k: v for k, v in params.items() if f"${k}" in query}

    def lake_table(self, table: str) -> str:
        """SQL for this dataset's rows of a lake view."""
        return f"(SELECT * FROM {table} WHERE dataset = {clean.sql_literal(self.batch.dataset)})"


#: Rows per Arrow record batch handed to DuckDB: several batches let it use every core.
_BATCH_ROWS = 65_536

#: A step's result: rows to store, rows to quarantine, counts for the manifest.
_Prepared = tuple[pa.Table, pa.Table, dict[str, Any]]


def _register(
    con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame, text: dict[str, bool]
) -> None:
    """``frame`` as relation ``name``, its ``text`` columns standardised (the flag says
    whether to lower-case), with row positions and (possibly empty) provenance."""
    n = len(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for column, lower in text.items():
        position = table.column_names.index(column)
        table = table.set_column(position, column, clean.standard_text(table.column(column), lower))
    table = table.append_column(clean.POSITION, pa.array(np.arange(n, dtype=np.int64)))
    for column, kind in ((ROW, pa.int64()), (SOURCE, pa.string())):
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(n, kind))
    _register_table(con, name, table)


def _check(
    con: duckdb.DuckDBPyConnection,
    run: _Run,
    entity: str,
    std: pa.Table,
    record: list[str],
    rules: clean.RuleSet,
    ctx: clean.RuleContext,
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Flag the standardised rows ``std``. Returns them with their flags (the clean ones
    are also the view ``good_<entity>``), the flagged ones as quarantine rows (``record``
    is the row as JSON, PII already pseudonymised), and the count per first reason."""
    check = clean.checks(rules, ctx)
    clean.register_context(con, ctx)
    std = std.append_column(clean.OCCURRENCE, pa.array(clean.occurrences(std.column(rules.key))))
    _register_table(con, f"std_{entity}", std)
    flags = _narrow(con, f"SELECT {check.flags} FROM std_{entity}", std, check.params)
    checked = std.append_column(clean.FLAGS, flags.column(0))
    _register_table(con, f"checked_{entity}", checked)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW good_{entity} AS SELECT * EXCLUDE ({clean.FLAGS}, "
        f"{clean.OCCURRENCE}) FROM checked_{entity} WHERE {clean.FLAGS} = 0"
    )
    fields = ", ".join(
        f'"{c}" := strftime("{c}", \'%Y-%m-%dT%H:%M:%S.%fZ\')' if c == "timestamp" else f'"{c}"'
        for c in record
        if c in std.column_names
    )
    flagged = run.sql(
        con,
        f"""
        SELECT md5(concat_ws(chr(31), '{entity}', coalesce({rules.key}, chr(0)),
                             CAST({clean.OCCURRENCE} AS VARCHAR))) AS quarantine_id,
               $dataset AS dataset, '{entity}' AS entity, reasons[1] AS reason, reasons,
               CAST(to_json(struct_pack({fields})) AS VARCHAR) AS record,
               {SOURCE} AS source, {ROW} AS source_row, $run_id AS run_id,
               $stamp AS quarantined_at
        FROM (SELECT *, {check.reasons} AS reasons FROM checked_{entity} WHERE {clean.FLAGS} <> 0)
        ORDER BY {clean.POSITION}
        """,
    ).to_arrow_table()
    counts = flagged.column("reason").value_counts().to_pylist()
    return checked, flagged, {c["values"]: c["counts"] for c in counts}


def _filled(
    con: duckdb.DuckDBPyConnection,
    entity: str,
    columns: list[str],
    imputations: tuple[clean.Imputation, ...],
    fallback: str | None,
) -> dict[str, str]:
    """Column -> SQL over ``good_<entity>`` with the gaps filled, plus ``imputed``."""
    fills = clean.fill_values(con, f"good_{entity}", imputations, set(columns), fallback)
    filled, record = clean.imputed_sql(imputations, fills)
    return {c: filled.get(c, f'"{c}"') for c in columns} | {"imputed": record}


def _materialise(con: duckdb.DuckDBPyConnection, query: str, params: dict[str, Any]) -> pa.Table:
    """The result of ``query`` as an Arrow table (cheaper to build than a DuckDB temp
    table, which compresses what it stores)."""
    return con.execute(query, params).to_arrow_table()


def _register_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """``table`` as relation ``name``, in record batches so that DuckDB scans it on every
    core (a projection still returns rows in order)."""
    batches = table.to_batches(max_chunksize=_BATCH_ROWS)
    con.register(name, pa.Table.from_batches(batches, table.schema))


def _select(expressions: dict[str, str]) -> str:
    return ", ".join(f'{sql} AS "{column}"' for column, sql in expressions.items())


def _imputed_counts(table: pa.Table) -> dict[str, int]:
    fields = pc.list_flatten(table.column("imputed")).value_counts().to_pylist()
    return {f["values"]: f["counts"] for f in fields}


# --- events ------------------------------------------------------------------------------

#: Free-text event fields (stripped) and code fields (stripped and lower-cased).
_EVENT_TEXT = [
    "anonymous_id", "item_id", "device", "geo", "page", "referrer", "source_event_id",
    "device_id", "crm_id",
]  # fmt: skip
_EVENT_CODES = ["event_type", "channel"]
#: What a quarantined event's record holds.
_EVENT_RECORD = [
    "event_id", "timestamp", "user_id", "anonymous_id", "event_type", "item_id", "value",
    "quantity", "channel", "device", "geo", "page", "referrer", "ip_hash", "email_hash",
    "phone_hash", "consent", "source_event_id", "device_id", "crm_id",
]  # fmt: skip


def _prepare_events(con: duckdb.DuckDBPyConnection, raw: pd.DataFrame, run: _Run) -> _Prepared:
    """Events stay in Arrow; DuckDB computes narrow results over them (ids, rule flags,
    fill values), so that a million rows are copied as few times as possible."""
    batch = run.batch
    df = raw.copy(deep=False)
    for column in EVENT_INPUT_COLUMNS:
        if column not in df:
            df[column] = _missing(EVENT_INPUT_TYPES[column], df.index)
    for column in ("user_id", "anonymous_id"):
        if privacy.looks_like_email(df[column]):
            raise IngestError(
                f"{batch.source}: column {column!r} looks like e-mail addresses; map that "
                "column to 'email' instead so that it is stored only as a keyed pseudonym"
            )
    counts: dict[str, Any] = {"read": len(df)}
    # PII goes no further than here: keyed pseudonyms replace it.
    for raw_field in ("email", "phone", "ip"):
        column = PII_FIELDS[raw_field]
        hashed = privacy.pseudonymise_series(run.key, raw_field, df.pop(raw_field))
        if column in df:
            hashed = _with_given_pseudonyms(hashed, df[column], raw_field, batch.source)
        df[column] = hashed
    df["consent"] = _consent(df, batch)
    allowed = df["consent"].str.contains(PERSONALIZATION.value, regex=False).fillna(False)
    counts["excluded_no_consent"] = int((~allowed).sum())
    if counts["excluded_no_consent"]:
        df = df[allowed.to_numpy()]
    counts["excluded_withdrawn"] = counts["excluded_erased"] = 0
    if run.gate is not None and len(df):
        reasons = run.gate.batch_reasons(batch.dataset, df)
        counts["excluded_withdrawn"] = int((reasons == "consent_withdrawn").sum())
        counts["excluded_erased"] = int((reasons == "erased").sum())
        if counts["excluded_withdrawn"] or counts["excluded_erased"]:
            df = df[reasons.isna().to_numpy()]

    std = _standard_events(df)
    profile = _Profile.of(std)
    _register_table(con, "std_ids", std)
    event_ids = _narrow(con, f"SELECT {_event_id_sql(profile, batch.dataset)} FROM std_ids", std)
    std = std.append_column("event_id", event_ids.column(0))

    known_items = None
    if batch.items is not None or run.lake.files("items", batch.dataset):
        known = con.execute(f"SELECT item_id FROM {run.lake_table('items')}").fetchall()
        if batch.items is not None:
            known += con.execute("SELECT item_id FROM good_items").fetchall()
        known_items = frozenset(item for (item,) in known)
    ctx = clean.RuleContext(
        now=run.now,
        has_timestamps=batch.has_timestamps,
        known_items=known_items,
        rating_scale=batch.rating_scale,
    )
    checked, flagged, counts["quarantined"] = _check(
        con, run, "events", std, _EVENT_RECORD, clean.EVENT_RULES, ctx
    )
    good = checked.filter(pc.equal(checked.column(clean.FLAGS), 0)) if flagged.num_rows else checked
    good = good.drop_columns([clean.FLAGS, clean.OCCURRENCE])

    existing = run.lake.read_column("events", "event_id", batch.dataset)
    if len(existing):
        good = good.filter(pc.invert(pc.is_in(good.column("event_id"), value_set=existing)))
    good = _impute_events(con, good, batch)
    left_out = (
        counts["excluded_no_consent"] + counts["excluded_withdrawn"] + counts["excluded_erased"]
    )
    clean_rows = counts["read"] - left_out - flagged.num_rows
    counts["already_present"] = clean_rows - good.num_rows
    counts["stored"] = good.num_rows
    counts["imputed"] = _imputed_counts(good)
    # Sorted before the constant columns are added, which then need no sorting.
    good = in_file_order(good.drop_columns([clean.POSITION, ROW, SOURCE]))
    n = good.num_rows
    constants = {
        "dataset": pa.repeat(pa.scalar(batch.dataset), n),
        "run_id": pa.repeat(pa.scalar(run.run_id), n),
        "ingested_at": pa.repeat(pa.scalar(run.now, pa.timestamp("us", tz="UTC")), n),
    }
    columns = {
        field.name: constants.get(field.name)
        or (good.column(field.name) if field.name in good.column_names else pa.nulls(n, field.type))
        for field in EVENT_SCHEMA
    }
    return pa.table(columns).cast(EVENT_SCHEMA), flagged, counts


_PSEUDONYM = r"^[0-9a-f]{64}$"


def _with_given_pseudonyms(
    hashed: pd.Series, given: pd.Series, raw_field: str, source: str
) -> pd.Series:
    """``hashed`` (pseudonyms of the raw values) completed with pseudonyms the source
    made itself: a source that must never persist raw PII, such as the service's event
    inbox, hands in ``email_hash`` … instead of ``email`` …, made with the same key.

    A pseudonym column that holds anything but HMAC-SHA256 hex digests, or a row with
    both the raw value and a pseudonym, is refused: raw PII must not slip in that way.
    """
    column = PII_FIELDS[raw_field]
    given = given.astype(TEXT)
    present = given.notna()
    malformed = present & ~given.str.fullmatch(_PSEUDONYM).fillna(False)
    both = present & hashed.notna()
    for rows, problem in (
        (malformed, "is not a pseudonym (64 lower-case hex digits)"),
        (both, f"comes with a raw {raw_field!r} too; send one or the other"),
    ):
        if rows.any():
            raise IngestError(f"{source}: {int(rows.sum())} row(s): column {column!r} {problem}")
    return hashed.where(hashed.notna(), given)


def _standard_events(df: pd.DataFrame) -> pa.Table:
    """Every event field, standardised: text stripped (blank is missing), codes
    lower-cased, consent as a list, a log keyed only by e-mail keyed by the e-mail's
    pseudonym; plus position and provenance. A field missing in every row is a null
    column, which costs nothing."""
    n = len(df)
    fields = ["user_id", *_EVENT_TEXT, *_EVENT_CODES, "timestamp", "value", "quantity"]
    fields += ["ip_hash", "email_hash", "phone_hash"]
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for name in fields:
        kind = EVENT_SCHEMA.field(name).type if name in EVENT_SCHEMA.names else pa.string()
        if name not in df or df[name].isna().all():
            columns[name] = pa.nulls(n, kind)
            continue
        values = _arrow(df[name]).cast(kind)
        if name in ("user_id", *_EVENT_TEXT, *_EVENT_CODES):
            values = clean.standard_text(values, lower=name in _EVENT_CODES)
        columns[name] = values
    if columns["email_hash"].null_count < n:
        columns["user_id"] = pc.coalesce(columns["user_id"], columns["email_hash"])
    columns["consent"] = _split_purposes(df["consent"])
    columns[clean.POSITION] = pa.array(np.arange(n, dtype=np.int64))
    for name, kind in ((ROW, pa.int64()), (SOURCE, pa.string())):
        columns[name] = pa.array(df[name].to_numpy(), kind) if name in df else pa.nulls(n, kind)
    return pa.table(columns)


def _arrow(values: pd.Series) -> pa.ChunkedArray:
    """A column as Arrow, without copying Arrow-backed data."""
    array = pa.array(values, from_pandas=True)
    return array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])


def _split_purposes(consent: pd.Series) -> pa.Array:
    """ "a|b" strings as lists, splitting each distinct spelling once."""
    codes, spellings = pd.factorize(consent.fillna(""), use_na_sentinel=False)
    lists = pa.array(
        [[p for p in str(s).split("|") if p] for s in spellings], pa.list_(pa.string())
    )
    return lists.take(pa.array(codes))


def _narrow(
    con: duckdb.DuckDBPyConnection,
    query: str,
    table: pa.Table,
    params: dict[str, Any] | None = None,
) -> pa.Table:
    """A per-row query over a registered copy of ``table``, its rows aligned with
    ``table``'s by position (``query`` must not select the position itself)."""
    result = con.execute(
        query.replace("SELECT ", f"SELECT {clean.POSITION}, ", 1), params or {}
    ).to_arrow_table()
    positions = result.column(0).to_numpy()
    expected = table.column(clean.POSITION).to_numpy()
    if not np.array_equal(positions, expected):  # a join inside may reorder rows
        where = np.empty(int(positions.max()) + 1 if len(positions) else 0, dtype=np.int64)
        where[positions] = np.arange(len(positions))
        result = result.take(pa.array(where[expected]))
    return result.drop_columns([result.column_names[0]])


def _impute_events(con: duckdb.DuckDBPyConnection, good: pa.Table, batch: SourceBatch) -> pa.Table:
    """Fill gaps from the clean rows' statistics; the channel falls back to the source's."""
    n = good.num_rows
    gaps = [
        rule.column
        for rule in clean.EVENT_IMPUTATIONS
        if rule.column in good.column_names and good.column(rule.column).null_count
    ]
    imputed = pa.ListArray.from_arrays(
        pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string())
    )
    if gaps:
        _register_table(con, "clean_events", good)
        fills = clean.fill_values(con, "clean_events", clean.EVENT_IMPUTATIONS, set(gaps))
        filled, record = clean.imputed_sql(clean.EVENT_IMPUTATIONS, fills)
        if filled:
            select = ", ".join(
                [*(f'{sql} AS "{c}"' for c, sql in filled.items()), f"{record} AS imputed"]
            )
            result = _narrow(con, f"SELECT {select} FROM clean_events", good)
            for column in filled:
                good = good.set_column(
                    good.column_names.index(column), column, result.column(column)
                )
            imputed = result.column("imputed")
    default = pa.scalar(batch.default_channel.value)
    channel = (
        pc.fill_null(good.column("channel"), default)
        if "channel" in good.column_names
        else pa.repeat(default, n)
    )
    good = good.drop_columns(["channel"]) if "channel" in good.column_names else good
    return good.append_column("channel", channel).append_column("imputed", imputed)


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
    "device_id": "di", "crm_id": "cr",
}  # fmt: skip


@dataclass(frozen=True)
class _Profile:
    """What the event id needs to know of a batch: values present per column, and the
    value of columns that hold a single one."""

    non_null: dict[str, int]
    constant: dict[str, Any]

    @classmethod
    def of(cls, table: pa.Table) -> _Profile:
        rows = table.num_rows
        non_null = {name: rows - table.column(name).null_count for name in table.column_names}
        constant = {}
        if "event_type" in table.column_names and non_null["event_type"] == rows:
            distinct = pc.unique(table.column("event_type"))
            if len(distinct) == 1:
                constant["event_type"] = distinct[0].as_py()
        return cls(non_null=non_null, constant=constant)


def _event_id_sql(profile: _Profile, dataset: str) -> str:
    """SQL for deterministic event ids over the standardised fields.

    The md5 of the sender's id when there is one, otherwise of the canonical content
    string ``tag=value`` over every present field in a fixed order: exact duplicates share
    an id whatever columns a source happens to carry.
    """
    parts = [clean.sql_literal(f"{_ID_FIELDS['dataset']}={dataset}")]
    for column, tag in _ID_FIELDS.items():
        if column == "dataset" or not profile.non_null.get(column):
            continue  # missing in every row: adds nothing to any row's string
        if column in profile.constant:
            parts.append(clean.sql_literal(f"{tag}={profile.constant[column]}"))
            continue
        expression = 'epoch_us("timestamp")' if column == "timestamp" else f'"{column}"'
        parts.append(f"'{tag}=' || CAST({expression} AS VARCHAR)")
    content = "md5(concat_ws(chr(31), " + ", ".join(parts) + "))"
    if not profile.non_null.get("source_event_id"):
        return content
    sender = (
        f"md5(concat_ws(chr(31), {clean.sql_literal('d=' + dataset)}, 's=' || source_event_id))"
    )
    return f"CASE WHEN source_event_id IS NULL THEN {content} ELSE {sender} END"


# --- users and items -------------------------------------------------------------------


@dataclass(frozen=True)
class _Attributes:
    """How one attribute table (users, items) is read from an adapter's frame."""

    entity: str
    inputs: dict[str, str]  # input column -> pandas dtype, added empty when absent
    text: dict[str, bool]  # text column -> lower-cased too
    standard: dict[str, str]  # stored column -> SQL over the registered input
    attributes: list[str]  # what a new version of a row is compared on
    schema: pa.Schema
    rules: clean.RuleSet
    imputations: tuple[clean.Imputation, ...]


_USERS = _Attributes(
    entity="users",
    inputs={"user_id": TEXT, "age": "Int64", "gender": TEXT, "occupation": TEXT, "zip": TEXT},
    text={"user_id": False, "gender": False, "occupation": True},
    standard={
        "user_id": "user_id",
        "age": "CAST(age AS BIGINT)",
        **{c: c for c in ("gender", "occupation", "zip_hash", "state", "region", "country")},
    },
    attributes=["age", "gender", "occupation", "zip_hash", "state", "region", "country"],
    schema=USER_SCHEMA,
    rules=clean.USER_RULES,
    imputations=clean.USER_IMPUTATIONS,
)
_ITEMS = _Attributes(
    entity="items",
    inputs={
        "item_id": TEXT,
        "title": TEXT,
        "url": TEXT,
        "genres": TEXT,
        "release_year": "Int64",
        "release_date": "datetime64[s]",
    },
    text={"item_id": False, "title": False, "url": False},
    standard={
        **{c: c for c in ("item_id", "title", "url")},
        "release_date": "CAST(release_date AS DATE)",
        "release_year": "CAST(release_year AS BIGINT)",
        "genres": "CASE WHEN coalesce(genres, '') = '' THEN []::VARCHAR[] "
        "ELSE string_split(genres, '|') END",
    },
    attributes=["title", "release_date", "release_year", "genres", "url"],
    schema=ITEM_SCHEMA,
    rules=clean.ITEM_RULES,
    imputations=clean.ITEM_IMPUTATIONS,
)


def _prepare_users(con: duckdb.DuckDBPyConnection, raw: pd.DataFrame, run: _Run) -> _Prepared:
    df = _with_inputs(raw, _USERS)
    # The zip code leaves only its state, region and country, and a pseudonym.
    df[["state", "region", "country"]] = geo.locate_series(df["zip"]).astype(TEXT)
    df["zip_hash"] = privacy.pseudonymise_series(run.key, "zip", df.pop("zip"))
    return _attribute_table(con, run, df, _USERS)


def _prepare_items(con: duckdb.DuckDBPyConnection, raw: pd.DataFrame, run: _Run) -> _Prepared:
    return _attribute_table(con, run, _with_inputs(raw, _ITEMS), _ITEMS)


def _with_inputs(raw: pd.DataFrame, spec: _Attributes) -> pd.DataFrame:
    df = raw.copy(deep=False)
    for column, kind in spec.inputs.items():
        if column not in df:
            df[column] = (
                _missing(kind, df.index)
                if kind in (TEXT, "Int64")
                else pd.Series(pd.NaT, index=df.index, dtype=kind)
            )
    return df


def _attribute_table(
    con: duckdb.DuckDBPyConnection, run: _Run, df: pd.DataFrame, spec: _Attributes
) -> _Prepared:
    """Standardise, check and impute ``df``; keep the rows that are new or differ from
    their latest stored version (the lake keeps the attribute history)."""
    entity, key = spec.entity, spec.rules.key
    _register(con, f"raw_{entity}", df, spec.text)
    standard = {
        "dataset": "$dataset",
        **spec.standard,
        **{c: c for c in (clean.POSITION, ROW, SOURCE)},
    }
    query = f"SELECT {_select(standard)} FROM raw_{entity}"
    std = _materialise(con, query, run.params(query))
    attributes = spec.attributes
    _, flagged, quarantined = _check(
        con, run, entity, std, [key, *attributes], spec.rules, clean.RuleContext(now=run.now)
    )
    # Gaps the batch cannot fill (no values of its own) are filled from the lake's rows.
    expressions = _filled(
        con, entity, ["dataset", key, *attributes], spec.imputations, run.lake_table(entity)
    )
    same = " AND ".join(f'c."{a}" IS NOT DISTINCT FROM l."{a}"' for a in attributes)
    table = run.sql(
        con,
        f"SELECT c.* FROM (SELECT {_select(expressions)}, $run_id AS run_id, $stamp AS ingested_at "
        f"FROM good_{entity}) c ANTI JOIN {run.lake_table(entity)} l ON c.{key} = l.{key} AND {same}",
    ).to_arrow_table()
    counts = {
        "read": std.num_rows,
        "quarantined": quarantined,
        "already_present": std.num_rows - flagged.num_rows - table.num_rows,
        "stored": table.num_rows,
        "imputed": _imputed_counts(table),
    }
    return table.select(spec.schema.names).cast(spec.schema), flagged, counts


def _new_quarantine(flagged: list[pa.Table], lake: Lake, dataset: str) -> pa.Table:
    """This run's quarantined rows that the lake's quarantine does not hold yet."""
    tables = [t.cast(QUARANTINE_SCHEMA) for t in flagged if t.num_rows]
    if not tables:
        return QUARANTINE_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    existing = lake.read_column("quarantine", "quarantine_id", dataset)
    if len(existing):
        table = table.filter(pc.invert(pc.is_in(table.column("quarantine_id"), value_set=existing)))
    return table
