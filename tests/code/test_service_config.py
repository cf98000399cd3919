"""The service's per-request overheads are off by default and each one setting away."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PRINT_CONFIG = (
    "import json; from bespoke.serving.service import Personalization as P; "
    "print(json.dumps(P.config))"
)


def _config(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BESPOKE_")}
    out = subprocess.run([sys.executable, "-c", PRINT_CONFIG], env={**clean, **env},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_drop_bentomls_access_log_and_tracing_but_keep_metrics() -> None:
    config = _config()
    assert config["workers"] == 1
    assert config["logging"]["access"]["enabled"] is False
    assert config["tracing"]["excluded_urls"] == [".*"]
    assert "metrics" not in config  # BentoML's default: on


@pytest.mark.parametrize(
    ("env", "check"),
    [
        ({"BESPOKE_TRACING": "true"}, lambda c: "tracing" not in c),
        ({"BESPOKE_BENTOML_ACCESS_LOG": "1"}, lambda c: c["logging"]["access"]["enabled"]),
        ({"BESPOKE_SERVING_WORKERS": "2"}, lambda c: c["workers"] == 2),
    ],
)
def test_each_is_one_setting_away(env: dict[str, str], check) -> None:
    assert check(_config(**env))
