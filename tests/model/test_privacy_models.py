"""Registered models embed people (a recommender's user index, seen items and factors,
the ranker's stored histories, MLflow's input examples): every model file that names
people is handled by the registry's model store, and erasing a person re-exports each
file without them, leaving everyone else's answers as they were."""

from __future__ import annotations

import json
from pathlib import Path

from bespoke.privacy.stores import EXAMPLE_PLACEHOLDER, ModelStore
from bespoke.privacy.subjects import Subject
from bespoke.training.base import STATE_FILE
from bespoke.training.families import family

#: Files that mention the user_id column without holding anyone, and why.
DECLARED = {"MLmodel": "the model signature names the input column"}


def _load(state: Path):
    name = json.loads((state.parent / "model.json").read_text())["family"]
    return family(name).load(state.parent)


def test_model_files_naming_people_are_handled_and_a_person_is_re_exported_out(
    service_home,
) -> None:
    home, _ = service_home
    artifacts = home / "artifacts"
    store = ModelStore.of(artifacts, None)
    handled = {path for _, path in store._files()}
    mentions = {p for p in artifacts.rglob("*") if p.is_file() and b"user_id" in p.read_bytes()}
    unhandled = {p for p in mentions - handled if p.name not in DECLARED}
    assert not unhandled, f"model files naming people with no handler: {sorted(unhandled)}"
    kinds = {kind for kind, _ in store._files()}
    assert kinds == {"user_index", "histories", "input_examples"}

    states = sorted(p for p in handled if p.name == STATE_FILE)
    before = {p: _load(p) for p in states}
    answers = {p: m.recommend(["4", "5"], k=10)[0].tolist() for p, m in before.items()}
    person = Subject("ml-100k", user_ids=frozenset({"1"}))  # user 1 is every example's user
    # the same id in another dataset is another person: these models are not theirs
    assert store.verify(Subject("ml-1m", user_ids=frozenset({"1"}))) == dict.fromkeys(
        ("user_index", "histories", "input_examples"), 0)  # fmt: skip
    found = store.verify(person)
    assert found["user_index"] == len(states) and found["histories"] > 0
    assert found["input_examples"] == 4  # two models, two examples each

    removed = store.delete(person)
    assert removed == found
    assert store.verify(person) == {"user_index": 0, "histories": 0, "input_examples": 0}
    for path, old in before.items():
        new = _load(path)
        assert "1" not in set(new.user_ids_) and len(new.user_ids_) == len(old.user_ids_) - 1
        assert new.seen_.shape[0] == old.seen_.shape[0] - 1
        assert new.seen_.nnz == old.seen_.nnz - old.seen_[list(old.user_ids_).index("1")].nnz
        if hasattr(old, "user_factors_"):
            assert len(new.user_factors_) == len(old.user_factors_) - 1
        assert new.recommend(["4", "5"], k=10)[0].tolist() == answers[path]  # others as before
    examples = [p for p in handled if p.suffix == ".json"]
    assert all(EXAMPLE_PLACEHOLDER in p.read_text() for p in examples)
    assert store.delete(person) == dict.fromkeys(found, 0)  # idempotent


def test_a_manual_promotion_is_in_the_audit_log(service_home, monkeypatch) -> None:
    from typer.testing import CliRunner

    from bespoke.cli import app
    from bespoke.privacy.audit import audit_log
    from bespoke.serving.local import service_environment
    from bespoke.settings import get_settings

    home, _ = service_home
    for name, value in service_environment(home).items():
        if name.startswith("BESPOKE_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    result = CliRunner().invoke(
        app, ["models", "promote", "--dataset", "ml-100k", "--version", "1", "--kind", "ranker"]
    )
    assert result.exit_code == 0, result.output
    (entry,) = [e for e in audit_log().entries() if e["action"] == "model.promoted"]
    assert entry["detail"] == {"kind": "ranker", "dataset": "ml-100k", "version": "1", "by": "hand"}
    assert audit_log().verify().ok
