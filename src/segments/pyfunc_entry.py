"""MLflow's models-from-code entry point: MLflow runs this file; nothing imports it."""

from mlflow.models import set_model

from bespoke.segments.pyfunc import PersonModel

set_model(PersonModel())
