"""Reading sources and checking their types: the structural half of the schema check.

Every reader returns text columns plus ``_row`` (the 1-based line number in the file) and
``_source`` (the file's name), and :func:`coerce` casts columns with pandera. Any problem
raises :class:`IngestError` naming the file, line and column, before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pandera
from pandera.engines import pandas_engine

from bespoke.features.schema import TEXT


class IngestError(ValueError):
    """Bad input. Raised before anything is written: the lake is unchanged."""


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
