"""The segment, churn and lifetime-value models as MLflow pyfunc models, logged as code.

The native model (JSON, or LightGBM text and JSON: see
:meth:`bespoke.segments.behaviour.Segmenter.save`,
:meth:`bespoke.segments.churn.ChurnModel.save`) travels as the artifact ``segment_model``,
``churn_model`` or ``clv_model``. Input: person feature rows
(:func:`bespoke.segments.churn.person_rows`); output: ``segment``, ``churn_probability``
or ``expected_value`` per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

#: The file MLflow runs to build the model (models-from-code).
ENTRY_POINT = Path(__file__).with_name("pyfunc_entry.py")
#: What each kind's output column is called.
OUTPUTS = {"segments": "segment", "churn": "churn_probability", "clv": "expected_value"}


def signature(kind: str, columns: list[str]) -> ModelSignature:
    """Input: the person features the model uses; output: its one score column."""
    return ModelSignature(
        inputs=Schema([ColSpec("double", column) for column in columns]),
        outputs=Schema([ColSpec("string" if kind == "segments" else "double", OUTPUTS[kind])]),
    )


class PersonModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from bespoke.training.registry import ARTIFACTS, load_native

        for kind in OUTPUTS:
            if ARTIFACTS[kind] in context.artifacts:
                self.kind = kind
                self.model = load_native(kind, Path(context.artifacts[ARTIFACTS[kind]]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        if self.kind == "segments":
            return self.model.predict(frame).to_frame(OUTPUTS["segments"])
        missing = [c for c in self.model.columns_ if c not in frame]
        if missing:
            raise ValueError(f"the input lacks the person features {missing}")
        scores = (
            self.model.predict_proba(frame) if self.kind == "churn" else self.model.predict(frame)
        )
        return pd.DataFrame({OUTPUTS[self.kind]: scores}, index=frame.index)
