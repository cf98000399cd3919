"""The single recommender families, by name: what a hybrid blends. Kept apart from
:mod:`bespoke.training.families` (which adds the hybrid itself) so that the hybrid can
look its components up without an import cycle."""

from __future__ import annotations

from bespoke.training.als import ALS
from bespoke.training.base import Recommender
from bespoke.training.bpr import BPR
from bespoke.training.content import ContentBased
from bespoke.training.ease import EASE
from bespoke.training.itemknn import ItemKNN
from bespoke.training.popularity import Popularity
from bespoke.training.spark_als import SparkALS

COMPONENTS: dict[str, type[Recommender]] = {
    model.family: model for model in (Popularity, ItemKNN, EASE, ALS, BPR, ContentBased, SparkALS)
}


def component(name: str) -> type[Recommender]:
    """The single family called ``name``, with a message listing the ones a blend takes."""
    try:
        return COMPONENTS[name]
    except KeyError:
        raise ValueError(
            f"unknown component {name!r}; a blend takes: {', '.join(sorted(COMPONENTS))}"
        ) from None
