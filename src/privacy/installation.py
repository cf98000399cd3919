"""What a privacy request acts on in this installation: its stores, deletions and audit log.

The command line (and, later, the service's privacy routes) only parse and print; naming
the person, refusing a request about nobody, recording exports and deletions in the audit
log happen here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bespoke.features.lake import Lake
from bespoke.privacy.audit import AuditLog, audit_log, person_pseudonym
from bespoke.privacy.consent import ConsentLedger
from bespoke.privacy.requests import DeletionRequest, Deletions
from bespoke.privacy.stores import FileStore, ModelStore, PersonStore, export_subject, registry
from bespoke.privacy.subjects import Subject, SubjectError, resolve, resolve_all
from bespoke.serving.db import Database
from bespoke.serving.redis_store import RedisStore
from bespoke.settings import Settings


def bentoml_home() -> Path:
    """BentoML's home (its model store and Bentos): ``BENTOML_HOME``, BentoML's default
    otherwise."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()


@dataclass
class Installation:
    settings: Settings
    online: Database
    lake: Lake
    stores: list[PersonStore]
    audit: AuditLog

    @classmethod
    def from_settings(cls, settings: Settings) -> Installation:
        from bespoke.identity.vault import Vault
        from bespoke.serving.store import open_store

        store = open_store(settings)
        online = store.database()  # the SQLite store's file, or the control plane beside Redis
        lake = Lake(settings.lake_url)
        stores = registry(
            online=online, lake=lake, vault=Vault.from_settings(settings),
            redis=store if isinstance(store, RedisStore) else None,
            models=ModelStore.of(settings.mlflow_artifacts_dir, bentoml_home()),
            files=[
                FileStore("logs", [settings.home / "service.log", settings.home / "logs"],
                          patterns=("*.log", "*.jsonl")),
                FileStore("reports", [settings.reports_dir]),
            ],
        )  # fmt: skip
        return cls(settings, online, lake, stores, audit_log(settings))

    def person(
        self,
        dataset: str | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        email: str | None = None,
    ) -> tuple[Subject, str]:
        """(every identifier of the person named, what they were named by ``type:value``);
        exactly one of the three must be given."""
        named = [(k, v) for k, v in (("user_id", user_id), ("anonymous_id", anonymous_id),
                                     ("email", email)) if v]  # fmt: skip
        if len(named) != 1:
            raise SubjectError("name the person by exactly one of: user id, anonymous id, e-mail")
        subject = resolve(
            dataset or self.settings.serving_dataset, lake=self.lake, online=self.online,
            key=self.settings.pseudonym_key(), user_id=user_id, anonymous_id=anonymous_id,
            email=email,
        )  # fmt: skip
        kind, value = named[0]
        return subject, f"{kind}:{value}"

    def traces(self, subject: Subject) -> dict[str, dict[str, int]]:
        return {store.name: store.verify(subject) for store in self.stores}

    def _held(self, subject: Subject) -> None:
        if not any(n for places in self.traces(subject).values() for n in places.values()):
            raise SubjectError("no data is held about this person")

    def export(self, subject: Subject, named: str, *, actor: str) -> dict[str, Any]:
        """Everything held about the person; the export is recorded in the audit log."""
        document = export_subject(subject, self.stores)
        if not any(document["stores"].values()):
            raise SubjectError("no data is held about this person")
        self.audit.append("export", actor=actor, person=person_pseudonym(
            self.settings.pseudonym_key(), subject.dataset, named))  # fmt: skip
        return document

    def consent(self) -> ConsentLedger:
        """The consent ledger; each change is also an audit entry."""
        return ConsentLedger(self.online, audit=self.audit, key=self.settings.pseudonym_key())

    def deletions(self, *, actor: str) -> Deletions:
        return Deletions(self.online, self.settings.pseudonym_key(), audit=self.audit,
                         actor=actor)  # fmt: skip

    def delete(self, subject: Subject, named: str, *, actor: str) -> DeletionRequest:
        """Erase the person everywhere (refused when nothing is held about them)."""
        self._held(subject)
        return self.deletions(actor=actor).delete(subject, self.stores, named=named)

    def delete_many(
        self, named: list[tuple[str, str]], dataset: str | None = None, *, actor: str
    ) -> DeletionRequest:
        """Erase everyone named (``(user_id|anonymous_id|email, value)``) in one request:
        each store rewritten once for all of them (refused when nothing is held about
        any of them)."""
        if not named:
            raise SubjectError("name at least one person")
        subject = resolve_all(dataset or self.settings.serving_dataset, named, lake=self.lake,
                              online=self.online, key=self.settings.pseudonym_key())  # fmt: skip
        self._held(subject)
        names = sorted({f"{kind}:{value}" for kind, value in named})
        return self.deletions(actor=actor).delete(subject, self.stores, named=names)
