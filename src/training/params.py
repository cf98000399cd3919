"""Tuned parameters: the best parameters tuning runs found, per dataset, protocol and
model, kept in a JSON file that ships inside the package (``tuned_params.json`` beside
this module), so that a built wheel or Bento trains with them as a checkout does.
``BESPOKE_TUNED_PARAMS_FILE`` points tuning and training at another file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bespoke.settings import Settings
from bespoke.training.base import Recommender
from bespoke.training.families import family

#: The file that ships with the package; tuning runs in a checkout write here.
PACKAGED = Path(__file__).with_name("tuned_params.json")
#: The key the click-through ranker's parameters go under, beside the families'.
RANKER = "ranker"
#: Parameters for families that need some and have no tuned entry yet.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "hybrid": {"components": {"ease": {}, "itemknn": {}}, "weights": {"ease": 0.7, "itemknn": 0.3}},
}


def params_file_of(settings: Settings) -> Path:
    """The tuned-parameters file these settings name (default: the packaged one)."""
    return settings.tuned_params_file or PACKAGED


def tuned_params(path: Path, dataset: str, protocol: str, model: str) -> dict[str, Any]:
    """The parameters a tuning run wrote for this dataset, protocol and model ({} if none)."""
    if not path.exists():
        return {}
    entry = json.loads(path.read_text()).get(dataset, {}).get(protocol, {}).get(model)
    return dict(entry["params"]) if entry else {}


def tuned_ranker_params(path: Path, dataset: str, protocol: str) -> dict[str, Any]:
    """The ranker parameters a tuning run wrote for this dataset and protocol, the
    objective among them ({} if none)."""
    return tuned_params(path, dataset, protocol, RANKER)


def params_for(path: Path, dataset: str, protocol: str, model: str) -> dict[str, Any]:
    """The tuned parameters of ``model``, or its defaults when it has no tuned entry."""
    return tuned_params(path, dataset, protocol, model) or dict(DEFAULT_PARAMS.get(model, {}))


def model_for(path: Path, dataset: str, protocol: str, model: str) -> Recommender:
    """A new ``model`` with the parameters tuning wrote to ``path`` (or its defaults)."""
    return family(model)(**params_for(path, dataset, protocol, model))


def write_params(
    path: Path,
    dataset: str,
    protocol: str,
    model: str,
    params: dict[str, Any],
    metric: str,
    value: float,
    study: str,
) -> None:
    """Merge a tuning run's best parameters into ``path``."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(dataset, {}).setdefault(protocol, {})[model] = {
        "params": params,
        f"validation_{metric}": round(value, 4),
        "study": study,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
