"""The spark-als family where Spark is not involved: parameters checked before anything
runs, and a clear message when pyspark or Java is missing (the contract itself, on a
real local Spark, is ``TestSparkALS`` in test_recommender_contract.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bespoke.training.data import Interactions, load_interactions
from bespoke.training.spark_als import SparkALS


@pytest.fixture(scope="module")
def interactions(ml100k_lake) -> Interactions:
    lake, _ = ml100k_lake
    return load_interactions(lake, "ml-100k")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"factors": 0}, "factors must be a positive integer, got 0"),
        ({"iterations": 2.5}, "iterations must be a positive integer"),
        ({"blocks": -1}, "blocks must be a positive integer"),
        ({"regularization": -0.1}, "regularization must be finite and non-negative"),
        ({"alpha": float("nan")}, "alpha must be finite and non-negative"),
        ({"alpha": "high"}, "alpha must be a number"),
        ({"random_state": None}, "random_state must be an integer"),
    ],
)
def test_bad_parameters_fail_naming_them_before_anything_is_set(
    interactions: Interactions, params: dict[str, Any], message: str
) -> None:
    model = SparkALS(**params)
    with pytest.raises(ValueError, match=message):
        model.fit(interactions)
    assert not [name for name in vars(model) if name.endswith("_")]


#: Fits a model on the first ML-100K ratings in a process where Spark cannot start
#: (argv[1]: "no-pyspark" hides the package, "no-java" leaves no java to find) and
#: prints the error, then whether the model was left unfitted.
_WITHOUT_SPARK = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "no-pyspark":
        sys.modules["pyspark"] = None  # what an install without the extra looks like
    import pandas as pd
    from bespoke.training.data import Interactions
    from bespoke.training.families import family

    frame = pd.read_csv(sys.argv[2], sep="\\t", names=["user_id", "item_id", "value", "ts"],
                        nrows=500)
    model = family("spark-als")(factors=4, iterations=2)
    try:
        model.fit(Interactions.from_frame(frame))
    except RuntimeError as error:
        print(error)
    print("unfitted" if not hasattr(model, "item_ids_") else "fitted")
    """
)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-pyspark", "needs pyspark: install the `spark` extra (pip install 'bespoke[spark]'"),
        ("no-java", "install openjdk-17-jre-headless (scripts/test-system-packages does it)"),
    ],
)
def test_without_pyspark_or_java_fit_says_what_to_install(
    datasets_dir: Path, tmp_path: Path, case: str, message: str
) -> None:
    if case == "no-java" and importlib.util.find_spec("pyspark") is None:
        pytest.skip("pyspark is not installed: it is the `spark` extra, which `make test` "
                    "installs (uv sync --all-extras); without it Java is never looked for")  # fmt: skip
    environment = {**os.environ, "PATH": str(tmp_path)}  # no java on it
    environment.pop("JAVA_HOME", None)
    script = tmp_path / "fit.py"
    script.write_text(_WITHOUT_SPARK)
    done = subprocess.run(
        [sys.executable, str(script), case, str(datasets_dir / "ml-100k" / "u.data")],
        capture_output=True, text=True, env=environment, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert message in done.stdout
    assert done.stdout.splitlines()[-1] == "unfitted"
