"""The PII vault: encrypted at rest, one key per person, erasure by destroying the key."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from bespoke.identity.vault import SubjectErased, Vault


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault(tmp_path / "vault", tmp_path / "secrets" / "vault.key")


def test_records_come_back_and_are_never_stored_in_clear(vault: Vault, tmp_path: Path) -> None:
    written = vault.put(
        "p-1",
        [("crm-1", {"given_name": "michaela", "email": "m.neumann@example.org"})],
        identifiers=["crm_id:crm-1", "email:9f2c"],
    )
    assert written == 1
    assert vault.get("p-1") == {
        "crm-1": {"given_name": "michaela", "email": "m.neumann@example.org"}
    }
    for file in (tmp_path / "vault").iterdir():
        assert b"michaela" not in file.read_bytes() and b"neumann" not in file.read_bytes()
    assert vault.subjects_of(["email:9f2c", "email:other"]) == ["p-1"]
    assert (tmp_path / "secrets" / "vault.key").stat().st_mode & 0o077 == 0


def test_destroying_a_key_erases_every_copy_backups_included(vault: Vault, tmp_path: Path) -> None:
    vault.put("p-1", [("crm-1", {"surname": "painter"})], ["crm_id:crm-1"])
    vault.put("p-2", [("crm-2", {"surname": "neumann"})], ["crm_id:crm-2"])
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "vault", backup)
    assert vault.destroy("p-1") is True
    with pytest.raises(SubjectErased, match="subject p-1 was erased"):
        vault.get("p-1")
    assert vault.subjects_of(["crm_id:crm-1"]) == []
    assert vault.get("p-2") == {"crm-2": {"surname": "neumann"}}
    # The backup still holds p-1's ciphertext, but the live keys file no longer holds its
    # key: restoring the records alone cannot bring the person back.
    restored = Vault(tmp_path / "restored", tmp_path / "secrets" / "vault.key")
    (tmp_path / "restored").mkdir()
    shutil.copy(backup / "records.db", tmp_path / "restored" / "records.db")
    shutil.copy(tmp_path / "vault" / "keys.db", tmp_path / "restored" / "keys.db")
    with pytest.raises(SubjectErased):
        restored.get("p-1")
    assert restored.get("p-2") == {"crm-2": {"surname": "neumann"}}
    assert vault.destroy("p-1") is False  # idempotent


def test_a_ciphertext_moved_to_another_subject_does_not_decrypt(
    vault: Vault, tmp_path: Path
) -> None:
    vault.put("p-1", [("r", {"x": 1})])
    vault.put("p-2", [("r", {"x": 2})])
    with sqlite3.connect(tmp_path / "vault" / "records.db") as con:
        nonce, data = con.execute(
            "SELECT nonce, ciphertext FROM records WHERE subject='p-1'"
        ).fetchone()
        con.execute("UPDATE records SET nonce=?, ciphertext=? WHERE subject='p-2'", (nonce, data))
    with pytest.raises(InvalidTag):
        vault.get("p-2")
