"""Every recommender family by name: what the CLI, tuning and the registry look up."""

from __future__ import annotations

from bespoke.training.als import ALS
from bespoke.training.base import Recommender
from bespoke.training.bpr import BPR
from bespoke.training.content import ContentBased
from bespoke.training.ease import EASE
from bespoke.training.hybrid import Hybrid
from bespoke.training.itemknn import ItemKNN
from bespoke.training.popularity import Popularity

FAMILIES: dict[str, type[Recommender]] = {
    model.family: model for model in (Popularity, ItemKNN, EASE, ALS, BPR, ContentBased, Hybrid)
}


def family(name: str) -> type[Recommender]:
    """The recommender class called ``name``, with a message listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(FAMILIES))}") from None
