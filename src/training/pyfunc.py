"""The recommender as an MLflow pyfunc model, logged as code (no cloudpickled instance).

The model's own files (NumPy arrays and JSON, see ``base.Recommender.save``) travel as
the artifact ``recommender``; :class:`RecommenderModel` loads them with the family's
``load``. Input: a DataFrame with ``user_id`` and optionally ``k``; output: one row per
recommendation with ``user_id``, ``rank``, ``item_id`` and ``score``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

ARTIFACT = "recommender"
#: The file MLflow runs to build the model (models-from-code).
ENTRY_POINT = Path(__file__).with_name("pyfunc_entry.py")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "k", required=False)]),
    outputs=Schema(
        [
            ColSpec("string", "user_id"),
            ColSpec("long", "rank"),
            ColSpec("string", "item_id"),
            ColSpec("double", "score"),
        ]
    ),
)


class RecommenderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from bespoke.training.families import family

        folder = Path(context.artifacts[ARTIFACT])
        name = json.loads((folder / "model.json").read_text())["family"]
        self.model = family(name).load(folder)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        if "user_id" not in frame:
            raise ValueError("the input needs a user_id column")
        k = int(frame["k"].iloc[0]) if "k" in frame and len(frame) else 10
        users = frame["user_id"].astype(str).tolist()
        ids, scores = self.model.recommend(users, k=k)
        rows = [
            {"user_id": user, "rank": rank + 1, "item_id": item, "score": float(score)}
            for user, items, values in zip(users, ids, scores, strict=True)
            for rank, (item, score) in enumerate(zip(items, values, strict=True))
            if item is not None
        ]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
