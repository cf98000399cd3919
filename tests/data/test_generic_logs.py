"""A generic log loads as given, whatever separator it uses and whatever its name ends
with: MovieLens 100K's real ratings written as a tab-separated ``.dat`` (the layout of the
HetRec logs: ``userID<tab>itemID<tab>…``), a ``;``-separated ``.txt`` and a ``|``-separated
``.csv``, through ``bespoke ingest csv``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.cli import app as cli
from bespoke.features.lake import Lake
from bespoke.settings import get_settings

ROWS = 2_000
MAPPING = ["--map", "user_id=userID", "--map", "item_id=itemID", "--map", "value=rating",
           "--map", "timestamp=ts", "--timestamp-format", "unix_s", "--event-type", "rate",
           "--consent", "personalization"]  # fmt: skip


def _ratings(datasets_dir: Path, folder: Path, name: str, sep: str) -> Path:
    lines = (datasets_dir / "ml-100k" / "u.data").read_text().splitlines()[:ROWS]
    path = folder / name
    path.write_text(
        sep.join(["userID", "itemID", "rating", "ts"]) + "\n"
        + "".join(sep.join(line.split("\t")) + "\n" for line in lines)
    )  # fmt: skip
    return path


def _ingest(path: Path, dataset: str, *extra: str) -> str:
    result = CliRunner().invoke(cli, ["ingest", "csv", str(path), "--dataset", dataset,
                                      *MAPPING, *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("name", "sep"), [("user_artists.dat", "\t"), ("ratings.txt", ";"), ("ratings.csv", "|")]
)
def test_the_separator_is_sniffed_whatever_the_extension(
    datasets_dir: Path, tmp_path: Path, name: str, sep: str
) -> None:
    path = _ratings(datasets_dir, tmp_path, name, sep)
    _ingest(path, "generic")
    con = Lake(get_settings().lake_url).connect()
    stored = con.execute(
        "SELECT count(*), count(DISTINCT user_id), min(value), max(value) FROM events"
    ).fetchone()
    expected = (datasets_dir / "ml-100k" / "u.data").read_text().splitlines()[:ROWS]
    users = {line.split("\t")[0] for line in expected}
    assert stored == (ROWS, len(users), 1.0, 5.0)


def test_a_delimiter_given_wins_and_a_wrong_one_is_explained(
    datasets_dir: Path, tmp_path: Path
) -> None:
    path = _ratings(datasets_dir, tmp_path, "ratings.dat", "\t")
    wrong = CliRunner().invoke(cli, ["ingest", "csv", str(path), "--dataset", "generic",
                                     *MAPPING, "--delimiter", ","])  # fmt: skip
    assert wrong.exit_code == 1
    assert "missing column(s)" in wrong.output and "userID\\titemID" in wrong.output
    bad = CliRunner().invoke(cli, ["ingest", "csv", str(path), "--dataset", "generic",
                                   *MAPPING, "--delimiter", "::"])  # fmt: skip
    assert bad.exit_code == 1 and "one character" in bad.output
    assert "stored" in _ingest(path, "generic", "--delimiter", "tab")
    assert Lake(get_settings().lake_url).connect().execute(
        "SELECT count(*) FROM events"
    ).fetchone() == (ROWS,)
