"""Zip code → US state, census region and country, from an offline table.

The ``zipcodes`` package ships the USPS table; zip codes retired since (MovieLens 100K is
from 1998) are resolved by their three-digit prefix, which never crosses a state line.
Canadian postal codes (letter-digit-letter) resolve to the country only.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

import pandas as pd

#: US Census Bureau regions.
CENSUS_REGIONS = {
    "Northeast": "CT ME MA NH RI VT NJ NY PA",
    "Midwest": "IL IN MI OH WI IA KS MN MO NE ND SD",
    "South": "DE DC FL GA MD NC SC VA WV AL KY MS TN AR LA OK TX",
    "West": "AZ CO ID MT NV NM UT WY AK CA HI OR WA",
}
STATE_REGION = {
    state: region for region, states in CENSUS_REGIONS.items() for state in states.split()
}
_CANADIAN = re.compile(r"^[A-Z]\d[A-Z]\s?\d[A-Z]\d$|^[A-Z]\d[A-Z]$|^[A-Z]\d[A-Z]\d[A-Z]$")


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    import zipcodes  # loads a 40k-row table: only when geo is first needed

    by_zip: dict[str, str] = {}
    by_prefix: dict[str, Counter[str]] = {}
    for row in zipcodes.list_all():
        by_zip[row["zip_code"]] = row["state"]
        by_prefix.setdefault(row["zip_code"][:3], Counter())[row["state"]] += 1
    prefix_state = {prefix: counts.most_common(1)[0][0] for prefix, counts in by_prefix.items()}
    return by_zip, prefix_state


def locate(zip_code: str | None) -> tuple[str | None, str | None, str | None]:
    """(state, region, country) of one zip or postal code; unknown parts are None."""
    if zip_code is None or pd.isna(zip_code):
        return None, None, None
    code = str(zip_code).strip().upper()
    digits = code.split("-")[0]
    if len(digits) == 5 and digits.isdigit():
        by_zip, by_prefix = _tables()
        state = by_zip.get(digits) or by_prefix.get(digits[:3])
        if state is None:
            return None, None, "US"
        return state, STATE_REGION.get(state), "US"
    if _CANADIAN.match(code):
        return None, None, "CA"
    return None, None, None


def locate_series(zip_codes: pd.Series) -> pd.DataFrame:
    """``locate`` for a column: a frame with ``state``, ``region`` and ``country``."""
    rows = [locate(code) for code in zip_codes]
    return pd.DataFrame(rows, columns=["state", "region", "country"], index=zip_codes.index)
