"""Every recommender family by name: what the CLI, tuning and the registry look up."""

from __future__ import annotations

from bespoke.training.base import Recommender
from bespoke.training.components import COMPONENTS
from bespoke.training.hybrid import Hybrid

FAMILIES: dict[str, type[Recommender]] = {**COMPONENTS, Hybrid.family: Hybrid}


def family(name: str) -> type[Recommender]:
    """The recommender class called ``name``, with a message listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(FAMILIES))}") from None
