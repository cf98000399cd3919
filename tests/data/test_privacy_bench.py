"""``bench/privacy.py`` on ML-1M runs end to end and writes the figures the issue names,
with nothing left of the erased people and nobody else changed (its timings are reported
from the full run, not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "privacy.py"
KEYS = ("delete_one_s", "delete_batch_s", "traces_after", "collateral_changes",
        "bytes_rewritten", "verify_s")  # fmt: skip


def test_the_privacy_bench_erases_1001_people_and_nobody_else(
    datasets_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "privacy.json"
    subprocess.run(
        [sys.executable, str(BENCH), "--out", str(out), "--datasets-dir", str(datasets_dir)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    figures = json.loads(out.read_text())
    assert set(KEYS) <= set(figures)
    assert figures["statuses"] == {"one": "done", "batch": "done"}
    assert figures["traces_after"] == 0 and figures["collateral_changes"] == 0
    assert figures["removed"]["one"]["lake"] == 54  # user 1's 53 ratings and their user row
    assert figures["removed"]["batch"]["online"] == 14_000  # 1,000 people's live rows
    assert {"lake:events", "online:inbox", "model:recommender"} <= set(figures["checked"])
    assert figures["lake_healthy"] and figures["audit_whole"]
