"""Versioned HMAC keys: a pseudonym under version n is version n-1's keyed again, so a
rotation re-keys stored pseudonyms without raw values; the map applied to stored text and
Arrow columns changes old pseudonyms only, and applying it twice changes nothing more."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow as pa
import pytest

from bespoke.features.privacy import Rekeying, pseudonym, rekeyed
from bespoke.features.schema import EventIn, person_id_of
from bespoke.privacy.installation import Installation
from bespoke.privacy.rotation import rekeying_for
from bespoke.settings import PseudonymKey, get_settings

K1, K2, K3 = b"k" * 32, b"r" * 32, b"s" * 32


def test_a_rotated_key_chains_the_older_pseudonym() -> None:
    v1 = pseudonym(K1, "email", " Ada@Example.org")
    v2 = pseudonym(PseudonymKey(K1, (K2,)), "email", "ada@example.org")
    assert v2 == rekeyed(K2, v1) != v1
    v3 = pseudonym(PseudonymKey(K1, (K2, K3)), "email", "ada@example.org")
    assert v3 == rekeyed(K3, v2)
    assert PseudonymKey(K1, (K2, K3)).version == 3 and PseudonymKey(K1).version == 1
    # a worker process gets the whole chain
    assert pickle.loads(pickle.dumps(PseudonymKey(K1, (K2,)))).rotations == (K2,)


def test_settings_read_every_rotation_and_refuse_a_gap(isolated_settings: Path) -> None:
    settings = get_settings()
    base = settings.pseudonym_key()
    assert base.version == 1
    folder = settings.key_rotations_dir
    folder.mkdir(parents=True)
    (folder / "v2.key").write_text(K2.decode())
    (folder / "v2.pending.key").write_text("not yet")  # an unfinished rotation's: not used
    key = settings.pseudonym_key()
    assert key.version == 2 and bytes(key) == bytes(base) and key.rotations == (K2,)
    (folder / "v4.key").write_text(K3.decode())
    with pytest.raises(RuntimeError, match="skip a version"):
        settings.pseudonym_key()


def test_the_map_rekeys_old_pseudonyms_wherever_they_are_written_and_only_once() -> None:
    old_email, old_phone = pseudonym(K1, "email", "a@b.org"), pseudonym(K1, "phone", "+44 1")
    other = "f" * 64  # a 64-hex value that is no pseudonym of ours (a checksum)
    rekeying = rekeying_for({old_email: "email", old_phone: "phone"}, K2)
    new_email = rekeyed(K2, old_email)
    record = json.dumps({"email_hash": old_email, "sha": other, "user_id": "7"})
    rewritten = rekeying.text(record)
    assert json.loads(rewritten) == {"email_hash": new_email, "sha": other, "user_id": "7"}
    assert rekeying.text(rewritten) == rewritten  # again: nothing more
    assert rekeying.text(f"email:{old_email}") == f"email:{new_email}"
    # the person named after the e-mail moves with it
    assert rekeying.text(person_id_of("email", old_email)) == person_id_of("email", new_email)
    table = pa.table({
        "email_hash": pa.array([old_email, None, old_email, other], pa.string()),
        "user_id": pa.array(["1", old_email, "2", "3"], pa.string()),
        "value": pa.array([1.0, 2.0, 3.0, 4.0]),
    })  # fmt: skip
    rekeyed_table, changed = rekeying.table(table)
    assert changed == 3
    assert rekeyed_table.column("email_hash").to_pylist() == [new_email, None, new_email, other]
    assert rekeyed_table.column("user_id").to_pylist() == ["1", new_email, "2", "3"]
    assert rekeyed_table.schema == table.schema
    assert rekeying.table(rekeyed_table)[1] == 0
    assert Rekeying({}).table(table) == (table, 0)


def test_every_registered_store_can_be_rekeyed(isolated_settings: Path) -> None:
    """A store added to the registry without a way to re-key it would keep the old
    pseudonyms through a rotation: the registry's every store runs the map here."""
    place = Installation.from_settings(get_settings())
    names = {store.name for store in place.stores}
    assert {"online", "answer_caches", "lake", "vault", "models", "logs", "reports"} <= names
    nothing = Rekeying({})
    for store in place.stores:
        changed = store.rekey(nothing)
        assert all(n == 0 for n in changed.values()), (store.name, changed)


def test_the_redis_online_store_is_registered_and_rekeyed(
    isolated_settings: Path, empty_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside a Redis online store the registry holds it and the shared answers; a
    rotation re-keys the pseudonyms in its keys' names and values, once."""
    monkeypatch.setenv("BESPOKE_ONLINE_STORE_URL", empty_redis)
    get_settings.cache_clear()
    place = Installation.from_settings(get_settings())
    names = {store.name for store in place.stores}
    assert {"online", "online_redis", "shared_answers", "lake"} <= names
    online = next(s for s in place.stores if s.name == "online_redis")
    # a person known only by e-mail is keyed by its pseudonym (as ingestion keys them)
    event = EventIn.model_validate({"email": "ada@example.org", "anonymous_id": "c-1", "event_type": "view",
                                    "item_id": "1", "consent": ["personalization"]})  # fmt: skip
    online.store.accept_events([event], "shop")
    old = pseudonym(get_settings().pseudonym_key(), "email", "ada@example.org")
    assert online.pseudonyms() == {old: "email"}
    for store in place.stores:
        assert all(n == 0 for n in store.rekey(Rekeying({})).values()), store.name
    rekeying = rekeying_for(online.pseudonyms(), K2)
    assert sum(online.rekey(rekeying).values()) >= 3  # inbox, events, last
    new = rekeyed(K2, old)
    assert online.pseudonyms() == {new: "email"}
    assert online.store.profile(new, "shop").known and not online.store.profile(old, "shop").known
    assert sum(online.rekey(rekeying).values()) == 0
