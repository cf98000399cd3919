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


@lru_cache(maxsize=65536)
def _us_state(zip5: str) -> str | None:
    import zipcodes  # its table loads on first use, not at import

    found = zipcodes.matching(zip5)
    if found:
        return found[0]["state"]
    # A retired zip code: the state that the other codes sharing its prefix are in.
    neighbours = Counter(z["state"] for z in zipcodes.similar_to(zip5[:3]))
    return neighbours.most_common(1)[0][0] if neighbours else None


def locate(zip_code: str | None) -> tuple[str | None, str | None, str | None]:
    """(state, region, country) of one zip or postal code; unknown parts are None."""
    if zip_code is None or pd.isna(zip_code):
        return None, None, None
    code = str(zip_code).strip().upper()
    digits = code.split("-")[0]
    if len(digits) == 5 and digits.isdigit():
        state = _us_state(digits)
        return state, STATE_REGION.get(state) if state else None, "US"
    if _CANADIAN.match(code):
        return None, None, "CA"
    return None, None, None


def locate_series(zip_codes: pd.Series) -> pd.DataFrame:
    """``locate`` for a column: a frame with ``state``, ``region`` and ``country``."""
    distinct = {code: locate(code) for code in zip_codes.dropna().unique()}
    rows = [
        distinct.get(code, (None, None, None)) if pd.notna(code) else (None, None, None)
        for code in zip_codes
    ]
    return pd.DataFrame(rows, columns=["state", "region", "country"], index=zip_codes.index)
