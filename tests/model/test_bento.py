"""``make bento`` builds the service's Bento without reaching for a package index, and
``bentoml serve`` of the built Bento (its own copy of ``bespoke``) answers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import yaml

from bespoke.privacy.stores import ModelStore
from bespoke.serving.local import service_environment, start_local_service, stop_local_service

ROOT = Path(__file__).resolve().parents[2]


def test_make_bento_builds_offline_and_the_bento_serves(
    service_home: tuple[Path, str], tmp_path: Path
) -> None:
    home, key = service_home
    bentoml_home = tmp_path / "bentoml"  # the developer's Bento store is left alone
    env = {
        **service_environment(home),  # the registry whose @champions the Bento packages
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        # Whatever would reach for an index fails instead of downloading.
        "UV_OFFLINE": "1",
        "PIP_NO_INDEX": "1",
    }
    build = subprocess.run(
        ["make", "--no-print-directory", "-o", "setup", "bento"],  # -o: the venv is there
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = build.stdout + build.stderr
    assert build.returncode == 0, output[-3000:]
    assert "Locking PyPI package versions" not in output  # no `uv pip compile`
    assert "uv is not installed, installing it" not in output  # no `pip install uv`
    tag = re.search(r'Successfully built Bento\(tag="([^"]+)"\)', output)
    assert tag, output[-3000:]
    bento = bentoml_home / "bentos" / Path(*tag.group(1).split(":"))
    assert (bento / "src" / "bespoke" / "serving" / "service.py").is_file()
    assert list((bento / "src" / "bespoke" / "serving" / "rules").glob("*.json"))
    # The @champions are the Bento's models (packed with it by `bentoml export` and
    # `containerize`), tagged with their registry version.
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert sorted(m["tag"] for m in manifest["models"]) == [
        "bespoke-ranker-ml-100k:v1",
        "bespoke-recommender-ml-100k:v1",
    ]
    # The exported models embed people: the privacy registry reaches them in BentoML's
    # model store (a built Bento refers to them there; archives taken out with `bentoml
    # export` are outside the installation).
    held = [path.relative_to(bentoml_home).parts[:2] for kind, path
            in ModelStore.of(None, bentoml_home)._files() if kind == "user_index"]  # fmt: skip
    assert sorted(set(held)) == [("models", "bespoke-ranker-ml-100k"),
                                 ("models", "bespoke-recommender-ml-100k")]  # fmt: skip
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^bentoml==", requirements, re.M)
    assert not re.search(r"^(pytest|schemathesis|ruff)==", requirements, re.M)  # no dev tools

    # Served with the registry gone: the answers come from the models in the Bento.
    (home / "mlflow.db").unlink()
    url, process = start_local_service(home, target=tag.group(1),
                                       env={"BENTOML_HOME": str(bentoml_home)})  # fmt: skip
    try:
        answer = httpx.post(f"{url}/v1/recommend", json={"user_id": "1", "k": 3},
                            headers={"X-API-Key": key}, timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 3
        assert answer.json()["model_version"] == "recommender-v1+ranker-v1"
        assert httpx.post(f"{url}/v1/recommend", json={"user_id": "1"}).status_code == 401
    finally:
        stop_local_service(process)
