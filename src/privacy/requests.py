"""Deletion requests: received → running → done | partial, idempotent, resumable.

A request resolves the person (:func:`bespoke.privacy.subjects.resolve`), then walks the
registry's stores in order; after each store it records what was removed and what its
verification found, so a request interrupted by a crash (even ``kill -9``) resumes where
it stopped when run again — each store's deletion is idempotent, so a store that was half
done is simply done again. It ends ``done`` when every store verifies zero traces,
``partial`` (with each store's reason) otherwise.

Only one deletion runs at a time (a lock beside the online store's file): another one is
refused with :class:`DeletionBusy` and changes nothing. The request's row keeps the keyed
pseudonyms of the person's identifiers; the identifiers themselves, which a resumed run
needs, wait in a file of their own beside the store (never in the store, whose bytes the
verification scans) until the request is done, then that file is removed. Before any
store is touched, the person's identifiers join the suppression list
(:mod:`bespoke.privacy.suppression`), so that no source re-imported later brings them back.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bespoke.features.privacy import pseudonym
from bespoke.privacy.audit import AuditLog, person_pseudonym
from bespoke.privacy.stores import PersonStore
from bespoke.privacy.subjects import Subject
from bespoke.privacy.suppression import SuppressionList
from bespoke.serving.db import Database

Status = Literal["received", "running", "done", "partial"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    dataset TEXT NOT NULL,
    target TEXT NOT NULL,         -- the keyed pseudonym of what the request named
    pseudonyms TEXT NOT NULL,     -- the identifiers' keyed pseudonyms
    status TEXT NOT NULL,
    results TEXT NOT NULL,        -- per store: removed, traces, error
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"""


class DeletionBusy(RuntimeError):
    """Another deletion is running (HTTP 409)."""


@dataclass(frozen=True)
class DeletionRequest:
    id: str
    dataset: str
    status: Status
    results: dict[str, dict[str, Any]]
    created_at: str
    updated_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "status": self.status,
            "results": self.results,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _pseudonyms(subject: Subject, key: bytes) -> list[str]:
    return sorted(pseudonym(key, "privacy", item) for item in subject.typed)


def _subject_of(text: str) -> Subject:
    data = json.loads(text)
    return Subject(
        data["dataset"], frozenset(data["user_ids"]), frozenset(data["anonymous_ids"]),
        frozenset(data["identifiers"]), frozenset(data["person_ids"]),
    )  # fmt: skip


class Deletions:
    """Deletion requests kept in the online store's file."""

    def __init__(
        self, database: Database, key: bytes, *, audit: AuditLog | None = None, actor: str = ""
    ) -> None:
        self.database = database
        self.key = key
        #: Where each request's start and outcome are recorded (pseudonyms only).
        self.audit = audit
        self.actor = actor

    def _ready(self) -> Database:
        self.database.ensure("privacy_requests", _SCHEMA)
        return self.database

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held while a deletion (or a key rotation) runs; a second one is refused."""
        path = self.database.path.with_name(self.database.path.name + ".privacy.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DeletionBusy(
                    "another deletion is running; try again when it has finished"
                ) from None
            yield

    def get(self, request_id: str) -> DeletionRequest | None:
        with self._ready().read() as con:
            row = con.execute(
                "SELECT id, dataset, status, results, created_at, updated_at "
                "FROM privacy_requests WHERE id = ?",
                (request_id,),
            ).fetchone()
        return None if row is None else _request(row)

    def list(self) -> list[DeletionRequest]:
        with self._ready().read() as con:
            rows = con.execute(
                "SELECT id, dataset, status, results, created_at, updated_at "
                "FROM privacy_requests ORDER BY created_at"
            ).fetchall()
        return [_request(r) for r in rows]

    def delete(
        self, subject: Subject, stores: Sequence[PersonStore], *, named: str | Sequence[str]
    ) -> DeletionRequest:
        """Erase ``subject`` from ``stores``: a new request, or the unfinished one for the
        same person (or batch) resumed. ``named`` is what the caller named the person by
        (``type:value``), or each person of a batch."""
        names = [named] if isinstance(named, str) else sorted(named)
        target = pseudonym(self.key, "privacy", f"{subject.dataset}:{chr(10).join(names)}")
        with self.exclusive():
            with self._ready().read() as con:
                row = con.execute(
                    "SELECT id FROM privacy_requests WHERE target = ? AND status IN "
                    "('received', 'running', 'partial') ORDER BY created_at LIMIT 1",
                    (target,),
                ).fetchone()
            if row is None:
                request_id = uuid.uuid4().hex
                now = _now()
                self._keep_subject(request_id, subject)
                if self.audit is not None:
                    self.audit.extend(
                        [("deletion.received", person_pseudonym(self.key, subject.dataset, name),
                          {"request": request_id, "people": len(names)}) for name in names],
                        actor=self.actor,
                    )  # fmt: skip
                with self._ready().write() as con:
                    con.execute(
                        "INSERT INTO privacy_requests VALUES (?, 'deletion', ?, ?, ?, "
                        "'received', '{}', ?, ?)",
                        (request_id, subject.dataset, target,
                         json.dumps(_pseudonyms(subject, self.key)), now, now),
                    )  # fmt: skip
            else:
                request_id = row[0]
            return self._run(request_id, stores)

    def resume(self, stores: Sequence[PersonStore]) -> list[DeletionRequest]:
        """Finish every request a crash interrupted, and retry the partial ones."""
        with self.exclusive():
            with self._ready().read() as con:
                ids = [r[0] for r in con.execute(
                    "SELECT id FROM privacy_requests WHERE status IN "
                    "('received', 'running', 'partial') ORDER BY created_at")]  # fmt: skip
            return [self._run(request_id, stores) for request_id in ids]

    def _pending_file(self, request_id: str) -> Path:
        return self.database.path.with_name(self.database.path.name + ".privacy") / request_id

    def _keep_subject(self, request_id: str, subject: Subject) -> None:
        """The identifiers a resumed run needs, durably, outside the store."""
        path = self._pending_file(request_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(subject.as_dict()))
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def _run(self, request_id: str, stores: Sequence[PersonStore]) -> DeletionRequest:
        with self._ready().read() as con:
            (results_text,) = con.execute(
                "SELECT results FROM privacy_requests WHERE id = ?", (request_id,)
            ).fetchone()
        subject = _subject_of(self._pending_file(request_id).read_text())
        results: dict[str, dict[str, Any]] = json.loads(results_text)
        self._update(request_id, "running", results)
        # First, so that no import running meanwhile can bring the person back.
        SuppressionList(self.database, self.key).add(subject.dataset, subject.typed)
        for store in stores:
            if results.get(store.name, {}).get("verified"):
                continue
            outcome: dict[str, Any] = {}
            try:
                outcome["removed"] = store.delete(subject)
                traces = store.verify(subject)
                outcome["traces"] = {k: v for k, v in traces.items() if v}
                outcome["verified"] = not outcome["traces"]
            except Exception as error:  # recorded, and the other stores still go on
                outcome = {"verified": False, "error": f"{type(error).__name__}: {error}"}
            results[store.name] = outcome
            self._update(request_id, "running", results)
        status: Status = "done" if all(r.get("verified") for r in results.values()) else "partial"
        self._update(request_id, status, results)
        if self.audit is not None:
            self.audit.append(f"deletion.{status}", actor=self.actor, detail={
                "request": request_id,
                "stores": {name: {"removed": sum((r.get("removed") or {}).values()),
                                  "verified": bool(r.get("verified")), "error": r.get("error")}
                           for name, r in results.items()},
            })  # fmt: skip
        if status == "done":  # a partial one keeps them, for `resume` to finish it
            self._pending_file(request_id).unlink(missing_ok=True)
        found = self.get(request_id)
        assert found is not None
        return found

    def _update(self, request_id: str, status: Status, results: dict[str, Any]) -> None:
        with self._ready().write() as con:
            con.execute(
                "UPDATE privacy_requests SET status = ?, results = ?, updated_at = ? WHERE id = ?",
                (status, json.dumps(results, sort_keys=True), _now(), request_id),
            )


def _request(row: tuple[Any, ...]) -> DeletionRequest:
    request_id, dataset, status, results, created, updated = row
    return DeletionRequest(request_id, dataset, status, json.loads(results), created, updated)
