"""The identifiers a person can be known by, and the rules the graph keeps for each.

Stable identifiers (an account's user id, a CRM customer id, an e-mail or phone number)
name one person for years; rotating ones (a browser cookie, a device id) change when a
browser is cleared or a phone replaced, and may be shared (a family tablet). The graph
merges through rotating identifiers only when no stable identifier objects: the priority
order and the per-person limits below are the guards mature CDPs use (Segment's
"identity resolution rules", RudderStack's and mParticle's equivalents).

E-mail and phone numbers appear only as keyed pseudonyms (``email_hash``, ``phone_hash``;
see :mod:`bespoke.features.privacy`); raw values live only in the encrypted vault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from bespoke.features.privacy import pseudonym
from bespoke.features.schema import BLOCKED_IDENTIFIER_VALUES, ID_PATTERN, MAX_ID_LENGTH


class IdentityError(ValueError):
    """Bad identity input: the message names the file, line or field."""


class IdentifierType(StrEnum):
    USER_ID = "user_id"
    CRM_ID = "crm_id"
    EMAIL = "email"
    PHONE = "phone"
    DEVICE_ID = "device_id"
    ANONYMOUS_ID = "anonymous_id"


@dataclass(frozen=True)
class IdentifierSpec:
    """What the graph knows about one identifier type."""

    type: IdentifierType
    #: Names one person for a long time (an account) rather than rotating (a cookie).
    stable: bool
    #: Lower is stronger: a person's canonical identifier is its strongest one, and links
    #: through strong identifiers are applied before links through weak ones.
    priority: int
    #: At most this many of the type in one person (None: no limit).
    max_per_person: int | None
    #: When set, ``max_per_person`` counts only identifiers seen within this period
    #: before the merge (cookies rotate: a bounded number per period, not for life).
    period: timedelta | None
    #: The event column (lake) that carries it.
    event_column: str
    description: str


IDENTIFIERS: dict[IdentifierType, IdentifierSpec] = {
    spec.type: spec
    for spec in (
        IdentifierSpec(IdentifierType.USER_ID, True, 0, 1, None, "user_id",
                       "The account id of a logged-in person; at most one per person."),
        IdentifierSpec(IdentifierType.CRM_ID, True, 1, 20, None, "crm_id",
                       "A customer id in a CRM or commerce system; a person may have several "
                       "(the duplicates a CRM holds, which matching finds)."),
        IdentifierSpec(IdentifierType.EMAIL, True, 2, 5, None, "email_hash",
                       "A verified e-mail address, as its keyed pseudonym."),
        IdentifierSpec(IdentifierType.PHONE, True, 3, 3, None, "phone_hash",
                       "A verified phone number, as its keyed pseudonym."),
        IdentifierSpec(IdentifierType.DEVICE_ID, False, 4, 10, None, "device_id",
                       "A mobile or TV device id; rotates when a device is replaced, and "
                       "may be shared by a household."),
        IdentifierSpec(IdentifierType.ANONYMOUS_ID, False, 5, 50, timedelta(days=30),
                       "anonymous_id",
                       "A first-party browser cookie; rotates often (at most 50 seen in "
                       "any 30 days per person)."),
    )
}  # fmt: skip

#: Event columns that carry identifiers, strongest first.
IDENTIFIER_COLUMNS: dict[str, IdentifierType] = {
    spec.event_column: spec.type for spec in sorted(IDENTIFIERS.values(), key=lambda s: s.priority)
}

#: Values senders put in an identifier field when they have none. Never a person.
BLOCKED_VALUES = BLOCKED_IDENTIFIER_VALUES
#: The pseudonyms of blocked e-mail and phone values are blocked too (the graph sees only
#: pseudonyms); :func:`blocked_pseudonyms` computes them for a key.
_ID = re.compile(ID_PATTERN)


def is_blocked(value: str | None) -> bool:
    """Whether ``value`` is a placeholder rather than an identifier."""
    return value is None or value.strip().lower() in BLOCKED_VALUES


def blocked_pseudonyms(key: bytes) -> frozenset[str]:
    """The pseudonyms of the blocked values as e-mail and phone (``null@`` is no one)."""
    values = [*BLOCKED_VALUES, "test@test.com", "noreply@example.com", "a@a.com"]
    return frozenset(pseudonym(key, kind, value) for kind in ("email", "phone") for value in values)


def check_identifier(kind: str, value: object, where: str = "") -> str:
    """``value`` as an identifier of type ``kind``, or :class:`IdentityError` naming
    ``where`` and the field when it is of the wrong shape."""
    prefix = f"{where}: " if where else ""
    try:
        IdentifierType(kind)
    except ValueError:
        known = ", ".join(t.value for t in IdentifierType)
        raise IdentityError(f"{prefix}unknown identifier type {kind!r} (one of {known})") from None
    if not isinstance(value, str):
        raise IdentityError(f"{prefix}{kind} must be text, got {type(value).__name__}")
    if len(value) > MAX_ID_LENGTH or not _ID.fullmatch(value):
        raise IdentityError(
            f"{prefix}{kind} {value[:40]!r} is not an id: 1-{MAX_ID_LENGTH} characters, no "
            "control characters, no space at either end"
        )
    if is_blocked(value):
        raise IdentityError(f"{prefix}{kind} {value!r} is a placeholder, not an identifier")
    return value
