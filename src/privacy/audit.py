"""The audit log: append-only, hash-chained, pseudonyms only.

Who accessed and changed personal data, and when: consent changes, deletions and their
outcome, exports, API keys created and revoked, profile reads through the API, experiment
halts, manual promotions. Each entry is one JSON line::

    {"seq": 7, "at": "...", "action": "deletion.done", "actor": "alice",
     "person": "<keyed pseudonym or null>", "detail": {...},
     "prev": "<hash of entry 6>", "hash": "<sha256 of this entry without 'hash'>"}

Each entry's hash covers the previous entry's hash, so editing, inserting or removing an
entry breaks the chain from there on; the head (last sequence number and hash), written
beside the log after every append, also catches entries cut off the end.
:func:`verify` says where the chain breaks. A person is only ever named by a keyed
pseudonym (:func:`person_pseudonym`): the log itself holds no identifier to erase.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bespoke.features.privacy import pseudonym

GENESIS = "0" * 64


def person_pseudonym(key: bytes, dataset: str, identifier: str) -> str:
    """How the audit log names a person (``identifier`` as ``type:value``)."""
    return pseudonym(key, "audit", f"{dataset}:{identifier}")


def _digest(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    entries: int
    ok: bool
    problem: str | None = None
    at_seq: int | None = None


class AuditLog:
    """The log at ``path`` (its head at ``path`` + ``.head``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _head(self) -> tuple[int, str]:
        if not self.head_path.exists():
            return 0, GENESIS
        head = json.loads(self.head_path.read_text())
        return int(head["seq"]), str(head["hash"])

    def append(
        self,
        action: str,
        *,
        actor: str,
        person: str | None = None,
        detail: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Add one entry (durably: fsynced, then the head moves)."""
        return self.extend([(action, person, detail)], actor=actor, at=at)[0]

    def extend(
        self,
        items: Sequence[tuple[str, str | None, Mapping[str, Any] | None]],
        *,
        actor: str,
        at: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Add ``(action, person, detail)`` entries, chained in order, with one write and
        one fsync (a batch of a thousand people is one append)."""
        with self._locked():
            seq, previous = self._head()
            moment = (at or datetime.now(UTC)).isoformat()
            entries, lines = [], []
            for action, person, detail in items:
                seq += 1
                entry: dict[str, Any] = {
                    "seq": seq,
                    "at": moment,
                    "action": action,
                    "actor": actor,
                    "person": person,
                    "detail": dict(detail or {}),
                    "prev": previous,
                }
                entry["hash"] = previous = _digest(entry)
                entries.append(entry)
                lines.append(json.dumps(entry, sort_keys=True, default=str) + "\n")
            with self.path.open("a") as handle:
                handle.write("".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
            temporary = self.head_path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"seq": seq, "hash": previous}))
            os.replace(temporary, self.head_path)
            return entries

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def verify(self) -> Verdict:
        """Whether the chain is whole: every hash right, every ``prev`` the entry before's,
        sequence numbers without gaps, and the last entry the recorded head."""
        try:
            entries = self.entries()
        except json.JSONDecodeError as error:
            return Verdict(0, False, f"a line is not JSON: {error}")
        previous, expected_seq = GENESIS, 1
        for entry in entries:
            seq = entry.get("seq")
            if seq != expected_seq:
                return Verdict(len(entries), False,
                               f"entry {seq} where {expected_seq} was due: an entry was "
                               "removed or inserted", seq)  # fmt: skip
            if entry.get("prev") != previous:
                return Verdict(len(entries), False,
                               f"entry {seq} does not follow the entry before it", seq)  # fmt: skip
            if _digest(entry) != entry.get("hash"):
                return Verdict(len(entries), False, f"entry {seq} was edited", seq)
            previous, expected_seq = entry["hash"], expected_seq + 1
        head_seq, head_hash = self._head()
        if (head_seq, head_hash) != (expected_seq - 1, previous):
            return Verdict(len(entries), False,
                           f"the log ends at entry {expected_seq - 1} but its head records "
                           f"entry {head_seq}: entries were cut off the end or the head was "
                           "changed", expected_seq)  # fmt: skip
        return Verdict(len(entries), True)


def audit_log(settings: Any = None) -> AuditLog:
    """The installation's audit log (``<home>/audit/audit.jsonl``)."""
    from bespoke.settings import get_settings

    return AuditLog((settings or get_settings()).audit_file)
