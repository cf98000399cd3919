"""Bad input gets a clear, specific error, a non-zero exit, and leaves the lake exactly as
it was (every file, byte for byte)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features import collect, sources
from bespoke.features.collect import IngestError
from bespoke.features.lake import Lake
from bespoke.settings import get_settings

GOOD = {
    "user_id": "u1",
    "item_id": "i1",
    "timestamp": "2024-01-01T10:00:00Z",
    "event_type": "purchase",
    "value": "3.5",
    "quantity": "1",
}
#: Columns named like the event fields, so messages can name them either way.
SAME_NAMES = {
    "user_id": "user_id",
    "item_id": "item_id",
    "timestamp": "timestamp",
    "event_type": "event_type",
    "value": "value",
    "quantity": "quantity",
    "default_consent": ["personalization"],
}
PNG_LIKE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
LATIN1 = (
    "user_id,item_id,timestamp,event_type,value,quantity\nu1,café,2024-01-01T10:00:00Z,view,,\n"
)


def _rows(*changes: dict) -> list[dict[str, str]]:
    """GOOD, then one row per change (data row n is on line n + 1)."""
    return [GOOD] + [GOOD | {"item_id": f"i{n + 2}"} | c for n, c in enumerate(changes)]


@pytest.fixture
def seeded_lake(lake: Lake, key: bytes, write_csv) -> Lake:
    """A lake holding one valid run, so 'unchanged' compares real files."""
    path = write_csv("seed.csv", _rows({"event_type": "view", "value": ""}))
    mapping = sources.ColumnMapping.model_validate(SAME_NAMES)
    result = collect.ingest(sources.interactions_file(path, mapping, "shop"), lake, key)
    assert result.counts("events")["stored"] == 2
    return lake


# --- through the library ------------------------------------------------------------------

#: (id, file content, mapping changes, fragments the message must hold)
LIBRARY_CASES = [
    (
        "missing-column",
        [{k: v for k, v in GOOD.items() if k != "item_id"}],
        {},
        ["bad.csv", "missing column", "'item_id'"],
    ),
    (
        "not-a-number",
        _rows({"value": "abc"}),
        {},
        ["bad.csv", "line 3", "'value'", "'abc'", "number"],
    ),
    (
        "not-a-whole-number",
        _rows({"quantity": "1.5"}),
        {},
        ["bad.csv", "line 3", "'quantity'", "'1.5'"],
    ),
    (
        "not-a-timestamp",
        _rows({}, {"timestamp": "yesterday"}),
        {},
        ["bad.csv", "line 4", "'timestamp'", "'yesterday'"],
    ),
    (
        "several-bad-values",
        _rows({"value": "x"}, {"value": "y"}),
        {},
        ["bad.csv", "line 3", "line 4", "'x'", "'y'"],
    ),
    ("binary-garbage", PNG_LIKE, {}, ["bad.csv"]),
    ("not-utf8", LATIN1.encode("latin-1"), {}, ["bad.csv", "utf-8"]),
    ("empty-file", b"", {}, ["bad.csv"]),
    (
        "ragged-row",
        "user_id,item_id,timestamp,event_type,value,quantity\nu1,i1,2024-01-01T00:00:00Z,view,,\n"
        "u2,i2,2024-01-01T00:00:00Z,view,,,,extra\n",
        {},
        ["bad.csv", "line 3"],
    ),
    (
        "unknown-consent-purpose",
        [GOOD | {"consent": "personalization"}, GOOD | {"item_id": "i2", "consent": "advertising"}],
        {"consent": "consent", "default_consent": []},
        ["line 3", "'consent'", "advertising"],
    ),
    (
        "email-user-ids",
        [GOOD | {"user_id": f"person{n}@example.com", "item_id": f"i{n}"} for n in range(5)],
        {},
        ["'user_id'", "e-mail", "'email'"],
    ),
]


@pytest.mark.parametrize(
    ("content", "changes", "fragments"),
    [case[1:] for case in LIBRARY_CASES],
    ids=[case[0] for case in LIBRARY_CASES],
)
def test_bad_files_raise_a_specific_error_and_leave_the_lake_unchanged(
    seeded_lake: Lake, key: bytes, write_csv, snapshot, content, changes, fragments
) -> None:
    before = snapshot(seeded_lake.url)
    path = write_csv("bad.csv", content)
    mapping = sources.ColumnMapping.model_validate(SAME_NAMES | changes)
    with pytest.raises(IngestError) as caught:
        collect.ingest(sources.interactions_file(path, mapping, "shop"), seeded_lake, key)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert snapshot(seeded_lake.url) == before


def test_a_type_error_names_the_column_as_spelled_in_the_file(
    seeded_lake: Lake, key: bytes, write_csv, snapshot, shop_mapping, shop_rows
) -> None:
    # The mapping reads the event field 'value' from the file's column 'amount': the user
    # must be told about 'amount', the column they can find in their file.
    before = snapshot(seeded_lake.url)
    rows = shop_rows(days=1, per_day=2)
    rows[1]["amount"] = "ten"  # data row 2: line 3
    path = write_csv("orders.csv", rows)
    with pytest.raises(IngestError) as caught:
        collect.ingest(sources.interactions_file(path, shop_mapping(), "shop"), seeded_lake, key)
    message = str(caught.value)
    assert "orders.csv" in message and "line 3" in message and "'ten'" in message
    assert "'amount'" in message, message
    assert snapshot(seeded_lake.url) == before


def test_a_non_utf8_error_points_at_the_bad_line_or_byte(write_csv, shop_mapping) -> None:
    # 'é' in latin-1 is byte 0xE9 on line 2, at offset len(header) + len("u1,caf").
    path = write_csv("latin.csv", LATIN1.encode("latin-1"))
    offset = LATIN1.encode("latin-1").index(b"\xe9")
    with pytest.raises(IngestError) as caught:
        sources.interactions_file(path, sources.ColumnMapping.model_validate(SAME_NAMES), "shop")
    message = str(caught.value)
    assert "line 2" in message or f"byte {offset}" in message, message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    mapping = sources.ColumnMapping.model_validate(SAME_NAMES)
    with pytest.raises(IngestError, match=r"nothere\.csv: no such file"):
        sources.interactions_file(tmp_path / "nothere.csv", mapping, "shop")


def test_an_invalid_dataset_name_is_refused_before_anything_is_written(
    seeded_lake: Lake, key: bytes, write_csv, snapshot
) -> None:
    before = snapshot(seeded_lake.url)
    path = write_csv("ok.csv", _rows({}))
    mapping = sources.ColumnMapping.model_validate(SAME_NAMES)
    for name in ("Shop", "../escape", "with space", ""):
        with pytest.raises(ValueError, match="invalid dataset name"):
            collect.ingest(sources.interactions_file(path, mapping, name), seeded_lake, key)
    assert snapshot(seeded_lake.url) == before


def test_an_invalid_dataset_name_leaves_an_empty_lake_uncreated(
    lake: Lake, key: bytes, write_csv
) -> None:
    path = write_csv("ok.csv", _rows({}))
    mapping = sources.ColumnMapping.model_validate(SAME_NAMES)
    with pytest.raises(ValueError, match="invalid dataset name"):
        collect.ingest(sources.interactions_file(path, mapping, "Bad Name"), lake, key)
    assert not Path(lake.url).exists()


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        (SAME_NAMES | {"colour": "c"}, ["colour", "Extra inputs"]),
        ({"item_id": "i", "event_type": "e", "default_consent": ["personalization"]}, ["identity"]),
        ({"user_id": "u", "default_consent": ["personalization"]}, ["event_type"]),
        (SAME_NAMES | {"event_type_constant": "view"}, ["not both"]),
        (SAME_NAMES | {"default_consent": []}, ["consent"]),
        (SAME_NAMES | {"default_consent": ["advertising"]}, ["default_consent.0"]),
        (SAME_NAMES | {"event_type_values": {"buy": "acquire"}}, ["event_type_values.buy"]),
        (SAME_NAMES | {"user_id": 7}, ["user_id"]),
    ],
    ids=[
        "unknown-field",
        "no-identity",
        "no-event-type",
        "two-event-types",
        "no-consent",
        "unknown-consent",
        "unknown-event-type-value",
        "column-not-text",
    ],
)
def test_invalid_mappings_raise_an_error_naming_the_field(
    tmp_path: Path, fields: dict, fragments: list[str]
) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(fields))
    for call in (
        lambda: sources.ColumnMapping.from_fields(fields),
        lambda: sources.ColumnMapping.load(path),
    ):
        with pytest.raises(IngestError) as caught:
            call()
        message = str(caught.value)
        assert "invalid mapping" in message
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
    with pytest.raises(IngestError, match=r"mapping\.json"):
        sources.ColumnMapping.load(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "no such mapping file"),
        ("{not json", "not valid JSON"),
        ('["user_id", "item_id"]', "JSON object"),
    ],
    ids=["missing", "not-json", "not-an-object"],
)
def test_unreadable_mapping_files_are_named(
    tmp_path: Path, text: str | None, fragment: str
) -> None:
    path = tmp_path / "m.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(IngestError) as caught:
        sources.ColumnMapping.load(path)
    assert str(path) in str(caught.value) and fragment in str(caught.value)


def test_mapping_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(SAME_NAMES))
    mapping = sources.ColumnMapping.load(path, overrides={"item_id": "sku"})
    assert mapping.item_id == "sku" and mapping.user_id == "user_id"


def test_builtin_adapters_name_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such folder"):
        sources.movielens_100k(tmp_path / "nope")
    with pytest.raises(IngestError, match="no such folder"):
        sources.movielens_1m(tmp_path / "nope")
    with pytest.raises(IngestError, match="no such file"):
        sources.cdnow(tmp_path / "nope")


def test_a_builtin_file_of_the_wrong_shape_names_the_missing_columns(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings_notime.csv").write_text("user,movie,stars\n1,2,3\n")
    with pytest.raises(IngestError) as caught:
        sources.movielens_1m(folder)
    assert "ratings_notime.csv" in str(caught.value)
    assert "item_idx" in str(caught.value) and "rating" in str(caught.value)


# --- through the command line ---------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_csv) -> Callable:
    """``cli(*args)`` runs ``bespoke`` in-process against a lake in tmp_path (seeded with
    one valid run); ``cli.lake`` is its folder."""
    lake_dir = tmp_path / "cli-lake"
    monkeypatch.setenv("BESPOKE_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("BESPOKE_LAKE_URL", str(lake_dir))
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str):
        get_settings.cache_clear()
        return runner.invoke(app, [str(a) for a in args])

    seed = write_csv("seed.csv", _rows({"event_type": "view", "value": ""}))
    result = run("ingest", "csv", seed, "--dataset", "shop", *_SAME_NAME_OPTIONS)
    assert result.exit_code == 0, result.output
    assert "2 stored" in result.output
    run.lake = lake_dir
    return run


_SAME_NAME_OPTIONS = [
    *("--map", "user_id=user_id", "--map", "item_id=item_id", "--map", "timestamp=timestamp"),
    *("--map", "event_type=event_type", "--map", "value=value", "--map", "quantity=quantity"),
    *("--consent", "personalization"),
]


def _cli_cases(tmp: Path) -> list[tuple[str, list[str], list[str]]]:
    """(id, arguments, fragments) for each bad invocation; writes the files they need."""
    inputs = tmp / "cli-inputs"
    inputs.mkdir()

    def csv(name: str, text: str | bytes) -> str:
        path = inputs / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    header = ",".join(GOOD) + "\n"
    good_line = ",".join(GOOD.values()) + "\n"
    ok = csv("ok.csv", header + good_line)
    typed = csv("typed.csv", header + good_line + "u2,i2,2024-01-01T00:00:00Z,purchase,lots,1\n")
    no_item = csv(
        "noitem.csv", "user_id,timestamp,event_type,value,quantity\nu1,2024-01-01,view,,\n"
    )
    consent = csv(
        "consent.csv",
        "user_id,item_id,timestamp,event_type,value,quantity,consent\n"
        "u1,i1,2024-01-01T00:00:00Z,view,,,personalization\n"
        "u1,i2,2024-01-01T00:00:00Z,view,,,telepathy\n",
    )
    emails = csv(
        "emails.csv",
        header + "".join(f"p{n}@example.com,i{n},2024-01-01T00:00:00Z,view,,\n" for n in range(3)),
    )
    cdnow = csv(
        "cd.txt", "customer_id date number_of_cds dollar_value\n 00001 19970101  1  11.77\n"
    )
    garbage = csv("garbage.csv", PNG_LIKE)
    latin = csv("latin.csv", LATIN1.encode("latin-1"))
    bad_json = csv("bad.json", "{user_id: ")
    extra_field = csv("extra.json", json.dumps(SAME_NAMES | {"colour": "red"}))
    no_consent = csv("noconsent.json", json.dumps(SAME_NAMES | {"default_consent": []}))
    options = _SAME_NAME_OPTIONS
    return [
        ("unknown-source", ["ingest", "nosuch"], ["No such command", "nosuch"]),
        ("missing-column", ["ingest", "csv", no_item, "--dataset", "shop", *options],
         ["noitem.csv", "missing column", "'item_id'"]),
        ("wrong-type", ["ingest", "csv", typed, "--dataset", "shop", *options],
         ["typed.csv", "line 3", "'value'", "'lots'"]),
        ("binary-garbage", ["ingest", "csv", garbage, "--dataset", "shop", *options],
         ["garbage.csv"]),
        ("not-utf8", ["ingest", "csv", latin, "--dataset", "shop", *options],
         ["latin.csv", "utf-8"]),
        ("no-such-file", ["ingest", "csv", inputs / "absent.csv", "--dataset", "shop", *options],
         ["absent.csv"]),
        ("invalid-dataset-name", ["ingest", "csv", ok, "--dataset", "Not OK", *options],
         ["invalid dataset name", "'Not OK'"]),
        ("dataset-name-traversal", ["ingest", "csv", ok, "--dataset", "../../etc", *options],
         ["invalid dataset name"]),
        ("builtin-invalid-dataset-name",
         ["ingest", "cdnow", "--path", cdnow, "--dataset", "CD NOW"],
         ["invalid dataset name", "'CD NOW'"]),
        ("builtin-missing-folder", ["ingest", "movielens-100k", "--path", inputs / "nope"],
         ["no such folder"]),
        ("unknown-dataset-in-report", ["data", "report", "--dataset", "nosuch"],
         ["no dataset 'nosuch'", "shop"]),
        ("mapping-file-missing",
         ["ingest", "csv", ok, "--dataset", "shop", "--mapping", inputs / "absent.json"],
         ["absent.json", "no such mapping file"]),
        ("mapping-file-not-json", ["ingest", "csv", ok, "--dataset", "shop", "--mapping", bad_json],
         ["bad.json", "not valid JSON"]),
        ("mapping-unknown-field",
         ["ingest", "csv", ok, "--dataset", "shop", "--mapping", extra_field],
         ["extra.json", "colour"]),
        ("mapping-without-consent",
         ["ingest", "csv", ok, "--dataset", "shop", "--mapping", no_consent],
         ["noconsent.json", "default_consent"]),
        ("map-option-syntax", ["ingest", "csv", ok, "--dataset", "shop", "--map", "user_id"],
         ["--map", "FIELD=COLUMN"]),
        ("map-without-identity",
         ["ingest", "csv", ok, "--dataset", "shop", "--map", "item_id=item_id", "--event-type",
          "view", "--consent", "personalization"],
         ["--map options", "identity"]),
        ("unknown-consent-option",
         ["ingest", "csv", ok, "--dataset", "shop", *options[:-2], "--consent", "telepathy"],
         ["default_consent", "personalization"]),
        ("unknown-consent-in-file",
         ["ingest", "csv", consent, "--dataset", "shop", *options, "--map", "consent=consent"],
         ["line 3", "'consent'", "telepathy"]),
        ("unknown-event-type-option",
         ["ingest", "csv", ok, "--dataset", "shop", "--map", "user_id=user_id",
          "--event-type", "teleport", "--consent", "personalization"],
         ["event_type_constant"]),
        ("email-user-ids", ["ingest", "csv", emails, "--dataset", "shop", *options],
         ["'user_id'", "e-mail"]),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "case_id",
    [
        "unknown-source",
        "missing-column",
        "wrong-type",
        "binary-garbage",
        "not-utf8",
        "no-such-file",
        "invalid-dataset-name",
        "dataset-name-traversal",
        "builtin-invalid-dataset-name",
        "builtin-missing-folder",
        "unknown-dataset-in-report",
        "mapping-file-missing",
        "mapping-file-not-json",
        "mapping-unknown-field",
        "mapping-without-consent",
        "map-option-syntax",
        "map-without-identity",
        "unknown-consent-option",
        "unknown-consent-in-file",
        "unknown-event-type-option",
        "email-user-ids",
    ],
)
def test_cli_bad_input_exits_non_zero_with_a_message_and_leaves_the_lake_unchanged(
    cli, tmp_path: Path, snapshot, case_id: str
) -> None:
    cases = {case[0]: case[1:] for case in _cli_cases(tmp_path)}
    args, fragments = cases[case_id]
    before = snapshot(cli.lake)
    assert before, "the seeded lake has files"
    result = cli(*args)
    assert result.exit_code != 0, result.output
    # a clean exit with a message, not a traceback
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"
    assert snapshot(cli.lake) == before


def test_cli_builtin_ingest_without_a_datasets_dir_says_how_to_set_it(
    cli, monkeypatch: pytest.MonkeyPatch, snapshot
) -> None:
    monkeypatch.delenv("BESPOKE_DATASETS_DIR", raising=False)
    before = snapshot(cli.lake)
    result = cli("ingest", "cdnow")
    assert result.exit_code == 1
    assert "BESPOKE_DATASETS_DIR" in result.output
    assert snapshot(cli.lake) == before


def test_cli_a_valid_run_after_a_failed_one_still_works(cli, write_csv) -> None:
    bad = write_csv("bad.csv", _rows({"value": "NaN-ish"}))
    assert cli("ingest", "csv", bad, "--dataset", "shop", *_SAME_NAME_OPTIONS).exit_code == 1
    good = write_csv("good.csv", _rows({"item_id": "new"}))
    result = cli("ingest", "csv", good, "--dataset", "shop", *_SAME_NAME_OPTIONS)
    assert result.exit_code == 0, result.output
    assert "2 read, 1 stored, 1 already present" in result.output
