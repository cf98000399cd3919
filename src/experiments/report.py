"""The experiment report: one self-contained HTML page from an :class:`Analysis`.

Per metric and variant: the lift and its interval, the p-value (Holm-adjusted beside it)
and the chance to beat the control; the primary metric's sequential boundary over time
(the difference with its always-valid confidence sequence, and the always-valid
p-value); the sample-ratio check; the breakdown by segment; the audit trail of the
rollout. Plotly's JavaScript is inlined once, so the file opens anywhere, offline.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from bespoke.experiments.analysis import Analysis
from bespoke.experiments.ledger import State

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}h1{margin-bottom:.2rem}.meta{color:#666}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{padding:.25rem .7rem;
border-bottom:1px solid #ddd;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}.note{background:#fff8e1;border-left:4px solid #f0b400;
padding:.5rem .8rem}.bad{color:#b00020;font-weight:600}.good{color:#0a7d32;font-weight:600}
"""


def _pct(value: float) -> str:
    return "—" if value != value else f"{value:+.2%}"


def _num(value: float) -> str:
    if value != value:
        return "—"
    return f"{value:.4g}"


def _p(value: float) -> str:
    return "—" if value != value else ("< 0.0001" if value < 1e-4 else f"{value:.4f}")


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{cell}</td>' if i >= numeric_from else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _results(analysis: Analysis) -> str:
    rows = []
    for r in analysis.results:
        c = r.comparison
        verdict = (
            '<span class="bad">worse</span>' if r.significantly_worse
            else '<span class="good">better</span>' if c.difference > 0 and r.adjusted_p < c.alpha
            else "no clear difference"
        )  # fmt: skip
        rows.append([
            html.escape(r.metric), html.escape(r.role), html.escape(r.variant),
            _num(c.control), _num(c.treatment), _pct(c.lift),
            f"[{_pct(c.lift_ci[0])}, {_pct(c.lift_ci[1])}]", _p(c.p_value), _p(r.adjusted_p),
            f"{r.bayesian.chance_to_win:.1%}", verdict,
        ])  # fmt: skip
    header = ["metric", "role", "variant", "control", "variant value", "lift", "lift interval",
              "p-value", "Holm p", "chance to beat control", "verdict"]  # fmt: skip
    return _table(header, rows, numeric_from=3)


def _sequential_figure(analysis: Analysis) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=("difference with its always-valid confidence sequence",
                                           "always-valid p-value"))  # fmt: skip
    for variant, path in analysis.sequential.items():
        if path.empty:
            continue
        days = pd.to_datetime(path["day"]).dt.strftime("%Y-%m-%d").tolist()
        figure.add_trace(go.Scatter(x=days, y=path["upper"], mode="lines", line={"width": 0},
                                    showlegend=False, hoverinfo="skip"), row=1, col=1)  # fmt: skip
        figure.add_trace(go.Scatter(x=days, y=path["lower"], mode="lines", line={"width": 0},
                                    fill="tonexty", name=f"{variant}: confidence sequence"),
                         row=1, col=1)  # fmt: skip
        figure.add_trace(go.Scatter(x=days, y=path["difference"], mode="lines+markers",
                                    name=f"{variant}: difference"), row=1, col=1)  # fmt: skip
        figure.add_trace(go.Scatter(x=days, y=path["p_value"], mode="lines+markers",
                                    name=f"{variant}: p"), row=2, col=1)  # fmt: skip
    alpha = analysis.results[0].comparison.alpha if analysis.results else 0.05
    figure.add_hline(y=0, line_dash="dot", row=1, col=1)
    figure.add_hline(y=alpha, line_dash="dash", line_color="#b00020", row=2, col=1,
                     annotation_text=f"alpha {alpha}")  # fmt: skip
    figure.update_layout(height=560, margin={"t": 40, "b": 30}, legend={"orientation": "h"})
    return figure.to_html(full_html=False, include_plotlyjs=False)


def render_html(
    analysis: Analysis,
    *,
    state: State | None = None,
    audit: list[dict[str, Any]] | None = None,
    generated_at: datetime | None = None,
) -> str:
    """The analysis as one self-contained HTML page."""
    import plotly.offline

    experiment = analysis.experiment
    esc = html.escape
    generated_at = generated_at or datetime.now(UTC)
    srm = analysis.srm
    srm_text = (
        "not tested (a variant has no one yet)" if srm is None else
        f'<span class="{"bad" if srm.mismatch else "good"}">'
        f'{"mismatch" if srm.mismatch else "no mismatch"}</span>: p = {_p(srm.p_value)} '
        f"(observed {list(srm.observed)}, expected {[round(e, 1) for e in srm.expected]})"
    )  # fmt: skip
    notes = list(analysis.notes)
    if analysis.partial_windows:
        notes.append(
            f"{analysis.partial_windows} people were exposed less than "
            f"{experiment.attribution_window_days:g} days before {analysis.as_of:%Y-%m-%d}: "
            "their outcomes so far are counted (both variants alike)."
        )
    segments = analysis.segments
    segment_rows = [
        [esc(str(row.segment)), esc(str(row.variant)), f"{int(row.people):,}", _num(row.value)]
        for row in segments.itertuples()
    ]
    audit_rows = [
        [esc(str(e["at"])), esc(e["action"]), esc(e["actor"]), f"{e.get('coverage', '')}",
         esc(str(e.get("reason") or ""))]
        for e in (audit or [])
    ]  # fmt: skip
    status = state.status if state is not None else "running"
    coverage = state.coverage if state is not None else experiment.coverage
    sections = [
        f"<h1>Experiment {esc(experiment.key)}</h1>",
        f'<p class="meta">dataset {esc(analysis.dataset)} · as of {analysis.as_of:%Y-%m-%d %H:%M} '
        f"UTC · status {esc(status)} at coverage {coverage:g} · generated "
        f"{generated_at:%Y-%m-%d %H:%M} UTC by <code>bespoke experiment analyze</code></p>",
        f"<p><b>Hypothesis:</b> {esc(experiment.hypothesis)}</p>",
        f"<p><b>Primary metric:</b> {esc(experiment.primary_metric)}; guardrails: "
        f"{esc(', '.join(experiment.guardrail_metrics) or 'none')}; minimum detectable effect "
        f"{experiment.minimum_detectable_effect:.0%}; attribution window "
        f"{experiment.attribution_window_days:g} days.</p>",
        *[f'<p class="note">{esc(n)}</p>' for n in notes],
        "<h2>Exposed people</h2>",
        _table(
            ["variant", "people", "weight"],
            [
                [esc(v.key), f"{analysis.exposed.get(v.key, 0):,}", f"{v.weight:g}"]
                for v in experiment.variants
            ],
        ),
        f"<p><b>Sample ratio:</b> {srm_text}</p>",
        "<h2>Results</h2>",
        "<p>Each variant against the control. p-values are two-sided; Holm's adjustment "
        "covers every metric and variant. The chance to beat the control is Bayesian "
        "(Gaussian approximation, flat prior).</p>",
        _results(analysis),
        f"<h2>Sequential boundary — {esc(experiment.primary_metric)}</h2>",
        "<p>Looked at every day: the always-valid p-value (mSPRT) stays valid however often "
        "one peeks; the difference is significant once its confidence sequence leaves 0.</p>",
        _sequential_figure(analysis),
        f"<h2>By segment — {esc(experiment.primary_metric)}</h2>",
        "<p>Exploratory (not adjusted for multiple comparisons).</p>",
        _table(["segment", "variant", "people", "value"], segment_rows, numeric_from=2),
        "<h2>Rollout audit trail</h2>",
        _table(["at", "action", "by", "coverage", "reason"], audit_rows, numeric_from=3)
        if audit_rows
        else "<p>No change of state recorded.</p>",
    ]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Experiment {esc(experiment.key)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
        f"</head><body>{''.join(sections)}</body></html>"
    )
