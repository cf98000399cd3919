"""The identity graph in the lake: incremental builds as lake runs, ``person_id`` on the
events view, splits kept — through the library and the ``bespoke identity`` commands.
(Customer records resolved into the graph: tests/data/test_identity.py, on FEBRL.)"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.features.privacy import pseudonym
from bespoke.features.schema import person_id_of
from bespoke.identity.build import build_graph, load_graph, person_report, split_identifier
from bespoke.identity.graph import parse_node
from bespoke.serving.store import SQLiteStore
from bespoke.settings import get_settings

MAPPING = sources.ColumnMapping(
    user_id="user", anonymous_id="cookie", device_id="device", item_id="item",
    timestamp="ts", event_type_constant="view", default_consent=["personalization"],
    email="mail",
)  # fmt: skip


def _ingest(tmp_path: Path, lake: Lake, key: bytes, name: str, rows: list[tuple]) -> None:
    path = tmp_path / f"{name}.csv"
    frame = pd.DataFrame(rows, columns=["user", "cookie", "device", "item", "ts", "mail"])
    frame.to_csv(path, index=False)
    collect.ingest(sources.interactions_file(path, MAPPING, "shop"), lake, key)


def _persons(lake: Lake) -> dict[str, str]:
    rows = lake.connect().execute("SELECT event_id, item_id, person_id FROM events").fetchall()
    return {item: person for _, item, person in rows}


def test_builds_are_incremental_and_events_carry_their_person(
    tmp_path: Path, lake: Lake, key: bytes
) -> None:
    _ingest(tmp_path, lake, key, "day1", [
        (None, "c1", None, "i1", "2024-01-01T10:00:00Z", None),
        ("u1", "c1", None, "i2", "2024-01-01T10:05:00Z", "Ann@Example.org"),
        (None, "c2", "d1", "i3", "2024-01-01T11:00:00Z", None),
    ])  # fmt: skip
    before = _persons(lake)
    # Without a graph, each event's person is the one its strongest identifier names alone.
    assert before["i1"] == person_id_of("anonymous_id", "c1")
    assert before["i2"] == person_id_of("user_id", "u1")
    first = build_graph(lake, "shop", key)
    assert first.events == 3 and first.decisions == {"merged": 3}
    after = _persons(lake)
    assert after["i1"] == after["i2"] == person_id_of("user_id", "u1")  # c1 logged in as u1
    assert after["i3"] == person_id_of("device_id", "d1")
    assert build_graph(lake, "shop", key).run_id is None  # nothing new: nothing written
    _ingest(tmp_path, lake, key, "day2", [
        ("u1", "c2", None, "i4", "2024-01-02T09:00:00Z", None),
        (None, "undefined", "d1", "i5", "2024-01-02T09:30:00Z", None),
    ])  # fmt: skip
    second = build_graph(lake, "shop", key)
    assert second.events == 2 and second.version == first.version + 1
    persons = _persons(lake)
    assert len({persons[i] for i in ("i1", "i2", "i3", "i4", "i5")}) == 1
    con = lake.connect()
    graph = con.execute(
        "SELECT identifier_type, identifier, rule, evidence FROM identity_graph"
    ).df()
    assert "undefined" not in set(graph["identifier"])
    email = pseudonym(key, "email", "ann@example.org")
    assert email in set(graph["identifier"]) and "Ann@Example.org" not in graph.to_string()
    assert con.execute("SELECT count(DISTINCT run_id) FROM _raw_identity_graph").fetchone() == (2,)
    # Every decision is kept, in order, across builds.
    assert con.execute("SELECT list(sequence ORDER BY sequence) FROM identity_links").fetchone()[
        0
    ] == list(range(int(con.execute("SELECT count(*) FROM identity_links").fetchone()[0])))


def test_a_split_is_kept_in_the_lake(tmp_path: Path, lake: Lake, key: bytes) -> None:
    _ingest(tmp_path, lake, key, "day1", [
        ("u1", "c1", None, "i1", "2024-01-01T10:00:00Z", None),
        (None, "c1", "d1", "i2", "2024-01-01T11:00:00Z", None),
    ])  # fmt: skip
    build_graph(lake, "shop", key)
    changed = split_identifier(
        lake, "shop", parse_node("device_id:d1"), key, "a shop's demo tablet"
    )
    assert changed == [parse_node("device_id:d1")]
    persons = _persons(lake)
    # i2's strongest identifier is the tablet, split off; i1 stays u1's.
    assert persons["i2"] == person_id_of("device_id", "d1") != persons["i1"]
    graph = load_graph(lake, "shop", key)
    assert graph.person_of(parse_node("device_id:d1")) == person_id_of("device_id", "d1")
    report = person_report(lake, "shop", "anonymous_id:c1", key)
    assert report["person_id"] == person_id_of("user_id", "u1")
    assert any(r["reason"] == "a shop's demo tablet" for r in report["refused"])
    with pytest.raises(KeyError, match="user_id:nobody is not in the identity graph of shop"):
        person_report(lake, "shop", "user_id:nobody", key)


def test_the_identity_commands(tmp_path: Path, key: bytes) -> None:
    settings = get_settings()
    lake = Lake(settings.lake_url)
    real_key = settings.pseudonym_key()
    _ingest(tmp_path, lake, real_key, "day1", [
        ("u1", "c1", None, "i1", "2024-01-01T10:00:00Z", None),
        ("u2", "c2", "tab", "i2", "2024-01-01T11:00:00Z", None),
        ("u3", "c3", "tab", "i3", "2024-01-01T12:00:00Z", None),
    ])  # fmt: skip
    runner = CliRunner()
    built = runner.invoke(app, ["identity", "build", "--dataset", "shop"])
    assert built.exit_code == 0, built.output
    assert "3 new events → 7 identifiers in" in built.output and "refused" in built.output
    shown = runner.invoke(app, ["identity", "show", "user_id:u3", "--dataset", "shop"])
    assert shown.exit_code == 0 and "two different user_ids" in shown.output
    split = runner.invoke(app, ["identity", "split", "anonymous_id:c1", "--dataset", "shop"])
    assert split.exit_code == 0 and "1 identifier(s) moved: anonymous_id:c1" in split.output
    bad = runner.invoke(app, ["identity", "split", "cookie:c1", "--dataset", "shop"])
    assert bad.exit_code == 1 and "unknown identifier type 'cookie'" in bad.output
    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"record_id": "id", "given_name": "first", "surname": "nope"}))
    crm = tmp_path / "crm.csv"
    crm.write_text("id,first,last\nA1,ann,lee\n")
    refused = runner.invoke(
        app, ["identity", "resolve", str(crm), "--mapping", str(mapping), "--dataset", "shop"]
    )
    assert refused.exit_code == 1 and "missing column(s) ['nope']" in refused.output
    assert load_graph(lake, "shop", real_key).person_of(parse_node("crm_id:A1")) is None


def test_seeding_the_online_store_takes_the_graphs_persons(
    tmp_path: Path, lake: Lake, key: bytes
) -> None:
    _ingest(tmp_path, lake, key, "day1", [
        (None, "c1", None, "i1", "2024-01-01T10:00:00Z", None),
        ("u1", "c1", None, "i2", "2024-01-01T10:05:00Z", "ann@example.org"),
        (None, "c2", "d1", "i3", "2024-01-02T11:00:00Z", None),
        ("u1", None, "d1", "i4", "2024-01-02T11:30:00Z", None),
    ])  # fmt: skip
    build_graph(lake, "shop", key)
    store = SQLiteStore(f"sqlite:///{tmp_path / 'online.db'}", key)
    store.seed_history(lake, "shop")
    profile = store.profile("u1", "shop")
    # The anonymous visits before the login are the user's, from the first request on.
    assert sorted(e.item_id for e in profile.recent) == ["i1", "i2", "i3", "i4"]
    listed = {(i["type"], i["id"]) for i in profile.identifiers}
    email = pseudonym(key, "email", "ann@example.org")
    assert listed == {("user_id", "u1"), ("anonymous_id", "c1"), ("anonymous_id", "c2"),
                      ("device_id", "d1"), ("email", email)}  # fmt: skip
    assert profile.person_id == person_id_of("user_id", "u1")
    assert profile.first_seen is not None and profile.first_seen.isoformat().startswith(
        "2024-01-01T10:00"
    )
    # A request by one of the cookies answers as the user.
    assert (
        store.snapshot("c2", "shop", anonymous=True).profile.items
        == store.snapshot("u1", "shop").profile.items
    )
