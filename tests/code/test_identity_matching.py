"""Reading customer-record files for matching, the label-free threshold, pairwise scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bespoke.identity.evaluate import over_merges, pairwise_scores, reachable_clusters
from bespoke.identity.identifiers import IdentityError
from bespoke.identity.matching import RecordMapping, expected_f1_threshold, read_records


def _mapping(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(fields))
    return path


def test_records_are_read_through_a_mapping_with_a_sniffed_delimiter(tmp_path: Path) -> None:
    file = tmp_path / "crm.dat"
    file.write_text("id;first;last;born\nc1; Ann ;Lee;1980-02-01\nc2;bob;KING;\n")
    mapping = RecordMapping.load(
        _mapping(tmp_path, record_id="id", given_name="first", surname="last", date_of_birth="born")
    )
    records = read_records(file, mapping)
    assert records["given_name"].tolist() == ["ann", "bob"]
    assert records["surname"].tolist() == ["lee", "king"]
    assert records["date_of_birth"].iloc[0] == "1980-02-01" and pd.isna(
        records["date_of_birth"].iloc[1]
    )
    assert records["crm_id"].tolist() == ["c1", "c2"]


@pytest.mark.parametrize(
    ("content", "fields", "message"),
    [
        ("id,first\nc1,ann\n", {"record_id": "id", "given_name": "first", "surname": "last"},
         r"the mapping names missing column\(s\) \['last'\]; the file has \['id', 'first'\]"),
        ("id,first,last\nc1,ann,lee\nc1,bob,king\n",
         {"record_id": "id", "given_name": "first", "surname": "last"},
         r"line 3: id 'c1' appears twice"),
        ("id,first,last,crm\nc1,ann,lee,A1\nc2,bob,king,A\u00012\n",
         {"record_id": "id", "given_name": "first", "surname": "last", "crm_id": "crm"},
         r"line 3: crm 'A\\x012' is not an id"),
        ("id,first,last\nc1,ann,lee\nundefined,bob,king\n",
         {"record_id": "id", "given_name": "first", "surname": "last"},
         r"line 3: id is empty or a placeholder"),
    ],
)  # fmt: skip
def test_bad_record_files_are_named(
    tmp_path: Path, content: str, fields: dict, message: str
) -> None:
    file = tmp_path / "crm.csv"
    file.write_text(content)
    with pytest.raises(IdentityError, match=message) as error:
        read_records(file, RecordMapping.load(_mapping(tmp_path, **fields)))
    assert str(file) in str(error.value)


def test_bad_mappings_are_named(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="first_name: Extra inputs are not permitted"):
        RecordMapping.load(_mapping(tmp_path, record_id="id", first_name="x", surname="y"))
    with pytest.raises(IdentityError, match="record_id: Field required"):
        RecordMapping.load(_mapping(tmp_path, given_name="x", surname="y"))
    with pytest.raises(IdentityError, match="at least two fields"):
        RecordMapping.load(_mapping(tmp_path, record_id="id", surname="y"))
    with pytest.raises(IdentityError, match="no such mapping file"):
        RecordMapping.load(tmp_path / "none.json")
    with pytest.raises(IdentityError, match="no such file"):
        read_records(
            tmp_path / "none.csv", RecordMapping(record_id="i", surname="s", given_name="g")
        )


def test_the_threshold_maximises_the_models_own_expected_f1() -> None:
    # Ten near-certain matches, ten unlikely ones, many near-certain non-matches.
    probabilities = np.r_[np.full(10, 0.99), np.full(10, 0.2), np.full(100, 0.001)]
    threshold, expected = expected_f1_threshold(probabilities)
    assert threshold == 0.99
    # E[F1] = 2·9.9 / (10 + 15.1) when only the certain ones are taken.
    assert expected == pytest.approx(2 * 9.9 / (10 + probabilities.sum()))
    # Coin flips are worth taking when they are as many as the sure ones: E[F1] rises
    # from 19.8/25 to 29.8/35.
    coin_flips = np.r_[np.full(10, 0.99), np.full(10, 0.5), np.full(100, 0.001)]
    assert expected_f1_threshold(coin_flips)[0] == 0.5


def test_pairwise_scores_count_pairs() -> None:
    truth = pd.Series(["a", "a", "a", "b", "b"])
    predicted = pd.Series([1, 1, 2, 2, 3])  # one true pair kept of four; one false pair
    scores = pairwise_scores(predicted, truth)
    assert scores["precision"] == pytest.approx(1 / 2)
    assert scores["recall"] == pytest.approx(1 / 4)
    assert over_merges(predicted, truth) == 1
    links = pd.DataFrame({"left": ["x", "y", "z"], "right": ["y", "z", "w"]})
    reachable = reachable_clusters(
        links, pd.Series(["a", "a", "b", "b"], index=["x", "y", "z", "w"])
    )
    assert reachable["x"] == reachable["y"] != reachable["z"] == reachable["w"]
