"""The drift report's ranker table: with a ``@champion`` ranker registered, its inputs and
calibrated probabilities are built for each window through the pipeline's own feature
path and tested like any other table (the home is the service tests' prepared one)."""

from __future__ import annotations

import json
from pathlib import Path

from bespoke.monitoring.drift import DriftConfig, run_drift
from bespoke.serving.local import local_settings


def test_the_ranker_table_is_built_from_the_champion(
    service_home: tuple[Path, str], tmp_path: Path
) -> None:
    home, _ = service_home
    config = DriftConfig.model_validate({"ranker": {"users": 40}, "html": {"max_columns": 12}})
    result = run_drift(
        local_settings(home),
        "ml-100k",
        "1997-09-20..1997-11-19",
        "1998-02-22..1998-04-22",
        config=config,
        out_dir=tmp_path / "report",
    )
    ranker = result.tables["ranker"]
    assert ranker.tested, ranker.note
    assert any(note.startswith("ranker @champion version") for note in result.notes)
    # 40 people per window, each with up to 100 candidates
    assert 40 * 50 <= ranker.rows_reference <= 40 * 100
    assert {"probability", "ease_score", "item_share", "user_activity"} <= set(ranker.columns)
    assert ranker.columns["user_gender"].kind == "categorical"
    # rows of one person are one cluster: the p-values count at most 40 people each
    assert ranker.columns["probability"].effective_rows[0] <= 40
    assert [p.name for p in ranker.html] == ["drift-ranker.html"]
    assert ranker.html[0].stat().st_size <= 5_000_000
    stored = json.loads(result.json.read_text())["tables"]["ranker"]
    assert set(stored["columns"]) == set(ranker.columns)
