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


def _signature(value: str) -> ModelSignature:
    """Input: ``user_id`` (+ optional ``k``); output: one row per item, with ``value``."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "k", required=False)]),
        outputs=Schema(
            [
                ColSpec("string", "user_id"),
                ColSpec("long", "rank"),
                ColSpec("string", "item_id"),
                ColSpec("double", value),
            ]
        ),
    )


SIGNATURE = _signature("score")


def _request(model_input: pd.DataFrame) -> tuple[list[str], int]:
    """The users asked about and ``k`` (default 10)."""
    frame = pd.DataFrame(model_input)
    if "user_id" not in frame:
        raise ValueError("the input needs a user_id column")
    k = int(frame["k"].iloc[0]) if "k" in frame and len(frame) else 10
    return frame["user_id"].astype(str).tolist(), k


def _answer(users: list[str], ids: Any, values: Any, value: str) -> pd.DataFrame:
    """One row per recommended item: ``user_id``, ``rank``, ``item_id`` and ``value``."""
    rows = [
        {"user_id": user, "rank": rank + 1, "item_id": item, value: float(v)}
        for user, items, row in zip(users, ids, values, strict=True)
        for rank, (item, v) in enumerate(zip(items, row, strict=True))
        if item is not None
    ]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", value])


class RecommenderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from bespoke.training.families import family

        folder = Path(context.artifacts[ARTIFACT])
        name = json.loads((folder / "model.json").read_text())["family"]
        self.model = family(name).load(folder)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        users, k = _request(model_input)
        ids, scores = self.model.recommend(users, k=k)
        return _answer(users, ids, scores, "score")


RANKER_ARTIFACT = "ranking_pipeline"
#: The interactions and attributes as of the cut, so that ``user_id`` alone can be
#: answered; a live service passes profiles from its own store instead.
HISTORY_ARTIFACT = "history"
RANKER_ENTRY_POINT = Path(__file__).with_name("pyfunc_ranker_entry.py")
RANKER_SIGNATURE = _signature("probability")


class RankerModel(mlflow.pyfunc.PythonModel):
    """Retrieve and rerank for the users in the input, from their stored histories."""

    def load_context(self, context: Any) -> None:
        from bespoke.training.ranker import RankingPipeline

        self.pipeline = RankingPipeline.load(context.artifacts[RANKER_ARTIFACT])
        folder = Path(context.artifacts[HISTORY_ARTIFACT])
        self.history = pd.read_parquet(folder / "interactions.parquet")
        self.users = pd.read_parquet(folder / "users.parquet")

    def profiles(self, user_ids: list[str]) -> list:
        from bespoke.features.build import Profile

        attributes = self.users.assign(user_id=self.users["user_id"].astype(str))
        attributes = attributes.drop_duplicates("user_id").set_index("user_id")
        rows = self.history[self.history["user_id"].isin(user_ids)].groupby("user_id")
        profiles = []
        for user in user_ids:
            frame = rows.get_group(user) if user in rows.groups else self.history.iloc[:0]
            found = attributes.loc[user].to_dict() if user in attributes.index else {}
            profiles.append(
                Profile(
                    user_id=user,
                    attributes={k: (None if pd.isna(v) else v) for k, v in found.items()},
                    items=frame["item_id"].tolist(),
                    values=frame["value"].to_numpy(),
                    timestamps=frame["timestamp"].to_numpy("datetime64[us]"),
                )
            )
        return profiles

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        users, k = _request(model_input)
        ids, probabilities = self.pipeline.recommend(self.profiles(users), k=k)
        return _answer(users, ids, probabilities, "probability")
