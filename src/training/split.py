"""Evaluation protocols: how interactions are split into train and test.

- ``ms-stratified``: Microsoft Recommenders' benchmark split. Within each item's
  interactions, shuffled with the seed, the first 75% (rounded) train and the rest
  test; every test interaction counts as relevant.
- ``temporal``: one global time cut; the interactions after it are the test, kept only
  for users with history before it. Nothing after the cut reaches training.

Tuning uses :func:`validation`, the same protocol applied again to the training part:
the test part is never seen by tuning or model selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

from bespoke.training.data import Interactions

Protocol = Literal["ms-stratified", "temporal"]


@dataclass(frozen=True)
class Split:
    """Train and test over the same id maps, and how they were made."""

    train: Interactions
    test: Interactions
    protocol: Protocol
    params: dict[str, Any] = field(default_factory=dict)


def ms_stratified(
    interactions: Interactions,
    ratio: float = 0.75,
    seed: int = 42,
    by: Literal["item", "user"] = "item",
) -> Split:
    """Per-``by`` stratified random split (Microsoft Recommenders' ``python_stratified_split``)."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1, got {ratio}")
    groups = interactions.items if by == "item" else interactions.users
    shuffle = np.random.RandomState(seed).rand(len(interactions))
    order = np.lexsort((shuffle, groups))  # by group, shuffled within it
    sorted_groups = groups[order]
    starts = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    rank = np.arange(len(order)) - first + 1  # 1-based position within the group
    sizes = np.bincount(sorted_groups, minlength=groups.max(initial=-1) + 1)[sorted_groups]
    in_train = np.empty(len(order), bool)
    in_train[order] = rank <= np.round(ratio * sizes)
    return Split(
        train=interactions.subset(in_train),
        test=interactions.subset(~in_train),
        protocol="ms-stratified",
        params={"ratio": ratio, "seed": seed, "by": by},
    )


def temporal(
    interactions: Interactions,
    test_fraction: float = 0.2,
    cut: datetime | np.datetime64 | None = None,
) -> Split:
    """Everything before ``cut`` (default: the time that leaves ``test_fraction`` of the
    interactions after it) trains; the later interactions of users seen before it test."""
    times = interactions.timestamps
    if np.isnat(times).any():
        raise ValueError("the temporal protocol needs a timestamp on every interaction")
    if cut is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        cut = np.quantile(times.astype(np.int64), 1 - test_fraction).astype("datetime64[us]")
    cut = (
        np.datetime64(cut, "us")
        if not isinstance(cut, np.datetime64)
        else cut.astype("datetime64[us]")
    )
    before = times < cut
    known = np.zeros(interactions.n_users, bool)
    known[interactions.users[before]] = True
    after = ~before & known[interactions.users]
    return Split(
        train=interactions.subset(before),
        test=interactions.subset(after),
        protocol="temporal",
        params={"cut": str(cut), "test_fraction": test_fraction},
    )


def make_split(interactions: Interactions, protocol: Protocol, **params: Any) -> Split:
    if protocol == "ms-stratified":
        return ms_stratified(interactions, **params)
    if protocol == "temporal":
        return temporal(interactions, **params)
    raise ValueError(f"unknown protocol {protocol!r}; use 'ms-stratified' or 'temporal'")


def validation(split: Split) -> Split:
    """The same protocol applied to ``split.train``: what tuning and model selection use."""
    params = dict(split.params)
    if split.protocol == "temporal":
        params.pop("cut", None)  # a new cut inside the training period
    return make_split(split.train, split.protocol, **params)
