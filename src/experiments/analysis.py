"""Analysis of an experiment: exposures joined to outcomes, then the statistics engine.

Each person's first exposure (the lake's ``exposures`` view, QA overrides left out) is
joined to their events (by user id, or by anonymous id for an anonymous exposure) inside
the experiment's attribution window after it: the outcome. The same window before the
exposure gives the pre-exposure covariate CUPED uses. Metrics
(:data:`bespoke.experiments.definitions.METRICS`):

- ``conversion``: a purchase in the window (where the dataset has no purchases at all, any
  interaction — rate, click, add to cart, like, view — counts, and the analysis says so);
- ``click_through``: a click in the window;
- ``events_per_user`` and ``revenue_per_user`` (purchase value): means per exposed person,
  with CUPED on the same figure before exposure;
- ``average_order_value``: revenue over purchases, a ratio metric (delta method).

Every variant is compared with the control (the first variant) on every metric:
difference, relative lift and their intervals, p-value, the Bayesian chance to beat the
control and expected loss, and Holm's adjustment across all metrics and variants. The
primary metric also gets the sequential test (mSPRT): its always-valid p-value and
confidence sequence at each day since the start, valid however often one looks. The
sample-ratio-mismatch test checks the split against the weights, and the primary metric is
broken down by the person's segment (exploratory: not adjusted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from bespoke.experiments import stats
from bespoke.experiments.definitions import METRICS, Experiment
from bespoke.features.lake import Lake

#: Metrics that are a share of people (two-proportion test).
PROPORTIONS = frozenset({"conversion", "click_through"})
#: Metrics that are a mean per person (Welch t, CUPED).
MEANS = frozenset({"events_per_user", "revenue_per_user"})
#: Metrics that are a ratio of two sums over people (delta method).
RATIOS = frozenset({"average_order_value"})
INTERACTIONS = ("purchase", "rate", "click", "add_to_cart", "like", "view")
#: The most looks the sequential boundary is drawn at (one per day).
MAX_LOOKS = 120


class AnalysisError(ValueError):
    """An experiment that cannot be analysed (no exposures, unknown dataset…)."""


@dataclass(frozen=True)
class MetricResult:
    metric: str
    variant: str
    role: str  # "primary" | "guardrail" | "secondary"
    comparison: stats.Comparison
    bayesian: stats.Bayesian
    adjusted_p: float
    significantly_worse: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "variant": self.variant,
            "role": self.role,
            **self.comparison.as_dict(),
            "chance_to_win": self.bayesian.chance_to_win,
            "expected_loss": self.bayesian.expected_loss,
            "credible_interval": list(self.bayesian.credible_interval),
            "adjusted_p": self.adjusted_p,
            "significantly_worse": self.significantly_worse,
        }


@dataclass
class Analysis:
    experiment: Experiment
    dataset: str
    as_of: datetime
    exposed: dict[str, int]
    srm: stats.SampleRatio | None
    results: list[MetricResult]
    #: Per variant: the primary metric's sequential path (day, difference, p, lower, upper).
    sequential: dict[str, pd.DataFrame]
    #: The primary metric per segment and variant (people, value).
    segments: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    #: People whose attribution window had not ended at ``as_of`` (their outcome is partial).
    partial_windows: int = 0

    def result(self, metric: str, variant: str) -> MetricResult:
        return next(r for r in self.results if r.metric == metric and r.variant == variant)

    def guardrail_failures(self) -> list[MetricResult]:
        return [r for r in self.results if r.role == "guardrail" and r.significantly_worse]

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment.key,
            "dataset": self.dataset,
            "as_of": self.as_of.isoformat(),
            "exposed": self.exposed,
            "srm": None
            if self.srm is None
            else {
                "p_value": self.srm.p_value,
                "mismatch": self.srm.mismatch,
                "observed": list(self.srm.observed),
                "expected": list(self.srm.expected),
            },
            "results": [r.as_dict() for r in self.results],
            "sequential": {
                variant: frame.assign(day=frame["day"].astype(str)).to_dict(orient="records")
                for variant, frame in self.sequential.items()
            },
            "segments": self.segments.to_dict(orient="records"),
            "partial_windows": self.partial_windows,
            "notes": self.notes,
        }


def outcomes(
    lake: Lake, experiment: Experiment, dataset: str, as_of: datetime | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(people, events, notes)``: one row per exposed person (variant, exposure time)
    and their events inside ``[exposed_at - window, exposed_at + window)`` (and before
    ``as_of``), each with its offset from the exposure."""
    as_of = as_of or datetime.now(UTC)
    window = timedelta(days=experiment.attribution_window_days)
    con = lake.connect()
    people = con.execute(
        "SELECT person, anonymous, variant, variant_index, exposed_at FROM exposures "
        "WHERE dataset = ? AND experiment = ? AND NOT forced AND exposed_at <= ? "
        "ORDER BY exposed_at, person",
        [dataset, experiment.key, as_of],
    ).df()
    if people.empty:
        raise AnalysisError(
            f"experiment {experiment.key!r} has no exposures in {dataset!r} up to "
            f"{as_of.isoformat()} (exposures reach the lake when the ledger is flushed: "
            "`bespoke experiment flush`)"
        )
    con.register("_exposed", people)
    events = con.execute(
        f"""
        WITH ev AS (
            SELECT user_id AS person, false AS anonymous, event_type, timestamp, value
            FROM events WHERE dataset = $dataset AND user_id IS NOT NULL
            UNION ALL
            SELECT anonymous_id, true, event_type, timestamp, value
            FROM events WHERE dataset = $dataset AND anonymous_id IS NOT NULL
        )
        SELECT x.person, x.anonymous, ev.event_type, ev.timestamp, coalesce(ev.value, 0) AS value,
               epoch(ev.timestamp) - epoch(x.exposed_at) AS offset_s
        FROM _exposed x JOIN ev ON ev.person = x.person AND ev.anonymous = x.anonymous
        WHERE ev.timestamp >= x.exposed_at - INTERVAL '{window.total_seconds()} seconds'
          AND ev.timestamp < x.exposed_at + INTERVAL '{window.total_seconds()} seconds'
          AND ev.timestamp <= $as_of
        """,
        {"dataset": dataset, "as_of": as_of},
    ).df()
    notes = []
    types = set(
        con.execute(
            "SELECT DISTINCT event_type FROM events WHERE dataset = ?", [dataset]
        ).fetchall()
    )
    if ("purchase",) not in types:
        notes.append(
            f"{dataset} has no purchases: conversion counts any interaction "
            f"({', '.join(INTERACTIONS[1:])})"
        )
    return people, events, notes


def _per_person(
    people: pd.DataFrame, events: pd.DataFrame, conversion: tuple[str, ...]
) -> pd.DataFrame:
    """Each person's metric inputs after (``_post``) and before (``_pre``) exposure."""
    keys = ["person", "anonymous"]
    frame = people.set_index(keys)
    for suffix, part in (("post", events[events["offset_s"] >= 0]),
                         ("pre", events[events["offset_s"] < 0])):  # fmt: skip
        kind = part["event_type"]
        purchase = kind == "purchase"
        # plain arrays: Series would align to the new index and come out empty
        grouped = (
            pd.DataFrame(
                {
                    "events": np.ones(len(part)),
                    "conversions": kind.isin(conversion).to_numpy(dtype=float),
                    "clicks": (kind == "click").to_numpy(dtype=float),
                    "purchases": purchase.to_numpy(dtype=float),
                    "revenue": part["value"].where(purchase, 0.0).to_numpy(dtype=float),
                },
                index=pd.MultiIndex.from_frame(part[keys]),
            )
            .groupby(level=keys)
            .sum()
        )
        grouped.columns = [f"{c}_{suffix}" for c in grouped.columns]
        frame = frame.join(grouped, how="left")
    return frame.fillna(0.0).reset_index()


def _metric_values(frame: pd.DataFrame, metric: str, suffix: str = "post") -> Any:
    if metric == "conversion":
        return (frame[f"conversions_{suffix}"] > 0).astype(float).to_numpy()
    if metric == "click_through":
        return (frame[f"clicks_{suffix}"] > 0).astype(float).to_numpy()
    if metric == "events_per_user":
        return frame[f"events_{suffix}"].to_numpy()
    if metric == "revenue_per_user":
        return frame[f"revenue_{suffix}"].to_numpy()
    return frame[f"revenue_{suffix}"].to_numpy(), frame[f"purchases_{suffix}"].to_numpy()


#: What a metric needs in the window (for the note when nobody has it).
_EVIDENCE = {
    "conversion": "conversion",
    "click_through": "click",
    "events_per_user": "event",
    "revenue_per_user": "purchase value",
    "average_order_value": "purchase",
}


def _all_zero(metric: str, people: pd.DataFrame) -> bool:
    values = _metric_values(people, metric)
    if metric in RATIOS:
        values = values[1]  # the purchases
    return not np.asarray(values).any()


def _compare(
    metric: str, control: pd.DataFrame, treatment: pd.DataFrame, alpha: float
) -> stats.Comparison:
    if metric in PROPORTIONS:
        c, t = _metric_values(control, metric), _metric_values(treatment, metric)
        return stats.compare_proportions(int(c.sum()), len(c), int(t.sum()), len(t), alpha=alpha)
    if metric in MEANS:
        c, t = _metric_values(control, metric), _metric_values(treatment, metric)
        xc, xt = _metric_values(control, metric, "pre"), _metric_values(treatment, metric, "pre")
        covariates = np.var(np.r_[xc, xt]) > 0
        return stats.compare_means(
            c, t, alpha=alpha,
            covariate_control=xc if covariates else None,
            covariate_treatment=xt if covariates else None,
        )  # fmt: skip
    (nc, dc), (nt, dt) = _metric_values(control, metric), _metric_values(treatment, metric)
    return stats.compare_ratios(nc, dc, nt, dt, alpha=alpha)


def _standard_error(comparison: stats.Comparison) -> float:
    low, high = comparison.difference_ci
    z = _z(1 - comparison.alpha / 2)
    return (high - low) / (2 * z)


def _z(q: float) -> float:
    return float(norm.ppf(q))


def analyze(
    lake: Lake,
    experiment: Experiment,
    dataset: str,
    *,
    as_of: datetime | None = None,
    alpha: float = 0.05,
) -> Analysis:
    """The experiment's results as of ``as_of`` (default now); see the module docstring."""
    as_of = as_of or datetime.now(UTC)
    people, events, notes = outcomes(lake, experiment, dataset, as_of)
    conversion = ("purchase",) if not notes else INTERACTIONS
    frame = _per_person(people, events, conversion)
    keys = [v.key for v in experiment.variants]
    exposed = {key: int((frame["variant"] == key).sum()) for key in keys}
    unknown = sorted(set(frame["variant"]) - set(keys))
    if unknown:
        notes.append(f"exposures to variants no longer defined were left out: {unknown}")
    srm = (
        stats.sample_ratio_mismatch(list(exposed.values()), experiment.weights)
        if all(exposed.values())
        else None
    )
    window = timedelta(days=experiment.attribution_window_days)
    partial = int(
        (pd.to_datetime(frame["exposed_at"], utc=True) + window > pd.Timestamp(as_of)).sum()
    )
    control = frame[frame["variant"] == keys[0]]
    metrics = [experiment.primary_metric, *experiment.guardrail_metrics]
    metrics += [m for m in METRICS if m not in metrics]
    raw: list[tuple[str, str, stats.Comparison]] = []
    for key in keys[1:]:
        treatment = frame[frame["variant"] == key]
        if len(treatment) < 2 or len(control) < 2:
            notes.append(f"variant {key!r}: fewer than 2 people in it or in the control")
            continue
        for metric in metrics:
            if _all_zero(metric, control) and _all_zero(metric, treatment):
                note = f"{metric}: nobody exposed has any {_EVIDENCE[metric]} in the window"
                if note not in notes:
                    notes.append(note)
                continue
            try:
                raw.append((metric, key, _compare(metric, control, treatment, alpha)))
            except ValueError as error:  # e.g. a control without any purchase
                notes.append(f"{metric} ({key}): not computed: {error}")
    adjusted = stats.adjust_p_values([c.p_value for _, _, c in raw], "holm") if raw else []
    results = []
    for (metric, key, comparison), p in zip(raw, adjusted, strict=True):
        se = _standard_error(comparison)
        role = ("primary" if metric == experiment.primary_metric
                else "guardrail" if metric in experiment.guardrail_metrics else "secondary")  # fmt: skip
        results.append(MetricResult(
            metric, key, role, comparison,
            stats.bayesian(comparison.difference, se, alpha=alpha) if se > 0 else
            stats.Bayesian(0.5, 0.0, (comparison.difference, comparison.difference)),
            float(p), bool(comparison.difference < 0 and p < alpha),
        ))  # fmt: skip
    sequential = {
        key: _sequential(people, events, conversion, experiment, keys[0], key, alpha, as_of)
        for key in keys[1:]
    }
    return Analysis(
        experiment, dataset, as_of, exposed, srm, results, sequential,
        _segments(lake, frame, experiment, dataset), notes, partial,
    )  # fmt: skip


def _sequential(
    people: pd.DataFrame,
    events: pd.DataFrame,
    conversion: tuple[str, ...],
    experiment: Experiment,
    control: str,
    variant: str,
    alpha: float,
    as_of: datetime,
) -> pd.DataFrame:
    """The primary metric's mSPRT path: one look per day from the first exposure until the
    last attribution window closes (or ``as_of``), each with the people exposed by then and
    their outcomes up to then — what someone looking that day saw."""
    metric = experiment.primary_metric
    if metric in RATIOS:
        metric = "revenue_per_user"  # the path of its numerator: a mean per person
    exposed_at = pd.to_datetime(people["exposed_at"], utc=True)
    event_time = pd.to_datetime(events["timestamp"], utc=True)
    window = pd.Timedelta(days=experiment.attribution_window_days)
    end = min(pd.Timestamp(as_of), exposed_at.max() + window).ceil("D")
    days = pd.date_range(exposed_at.min().floor("D") + pd.Timedelta(days=1), end, freq="D")
    if len(days) > MAX_LOOKS:
        days = days[np.linspace(0, len(days) - 1, MAX_LOOKS).round().astype(int)]
    rows = []
    for day in days:
        seen = _per_person(people[exposed_at < day], events[event_time < day], conversion)
        c = seen[seen["variant"] == control]
        t = seen[seen["variant"] == variant]
        if len(c) < 2 or len(t) < 2:
            continue
        vc, vt = np.asarray(_metric_values(c, metric)), np.asarray(_metric_values(t, metric))
        diff = float(vt.mean() - vc.mean())
        var = float(vt.var(ddof=1) / len(vt) + vc.var(ddof=1) / len(vc))
        rows.append((day, len(c) + len(t), diff, var, float(vc.mean())))
    columns = ["day", "people", "difference", "variance", "p_value", "lower", "upper"]
    if not rows:
        return pd.DataFrame(columns=columns)
    looks = pd.DataFrame(rows, columns=["day", "people", "difference", "variance", "baseline"])
    baseline = float(looks["baseline"].iloc[-1])
    effect = experiment.minimum_detectable_effect * (baseline if baseline > 0 else 1.0)
    variance = looks["variance"].clip(lower=1e-12).to_numpy()
    path = stats.msprt_path(
        looks["difference"].to_numpy(), variance, tau2=stats.default_tau2(effect), alpha=alpha
    )
    looks["p_value"], looks["lower"], looks["upper"] = path.p_value, path.lower, path.upper
    return looks[columns]


def _segments(
    lake: Lake, frame: pd.DataFrame, experiment: Experiment, dataset: str
) -> pd.DataFrame:
    """The primary metric per behavioural segment and variant (people and value)."""
    metric = experiment.primary_metric
    con = lake.connect()
    segments = con.execute("SELECT person, segment FROM segments WHERE dataset = ?", [dataset]).df()
    known = frame[~frame["anonymous"]].merge(segments, on="person", how="left")
    known["segment"] = known["segment"].fillna("(no segment)")
    if metric in RATIOS:
        known["value"] = known["revenue_post"]
        metric_label = "revenue_per_user"
    else:
        known["value"] = np.asarray(_metric_values(known, metric))
        metric_label = metric
    table = (
        known.groupby(["segment", "variant"])["value"]
        .agg(people="size", value="mean")
        .reset_index()
    )
    table["metric"] = metric_label
    return table
