"""Keyed pseudonyms for PII: raw e-mail, phone, IP and zip values never reach disk.

A pseudonym is ``HMAC-SHA256(key, normalised value)`` in hex. The same person gets the
same pseudonym in every source (so identities can be stitched later) and nobody without the
key can reverse or recompute it. Keys are versioned: after each rotation a pseudonym is the
previous version's pseudonym keyed again with the new key (``HMAC(k2, HMAC(k1, value))``),
so stored pseudonyms are re-keyed without the raw values and keep joining with new data
(``bespoke.privacy.rotation``); a leaked older key alone no longer matches anything stored.

IP addresses are truncated before they are pseudonymised (data minimisation): an IPv4
address to its /24 network, an IPv6 one to its /48, so the pseudonym says where a visit
came from to the level of a network, never which machine.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bespoke.features.schema import TEXT

#: The kinds of value stored only as keyed pseudonyms.
PSEUDONYM_KINDS = ("email", "phone", "ip", "zip")

_NOT_DIGITS = re.compile(r"[^\d+]")


def normalise(kind: str, value: str) -> str:
    """The canonical spelling of a PII value, so that trivially different spellings match."""
    value = value.strip()
    if kind == "email":
        return value.lower()
    if kind == "phone":
        return _NOT_DIGITS.sub("", value)
    if kind == "zip":
        return value.upper().replace(" ", "")
    if kind == "ip":
        return truncated_ip(value)
    return value


#: The prefix an IP address keeps: its network, not the machine.
IPV4_PREFIX, IPV6_PREFIX = 24, 48


def truncated_ip(value: str) -> str:
    """The network of an IP address (``203.0.113.77`` → ``203.0.113.0``, an IPv6 one to
    its /48); a value that is no IP address is kept as it was sent, lower-cased."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return value.strip().lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """The keyed pseudonym of one value. ``kind`` separates namespaces (an e-mail and a
    phone number that happen to be equal strings get different pseudonyms)."""
    message = f"{kind}:{normalise(kind, value)}".encode()
    digest = hmac.new(key, message, hashlib.sha256).hexdigest()
    for rotation in getattr(key, "rotations", ()):
        digest = rekeyed(rotation, digest)
    return digest


def rekeyed(rotation_key: bytes, previous: str) -> str:
    """A pseudonym of the previous key version under a rotation's key."""
    return hmac.new(rotation_key, previous.encode(), hashlib.sha256).hexdigest()


def pseudonymise_series(key: bytes, kind: str, values: pd.Series) -> pd.Series:
    """Pseudonyms for a column; missing values stay missing.

    Hashes each distinct value once: a log repeats the same people many times.
    """
    present = values.dropna()
    distinct = present.unique()
    mapping = {value: pseudonym(key, kind, str(value)) for value in distinct}
    out = pd.Series(pd.NA, index=values.index, dtype=TEXT)
    out.loc[present.index] = present.map(mapping).astype(TEXT)
    return out


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def looks_like_email(values: pd.Series, sample: int = 1000) -> bool:
    """Whether a column seems to hold e-mail addresses (checked on a sample)."""
    head = values.dropna().head(sample).astype(str)
    return bool(len(head)) and head.str.fullmatch(_EMAIL).mean() > 0.5


#: What a stored pseudonym, or a person id named after one, looks like in any text.
_PSEUDONYM_TOKEN = re.compile(r"p-[0-9a-f]{16}|[0-9a-f]{64}")


@dataclass(frozen=True)
class Rekeying:
    """Old pseudonyms → the new key version's, with the person ids named after them
    (``bespoke.privacy.rotation`` builds it from what the stores hold). Applying it twice
    changes nothing more: a new pseudonym is never an old one, so an interrupted
    rotation is finished by applying it again."""

    mapping: Mapping[str, str]

    def text(self, value: str) -> str:
        """``value`` with every old pseudonym in it replaced (a whole value, or inside
        ``type:value``, JSON, a log line…)."""
        if len(value) < 18:
            return value
        return _PSEUDONYM_TOKEN.sub(lambda m: self.mapping.get(m.group(), m.group()), value)

    def column(self, values: pa.ChunkedArray | pa.Array) -> tuple[pa.ChunkedArray, int]:
        """A string column re-keyed, and how many of its values changed (each distinct
        value is looked at once)."""
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        changed, out = 0, []
        for chunk in chunks:
            encoded = chunk.dictionary_encode()
            dictionary = encoded.dictionary.to_pylist()
            renamed = [v if v is None else self.text(v) for v in dictionary]
            moved = [i for i, (a, b) in enumerate(zip(dictionary, renamed, strict=True)) if a != b]
            if not moved:
                out.append(chunk)
                continue
            hit = pc.is_in(encoded.indices, value_set=pa.array(moved, encoded.indices.type))
            changed += pc.sum(hit).as_py() or 0
            out.append(
                pa.DictionaryArray.from_arrays(encoded.indices, pa.array(renamed, chunk.type)).cast(
                    chunk.type
                )
            )
        return pa.chunked_array(out, values.type), changed

    def table(self, table: pa.Table) -> tuple[pa.Table, int]:
        """Every string column of ``table`` re-keyed; how many values changed."""
        changed = 0
        for index, field in enumerate(table.schema):
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                column, moved = self.column(table.column(index))
                if moved:
                    table = table.set_column(index, field, column)
                    changed += moved
        return table, changed
