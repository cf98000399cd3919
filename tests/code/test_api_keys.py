"""API keys: shown once, stored only as SHA-256 hashes, verified, revoked, listed; and the
``bespoke keys`` commands."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.serving import keys
from bespoke.serving.keys import ApiKeys
from bespoke.serving.store import SQLiteStore
from bespoke.settings import get_settings


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'online.db'}"


def _file_bytes(path: Path) -> bytes:
    parts = [path, path.with_name(path.name + "-wal")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def test_a_created_key_verifies_and_names_its_owner(url: str) -> None:
    key = keys.create_key(url, "web-shop")
    assert re.fullmatch(r"bsk_[A-Za-z0-9_-]{43}", key)
    info = keys.verify(url, key)
    assert info is not None and info.name == "web-shop" and info.active
    assert info.created_at.tzinfo is not None and info.revoked_at is None


def test_every_key_is_new(url: str) -> None:
    ring = ApiKeys(url)
    created = {ring.create(f"caller-{n}") for n in range(20)}
    assert len(created) == 20


@pytest.mark.parametrize(
    "wrong",
    [None, "", "bsk_", "not-a-key", "bsk_" + "A" * 43, "bsk_" + "A" * 44, "Bearer x"],
)
def test_a_missing_malformed_or_unknown_key_verifies_as_none(url: str, wrong: str | None) -> None:
    keys.create_key(url, "web-shop")
    assert keys.verify(url, wrong) is None


def test_a_key_that_differs_in_one_character_is_refused(url: str) -> None:
    key = keys.create_key(url, "web-shop")
    last = "A" if key[-1] != "A" else "B"
    assert keys.verify(url, key[:-1] + last) is None
    assert keys.verify(url, key) is not None


def test_only_the_hash_is_stored(url: str, tmp_path: Path) -> None:
    key = keys.create_key(url, "web-shop")
    path = tmp_path / "online.db"
    blob = _file_bytes(path)
    assert key.encode() not in blob
    assert key.removeprefix("bsk_").encode() not in blob
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT * FROM api_keys").fetchall()
    (row,) = rows
    assert hashlib.sha256(key.encode()).hexdigest() in row
    assert all(key not in str(value) for value in row)


def test_revoked_keys_no_longer_verify_and_stay_listed(url: str) -> None:
    web = keys.create_key(url, "web-shop")
    app_key = keys.create_key(url, "mobile-app")
    info = keys.revoke(url, "web-shop")
    assert info.revoked_at is not None and not info.active
    assert keys.verify(url, web) is None
    assert keys.verify(url, app_key).name == "mobile-app"
    again = keys.revoke(url, "web-shop")
    assert again.revoked_at == info.revoked_at  # revoking twice changes nothing
    listed = {k.name: k for k in keys.list_keys(url)}
    assert set(listed) == {"web-shop", "mobile-app"}
    assert listed["web-shop"].revoked_at is not None and listed["mobile-app"].active


def test_names_are_unique_valid_and_revoking_an_unknown_one_fails(url: str) -> None:
    keys.create_key(url, "web-shop")
    with pytest.raises(ValueError, match="exists"):
        keys.create_key(url, "web-shop")
    keys.revoke(url, "web-shop")
    with pytest.raises(ValueError, match="revoked"):
        keys.create_key(url, "web-shop")
    for bad in ("", "has space", "x" * 65, "-leading"):
        with pytest.raises(ValueError, match="invalid key name"):
            keys.create_key(url, bad)
    with pytest.raises(KeyError, match="nobody"):
        keys.revoke(url, "nobody")
    assert [k.name for k in keys.list_keys(url)] == ["web-shop"]


def test_keys_share_the_online_store_file(tmp_path: Path, key: bytes) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'online.db'}", key)
    ring = ApiKeys(store.db)
    secret = ring.create("service")
    assert keys.verify(tmp_path / "online.db", secret).name == "service"  # a plain path too
    assert store.pending() == 0  # the store's tables live beside the keys'


# --- the command line -----------------------------------------------------------------------


def test_the_keys_commands_create_list_and_revoke() -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "web-shop"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert re.fullmatch(r"bsk_[A-Za-z0-9_-]{43}", key)
    assert "shown once" in created.stderr
    store_url = get_settings().online_store_url
    assert keys.verify(store_url, key).name == "web-shop"

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0 and "web-shop" in listed.output
    assert key not in listed.output

    revoked = runner.invoke(app, ["keys", "revoke", "--name", "web-shop"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert keys.verify(store_url, key) is None


def test_the_keys_commands_fail_clearly() -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["keys", "list"])
    assert empty.exit_code == 0 and "No API keys yet" in empty.output
    unknown = runner.invoke(app, ["keys", "revoke", "--name", "nobody"])
    assert unknown.exit_code == 1 and "no API key named 'nobody'" in unknown.output
    assert runner.invoke(app, ["keys", "create", "--name", "twice"]).exit_code == 0
    again = runner.invoke(app, ["keys", "create", "--name", "twice"])
    assert again.exit_code == 1 and "exists" in again.output
    assert again.stdout == ""  # no key printed
