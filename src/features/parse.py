"""Reading sources and checking their types: the structural half of the schema check.

Every reader returns text columns plus ``_row`` (the 1-based line number in the file) and
``_source`` (the file's name), and :func:`coerce` casts columns with pandera. Any problem
raises :class:`IngestError` naming the file, line and column, before anything is written.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from pandera.engines import pandas_engine
from pydantic import ValidationError

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
        frame = (
            _read_with_arrow(path, sep, names, encoding, skip)
            if len(sep) == 1
            else _read_with_pandas(path, sep, names, encoding, skip)
        )
    except (UnicodeDecodeError, pa.ArrowInvalid) as error:
        if isinstance(error, UnicodeDecodeError) or "UTF8" in str(error):
            line, offset = _first_undecodable_line(path, encoding)
            raise IngestError(
                f"{path}: line {line} is not valid {encoding} text (byte {offset} of the "
                f"file); convert it to {encoding}"
            ) from error
        ragged = _first_ragged_line(path, sep, encoding, skip if names else 0)
        if ragged is not None:
            line, expected, got = ragged
            raise IngestError(
                f"{path}: line {line} has {got} fields where the table has {expected}"
            ) from error
        raise IngestError(f"{path}: unreadable as a {sep!r}-separated table: {error}") from error
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as error:
        raise IngestError(f"{path}: unreadable as a {sep!r}-separated table: {error}") from error
    frame[ROW] = np.arange(len(frame), dtype=np.int64) + skip + 1
    frame[SOURCE] = path.name
    return frame


def _read_with_arrow(
    path: Path, sep: str, names: Sequence[str] | None, encoding: str, skip: int
) -> pd.DataFrame:
    """Arrow's multi-threaded reader; every value text, blanks trimmed, empty missing."""
    table = pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(
            column_names=list(names) if names else None,
            skip_rows=skip if names else 0,
            encoding=encoding,
        ),
        parse_options=pcsv.ParseOptions(delimiter=sep),
        convert_options=pcsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()) if names else None,
            strings_can_be_null=True,
            null_values=[""],
            auto_dict_encode=False,
        ),
    )
    columns = {}
    for name, values in zip(table.column_names, table.columns, strict=True):
        text = pc.utf8_trim_whitespace(values.cast(pa.string()))
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        columns[name.strip()] = pd.Series(pd.arrays.ArrowStringArray(text), copy=False)
    return pd.DataFrame(columns)


def _read_with_pandas(
    path: Path, sep: str, names: Sequence[str] | None, encoding: str, skip: int
) -> pd.DataFrame:
    """pandas' reader, for separators Arrow's cannot take (a regular expression)."""
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
        engine="c" if sep == r"\s+" else "python",
        skipinitialspace=True,
    )
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _first_ragged_line(
    path: Path, sep: str, encoding: str, skip: int
) -> tuple[int, int, int] | None:
    """(line number, fields expected, fields found) of the first row whose field count
    differs from the first row's; read again only to explain an error."""
    with path.open(newline="", encoding=encoding, errors="replace") as handle:
        rows = csv.reader(handle, delimiter=sep)
        expected = None
        for number, row in enumerate(rows, start=1):
            if number <= skip:
                continue
            if expected is None:
                expected = len(row)
            elif row and len(row) != expected:
                return rows.line_num, expected, len(row)
    return None


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


#: The separators a delimited file is sniffed for.
SNIFFED_DELIMITERS = ",\t;|"
#: How much of a file the sniffer reads.
_SNIFF_BYTES = 64 * 1024


def sniff_delimiter(path: Path) -> str:
    """The separator of a delimited text file with a header line, whatever its name ends
    with: sniffed (Python's ``csv.Sniffer``) among ``,`` tab ``;`` ``|`` from its first
    lines; by the extension when the sample is ambiguous (tab for .tsv/.tab, else comma)."""
    with path.open("rb") as handle:
        sample = handle.read(_SNIFF_BYTES).decode("utf-8", errors="replace")
    if len(sample) == _SNIFF_BYTES:  # a cut last line would not have all its fields
        sample = sample[: sample.rfind("\n") + 1] or sample
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFFED_DELIMITERS).delimiter
    except csv.Error:
        return "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","


def read_table_file(path: str | Path, delimiter: str | None = None) -> pd.DataFrame:
    """A delimited text file (header line) or a Parquet file as strings, with ``_row`` and
    ``_source``. The separator is ``delimiter``, or sniffed (:func:`sniff_delimiter`)."""
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
    return read_delimited(path, sep=delimiter or sniff_delimiter(path))


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


# --- mapping files ---------------------------------------------------------------------------


def check_delimiter(value: str | None) -> str | None:
    """A column separator as a mapping or an option gives it: one character, or ``tab``
    (or ``\\t``) for a tab; None (sniff it) stays None."""
    if value is None:
        return None
    value = {"tab": "\t", "\\t": "\t"}.get(value.lower(), value)
    if len(value) != 1 or value in '\r\n"':
        raise ValueError(f"a delimiter is one character (or 'tab'), got {value!r}")
    return value


def read_json_file(path: str | Path, what: str = "file") -> Any:
    """A JSON file's content, with errors naming the file (``what`` it was meant to be)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise IngestError(f"{path}: no such {what}") from None
    except json.JSONDecodeError as error:
        raise IngestError(f"{path}: not valid JSON ({error})") from None


def read_mapping_file(path: str | Path) -> dict[str, Any]:
    """A column mapping's JSON object, with errors naming the file."""
    fields = read_json_file(path, "mapping file")
    if not isinstance(fields, dict):
        raise IngestError(f"{path}: a mapping is a JSON object of field → column")
    return fields


def validation_message(error: ValidationError) -> str:
    """A pydantic error as ``field: message; …`` (never the values: they may be personal)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(mapping)'}: {e['msg']}" for e in error.errors()
    )
