"""Probabilistic matching of customer records that share no key, with Splink.

A Fellegi–Sunter model (Splink, DuckDB backend; its Spark backend is the path at scale)
compares records field by field — names by Jaro–Winkler, dates of birth, addresses,
postcodes, e-mail and phone with typos — and is trained without labels: u-probabilities
from random pairs, m-probabilities by expectation maximisation. The acceptance threshold
is chosen without labels too: the one that maximises the F1 the model itself expects
(each candidate pair counts as a match with its own probability). Pairs just below it go
to a review list instead of the graph.

Raw values are needed in memory to compare them; at rest they live only in the vault
(:mod:`bespoke.identity.vault`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import splink.comparison_library as cl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from splink import DuckDBAPI, Linker, SettingsCreator, block_on

from bespoke.features.parse import ROW, SOURCE, IngestError, read_table_file
from bespoke.identity.identifiers import IdentityError, is_blocked

#: The record fields a mapping can name, and how each is compared.
MATCH_FIELDS = (
    "given_name", "surname", "full_name", "date_of_birth", "street_number", "address",
    "address_2", "city", "postcode", "state", "email", "phone", "national_id",
)  # fmt: skip


class RecordMapping(BaseModel):
    """How a customer-record file's columns map onto the fields matching compares.

    Example (JSON)::

        {"record_id": "rec_id", "given_name": "given_name", "surname": "surname",
         "date_of_birth": "date_of_birth", "date_format": "%Y%m%d",
         "postcode": "postcode", "email": "mail"}
    """

    model_config = ConfigDict(extra="forbid")

    record_id: str = Field(description="The column with each record's own id (unique).")
    crm_id: str | None = Field(
        default=None, description="A customer id column; default: the record id."
    )
    given_name: str | None = None
    surname: str | None = None
    full_name: str | None = None
    date_of_birth: str | None = None
    date_format: str = Field(default="%Y-%m-%d", description="strftime pattern of dates.")
    street_number: str | None = None
    address: str | None = None
    address_2: str | None = None
    city: str | None = None
    postcode: str | None = None
    state: str | None = None
    email: str | None = None
    phone: str | None = None
    national_id: str | None = None
    delimiter: str | None = Field(
        default=None, description="The column separator; default: sniffed from the file."
    )

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = {"tab": "\t", "\\t": "\t"}.get(value.lower(), value)
        if len(value) != 1 or value in '\r\n"':
            raise ValueError(f"a delimiter is one character (or 'tab'), got {value!r}")
        return value

    def fields(self) -> dict[str, str]:
        """Matched field → source column, for the fields mapped."""
        return {f: getattr(self, f) for f in MATCH_FIELDS if getattr(self, f)}

    @classmethod
    def load(cls, path: str | Path) -> RecordMapping:
        """A mapping from a JSON file, with errors naming the file and the field."""
        path = Path(path)
        try:
            fields = json.loads(path.read_text())
        except FileNotFoundError:
            raise IdentityError(f"{path}: no such mapping file") from None
        except json.JSONDecodeError as error:
            raise IdentityError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(fields, dict):
            raise IdentityError(f"{path}: a mapping is a JSON object of field → column")
        try:
            mapping = cls.model_validate(fields)
        except ValidationError as error:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(mapping)'}: {e['msg']}"
                for e in error.errors()
            )
            raise IdentityError(f"{path}: invalid mapping: {detail}") from None
        if len(mapping.fields()) < 2:
            raise IdentityError(
                f"{path}: map at least two fields to compare ({', '.join(MATCH_FIELDS)})"
            )
        return mapping


def read_records(path: str | Path, mapping: RecordMapping) -> pd.DataFrame:
    """A customer-record file (CSV/TSV/Parquet) as the fields ``mapping`` names, raw values
    trimmed and lower-cased, blanks missing; ``record_id`` unique. Errors name the file,
    the column and, where one is at fault, the line."""
    path = Path(path)
    try:
        frame = read_table_file(path, mapping.delimiter)
    except IngestError as error:
        raise IdentityError(str(error)) from None
    columns = {"record_id": mapping.record_id, **mapping.fields()}
    if mapping.crm_id:
        columns["crm_id"] = mapping.crm_id
    missing = sorted({c for c in columns.values() if c not in frame.columns})
    if missing:
        present = [c for c in frame.columns if not c.startswith("_")]
        raise IdentityError(
            f"{path}: the mapping names missing column(s) {missing}; the file has {present}"
        )
    out = pd.DataFrame(
        {field: frame[column].astype("string").str.strip() for field, column in columns.items()}
    )
    for field in mapping.fields():
        out[field] = out[field].str.lower().replace("", pd.NA)
    out[ROW], out[SOURCE] = frame[ROW].to_numpy(), frame[SOURCE].to_numpy()
    ids = out["record_id"]
    bad = ids.isna() | ids.map(lambda v: is_blocked(v) if isinstance(v, str) else True).astype(bool)
    if bad.any():
        line = int(out.loc[bad.idxmax(), ROW])  # the file's own line number
        raise IdentityError(f"{path}: line {line}: {mapping.record_id} is empty or a placeholder")
    duplicated = ids.duplicated()
    if duplicated.any():
        first = out.loc[duplicated.idxmax()]
        raise IdentityError(
            f"{path}: line {int(first[ROW])}: {mapping.record_id} {first['record_id']!r} "
            "appears twice (record ids are unique)"
        )
    if "crm_id" not in out:
        out["crm_id"] = out["record_id"]
    if "date_of_birth" in out:
        parsed = pd.to_datetime(out["date_of_birth"], format=mapping.date_format, errors="coerce")
        out["date_of_birth"] = parsed.dt.strftime("%Y-%m-%d").astype("string")
    return out


def _comparisons(fields: list[str]) -> list[Any]:
    make = {
        "given_name": lambda: cl.NameComparison("given_name"),
        "surname": lambda: cl.NameComparison("surname"),
        "full_name": lambda: cl.NameComparison("full_name"),
        "date_of_birth": lambda: cl.DateOfBirthComparison(
            "date_of_birth", input_is_string=True, datetime_format="%Y-%m-%d"
        ),
        "street_number": lambda: cl.DamerauLevenshteinAtThresholds("street_number", [1]),
        "address": lambda: cl.NameComparison("address"),
        "address_2": lambda: cl.NameComparison("address_2"),
        "city": lambda: cl.NameComparison("city"),
        "postcode": lambda: cl.DamerauLevenshteinAtThresholds("postcode", [1]),
        "state": lambda: cl.ExactMatch("state"),
        "email": lambda: cl.EmailComparison("email"),
        "phone": lambda: cl.DamerauLevenshteinAtThresholds("phone", [1, 2]),
        "national_id": lambda: cl.DamerauLevenshteinAtThresholds("national_id", [1, 2]),
    }
    return [make[f]() for f in fields]


def _blocking(fields: list[str]) -> list[Any]:
    rules = [block_on(f) for f in ("given_name", "surname", "full_name", "date_of_birth",
                                   "email", "phone", "national_id") if f in fields]  # fmt: skip
    if {"postcode", "street_number"} <= set(fields):
        rules.append(block_on("postcode", "street_number"))
    if {"given_name", "surname"} <= set(fields):
        rules.append(block_on("substr(given_name,1,2)", "substr(surname,1,2)"))
    return rules


def _training_blocks(fields: list[str]) -> list[Any]:
    """Blocks for expectation maximisation: each leaves the other fields free to vary."""
    blocks = []
    for group in (("date_of_birth",), ("given_name", "surname"), ("postcode",), ("email",),
                  ("national_id",), ("full_name",)):  # fmt: skip
        if set(group) <= set(fields):
            blocks.append(block_on(*group))
    return blocks[:3]


def _deterministic(fields: list[str]) -> list[Any]:
    """Rules that nearly only true pairs pass: to estimate how often two records match."""
    rules = [block_on(f) for f in ("national_id", "email", "phone") if f in fields]
    if {"given_name", "surname", "date_of_birth"} <= set(fields):
        rules.append(block_on("given_name", "surname", "date_of_birth"))
    elif {"full_name", "date_of_birth"} <= set(fields):
        rules.append(block_on("full_name", "date_of_birth"))
    return rules


@dataclass
class MatchResult:
    """Scored pairs, the label-free threshold, links, review list and clusters."""

    pairs: pd.DataFrame  # record_id_l, record_id_r, probability, match_weight
    threshold: float
    review_floor: float
    expected_f1: float
    links: pd.DataFrame  # accepted pairs
    review: pd.DataFrame  # the grey zone
    clusters: pd.DataFrame  # record_id, cluster_id
    seconds: float


def expected_f1_threshold(probabilities: np.ndarray) -> tuple[float, float]:
    """(threshold, expected F1): the threshold that maximises the F1 the model expects,
    counting each candidate pair as a match with its own probability. Needs no labels."""
    p = np.sort(np.asarray(probabilities, dtype=float))[::-1]
    if len(p) == 0:
        return 1.0, 0.0
    expected_matches = p.sum()
    true_positives = np.cumsum(p)
    selected = np.arange(1, len(p) + 1)
    f1 = 2 * true_positives / (selected + expected_matches)
    best = int(np.argmax(f1))
    return float(p[best]), float(f1[best])


def match_records(
    frames: list[pd.DataFrame],
    link_type: str = "dedupe_only",
    threshold: float | None = None,
    review_floor: float = 0.1,
    seed: int = 42,
) -> MatchResult:
    """Score candidate pairs of records (one frame: deduplicate; several: link them, with
    ``link_type`` ``link_only`` when each frame is free of duplicates), choose the
    threshold without labels unless given, and cluster the accepted links."""
    start = time.perf_counter()
    fields = [f for f in MATCH_FIELDS if all(f in frame for frame in frames)]
    if len(fields) < 2:
        raise IdentityError(
            f"matching needs at least two fields the records share; they share {fields}"
        )
    db = DuckDBAPI()
    keep = ["record_id", *fields]
    tables = [
        db.register(
            frame[keep]
            .rename(columns={"record_id": "unique_id"})
            .astype(object)
            .where(lambda f: f.notna(), None),
            dataset_display_name=f"records_{i}",
        )
        for i, frame in enumerate(frames)
    ]
    settings = SettingsCreator(
        link_type=link_type if len(frames) > 1 else "dedupe_only",
        unique_id_column_name="unique_id",
        comparisons=_comparisons(fields),
        blocking_rules_to_generate_predictions=_blocking(fields),
        retain_intermediate_calculation_columns=False,
    )
    linker = Linker(tables if len(tables) > 1 else tables[0], settings, log_level=logging.WARNING)
    deterministic = _deterministic(fields)
    if deterministic:
        linker.training.estimate_probability_two_random_records_match(deterministic, recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=seed)
    for block in _training_blocks(fields):
        linker.training.estimate_parameters_using_expectation_maximisation(block)
    predicted = linker.inference.predict(threshold_match_probability=0.001)
    pairs = predicted.as_pandas_dataframe()
    pairs = pairs.rename(columns={"unique_id_l": "record_id_l", "unique_id_r": "record_id_r",
                                  "match_probability": "probability"})  # fmt: skip
    pairs = pairs[["record_id_l", "record_id_r", "probability", "match_weight"]]
    chosen, expected = expected_f1_threshold(pairs["probability"].to_numpy())
    threshold = chosen if threshold is None else threshold
    floor = min(review_floor, threshold)
    links = pairs[pairs["probability"] >= threshold].reset_index(drop=True)
    review = pairs[(pairs["probability"] >= floor) & (pairs["probability"] < threshold)]
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predicted, threshold_match_probability=threshold
    ).as_pandas_dataframe()[["unique_id", "cluster_id"]]
    clusters = clusters.rename(columns={"unique_id": "record_id"})
    return MatchResult(
        pairs=pairs,
        threshold=threshold,
        review_floor=floor,
        expected_f1=expected,
        links=links,
        review=review.reset_index(drop=True),
        clusters=clusters,
        seconds=time.perf_counter() - start,
    )


def pairwise_scores(predicted: set[frozenset], truth: set[frozenset]) -> dict[str, float]:
    """Precision, recall and F1 of a set of record pairs against the true pairs."""
    true_positives = len(predicted & truth)
    precision = true_positives / len(predicted) if predicted else 1.0
    recall = true_positives / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def cluster_pairs(labels: pd.Series) -> set[frozenset]:
    """Every pair of ids (the index) that share a label."""
    out: set[frozenset] = set()
    for _, ids in labels.groupby(labels).groups.items():
        ids = list(ids)
        out.update(frozenset((a, b)) for i, a in enumerate(ids) for b in ids[i + 1 :])
    return out


__all__ = ["MatchResult", "RecordMapping", "expected_f1_threshold", "match_records", "read_records"]
