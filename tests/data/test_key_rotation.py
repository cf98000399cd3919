"""HMAC key rotation on real behaviour (ML-100K ratings with e-mail, phone and IP columns
for 40 people, 8 of whom the source names only by e-mail): after `bespoke privacy
rotate-key` every stored pseudonym is under the new key version and none under the old,
new data about the same people joins every store's rows as before (lake, identity graph,
online store, vault), person ids named after an e-mail move with it, an erased person
stays suppressed, nothing else changes; an interrupted rotation is finished by running it
again, with nothing re-keyed twice."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from bespoke.features import collect, sources
from bespoke.features.privacy import pseudonym
from bespoke.features.schema import EventIn, person_id_of
from bespoke.features.sources import ColumnMapping
from bespoke.identity.build import build_graph, load_graph
from bespoke.identity.vault import Vault
from bespoke.privacy.audit import audit_log
from bespoke.privacy.installation import Installation
from bespoke.privacy.rotation import RotationError, rotate
from bespoke.privacy.stores import VaultStore, export_subject, scan_bytes
from bespoke.serving.store import open_store
from bespoke.settings import Settings, get_settings

DATASET = "ml-100k"
MAPPING = ColumnMapping(user_id="user", email="mail", phone="tel", ip="ip", item_id="item",
                        timestamp="ts", value="rating", event_type_constant="rate",
                        default_consent=["personalization"])  # fmt: skip
ERASED = 5  # a person erased before the rotation
EMAIL_ONLY = range(33, 41)  # people the source names only by e-mail (user id = its pseudonym)


def _email(user: int) -> str:
    return f"Person.{user}@Example.org"


def _source(
    datasets_dir: Path, folder: Path, users: range = range(1, 41), email_only: range = EMAIL_ONLY
) -> Path:
    ratings = pd.read_csv(datasets_dir / "ml-100k" / "u.data", sep="\t",
                          names=["user", "item", "rating", "ts"])  # fmt: skip
    rows = ratings[ratings["user"].isin(users)].copy()
    rows["mail"] = rows["user"].map(_email)
    rows["tel"] = rows["user"].map(lambda u: f"+44 20 7946 {u:04d}")
    rows["ip"] = rows["user"].map(lambda u: f"198.51.{u}.{u + 7}")
    rows["ts"] = pd.to_datetime(rows["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows["user"] = rows["user"].astype(str).where(~rows["user"].isin(email_only), "")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "crm_ratings.csv"
    rows.to_csv(path, index=False)
    return path


def _live(user: int, item: str, day: int) -> EventIn:
    return EventIn.model_validate({
        "user_id": str(user), "event_type": "click", "item_id": item, "email": _email(user),
        "consent": ["personalization"], "timestamp": datetime(1998, 5, day, tzinfo=UTC).isoformat(),
    })  # fmt: skip


def _installed(datasets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Lake, identity graph, online store, vault, an erasure: everything under one home."""
    monkeypatch.setenv("BESPOKE_SERVING_DATASET", DATASET)
    get_settings.cache_clear()
    settings = get_settings()
    key = settings.pseudonym_key()
    place = Installation.from_settings(settings)
    csv = _source(datasets_dir, tmp_path)
    collect.ingest(sources.interactions_file(csv, MAPPING, DATASET), place.lake, key)
    build_graph(place.lake, DATASET, key)
    store = open_store(settings)
    store.accept_events([_live(1, "50", 1), _live(3, "181", 2)], DATASET)
    person = load_graph(place.lake, DATASET, key).person_of(
        ("email", pseudonym(key, "email", _email(34)))  # type: ignore[arg-type]
    )
    Vault.from_settings(settings).put(
        person, [("crm-34", {"first_name": "Ada"})],
        identifiers=[f"email:{pseudonym(key, 'email', _email(34))}"],
    )  # fmt: skip
    subject, named = place.person(email=_email(ERASED))
    assert place.delete(subject, named, actor="test").status == "done"
    return settings


def _held(settings: Settings, user: int) -> dict[str, int]:
    """How many rows of the person each store's tables hold, found by their raw e-mail."""
    place = Installation.from_settings(settings)
    subject, _ = place.person(email=_email(user))
    document = export_subject(subject, place.stores)
    return {
        f"{store}:{table}": len(rows)
        for store, tables in document["stores"].items()
        for table, rows in tables.items()
    }


def _pseudonyms(key: bytes, users: range) -> list[str]:
    return [pseudonym(key, kind, value) for u in users
            for kind, value in (("email", _email(u)), ("phone", f"+44 20 7946 {u:04d}"))]  # fmt: skip


def _everything_else(settings: Settings) -> str:
    """A digest of every lake event's columns that hold no pseudonym."""
    con = Installation.from_settings(settings).lake.connect()
    rows = con.execute(
        "SELECT * EXCLUDE (user_id, email_hash, phone_hash, ip_hash, run_id, person_id) FROM events "
        "ORDER BY ALL"
    ).fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _persons(settings: Settings) -> list[int]:
    """How many identifiers each person of the identity graph has, sorted."""
    con = Installation.from_settings(settings).lake.connect()
    rows = con.execute(
        "SELECT person_id, count(*) FROM read_parquet(?) GROUP BY 1",
        [Installation.from_settings(settings).lake.files("identity_graph")],
    ).fetchall()
    return sorted(Counter(dict(rows)).values())


def _files(settings: Settings) -> list[Path]:
    home = settings.home
    assert home is not None
    return [p for p in home.rglob("*") if p.is_file() and "secrets" not in p.parts]


def test_a_rotation_rekeys_every_store_and_keeps_every_join(
    datasets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _installed(datasets_dir, tmp_path, monkeypatch)
    old_key = settings.pseudonym_key()
    people = [1, 3, 34, 40]
    before = {u: _held(settings, u) for u in people}
    assert before[34]["vault:records"] == 1 and before[1]["online:inbox"] == 1
    assert before[34]["lake:identity_graph"] >= 2  # its e-mail and phone, linked
    persons_before = _persons(settings)
    unchanged = _everything_else(settings)

    done = rotate(Installation.from_settings(settings), actor="test")

    new_key = get_settings().pseudonym_key()
    assert (done.from_version, done.to_version, new_key.version) == (1, 2, 2)
    assert done.pseudonyms >= 3 * 39  # e-mail, phone and IP of everyone not erased
    assert done.changed["lake"]["events"] > 0 and done.changed["online"]["inbox"] == 2
    # not one old pseudonym left on disk (lake files, online store and its log, vault)
    olds = [p for p in _pseudonyms(old_key, range(1, 41)) if p]
    assert not any(scan_bytes(_files(settings), olds).values())
    # the stored pseudonyms are what the new key gives the raw values: new data joins
    lake = Installation.from_settings(settings).lake
    stored = set(lake.connect().execute("SELECT DISTINCT email_hash FROM events").fetchnumpy()[
        "email_hash"])  # fmt: skip
    assert pseudonym(new_key, "email", _email(34)) in stored
    assert {u: _held(settings, u) for u in people} == before
    # user ids that were e-mail pseudonyms, and person ids named after them, moved with them
    assert pseudonym(new_key, "email", _email(40)) in set(
        lake.connect().execute("SELECT DISTINCT user_id FROM events").fetchnumpy()["user_id"]
    )
    assert _persons(settings) == persons_before
    graph = load_graph(lake, DATASET, new_key)
    forty = ("email", pseudonym(new_key, "email", _email(40)))
    assert graph.person_of(forty) == person_id_of("email", forty[1])  # type: ignore[arg-type]
    assert _everything_else(settings) == unchanged
    # a new event about a known person, hashed with the new key, joins their history
    open_store(get_settings()).accept_events([_live(3, "50", 9)], DATASET)
    after = _held(get_settings(), 3)
    assert after["online:inbox"] == before[3]["online:inbox"] + 1
    # the erased person's old data is still kept out when an old export naming them only by
    # e-mail comes back (their suppressed e-mail pseudonym was re-keyed too)
    only = range(ERASED, ERASED + 1)
    csv = _source(datasets_dir, tmp_path / "again", only, email_only=only)
    place = Installation.from_settings(get_settings())
    result = collect.ingest(sources.interactions_file(csv, MAPPING, DATASET), place.lake, new_key,
                            gate=open_store(get_settings()).gate())  # fmt: skip
    assert result.counts()["excluded_erased"] == len(pd.read_csv(csv)) == 175  # user 5's ratings
    audit = audit_log(get_settings())
    assert audit.entries()[-1]["action"] == "pseudonyms.rotated" and audit.verify().ok


def test_an_interrupted_rotation_is_finished_by_running_it_again(
    datasets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _installed(datasets_dir, tmp_path, monkeypatch)
    old_key = settings.pseudonym_key()
    before = _held(settings, 34)

    def crash(self: VaultStore, rekeying: object) -> dict[str, int]:
        raise KeyboardInterrupt  # the process dies once the online store and lake are done

    rekey = VaultStore.rekey
    monkeypatch.setattr(VaultStore, "rekey", crash)
    with pytest.raises(KeyboardInterrupt):
        rotate(Installation.from_settings(settings), actor="test")
    monkeypatch.setattr(VaultStore, "rekey", rekey)
    lake = Installation.from_settings(settings).lake
    assert pseudonym(old_key, "email", _email(34)) not in set(
        lake.connect().execute("SELECT DISTINCT email_hash FROM events").fetchnumpy()["email_hash"]
    )
    # the key version has not moved: half the stores are re-keyed, the rest wait
    assert get_settings().pseudonym_key().version == 1
    command = [str(Path(sys.executable).with_name("bespoke")), "privacy", "rotate-key"]
    refused = subprocess.run(command, capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    finished = subprocess.run([*command, "--yes"], capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr
    assert "finished the interrupted rotation" in finished.stdout
    get_settings.cache_clear()
    new_key = get_settings().pseudonym_key()
    assert new_key.version == 2
    # re-keyed once, not twice: what is stored is what the new key gives the raw values
    assert _held(get_settings(), 34) == before
    assert not any(scan_bytes(_files(settings), _pseudonyms(old_key, range(1, 41))).values())
    # the next rotation starts a new version; none is pending
    assert not list(settings.key_rotations_dir.glob("*.pending.*"))
    with pytest.raises(RotationError):
        (settings.key_rotations_dir / "v3.pending.json").write_text("{}")
        (settings.key_rotations_dir / "v4.pending.json").write_text("{}")
        rotate(Installation.from_settings(get_settings()), actor="test")
