"""Source adapters: each turns one kind of source into a :class:`SourceBatch`.

Adapters only read and type-check; everything else (pseudonyms, consent, quarantine,
idempotency) is :func:`bespoke.features.collect.ingest`'s, the same for every source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bespoke.features.collect import EVENT_INPUT_COLUMNS, EVENT_INPUT_TYPES, SourceBatch
from bespoke.features.parse import (
    ROW,
    SOURCE,
    IngestError,
    check_delimiter,
    coerce,
    date_format,
    iso_datetime,
    read_delimited,
    read_mapping_file,
    read_table_file,
    require_columns,
    unix_seconds,
    validation_message,
)
from bespoke.features.schema import TEXT, Channel, ConsentPurpose, EventIn, EventType

#: What the public research datasets were collected for; rows carry no consent of their own.
RESEARCH_CONSENT = (ConsentPurpose.PERSONALIZATION, ConsentPurpose.ANALYTICS)
MOVIELENS_RATING_SCALE = (1.0, 5.0)


def _folder(path: Path, expected: list[str]) -> Path:
    if not path.is_dir():
        raise IngestError(f"{path}: no such folder (expected one holding {', '.join(expected)})")
    return path


def movielens_100k(path: str | Path, dataset: str = "ml-100k") -> SourceBatch:
    """MovieLens 100K: ``u.data`` ratings → ``rate`` events, ``u.user`` → attributes
    (zip → state/region), ``u.item`` (latin-1) → catalog with genres."""
    folder = _folder(Path(path), ["u.data", "u.user", "u.item", "u.genre"])
    ratings = read_delimited(
        folder / "u.data", sep="\t", names=["user_id", "item_id", "value", "timestamp"]
    )
    ratings = coerce(
        ratings,
        {"user_id": TEXT, "item_id": TEXT, "value": "float64", "timestamp": unix_seconds()},
        "u.data",
    )
    ratings["event_type"] = EventType.RATE.value

    users = read_delimited(
        folder / "u.user", sep="|", names=["user_id", "age", "gender", "occupation", "zip"]
    )
    users = coerce(
        users,
        {
            "user_id": TEXT,
            "age": "Int64",
            "gender": TEXT,
            "occupation": TEXT,
            "zip": TEXT,
        },
        "u.user",
    )

    genre_table = read_delimited(folder / "u.genre", sep="|", names=["genre", "index"])
    genres = [g for g in genre_table.sort_values("index", key=lambda s: s.astype(int))["genre"]]
    item_columns = ["item_id", "title", "release_date", "video_release_date", "url", *genres]
    items = read_delimited(folder / "u.item", sep="|", names=item_columns, encoding="latin-1")
    items = coerce(
        items,
        {
            "item_id": TEXT,
            "release_date": date_format("%d-%b-%Y"),
            **{g: "Int64" for g in genres},
        },
        "u.item",
    )
    flags = items[genres].fillna(0).astype(bool).to_numpy()
    items["genres"] = [
        "|".join(g for g, on in zip(genres, row, strict=True) if on and g != "unknown")
        for row in flags
    ]
    items["release_date"] = items["release_date"].dt.date
    items["release_year"] = pd.array(
        [d.year if pd.notna(d) else None for d in items["release_date"]], dtype="Int64"
    )

    return SourceBatch(
        dataset=dataset,
        source="movielens-100k",
        files=[folder / "u.data", folder / "u.user", folder / "u.item", folder / "u.genre"],
        events=ratings,
        users=users,
        items=items.drop(columns=["video_release_date", *genres]),
        rating_scale=MOVIELENS_RATING_SCALE,
        default_consent=RESEARCH_CONSENT,
    )


#: MovieLens 1M's occupation codes (its README).
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip


def _movielens_1m_users(file: Path) -> pd.DataFrame:
    """``users.dat``: ML-1M records an age *band*; the stored age is the band's lower
    bound (17 for "under 18"), so an age band computed from it is the band given."""
    users = read_delimited(file, sep="::", names=["user_id", "gender", "age", "occupation", "zip"])
    users = coerce(
        users,
        {"user_id": TEXT, "age": "Int64", "gender": TEXT, "occupation": "Int64", "zip": TEXT},
        file.name,
    )
    users["age"] = users["age"].mask(users["age"] == 1, 17)
    known = users["occupation"].between(0, len(ML1M_OCCUPATIONS) - 1).fillna(False)
    users["occupation"] = pd.array(
        [
            ML1M_OCCUPATIONS[int(code)] if ok else None
            for code, ok in zip(users["occupation"], known, strict=True)
        ],
        dtype=TEXT,
    )
    return users


def movielens_1m(path: str | Path, dataset: str = "ml-1m") -> SourceBatch:
    """MovieLens 1M ``ratings_notime.csv``: interactions without timestamps (the shared
    copy has none, and its item ids are re-indexed, so no catalog joins); ``users.dat``,
    when present, gives the users' attributes (their ids are the original ones)."""
    folder = _folder(Path(path), ["ratings_notime.csv"])
    ratings = read_delimited(folder / "ratings_notime.csv", sep=",")
    require_columns(ratings, ["user_id", "item_idx", "rating"], "ratings_notime.csv")
    ratings = ratings.rename(columns={"item_idx": "item_id", "rating": "value"})
    ratings = coerce(
        ratings,
        {"user_id": TEXT, "item_id": TEXT, "value": "float64"},
        "ratings_notime.csv",
    )
    ratings["event_type"] = EventType.RATE.value
    users_file = folder / "users.dat"
    has_users = users_file.is_file()
    return SourceBatch(
        dataset=dataset,
        source="movielens-1m",
        files=[folder / "ratings_notime.csv", *([users_file] if has_users else [])],
        events=ratings,
        users=_movielens_1m_users(users_file) if has_users else None,
        has_timestamps=False,
        rating_scale=MOVIELENS_RATING_SCALE,
        default_consent=RESEARCH_CONSENT,
    )


def cdnow(path: str | Path, dataset: str = "cdnow") -> SourceBatch:
    """CDNOW master file: one ``purchase`` event per line, value in dollars, quantity in CDs.

    ``path`` is the file or the folder holding ``CDNOW_master.txt``.
    """
    path = Path(path)
    file = path / "CDNOW_master.txt" if path.is_dir() else path
    orders = read_delimited(file, sep=r"\s+")
    require_columns(orders, ["customer_id", "date", "number_of_cds", "dollar_value"], file.name)
    orders = orders.rename(
        columns={
            "customer_id": "user_id",
            "date": "timestamp",
            "number_of_cds": "quantity",
            "dollar_value": "value",
        }
    )
    orders = coerce(
        orders,
        {
            "user_id": TEXT,
            "timestamp": date_format("%Y%m%d"),
            "quantity": "Int64",
            "value": "float64",
        },
        file.name,
    )
    orders["event_type"] = EventType.PURCHASE.value
    return SourceBatch(
        dataset=dataset,
        source="cdnow",
        files=[file],
        events=orders,
        default_consent=RESEARCH_CONSENT,
    )


TimestampFormat = Literal["iso", "unix_s", "unix_ms"] | str


class ColumnMapping(BaseModel):
    """How a generic interaction log's columns map onto Bespoke's event fields.

    Each field names the source column for that event field; ``*_constant`` fields set a
    value for every row instead. Example (JSON)::

        {"user_id": "customer", "item_id": "sku", "timestamp": "ts",
         "event_type": "action", "event_type_values": {"buy": "purchase"},
         "value": "amount", "email": "mail", "default_consent": ["personalization"]}
    """

    model_config = ConfigDict(extra="forbid")

    source_event_id: str | None = None
    timestamp: str | None = None
    timestamp_format: TimestampFormat = Field(
        default="iso", description="'iso', 'unix_s', 'unix_ms' or a strftime pattern."
    )
    user_id: str | None = None
    anonymous_id: str | None = None
    device_id: str | None = None
    crm_id: str | None = None
    event_type: str | None = None
    event_type_constant: EventType | None = None
    event_type_values: dict[str, EventType] = Field(
        default_factory=dict,
        description="Source value → event type, for logs with their own names.",
    )
    item_id: str | None = None
    value: str | None = None
    quantity: str | None = None
    channel: str | None = None
    channel_constant: Channel = Channel.BATCH
    device: str | None = None
    geo: str | None = None
    page: str | None = None
    referrer: str | None = None
    ip: str | None = None
    email: str | None = None
    phone: str | None = None
    consent: str | None = None
    default_consent: list[ConsentPurpose] = Field(
        default_factory=list, description="Purposes for rows without a consent value of their own."
    )
    rating_scale: tuple[float, float] | None = None
    delimiter: str | None = Field(
        default=None,
        description="The column separator of a text file ('tab' or '\\t' for a tab); "
        "default: sniffed from the file among ',', tab, ';' and '|'.",
    )

    _one_character = field_validator("delimiter")(check_delimiter)

    @model_validator(mode="after")
    def _complete(self) -> ColumnMapping:
        if not (self.user_id or self.anonymous_id or self.email):
            raise ValueError("map at least one identity column: user_id, anonymous_id or email")
        if not (self.event_type or self.event_type_constant):
            raise ValueError("map event_type to a column or set event_type_constant")
        if self.event_type and self.event_type_constant:
            raise ValueError("set either event_type or event_type_constant, not both")
        if not (self.consent or self.default_consent):
            raise ValueError(
                "say what the events were collected for: map a consent column or set "
                "default_consent (events without 'personalization' are not stored)"
            )
        return self

    def columns(self) -> dict[str, str]:
        """Event field → source column, for the fields mapped to a column."""
        return {f: getattr(self, f) for f in EVENT_INPUT_COLUMNS if getattr(self, f, None)}

    @classmethod
    def from_fields(cls, fields: dict[str, Any], origin: str = "column mapping") -> ColumnMapping:
        """A mapping from field → value pairs, with errors that name the field."""
        try:
            return cls.model_validate(fields)
        except ValidationError as error:
            raise IngestError(f"{origin}: invalid mapping: {validation_message(error)}") from None

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> ColumnMapping:
        """A mapping from a JSON file (``overrides`` win), with errors naming file and field."""
        fields = read_mapping_file(path)
        return cls.from_fields({**fields, **(overrides or {})}, origin=str(path))


def _timestamp_type(fmt: str) -> Any:
    if fmt == "iso":
        return iso_datetime()
    if fmt == "unix_s":
        return unix_seconds()
    if fmt == "unix_ms":
        from pandera.engines import pandas_engine

        return pandas_engine.DateTime(to_datetime_kwargs={"unit": "ms"}, tz="UTC")
    return date_format(fmt)


def interactions_file(
    path: str | Path, mapping: ColumnMapping, dataset: str, source: str = "csv"
) -> SourceBatch:
    """Any CSV/TSV/Parquet interaction log, read through a :class:`ColumnMapping`."""
    path = Path(path)
    frame = read_table_file(path, mapping.delimiter)
    columns = mapping.columns()
    require_columns(frame, list(dict.fromkeys(columns.values())), path.name)
    field_types = {**EVENT_INPUT_TYPES, "timestamp": _timestamp_type(mapping.timestamp_format)}
    # Type-checked under the file's own column names, so that messages name them.
    column_types: dict[str, Any] = {}
    for field, column in columns.items():
        column_types.setdefault(column, field_types[field])
    typed = coerce(frame[[*column_types, ROW, SOURCE]], column_types, path.name)
    events = pd.DataFrame({field: typed[column] for field, column in columns.items()})
    events[ROW], events[SOURCE] = typed[ROW], typed[SOURCE]
    if mapping.event_type_constant:
        events["event_type"] = mapping.event_type_constant.value
    elif mapping.event_type_values:
        renames = {k: v.value for k, v in mapping.event_type_values.items()}
        events["event_type"] = events["event_type"].map(lambda v: renames.get(v, v)).astype(TEXT)
    return SourceBatch(
        dataset=dataset,
        source=source,
        files=[path],
        events=events,
        has_timestamps=mapping.timestamp is not None,
        rating_scale=mapping.rating_scale,
        default_consent=tuple(mapping.default_consent),
        default_channel=mapping.channel_constant,
    )


def event_models(events: Sequence[EventIn], dataset: str, source: str = "api") -> SourceBatch:
    """Events already validated one by one (``EventIn``: the service, a notebook) as a
    batch; each carries its own consent purposes."""
    rows = []
    for event in events:
        row = event.model_dump(exclude={"context", "consent"})
        row.update(event.context.model_dump())
        row["consent"] = "|".join(sorted(event.consent))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=EVENT_INPUT_COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame = frame.astype({c: t for c, t in EVENT_INPUT_TYPES.items() if isinstance(t, str)})
    return SourceBatch(dataset=dataset, source=source, events=frame, default_channel=Channel.API)


#: Built-in sources by the name the CLI and ``make demo`` use, and their data folder.
BUILTIN_SOURCES: dict[str, tuple[Callable[..., SourceBatch], str]] = {
    "movielens-100k": (movielens_100k, "ml-100k"),
    "movielens-1m": (movielens_1m, "ml-1m"),
    "cdnow": (cdnow, "cdnow"),
}
