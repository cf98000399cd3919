"""A cross-channel identity overlay on real behaviour, with the truth kept.

No public dataset has real people's cookies, devices and logins, so this builds one on
real behaviour: each real person's events (ML-100K, CDNOW; ML-1M has no timestamps) are
cut into sessions (a gap of more than 30 minutes, or a new day where a source has dates
only) and each session gets a channel and the identifiers such a session would carry:

- a login is an ``identify`` call: its session's first event also carries the
  account's e-mail pseudonym (the trait a login sends).
- **web** (55%): a first-party cookie, kept for a while then rotated (a new cookie on
  35% of web sessions); the person logs in on 60% of sessions (events then carry the
  ``user_id`` too). 0.5% of web events carry a broken SDK's ``"undefined"`` cookie.
- **mobile** (35%): the person's phone ``device_id`` (replaced on 5% of sessions),
  logged in on 70%.
- **e-mail** (10%): a click from a marketing e-mail: the e-mail pseudonym and a fresh
  cookie (the phone's browser), logged in on 20%.
- **households** (3% of people, in pairs): half their mobile sessions happen on a shared
  family tablet, logged in as themselves on 70% of them.

Everything is drawn from one seeded generator: the same seed gives the same overlay.
Every event keeps ``true_person`` (the source's user id) for scoring, and ``raw_id`` —
what a system without identity resolution keys on (``user_id``, else the cookie, else
the device, else the e-mail pseudonym).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

SESSION_GAP = pd.Timedelta(minutes=30)


@dataclass(frozen=True)
class OverlayParams:
    web: float = 0.55
    mobile: float = 0.35
    # e-mail: the rest
    new_cookie: float = 0.35
    web_login: float = 0.60
    mobile_login: float = 0.70
    email_login: float = 0.20
    new_device: float = 0.05
    households: float = 0.03
    tablet_share: float = 0.5
    broken_cookie: float = 0.005
    seed: int = 7


def _token(prefix: str, *parts: np.ndarray, seed: int) -> np.ndarray:
    """Opaque ids (like a real cookie or device id) for each row of ``parts``."""
    joined = pd.Series(parts[0].astype(str))
    for part in parts[1:]:
        joined = joined + "|" + pd.Series(part.astype(str))
    unique, inverse = np.unique(joined.to_numpy(), return_inverse=True)
    tokens = np.array(
        [
            prefix + hashlib.blake2b(f"{seed}|{prefix}|{u}".encode(), digest_size=8).hexdigest()
            for u in unique
        ],
        dtype=object,
    )
    return tokens[inverse]


def build_overlay(events: pd.DataFrame, params: OverlayParams | None = None) -> pd.DataFrame:
    """The overlay of ``events`` (columns ``user_id``, ``timestamp`` and, where the source has items, ``item_id``): one row
    per event with ``event_id``, ``timestamp``, ``item_id``, ``channel``, the identifiers
    (``user_id``, ``anonymous_id``, ``device_id``, ``email_hash``), ``true_person`` and
    ``raw_id``."""
    p = params or OverlayParams()
    rng = np.random.default_rng(p.seed)
    frame = events.reindex(columns=["user_id", "item_id", "timestamp"]).dropna(subset=["user_id"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    person = frame["user_id"].astype(str).to_numpy()
    n = len(frame)
    times = frame["timestamp"]
    naive = times.dt.tz_localize(None).to_numpy()
    new_person = np.r_[True, person[1:] != person[:-1]]
    dated_only = bool((times.dt.floor("D") == times).all())
    if dated_only:
        gap = np.r_[True, naive[1:] != naive[:-1]]
    else:
        gap = np.r_[True, np.diff(naive) > SESSION_GAP.to_timedelta64()]
    session = np.cumsum(new_person | gap) - 1
    n_sessions = int(session[-1]) + 1 if n else 0
    session_person = person[np.flatnonzero(np.r_[True, session[1:] != session[:-1]])]

    # Per session: channel, login, rotations.
    draw = rng.random(n_sessions)
    channel = np.where(draw < p.web, "web", np.where(draw < p.web + p.mobile, "mobile", "email"))
    login_p = np.select(
        [channel == "web", channel == "mobile"], [p.web_login, p.mobile_login], p.email_login
    )
    login = rng.random(n_sessions) < login_p
    first_of_person = np.r_[True, session_person[1:] != session_person[:-1]]
    # Cookie generation: a counter per person bumped on rotating web sessions.
    rotate = (channel == "web") & (rng.random(n_sessions) < p.new_cookie)
    cookie_gen = _per_person_cumsum(rotate, first_of_person)
    device_gen = _per_person_cumsum(
        (channel == "mobile") & (rng.random(n_sessions) < p.new_device), first_of_person
    )
    # Households: pairs of people share a tablet.
    people = np.unique(person)
    chosen = rng.permutation(people)[: int(len(people) * p.households) // 2 * 2]
    household = dict(zip(chosen, np.arange(len(chosen)) // 2, strict=True))
    in_household = np.array([household.get(x, -1) for x in session_person])
    on_tablet = (
        (channel == "mobile") & (in_household >= 0) & (rng.random(n_sessions) < p.tablet_share)
    )

    seed = p.seed
    session_ids = np.arange(n_sessions)
    cookie = np.where(
        channel == "web",
        _token("c-", session_person, cookie_gen, seed=seed),
        np.where(
            channel == "email",
            _token("c-", session_person, session_ids, np.full(n_sessions, "mail"), seed=seed),
            None,
        ),
    )
    device = np.where(
        channel == "mobile",
        np.where(
            on_tablet,
            _token("tab-", in_household, seed=seed),
            _token("d-", session_person, device_gen, seed=seed),
        ),
        None,
    )
    email = np.where(channel == "email", _token("em-", session_person, seed=seed), None)

    out = pd.DataFrame(
        {
            "event_id": _token("ev-", np.arange(n), seed=seed),
            "timestamp": times,
            "item_id": frame["item_id"].astype("string").to_numpy(),
            "channel": channel[session],
            "user_id": np.where(login[session], person, None),
            "anonymous_id": cookie[session],
            "device_id": device[session],
            "email_hash": email[session],
            "true_person": person,
            "session": session,
        }
    )
    # A login is an identify call: its first event carries the account's e-mail pseudonym.
    first_in_session = np.r_[True, session[1:] != session[:-1]]
    account_email = _token("em-", person, seed=seed)
    identify = first_in_session & login[session]
    out.loc[identify, "email_hash"] = account_email[identify]
    broken = (out["channel"] == "web").to_numpy() & (rng.random(n) < p.broken_cookie)
    out.loc[broken, "anonymous_id"] = "undefined"
    out["raw_id"] = (
        out["user_id"]
        .fillna(out["anonymous_id"])
        .fillna(out["device_id"])
        .fillna(out["email_hash"])
    )
    out["household"] = np.array([household.get(x, -1) for x in person])
    out.attrs["dated_only"] = dated_only
    return out


def _per_person_cumsum(flags: np.ndarray, first_of_person: np.ndarray) -> np.ndarray:
    """A running count of ``flags`` that restarts with each person."""
    total = np.cumsum(flags)
    start = np.maximum.accumulate(np.where(first_of_person, np.arange(len(flags)), 0))
    before = np.r_[0, total][start]
    return total - before


@dataclass(frozen=True)
class CrmParams:
    #: Share of people with an account who are in the CRM.
    coverage: float = 0.8
    #: Share of them with a second record (a store's system, an old sign-up).
    duplicates: float = 0.2
    #: Share of second records whose e-mail has a typo (only fuzzy matching finds them).
    email_typo: float = 0.5
    #: Share of second records with a typo in the given name or surname.
    name_typo: float = 0.5
    seed: int = 11


def _typo(rng: np.random.Generator, text: str) -> str:
    """One edit: a swapped, dropped or replaced character (keeps at least two)."""
    if len(text) < 3:
        return text + "x"
    i = int(rng.integers(1, len(text) - 1))
    kind = rng.integers(3)
    if kind == 0:
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if kind == 1:
        return text[:i] + text[i + 1 :]
    return text[:i] + "aeiou"[int(rng.integers(5))] + text[i + 1 :]


def build_crm_export(
    overlay: pd.DataFrame, names: pd.DataFrame, params: CrmParams | None = None
) -> pd.DataFrame:
    """A CRM export for the overlay's people with an account: one record each for
    ``coverage`` of them (their account e-mail, a name drawn from ``names`` — columns
    ``given_name``, ``surname``, e.g. FEBRL's — a date of birth and a postcode), and for
    ``duplicates`` of those a second record under another customer id with typos in the
    name and, for ``email_typo`` of them, in the e-mail. Columns: ``crm_id``,
    ``given_name``, ``surname``, ``date_of_birth``, ``postcode``, ``email``,
    ``true_person``. The e-mail is the overlay's raw account e-mail (the ``email_hash``
    column of the overlay holds it before ingestion pseudonymises it)."""
    p = params or CrmParams()
    rng = np.random.default_rng(p.seed)
    logged_in = overlay.dropna(subset=["user_id"])
    accounts = logged_in.drop_duplicates("true_person")[["true_person"]].reset_index(drop=True)
    email = overlay.dropna(subset=["email_hash"]).drop_duplicates("true_person")
    accounts = accounts.merge(email[["true_person", "email_hash"]], on="true_person", how="inner")
    accounts = accounts[rng.random(len(accounts)) < p.coverage].reset_index(drop=True)
    pool = names.dropna(subset=["given_name", "surname"])
    picks = rng.integers(len(pool), size=len(accounts))
    records = pd.DataFrame(
        {
            "crm_id": _token(
                "crm-", accounts["true_person"].to_numpy(), np.zeros(len(accounts)), seed=p.seed
            ),
            "given_name": pool["given_name"].to_numpy()[picks],
            "surname": pool["surname"].to_numpy()[rng.integers(len(pool), size=len(accounts))],
            "date_of_birth": (
                pd.Timestamp("1940-01-01")
                + pd.to_timedelta(rng.integers(0, 60 * 365, len(accounts)), unit="D")
            ).strftime("%Y-%m-%d"),
            "postcode": rng.integers(1000, 9999, len(accounts)).astype(str),
            "email": accounts["email_hash"].to_numpy(),
            "true_person": accounts["true_person"].to_numpy(),
        }
    )
    twins = records[rng.random(len(records)) < p.duplicates].copy()
    twins["crm_id"] = _token(
        "crm-", twins["true_person"].to_numpy(), np.ones(len(twins)), seed=p.seed
    )
    for column, share in (
        ("given_name", p.name_typo / 2),
        ("surname", p.name_typo / 2),
        ("email", p.email_typo),
    ):
        hit = rng.random(len(twins)) < share
        twins.loc[hit, column] = [_typo(rng, v) for v in twins.loc[hit, column]]
    return (
        pd.concat([records, twins], ignore_index=True)
        .sample(frac=1.0, random_state=p.seed)
        .reset_index(drop=True)
    )
