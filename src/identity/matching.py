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
from splink.internals.exceptions import SplinkException

from bespoke.engine.engines import spark_session
from bespoke.features.lake import Lake
from bespoke.features.parse import (
    ROW,
    SOURCE,
    IngestError,
    check_delimiter,
    read_mapping_file,
    read_table_file,
    validation_message,
)
from bespoke.features.privacy import pseudonymise_series
from bespoke.features.schema import ID_PATTERN, MAX_ID_LENGTH
from bespoke.identity.build import add_records, load_graph
from bespoke.identity.identifiers import IdentifierType, IdentityError, is_blocked
from bespoke.identity.vault import Vault
from bespoke.settings import Settings

log = logging.getLogger(__name__)

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

    _one_character = field_validator("delimiter")(check_delimiter)

    def fields(self) -> dict[str, str]:
        """Matched field → source column, for the fields mapped."""
        return {f: getattr(self, f) for f in MATCH_FIELDS if getattr(self, f)}

    @classmethod
    def load(cls, path: str | Path) -> RecordMapping:
        """A mapping from a JSON file, with errors naming the file and the field."""
        try:
            mapping = cls.model_validate(read_mapping_file(path))
        except IngestError as error:
            raise IdentityError(str(error)) from None
        except ValidationError as error:
            raise IdentityError(f"{path}: invalid mapping: {validation_message(error)}") from None
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
    # A record without a customer id of its own is known by its record id.
    out["crm_id"] = out["crm_id"].fillna(out["record_id"]) if "crm_id" in out else out["record_id"]
    for field, column in (("record_id", mapping.record_id), ("crm_id", mapping.crm_id)):
        values = out[field]
        misshapen = ~values.fillna("").str.fullmatch(ID_PATTERN).fillna(False)
        if misshapen.any():
            row = out.loc[misshapen.idxmax()]
            raise IdentityError(
                f"{path}: line {int(row[ROW])}: {column} {str(row[field])[:40]!r} is not an id "
                f"(1-{MAX_ID_LENGTH} characters, no control characters, no space at either end)"
            )
    duplicated = ids.duplicated()
    if duplicated.any():
        first = out.loc[duplicated.idxmax()]
        raise IdentityError(
            f"{path}: line {int(first[ROW])}: {mapping.record_id} {first['record_id']!r} "
            "appears twice (record ids are unique)"
        )
    if "date_of_birth" in out:
        parsed = pd.to_datetime(out["date_of_birth"], format=mapping.date_format, errors="coerce")
        out["date_of_birth"] = parsed.dt.strftime("%Y-%m-%d").astype("string")
    return out


#: How each Splink backend's SQL spells the records' date format.
DATE_FORMATS = {"duckdb": "%Y-%m-%d", "spark": "yyyy-MM-dd"}


def _comparisons(fields: list[str], dialect: str = "duckdb") -> list[Any]:
    date_format = DATE_FORMATS[dialect]
    make = {
        "given_name": lambda: cl.NameComparison("given_name"),
        "surname": lambda: cl.NameComparison("surname"),
        "full_name": lambda: cl.NameComparison("full_name"),
        "date_of_birth": lambda: cl.DateOfBirthComparison(
            "date_of_birth", input_is_string=True, datetime_format=date_format
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


def splink_backend(settings: Settings) -> Any:
    """Splink's database API for the settings' batch engine: DuckDB in-process, or
    Splink's Spark backend on the session at ``spark_master`` (its string-similarity UDFs
    are on every session :func:`~bespoke.engine.engines.spark_session` starts)."""
    if settings.engine == "spark":
        from splink import SparkAPI  # imports pyspark: only for the optional engine

        return SparkAPI(spark_session=spark_session(settings.spark_master),
                        break_lineage_method="persist")  # fmt: skip
    return DuckDBAPI()


def match_records(
    frames: list[pd.DataFrame],
    link_type: str = "dedupe_only",
    threshold: float | None = None,
    review_floor: float = 0.1,
    seed: int = 42,
    backend: Any | None = None,
) -> MatchResult:
    """Score candidate pairs of records (one frame: deduplicate; several: link them, with
    ``link_type`` ``link_only`` when each frame is free of duplicates), choose the
    threshold without labels unless given, and cluster the accepted links. ``backend``:
    Splink's database API (:func:`splink_backend`; default DuckDB)."""
    start = time.perf_counter()
    fields = [f for f in MATCH_FIELDS if all(f in frame for frame in frames)]
    if len(fields) < 2:
        raise IdentityError(
            f"matching needs at least two fields the records share; they share {fields}"
        )
    db = backend if backend is not None else DuckDBAPI()
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
        comparisons=_comparisons(fields, db.sql_dialect.sql_dialect_str),
        blocking_rules_to_generate_predictions=_blocking(fields),
        retain_intermediate_calculation_columns=False,
    )
    inputs = tables if len(tables) > 1 else tables[0]
    linker = Linker(inputs, settings, log_level=logging.ERROR)
    deterministic = _deterministic(fields)
    if deterministic:
        linker.training.estimate_probability_two_random_records_match(deterministic, recall=0.8)
    model = linker.misc.save_model_to_json()
    if not model.get("probability_two_random_records_match"):
        # No pair passed the deterministic rules (a small or very clean file): start from
        # one match among all pairs rather than none (a prior of 0 matches nothing).
        n = sum(len(frame) for frame in frames)
        floor = 1 / max(n * (n - 1) / 2, 1)
        linker = Linker(inputs, {**model, "probability_two_random_records_match": floor},
                        log_level=logging.ERROR)  # fmt: skip
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=seed)
    for block in _training_blocks(fields):
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(block)
        except (SplinkException, ValueError, ZeroDivisionError) as error:
            # Too few pairs in this block to estimate from (small files): the other
            # blocks, or Splink's starting values, stand for it.
            log.info("expectation maximisation on %s skipped: %s", block, error)
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


@dataclass
class Resolution:
    """What ``bespoke identity resolve`` did: the match, what joined the graph, where the
    outputs are."""

    match: MatchResult
    records: int
    graph: dict[str, int]
    vaulted: int
    outputs: dict[str, Path]


def resolve_records(
    files: list[Path],
    mapping: RecordMapping,
    *,
    dataset: str,
    lake: Lake,
    key: bytes,
    vault: Vault,
    out_dir: Path,
    link_only: bool = False,
    threshold: float | None = None,
    backend: Any | None = None,
) -> Resolution:
    """Match customer records (one file: deduplicate; several: link), keep their raw
    values only in the vault, join their CRM ids, pseudonymised e-mails and phones and the
    accepted links to the dataset's identity graph, and write the clusters, links and the
    review list (ids and probabilities only) under ``out_dir``. ``backend``: Splink's
    database API (:func:`splink_backend`; default DuckDB)."""
    frames = [read_records(path, mapping) for path in files]
    ids = pd.concat([f["record_id"] for f in frames])
    if ids.duplicated().any():
        raise IdentityError(
            f"record id {ids[ids.duplicated()].iloc[0]!r} appears in more than one file: "
            "record ids must be unique across the files resolved together"
        )
    result = match_records(
        frames, link_type="link_only" if link_only else "link_and_dedupe", threshold=threshold,
        backend=backend,
    )  # fmt: skip
    records = pd.concat(frames, ignore_index=True)
    crm = dict(zip(records["record_id"], records["crm_id"], strict=True))
    identifiers = [
        records[["crm_id"]].assign(identifier_type="crm_id", identifier=records["crm_id"])
    ]
    for field in ("email", "phone"):
        if field in records:
            identifiers.append(
                pd.DataFrame(
                    {
                        "crm_id": records["crm_id"],
                        "identifier_type": field,
                        "identifier": pseudonymise_series(key, field, records[field]),
                    }
                )
            )
    links = result.links.assign(
        crm_id_l=result.links["record_id_l"].map(crm),
        crm_id_r=result.links["record_id_r"].map(crm),
        evidence="records " + result.links["record_id_l"] + " ~ " + result.links["record_id_r"],
    )
    links = links[links["crm_id_l"] != links["crm_id_r"]]
    counts = add_records(
        lake,
        dataset,
        key,
        pd.concat(identifiers, ignore_index=True),
        links,
        source=", ".join(str(p) for p in files),
    )
    graph = load_graph(lake, dataset, key)
    vaulted = 0
    raw_fields = [f for f in MATCH_FIELDS if f in records]
    for person, group in records.groupby(
        records["crm_id"].map(lambda c: graph.person_of((IdentifierType.CRM_ID, str(c)))),
        sort=False,
    ):
        own = [f"crm_id:{c}" for c in group["crm_id"].unique()]
        vaulted += vault.put(
            str(person),
            [(str(r), {f: (None if pd.isna(v) else v) for f, v in zip(raw_fields, values, strict=True)})
             for r, values in zip(group["record_id"], group[raw_fields].itertuples(index=False), strict=True)],
            identifiers=own,
        )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "clusters": out_dir / "clusters.parquet",
        "links": out_dir / "links.parquet",
        "review": out_dir / "review.csv",
    }
    result.clusters.to_parquet(outputs["clusters"], index=False)
    result.links.to_parquet(outputs["links"], index=False)
    result.review.to_csv(outputs["review"], index=False)
    return Resolution(
        match=result, records=len(records), graph=counts, vaulted=vaulted, outputs=outputs
    )
