"""Who a privacy request is about: every identifier of one person.

A request names a person by a user id, an anonymous id or an e-mail address. The person's
data sits under all of their identifiers — the anonymous ids they browsed with before
logging in, the pseudonyms of their e-mail and phone, the device and CRM ids the identity
graph linked — so :func:`resolve` follows the links until nothing new turns up: the online
store's aliases and identifiers, and the lake's identity graph (by person id). Raw e-mail
addresses are never stored: an e-mail is looked up by its keyed pseudonym.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bespoke.features.lake import Lake
from bespoke.features.privacy import pseudonym
from bespoke.serving.db import Database

#: How identifier types are written in the identity graph and the online store.
USER = "user_id"
ANONYMOUS = "anonymous_id"


class SubjectError(ValueError):
    """A request that names nobody, or names a person nobody holds data about."""


@dataclass(frozen=True)
class Subject:
    """One person's identifiers in one dataset."""

    dataset: str
    user_ids: frozenset[str] = frozenset()
    anonymous_ids: frozenset[str] = frozenset()
    #: Every other identifier as ``type:value`` (pseudonyms of e-mail and phone, device and
    #: CRM ids), as the identity graph writes them.
    others: frozenset[str] = frozenset()
    person_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def ids(self) -> frozenset[str]:
        """The bare identifier values (user and anonymous ids, and the others' values)."""
        return self.user_ids | self.anonymous_ids | {o.split(":", 1)[1] for o in self.others}

    @property
    def typed(self) -> frozenset[str]:
        """Every identifier as ``type:value``."""
        return (
            {f"{USER}:{u}" for u in self.user_ids}
            | {f"{ANONYMOUS}:{a}" for a in self.anonymous_ids}
            | self.others
        )

    def values_of(self, kind: str) -> frozenset[str]:
        """The values of one identifier type (``email_hash``, ``device_id``…)."""
        if kind == USER:
            return self.user_ids
        if kind == ANONYMOUS:
            return self.anonymous_ids
        return frozenset(o.split(":", 1)[1] for o in self.others if o.split(":", 1)[0] == kind)

    def as_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "user_ids": sorted(self.user_ids),
            "anonymous_ids": sorted(self.anonymous_ids),
            "identifiers": sorted(self.others),
            "person_ids": sorted(self.person_ids),
        }


def resolve(
    dataset: str,
    *,
    lake: Lake,
    online: Database | None,
    key: bytes,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    email: str | None = None,
) -> Subject:
    """Every identifier of the person named (see the module docstring)."""
    named = [(kind, value) for kind, value in
             ((USER, user_id), (ANONYMOUS, anonymous_id), ("email", email)) if value]  # fmt: skip
    if not named:
        raise SubjectError("name the person: user_id, anonymous_id or email")
    return resolve_all(dataset, named, lake=lake, online=online, key=key)


def resolve_all(
    dataset: str,
    named: list[tuple[str, str]],
    *,
    lake: Lake,
    online: Database | None,
    key: bytes,
) -> Subject:
    """Every identifier of everyone named, as ``(user_id|anonymous_id|email, value)``:
    one subject for a batch (the links are followed for all of them at once)."""
    typed: set[str] = set()
    for kind, value in named:
        if kind == "email":
            typed.add(f"email:{pseudonym(key, 'email', value)}")
        elif kind in (USER, ANONYMOUS):
            typed.add(f"{kind}:{value}")
        else:
            raise SubjectError(f"{kind!r}: name a person by user_id, anonymous_id or email")
    persons: set[str] = set()
    con = lake.connect()
    while True:
        before = (len(typed), len(persons))
        _from_graph(con, dataset, typed, persons)
        if online is not None:
            _from_online(online, dataset, typed)
        if (len(typed), len(persons)) == before:
            break
    kinds: dict[str, set[str]] = {USER: set(), ANONYMOUS: set()}
    others = set()
    for item in typed:
        kind, value = item.split(":", 1)
        if kind in kinds:
            kinds[kind].add(value)
        else:
            others.add(item)
    return Subject(
        dataset, frozenset(kinds[USER]), frozenset(kinds[ANONYMOUS]), frozenset(others),
        frozenset(persons),
    )  # fmt: skip


def _from_graph(con, dataset: str, typed: set[str], persons: set[str]) -> None:
    """Add the identity graph's person ids of ``typed``, and their other identifiers."""
    rows = con.execute(
        "SELECT DISTINCT person_id FROM identity_graph WHERE dataset = ? AND "
        "identifier_type || ':' || identifier IN (SELECT unnest(?::VARCHAR[]))",
        [dataset, sorted(typed)],
    ).fetchall()
    persons.update(r[0] for r in rows)
    if persons:
        rows = con.execute(
            "SELECT DISTINCT identifier_type || ':' || identifier FROM identity_graph "
            "WHERE dataset = ? AND person_id IN (SELECT unnest(?::VARCHAR[]))",
            [dataset, sorted(persons)],
        ).fetchall()
        typed.update(r[0] for r in rows)


def _from_online(online: Database, dataset: str, typed: set[str]) -> None:
    """Add the online store's links: aliases (anonymous id → user id) and the identifiers
    it keeps per user."""
    users = sorted(t.split(":", 1)[1] for t in typed if t.startswith(f"{USER}:"))
    anons = sorted(t.split(":", 1)[1] for t in typed if t.startswith(f"{ANONYMOUS}:"))
    with online.read() as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "aliases" in tables:
            for column, values, other, kind in (("anonymous_id", anons, "user_id", USER),
                                                ("user_id", users, "anonymous_id", ANONYMOUS)):  # fmt: skip
                if values:
                    marks = ",".join("?" * len(values))
                    rows = con.execute(
                        f"SELECT {other} FROM aliases WHERE dataset = ? AND {column} IN ({marks})",
                        [dataset, *values],
                    ).fetchall()
                    typed.update(f"{kind}:{r[0]}" for r in rows)
        users = sorted(t.split(":", 1)[1] for t in typed if t.startswith(f"{USER}:"))
        if "person_identifiers" in tables and users:
            marks = ",".join("?" * len(users))
            rows = con.execute(
                "SELECT identifier_type, identifier FROM person_identifiers "
                f"WHERE dataset = ? AND user_id IN ({marks})",
                [dataset, *users],
            ).fetchall()
            typed.update(f"{kind}:{value}" for kind, value in rows)
