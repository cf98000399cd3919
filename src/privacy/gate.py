"""What may be stored and used, and for which purpose: the consent ledger's latest state
and the suppression list, enforced in one place for every path person data takes.

- **Live ingestion** (:meth:`PersonGate.live_reasons`, called by the online store for each
  batch of ``/v1/events``): an event of a person whose latest decision withdraws
  ``personalization`` is not stored; neither is an erased person's event from before
  their erasure.
- **Batch ingestion** (:meth:`PersonGate.batch_reasons`, ``ingest(..., gate=)``): the same
  two rules over a whole source, vectorised.
- **Training sets and features** (:func:`consented_lake`): a lake whose ``events`` view
  leaves out everyone who withdrew the purpose the reader works for
  (``personalization`` for models, segments and features; ``analytics`` for reports).
  Withdrawal is not erasure: the rows stay (a person may grant again) but are not used.
- **Serving**: the service asks :meth:`PersonGate.personalizes` before it reads a
  profile; a person who withdrew gets the answer a stranger would (and no experiment).
- **Marketing** reads :meth:`ConsentLedger.allows` with ``marketing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from bespoke.features.lake import Lake
from bespoke.features.privacy import pseudonym
from bespoke.features.schema import PERSONALIZATION, ConsentPurpose, EventIn
from bespoke.privacy.consent import ConsentLedger
from bespoke.privacy.suppression import SuppressionList
from bespoke.serving.db import Database, sqlite_path
from bespoke.settings import Settings

#: Why an event was left out, as ingestion counts and per-item errors name it.
WITHDRAWN = "consent_withdrawn"
ERASED = "erased"

MESSAGES = {
    WITHDRAWN: "the person withdrew 'personalization' consent: the event is not stored",
    ERASED: "the person was erased: their events from before the erasure are not stored",
}


@dataclass
class PersonGate:
    """The ledger and the suppression list of one online store's ``database``."""

    database: Database
    key: bytes

    @property
    def ledger(self) -> ConsentLedger:
        return ConsentLedger(self.database)

    @property
    def suppression(self) -> SuppressionList:
        return SuppressionList(self.database, self.key)

    @classmethod
    def from_settings(cls, settings: Settings) -> PersonGate:
        control = Database(sqlite_path(settings.control_store_url or ""))
        return cls(control, settings.pseudonym_key())

    def live_reasons(self, dataset: str, events: Sequence[EventIn]) -> list[str | None]:
        """Per event: why it may not be stored (None: it may)."""
        reasons: list[str | None] = [None] * len(events)
        people = {(e.user_id, e.anonymous_id) for e in events}
        withdrawn = {
            (user, anon)
            for user, anon in people
            if self.ledger.allows(dataset, PERSONALIZATION, user_id=user, anonymous_id=anon)
            is False
        }
        erased = self.suppression.erased(
            dataset, [(_identifiers(e, self.key), e.timestamp) for e in events]
        )
        for index, event in enumerate(events):
            if (event.user_id, event.anonymous_id) in withdrawn:
                reasons[index] = WITHDRAWN
            elif erased[index]:
                reasons[index] = ERASED
        return reasons

    def batch_reasons(self, dataset: str, events: pd.DataFrame) -> pd.Series:
        """Per row of a source's ``events`` (identifier columns, ``timestamp``): why it may
        not be stored, or missing."""
        out = pd.Series(pd.NA, index=events.index, dtype="string")
        out[self.suppression.suppressed(dataset, events).to_numpy()] = ERASED
        gone = self.ledger.withdrawn(dataset, PERSONALIZATION)
        if gone:
            hit = pd.Series(False, index=events.index)
            if "user_id" in events:
                hit |= events["user_id"].isin(gone.user_ids).fillna(False).astype(bool)
            if "anonymous_id" in events:
                hit |= events["anonymous_id"].isin(gone.anonymous_ids).fillna(False).astype(bool)
            out[hit.to_numpy()] = WITHDRAWN
        return out

    def personalizes(self, dataset: str, user_id: str | None, anonymous_id: str | None) -> bool:
        """Whether the person may get a personal answer (no withdrawal of personalization)."""
        if user_id is None and anonymous_id is None:
            return True
        return (
            self.ledger.allows(dataset, PERSONALIZATION, user_id=user_id, anonymous_id=anonymous_id)
            is not False
        )

    def withheld(self, purpose: ConsentPurpose) -> pa.Table:
        """Who the lake's readers working for ``purpose`` must leave out, in every dataset
        (see :class:`~bespoke.features.lake.Lake`)."""
        rows = []
        for dataset in self.ledger.datasets():
            gone = self.ledger.withdrawn(dataset, purpose)
            rows += [(dataset, "user_id", u) for u in sorted(gone.user_ids)]
            rows += [(dataset, "anonymous_id", a) for a in sorted(gone.anonymous_ids)]
        return pa.Table.from_pylist(
            [{"dataset": d, "identifier_type": t, "identifier": i} for d, t, i in rows],
            schema=WITHHELD_SCHEMA,
        )


WITHHELD_SCHEMA = pa.schema(
    [("dataset", pa.string()), ("identifier_type", pa.string()), ("identifier", pa.string())]
)


def _identifiers(event: EventIn, key: bytes) -> dict[str, str | None]:
    """An event's identifiers by lake column (e-mail and phone as their pseudonyms)."""
    return {
        "user_id": event.user_id,
        "anonymous_id": event.anonymous_id,
        "device_id": event.device_id,
        "crm_id": event.crm_id,
        "email_hash": None if event.email is None else pseudonym(key, "email", event.email),
        "phone_hash": None if event.phone is None else pseudonym(key, "phone", event.phone),
    }


def consented_lake(settings: Settings, purpose: ConsentPurpose = PERSONALIZATION) -> Lake:
    """The lake as readers working for ``purpose`` may see it: its ``events`` leave out
    everyone whose latest decision withdraws the purpose (read from the ledger now)."""
    gate = PersonGate.from_settings(settings)
    if not gate.database.path.exists():
        return Lake(settings.lake_url)  # no online store yet: nobody has decided anything
    return Lake(settings.lake_url, withheld=gate.withheld(purpose))
