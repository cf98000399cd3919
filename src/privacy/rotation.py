"""HMAC key rotation: a new key version, every stored pseudonym re-keyed, joins kept.

Keys are versioned (``bespoke.settings.PseudonymKey``): version *n*'s pseudonym of a value
is version *n-1*'s keyed again with rotation *n*'s key. Rotating therefore needs no raw
value: it maps each stored pseudonym ``p`` to ``HMAC(k_new, p)`` — in every store of the
registry (``PersonStore.rekey``), the suppression list included — and new data, hashed
through the whole chain, joins the re-keyed rows. Person ids named after an e-mail or
phone pseudonym move with it, so the identity graph and segments keep naming the same
people. A leaked older key alone no longer matches anything stored.

Steps, each safe to repeat, so an interrupted rotation is finished by running it again:

1. the new key is kept as ``v<N>.pending.key`` and every pseudonym the source stores hold
   (lake, online store, vault) as ``v<N>.pending.json``, beside the keys;
2. every store is re-keyed through that fixed map (a new pseudonym is never an old one,
   so a store re-keyed twice is re-keyed once; the suppression list records the version
   each entry is under);
3. the key is renamed ``v<N>.key`` — from then on every process that reads the settings
   hashes with version N — the map is removed and the rotation is audited.

Ingestion and deletions wait meanwhile (the lake's writers' lock, the deletions' lock).
The service and scheduled jobs hold the key they started with: stop them before a
rotation and start them after. What stays under the old version: the audit log's entries
(the rotation's entry marks where the version changes) and finished deletion requests.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bespoke.features.privacy import Rekeying, rekeyed
from bespoke.features.schema import person_id_of
from bespoke.privacy.installation import Installation
from bespoke.privacy.stores import PseudonymSource
from bespoke.privacy.suppression import SuppressionList
from bespoke.settings import PseudonymKey, rotation_keys

_PENDING_KEY = ".pending.key"
_PENDING_MAP = ".pending.json"
#: Person ids are named after these identifier types' values (see ``person_id_of``); a
#: user id may be an e-mail pseudonym (a source without user ids).
_NAMED_AFTER = {"email": ("email", "user_id"), "phone": ("phone", "user_id")}


class RotationError(RuntimeError):
    """A rotation that cannot start now (a deletion unfinished), or a broken key folder."""


@dataclass(frozen=True)
class Rotation:
    """What a rotation did."""

    from_version: int
    to_version: int
    pseudonyms: int
    changed: dict[str, dict[str, int]]
    resumed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "from_version": self.from_version,
            "to_version": self.to_version,
            "pseudonyms": self.pseudonyms,
            "changed": self.changed,
            "resumed": self.resumed,
        }


def rekeying_for(pseudonyms: Mapping[str, str], rotation_key: bytes) -> Rekeying:
    """Each stored pseudonym (value → kind) and each person id named after one, old →
    new."""
    mapping = {}
    for value, kind in pseudonyms.items():
        new = rekeyed(rotation_key, value)
        mapping[value] = new
        for named in _NAMED_AFTER.get(kind, ()):
            mapping[person_id_of(named, value)] = person_id_of(named, new)
    return Rekeying(mapping)


def pending(folder: Path) -> int | None:
    """The version an interrupted rotation was moving to, or None."""
    found = sorted(int(p.name[1:].split(".")[0]) for p in folder.glob(f"v*{_PENDING_MAP}"))
    if len(found) > 1:
        raise RotationError(f"{folder} holds more than one unfinished rotation: {found}")
    return found[0] if found else None


def rotate(installation: Installation, *, actor: str) -> Rotation:
    """Rotate the HMAC key (or finish the rotation that was interrupted)."""
    settings = installation.settings
    folder = settings.key_rotations_dir
    deletions = installation.deletions(actor=actor)
    with deletions.exclusive():
        unfinished = [r.id for r in deletions.list() if r.status != "done"]
        if unfinished:
            raise RotationError(
                f"deletion requests {', '.join(unfinished)} are unfinished: finish them "
                "(bespoke privacy resume) before rotating the key"
            )
        with installation.lake.exclusive():
            return _rotate(installation, folder, actor)


def _rotate(installation: Installation, folder: Path, actor: str) -> Rotation:
    current = installation.settings.pseudonym_key()
    target = pending(folder)
    resumed = target is not None
    if target is None:
        target = current.version + 1
    active = folder / f"v{target}.key"
    key_file = active if active.exists() else folder / f"v{target}{_PENDING_KEY}"
    map_file = folder / f"v{target}{_PENDING_MAP}"
    earlier = rotation_keys(folder)[: target - 2]
    if len(earlier) != target - 2:
        raise RotationError(f"{folder}: the keys before version {target} are missing")
    old_key = PseudonymKey(bytes(current), earlier)
    if not resumed:
        _keep(key_file, secrets.token_hex(32))
        pseudonyms: dict[str, str] = {}
        for store in installation.stores:
            if isinstance(store, PseudonymSource):
                pseudonyms.update(store.pseudonyms())
        _keep(map_file, json.dumps({"from_version": target - 1, "pseudonyms": pseudonyms}))
    rotation_key = key_file.read_text().strip().encode()
    new_key = PseudonymKey(bytes(current), (*earlier, rotation_key))
    pseudonyms = json.loads(map_file.read_text())["pseudonyms"]
    rekeying = rekeying_for(pseudonyms, rotation_key)

    changed = {store.name: store.rekey(rekeying) for store in installation.stores}
    changed["suppressed"] = SuppressionList(installation.online, old_key).rekey(rekeying, new_key)
    if key_file != active:
        os.replace(key_file, active)
        _sync(folder)
    map_file.unlink()
    _sync(folder)
    installation.audit.append(
        "pseudonyms.rotated",
        actor=actor,
        detail={
            "from_version": target - 1,
            "to_version": target,
            "pseudonyms": len(pseudonyms),
            "resumed": resumed,
            "at": datetime.now(UTC).isoformat(),
        },
    )
    return Rotation(target - 1, target, len(pseudonyms), changed, resumed)


def _keep(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _sync(path.parent)


def _sync(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
