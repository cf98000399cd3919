"""The identity graph: identifiers joined into persons by links with evidence, under guards.

A link says two identifiers belong to one person, and why: seen together on one event
(a login carries the cookie and the user id), an explicit ``identify``/``alias`` call, a
probabilistic match of customer records (with its probability). Links are applied
strongest first (see :mod:`bespoke.identity.identifiers`) and each merge is checked:

- a person holds at most one ``user_id``: a link that would join two is refused, so a
  family tablet used by two logged-in people never merges them;
- per-type limits (e-mails, phones, devices; cookies per 30 days) bound what one person
  can collect;
- a rotating identifier (device, cookie) seen with two different accounts is *shared*:
  it joins no one, and the refusals say so.

Every refused merge is kept with its reason; every accepted one is a link with evidence
that :meth:`IdentityGraph.split` can undo. The graph is rebuilt incrementally: it is
loaded from its tables, takes the next events, and is written back with a new version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from bespoke.features import schema
from bespoke.features.schema import IDENTITY_GRAPH_SCHEMA, IDENTITY_LINKS_SCHEMA, TEXT
from bespoke.identity.identifiers import (
    BLOCKED_VALUES,
    IDENTIFIER_COLUMNS,
    IDENTIFIERS,
    IdentifierType,
)

#: An identifier in the graph: its type and its (pseudonymised where PII) value.
Node = tuple[IdentifierType, str]

#: Evidence rules.
SAME_EVENT = "same_event"
SAME_RECORD = "same_record"
IDENTIFY = "identify"
ALIAS = "alias"
MATCH = "probabilistic_match"
RULES = (SAME_EVENT, SAME_RECORD, IDENTIFY, ALIAS, MATCH)

#: Decisions on a link.
MERGED, REFUSED, SPLIT = "merged", "refused", "split"

#: The columns of a graph snapshot and of its decisions (the lake adds the build's
#: ``run_id`` and ``built_at``).
GRAPH_COLUMNS = IDENTITY_GRAPH_SCHEMA.names[:-2]
LINK_COLUMNS = IDENTITY_LINKS_SCHEMA.names[:-2]


@dataclass(frozen=True)
class Link:
    """Evidence that two identifiers are one person."""

    left: Node
    right: Node
    rule: str
    at: datetime | None = None
    evidence: str | None = None
    probability: float | None = None


@dataclass(frozen=True)
class Decision:
    link: Link
    decision: str
    reason: str | None
    person_id: str | None


def person_id_of(node: Node) -> str:
    """The person id named after a person's canonical identifier (see
    :func:`bespoke.features.schema.person_id_of`)."""
    return schema.person_id_of(node[0].value, node[1])


def node_label(node: Node) -> str:
    return f"{node[0]}:{node[1]}"


def parse_node(label: str) -> Node:
    """``"user_id:42"`` → ``(IdentifierType.USER_ID, "42")``."""
    kind, sep, value = label.partition(":")
    if not sep or not value:
        raise ValueError(f"an identifier is written type:value (e.g. user_id:42), got {label!r}")
    try:
        return IdentifierType(kind), value
    except ValueError:
        known = ", ".join(t.value for t in IdentifierType)
        raise ValueError(
            f"unknown identifier type {kind!r} in {label!r} (one of {known})"
        ) from None


_UNIQUE = tuple(t for t, s in IDENTIFIERS.items() if s.max_per_person == 1)
_LIMITED = tuple(t for t, s in IDENTIFIERS.items() if (s.max_per_person or 0) > 1)
_ROTATING = frozenset(t for t, s in IDENTIFIERS.items() if not s.stable)


@dataclass
class _Person:
    """What a union-find root knows about its members."""

    canonical: Node
    canonical_key: tuple
    unique: dict[IdentifierType, str] = field(default_factory=dict)
    members: dict[IdentifierType, list[Node]] = field(default_factory=dict)


@dataclass
class IdentityGraph:
    """Identifiers and the links between them, for one dataset.

    Build with :meth:`observe_events` (or :meth:`add_links`), read with
    :meth:`person_of` / :meth:`table`, persist with :meth:`tables` and
    :meth:`from_tables`.
    """

    dataset: str
    #: Pseudonyms that stand for blocked values (see ``identifiers.blocked_pseudonyms``).
    blocked: frozenset[str] = frozenset()
    version: int = 0
    _parent: dict[Node, Node] = field(default_factory=dict, repr=False)
    _persons: dict[Node, _Person] = field(default_factory=dict, repr=False)
    _seen: dict[Node, list] = field(default_factory=dict, repr=False)  # [first, last]
    _via: dict[Node, tuple[Link, Node]] = field(default_factory=dict, repr=False)
    _shared: set[Node] = field(default_factory=set, repr=False)
    _isolated: set[Node] = field(default_factory=set, repr=False)
    #: Accepted links in the order they were applied, and each identifier's links.
    _accepted: dict[Link, int] = field(default_factory=dict, repr=False)
    _links_of: dict[Node, list[Link]] = field(default_factory=dict, repr=False)
    _sequence: int = field(default=0, repr=False)
    _decisions: list[tuple[Decision, int]] = field(default_factory=list, repr=False)
    _changed: dict[Node, int] = field(default_factory=dict, repr=False)

    # --- reading -------------------------------------------------------------------------

    def __contains__(self, node: Node) -> bool:
        return node in self._parent

    def __len__(self) -> int:
        return len(self._parent)

    def person_of(self, node: Node) -> str | None:
        """The person id of ``node``; None when the graph has never seen it."""
        if node not in self._parent:
            return None
        return person_id_of(self._persons[self._find(node)].canonical)

    def identifiers_of(self, node: Node) -> list[Node]:
        """Every identifier of ``node``'s person, strongest first."""
        if node not in self._parent:
            return []
        root = self._find(node)
        members = self._persons[root].members
        return [
            n for t in sorted(members, key=lambda t: IDENTIFIERS[t].priority) for n in members[t]
        ]

    @property
    def shared(self) -> frozenset[Node]:
        """Rotating identifiers seen with two different accounts (they join no one)."""
        return frozenset(self._shared)

    def decisions(self) -> list[Decision]:
        return [d for d, _ in self._decisions]

    def persons(self) -> int:
        return len(self._persons)

    # --- building ------------------------------------------------------------------------

    def _add_node(self, node: Node, first: object = None, last: object = None) -> None:
        if node in self._parent:
            seen = self._seen[node]
            if first is not None and (seen[0] is None or first < seen[0]):
                seen[0] = first
            if last is not None and (seen[1] is None or last > seen[1]):
                seen[1] = last
            return
        self._parent[node] = node
        self._seen[node] = [first, last]
        person = _Person(canonical=node, canonical_key=self._canonical_key(node))
        person.members[node[0]] = [node]
        if node[0] in _UNIQUE:
            person.unique[node[0]] = node[1]
        self._persons[node] = person
        self._changed[node] = self.version

    def _canonical_key(self, node: Node) -> tuple:
        first = self._seen.get(node, [None])[0]
        return (IDENTIFIERS[node[0]].priority, first is None, first or 0, node[1])

    def _find(self, node: Node) -> Node:
        parent = self._parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def _refusal(self, a: _Person, b: _Person, at: object) -> str | None:
        for kind in _UNIQUE:
            left, right = a.unique.get(kind), b.unique.get(kind)
            if left is not None and right is not None and left != right:
                return f"two different {kind}s ({left} and {right}): at most one per person"
        for kind in _LIMITED:
            spec = IDENTIFIERS[kind]
            members = a.members.get(kind, []) + b.members.get(kind, [])
            if spec.period is not None and at is not None:
                since = at - spec.period
                members = [m for m in members if (self._seen[m][1] or at) >= since]
            if len(members) > spec.max_per_person:
                period = f" seen within {spec.period.days} days" if spec.period else ""
                return (
                    f"would give one person {len(members)} {kind}s{period} "
                    f"(at most {spec.max_per_person})"
                )
        return None

    def add_identifiers(self, nodes: Iterable[Node], *, new_version: bool = True) -> None:
        """Make ``nodes`` known (each its own person until a link joins it)."""
        if new_version:
            self.version += 1
        for node in nodes:
            self._add_node(node)

    def add_links(self, links: Iterable[Link], *, new_version: bool = True) -> list[Decision]:
        """Apply ``links`` strongest first (then in time order) as a new version of the
        graph; returns the merges, refusals and the splits they caused (links within one
        person change nothing and are not listed)."""
        if new_version:
            self.version += 1
        ordered = sorted(
            links,
            key=lambda k: (
                max(IDENTIFIERS[k.left[0]].priority, IDENTIFIERS[k.right[0]].priority),
                min(IDENTIFIERS[k.left[0]].priority, IDENTIFIERS[k.right[0]].priority),
                k.at is None,
                k.at or 0,
            ),
        )
        start = len(self._decisions)
        for link in ordered:
            decision = self._apply(link)
            if decision is not None:
                self._decisions.append((decision, self.version))
        return [d for d, _ in self._decisions[start:]]

    def _apply(self, link: Link) -> Decision | None:
        for node in (link.left, link.right):
            if node not in self._parent:
                self._add_node(node, link.at, link.at)
        for node in (link.left, link.right):
            if node in self._isolated:
                return Decision(
                    link, REFUSED, f"{node_label(node)} was split off by an operator", None
                )
            if node in self._shared:
                return Decision(
                    link, REFUSED, f"{node_label(node)} is shared by several accounts", None
                )
        ra, rb = self._find(link.left), self._find(link.right)
        if ra == rb:
            return None
        a, b = self._persons[ra], self._persons[rb]
        reason = self._refusal(a, b, link.at)
        if reason is not None:
            # A rotating identifier caught between two accounts is shared: it leaves
            # no trace on either person beyond what it already had, and joins no one.
            weak = max((link.left, link.right), key=lambda n: IDENTIFIERS[n[0]].priority)
            decision = Decision(link, REFUSED, reason, None)
            if weak[0] in _ROTATING and reason.startswith("two different"):
                self._shared.add(weak)
                self._changed[weak] = self.version
                self._decisions.append((decision, self.version))
                self._detach(weak, _shared_reason(weak))
                return None  # recorded before the splits it caused
            return decision
        # Union by the stronger canonical identifier: it names the merged person.
        if b.canonical_key < a.canonical_key:
            ra, rb, a, b = rb, ra, b, a
        # The absorbed person's canonical identifier records the link that joined it (its
        # other identifiers keep the links that joined them to it).
        inside = link.left if self._find(link.left) == ra else link.right
        self._via.setdefault(b.canonical, (link, inside))
        self._parent[rb] = ra
        for kind, nodes in b.members.items():
            a.members.setdefault(kind, []).extend(nodes)
            for node in nodes:
                self._changed[node] = self.version
        a.unique.update(b.unique)
        del self._persons[rb]
        self._sequence += 1
        self._accepted[link] = self._sequence
        self._links_of.setdefault(link.left, []).append(link)
        self._links_of.setdefault(link.right, []).append(link)
        return Decision(link, MERGED, None, person_id_of(a.canonical))

    def observe_events(self, events: pd.DataFrame) -> list[Decision]:
        """Take a batch of events (lake columns; any of ``user_id``, ``crm_id``,
        ``email_hash``, ``phone_hash``, ``device_id``, ``anonymous_id``, plus
        ``event_id`` and ``timestamp``): every identifier is seen, and identifiers seen
        together on one event are linked (each to the event's strongest)."""
        self.version += 1
        frames = []
        times = _utc_times(events)
        identifiers = _identifier_values(events, self.blocked)
        for column, values in identifiers.items():
            keep = pd.notna(values)
            frames.append(
                pd.DataFrame(
                    {
                        "kind": IDENTIFIER_COLUMNS[column].value,
                        "value": values[keep],
                        "timestamp": times[keep] if times is not None else pd.NaT,
                    }
                )
            )
        frames = [f for f in frames if len(f)]
        if frames:
            seen = pd.concat(frames, ignore_index=True)
            spans = seen.groupby(["kind", "value"], sort=False)["timestamp"].agg(["min", "max"])
            for (kind, value), first, last in zip(
                spans.index, spans["min"].tolist(), spans["max"].tolist(), strict=True
            ):
                self._add_node((IdentifierType(kind), value), _moment(first), _moment(last))
        links = links_from_events(events, self.blocked, identifiers=identifiers, times=times)
        return self.add_links(links, new_version=False)

    def split(self, node: Node, reason: str = "split by an operator") -> list[Node]:
        """Undo the merges that joined ``node`` to its person: ``node`` becomes a person
        of its own (with no links), later links through it are refused, and the rest of
        the person is rebuilt from its remaining links. Returns the identifiers whose
        person changed."""
        if node not in self._parent:
            raise KeyError(f"{node_label(node)} is not in the identity graph of {self.dataset}")
        self.version += 1
        self._isolated.add(node)
        return self._detach(node, reason)

    def _detach(self, node: Node, reason: str) -> list[Node]:
        before = {n: self.person_of(n) for n in self.identifiers_of(node)}
        links = sorted(
            {k for n in before for k in self._links_of.get(n, ())}, key=self._accepted.__getitem__
        )
        for link in links:
            del self._accepted[link]
        for n in before:
            self._links_of.pop(n, None)
            self._parent[n] = n
            person = _Person(canonical=n, canonical_key=self._canonical_key(n))
            person.members[n[0]] = [n]
            if n[0] in _UNIQUE:
                person.unique[n[0]] = n[1]
            self._persons[n] = person
            self._via.pop(n, None)
        for link in links:
            if node in (link.left, link.right):
                other = link.right if link.left == node else link.left
                undone = Link(node, other, link.rule, link.at, link.evidence, link.probability)
                self._decisions.append((Decision(undone, SPLIT, reason, None), self.version))
            else:  # in their first order: the same guards give the same answer
                self._apply(link)
        changed = [n for n in before if self.person_of(n) != before[n]]
        for n in changed:
            self._changed[n] = self.version
        return changed

    # --- persistence ---------------------------------------------------------------------

    def table(self) -> pd.DataFrame:
        """One row per identifier (:data:`GRAPH_COLUMNS`)."""
        rows = []
        for node, (first, last) in self._seen.items():
            via = self._via.get(node)
            link, other = via if via else (None, None)
            rows.append(
                {
                    "dataset": self.dataset,
                    "identifier_type": node[0].value,
                    "identifier": node[1],
                    "person_id": self.person_of(node),
                    "rule": link.rule if link else None,
                    "probability": link.probability if link else None,
                    "evidence": link.evidence if link else None,
                    "linked_to": node_label(other) if other else None,
                    "shared": node in self._shared,
                    "first_seen": first,
                    "last_seen": last,
                    "version": self._changed.get(node, self.version),
                }
            )
        return pd.DataFrame(rows, columns=GRAPH_COLUMNS)

    def links_table(self) -> pd.DataFrame:
        """One row per merge, refusal and split (:data:`LINK_COLUMNS`)."""
        rows = [
            {
                "dataset": self.dataset,
                "left_type": d.link.left[0].value,
                "left_id": d.link.left[1],
                "right_type": d.link.right[0].value,
                "right_id": d.link.right[1],
                "rule": d.link.rule,
                "probability": d.link.probability,
                "evidence": d.link.evidence,
                "linked_at": d.link.at,
                "decision": d.decision,
                "reason": d.reason,
                "person_id": d.person_id,
                "version": version,
                "sequence": sequence,
            }
            for sequence, (d, version) in enumerate(self._decisions)
        ]
        return pd.DataFrame(rows, columns=LINK_COLUMNS)

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The graph (:meth:`table`) and every decision (:meth:`links_table`)."""
        return self.table(), self.links_table()

    @classmethod
    def from_tables(
        cls,
        dataset: str,
        graph: pd.DataFrame,
        links: pd.DataFrame,
        blocked: frozenset[str] = frozenset(),
    ) -> IdentityGraph:
        """The graph as :meth:`tables` wrote it: identifiers with their first/last seen,
        then the merges replayed in their order (splits included)."""
        out = cls(dataset=dataset, blocked=blocked)
        for row in graph.itertuples(index=False):
            out._add_node(
                (IdentifierType(row.identifier_type), row.identifier),
                _moment(row.first_seen),
                _moment(row.last_seen),
            )
            if row.shared:
                out._shared.add((IdentifierType(row.identifier_type), row.identifier))
        out.version = int(graph["version"].max()) if len(graph) else 0
        if len(links):
            out.version = max(out.version, int(links["version"].max()))
        records = []
        for row in links.itertuples(index=False):
            link = Link(
                (IdentifierType(row.left_type), row.left_id),
                (IdentifierType(row.right_type), row.right_id),
                row.rule,
                _moment(row.linked_at),
                None if pd.isna(row.evidence) else row.evidence,
                None if pd.isna(row.probability) else float(row.probability),
            )
            reason = None if pd.isna(row.reason) else row.reason
            person = None if pd.isna(row.person_id) else row.person_id
            records.append((Decision(link, row.decision, reason, person), int(row.version)))
        # A split removed its links and isolated its identifier (the split link's left).
        undone = set()
        for decision, _ in records:
            if decision.decision == SPLIT:
                out._isolated.add(decision.link.left)
                undone.add(frozenset((decision.link.left, decision.link.right)))
        for decision, _ in records:
            link = decision.link
            if decision.decision == MERGED and frozenset((link.left, link.right)) not in undone:
                out._apply(link)
        out._decisions = records
        out._changed = {
            (IdentifierType(t), v): int(ver)
            for t, v, ver in zip(
                graph["identifier_type"], graph["identifier"], graph["version"], strict=True
            )
        }
        return out


def _shared_reason(node: Node) -> str:
    return f"{node_label(node)} is shared by several accounts"


def _moment(value: object) -> pd.Timestamp | None:
    """A UTC timestamp, or None for a missing one."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    moment = pd.Timestamp(value)
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


def _identifier_values(events: pd.DataFrame, blocked: frozenset[str]) -> dict[str, np.ndarray]:
    """Each identifier column of ``events`` as an object array, placeholders (blocked
    values and their pseudonyms) made missing. A ``user_id`` equal to the event's own
    ``email_hash`` is ingestion keying an event without a user id on its e-mail: the
    e-mail, not an account."""
    out = {}
    for column in IDENTIFIER_COLUMNS:
        if column not in events.columns:
            continue
        text = events[column].astype(TEXT)
        bad = text.str.strip().str.lower().isin(BLOCKED_VALUES).fillna(False)
        if blocked:
            bad |= text.isin(blocked).fillna(False)
        if column == "user_id" and "email_hash" in events.columns:
            bad |= (text == events["email_hash"].astype(TEXT)).fillna(False)
        out[column] = text.mask(bad).to_numpy(dtype=object, na_value=None)
    return out


def _utc_times(events: pd.DataFrame) -> np.ndarray | None:
    """The events' times as naive UTC ``datetime64`` (vectorised; a tz-aware column would
    become an array of Python objects)."""
    if "timestamp" not in events:
        return None
    return pd.to_datetime(events["timestamp"], utc=True).dt.tz_localize(None).to_numpy()


def links_from_events(
    events: pd.DataFrame,
    blocked: frozenset[str] = frozenset(),
    *,
    identifiers: dict[str, np.ndarray] | None = None,
    times: np.ndarray | None = None,
) -> list[Link]:
    """The deterministic links of a batch of events: each identifier on an event is linked
    to the event's strongest identifier (a star: as connected as every pair, with fewer
    links). One link per distinct pair, with the first event that showed it.
    (``identifiers`` and ``times``: the batch's, when the caller has them already.)"""
    columns = [c for c in IDENTIFIER_COLUMNS if c in events.columns]
    if len(columns) < 2 or events.empty:
        return []
    values = identifiers if identifiers is not None else _identifier_values(events, blocked)
    columns = list(values)
    n = len(events)
    strongest = np.full(n, None, dtype=object)
    strongest_col = np.full(n, -1)
    for index, column in enumerate(columns):
        take = (strongest_col == -1) & pd.notna(values[column])
        strongest[take] = values[column][take]
        strongest_col[take] = index
    if times is None:
        times = _utc_times(events)
    ids = (
        events["event_id"].astype(str).to_numpy()
        if "event_id" in events
        else np.arange(n).astype(str)
    )
    pairs = []
    for index, column in enumerate(columns):
        other = values[column]
        take = pd.notna(other) & (strongest_col >= 0) & (strongest_col < index)
        if not take.any():
            continue
        frame = pd.DataFrame(
            {
                "left_col": strongest_col[take],
                "left": strongest[take],
                "right_col": index,
                "right": other[take],
                "at": times[take] if times is not None else pd.NaT,
                "evidence": ids[take],
            }
        )
        pairs.append(frame)
    if not pairs:
        return []
    frame = pd.concat(pairs, ignore_index=True).sort_values("at", kind="stable")
    frame = frame.drop_duplicates(["left_col", "left", "right_col", "right"], keep="first")
    kinds = [IDENTIFIER_COLUMNS[c] for c in columns]
    return [
        Link((kinds[lc], str(left)), (kinds[rc], str(right)), SAME_EVENT, _moment(at), evidence)
        for lc, left, rc, right, at, evidence in zip(
            frame["left_col"].tolist(),
            frame["left"].tolist(),
            frame["right_col"].tolist(),
            frame["right"].tolist(),
            frame["at"].tolist(),
            frame["evidence"].tolist(),
            strict=True,
        )
    ]
