"""MLflow's models-from-code entry point for the ranker; nothing imports it."""

from mlflow.models import set_model

from bespoke.training.pyfunc import RankerModel

set_model(RankerModel())
