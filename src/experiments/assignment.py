"""Deterministic, sticky assignment — the same as GrowthBook's SDKs compute it, so that a
GrowthBook client in a browser or an app and this service put a person in the same
variant.

- :func:`fnv1a32`: 32-bit FNV-1a over the text's UTF-16 code units (JavaScript's
  ``charCodeAt``, which every GrowthBook SDK follows; a character outside the Basic
  Multilingual Plane counts as its two surrogates).
- :func:`hash`: a number in [0, 1) for ``(seed, value)``: version 1 is
  ``fnv1a32(value + seed) % 1000 / 1000``, version 2 hashes the decimal digits of
  ``fnv1a32(seed + value)`` again and takes ``% 10000 / 10000``; any other version is
  None (not assigned).
- :func:`bucket_ranges`: one ``[start, end)`` per variation, each ``coverage`` × its weight
  wide from where the previous weight ended, so that raising the coverage only widens
  ranges and nobody already assigned moves. Weights of the wrong length, negative, or not
  summing to about 1 (0.99..1.01) fall back to equal weights, as the SDKs do; validating
  experiment definitions refuses them before they get here.
- :func:`choose_variation`: the range ``n`` falls in, −1 outside every range.
- :func:`in_namespace`: whether the person's namespace hash (version 1, seed ``"__" +
  namespace id``) falls in ``[start, end)``: mutually exclusive experiments take disjoint
  ranges of one namespace.

:func:`hash_many` and :func:`choose_many` do the same for many people at once (NumPy).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence

import numpy as np

_OFFSET = 0x811C9DC5
_PRIME = 0x01000193
_MASK = 0xFFFFFFFF
#: How far from 1 the weights may sum before equal weights are used instead.
WEIGHT_TOLERANCE = 0.01


def _units(text: str) -> Sequence[int]:
    """The text's UTF-16 code units (its characters, when it is all ASCII)."""
    if text.isascii():
        return text.encode("ascii")
    data = text.encode("utf-16-le", "surrogatepass")
    return memoryview(data).cast("H")


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a of ``text``'s UTF-16 code units."""
    value = _OFFSET
    for unit in _units(text):
        value = ((value ^ unit) * _PRIME) & _MASK
    return value


def hash(seed: str, value: str, version: int) -> float | None:
    """GrowthBook's hash of ``value`` for an experiment seeded ``seed``: in [0, 1), or None
    for an unknown ``version``."""
    if version == 2:
        return fnv1a32(builtins.str(fnv1a32(seed + value))) % 10000 / 10000
    if version == 1:
        return fnv1a32(value + seed) % 1000 / 1000
    return None


def _fnv_units(points: np.ndarray, first: np.ndarray) -> np.ndarray:
    """FNV-1a over each row of ``points`` from column ``first[row]`` on (uint32 arithmetic
    wraps modulo 2^32, as the hash does)."""
    values = np.full(len(points), _OFFSET, dtype=np.uint32)
    prime = np.uint32(_PRIME)
    for column in range(points.shape[1]):
        mixed = (values ^ points[:, column]) * prime
        values = np.where(first <= column, mixed, values)
    return values


def _fnv_many(texts: Sequence[str]) -> np.ndarray:
    """:func:`fnv1a32` of every text, column by column over their code units."""
    if len(texts) == 0:
        return np.zeros(0, dtype=np.uint32)
    # Right-aligned in NumPy's fixed-width UCS-4 (one uint32 per code point): the rows
    # start at different columns and all end at the last.
    fixed = np.asarray(texts, dtype=str)
    width = fixed.dtype.itemsize // 4
    lengths = np.char.str_len(fixed)
    aligned = np.char.rjust(fixed, width, "\x01").view(np.uint32).reshape(len(fixed), width)
    values = _fnv_units(aligned, width - lengths)
    # Astral characters are two UTF-16 units, and NumPy drops trailing NULs: those rows
    # (rare) are hashed one at a time.
    odd = (aligned >= 0x10000).any(axis=1) | (lengths != np.fromiter(map(len, texts), np.int64))
    for row in np.flatnonzero(odd):
        values[row] = fnv1a32(texts[row])
    return values


def _fnv_of_digits(numbers: np.ndarray) -> np.ndarray:
    """:func:`fnv1a32` of each number's decimal digits, without making strings."""
    width = 10  # 2^32 has ten digits
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.uint64)
    digits = (numbers.astype(np.uint64)[:, None] // powers) % 10
    wide = numbers.astype(np.uint64)
    count = 1 + sum((wide >= 10**k).astype(np.int64) for k in range(1, width))
    return _fnv_units((digits + ord("0")).astype(np.uint32), width - count)


def hash_many(seed: str, values: Sequence[str] | np.ndarray, version: int) -> np.ndarray:
    """:func:`hash` of many values (NaN for an unknown version)."""
    texts = [str(v) for v in values] if not isinstance(values, list) else values
    if version == 2:
        first = _fnv_many([seed + v for v in texts])
        return (_fnv_of_digits(first) % 10000) / 10000
    if version == 1:
        return (_fnv_many([v + seed for v in texts]) % 1000) / 1000
    return np.full(len(texts), np.nan)


def equal_weights(num_variations: int) -> list[float]:
    return [1 / num_variations] * num_variations if num_variations > 0 else []


def _valid_weights(weights: Sequence[float] | None, num_variations: int) -> bool:
    """One finite, non-negative weight per variation, summing to 1 within the tolerance
    (GrowthBook's Python SDK rule; its JavaScript SDK checks only the length and the sum,
    and differs only for negative weights, which no valid experiment has)."""
    if weights is None or len(weights) != num_variations:
        return False
    if not all(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w)
               and w >= 0 for w in weights):  # fmt: skip
        return False
    return 1 - WEIGHT_TOLERANCE <= sum(weights) <= 1 + WEIGHT_TOLERANCE


def bucket_ranges(
    num_variations: int, coverage: float = 1.0, weights: Sequence[float] | None = None
) -> list[tuple[float, float]]:
    """One ``[start, end)`` per variation (see the module docstring)."""
    coverage = min(max(coverage, 0.0), 1.0)
    if not _valid_weights(weights, num_variations):
        weights = equal_weights(num_variations)
    ranges, start = [], 0.0
    for weight in weights:
        ranges.append((start, start + coverage * weight))
        start += weight
    return ranges


def choose_variation(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """The index of the range ``n`` falls in (start included, end excluded), or −1."""
    for index, (start, end) in enumerate(ranges):
        if start <= n < end:
            return index
    return -1


def choose_many(n: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """:func:`choose_variation` of many hashes (−1 outside every range, and for NaN)."""
    out = np.full(len(n), -1, dtype=np.int64)
    for index in reversed(range(len(ranges))):  # the first matching range wins
        start, end = ranges[index]
        out[(n >= start) & (n < end)] = index
    return out


def in_namespace(user_id: str, namespace: tuple[str, float, float]) -> bool:
    """Whether ``user_id`` falls in the namespace range ``(id, start, end)``."""
    name, start, end = namespace
    n = hash("__" + name, user_id, 1)
    return n is not None and start <= n < end


def assign(
    user_id: str | None,
    *,
    seed: str,
    weights: Sequence[float],
    coverage: float = 1.0,
    hash_version: int = 2,
    namespace: tuple[str, float, float] | None = None,
) -> int:
    """The variation index ``user_id`` gets (−1: not in the experiment), as a GrowthBook
    SDK's ``run`` decides it once the experiment is active and its targeting holds:
    namespace first, then the hash against the bucket ranges."""
    if not user_id:
        return -1
    if namespace is not None and not in_namespace(user_id, namespace):
        return -1
    n = hash(seed, user_id, hash_version)
    if n is None:
        return -1
    return choose_variation(n, bucket_ranges(len(weights), coverage, list(weights)))
