"""Keyed pseudonyms for PII: raw e-mail, phone, IP and zip values never reach disk.

A pseudonym is ``HMAC-SHA256(key, normalised value)`` in hex. The same person gets the
same pseudonym in every source (so identities can be stitched later), nobody without the
key can reverse or recompute it, and rotating the key unlinks every stored pseudonym.

IP addresses are truncated before they are pseudonymised (data minimisation): an IPv4
address to its /24 network, an IPv6 one to its /48, so the pseudonym says where a visit
came from to the level of a network, never which machine.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re

import pandas as pd

from bespoke.features.schema import TEXT

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
    return hmac.new(key, message, hashlib.sha256).hexdigest()


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
