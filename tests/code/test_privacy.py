"""Keyed pseudonyms: deterministic, key-dependent, namespaced, normalised; and no raw PII
reaches any byte the lake holds."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bespoke.features import collect, privacy, sources
from bespoke.features.lake import Lake

OTHER_KEY = b"another key, another deployment"


def test_a_pseudonym_is_hmac_sha256_of_kind_and_normalised_value(key: bytes) -> None:
    expected = hmac.new(key, b"email:alice@example.com", hashlib.sha256).hexdigest()
    assert privacy.pseudonym(key, "email", "Alice@Example.com") == expected
    assert len(expected) == 64


def test_pseudonyms_are_deterministic(key: bytes) -> None:
    assert privacy.pseudonym(key, "phone", "+1 555 0100") == privacy.pseudonym(
        key, "phone", "+1 555 0100"
    )


def test_pseudonyms_depend_on_the_key(key: bytes) -> None:
    assert privacy.pseudonym(key, "email", "a@b.com") != privacy.pseudonym(
        OTHER_KEY, "email", "a@b.com"
    )


def test_pseudonyms_are_namespaced_by_kind(key: bytes) -> None:
    value = "12345"
    kinds = ["email", "phone", "ip", "zip"]
    assert len({privacy.pseudonym(key, kind, value) for kind in kinds}) == len(kinds)


@pytest.mark.parametrize(
    ("kind", "spellings"),
    [
        ("email", ["alice@example.com", "  Alice@Example.COM ", "ALICE@EXAMPLE.COM\t"]),
        ("phone", ["+1 (555) 010-9999", "+15550109999", " +1-555-010-9999 "]),
        ("zip", ["k7l 5j8", "K7L5J8", " K7L 5J8 "]),
    ],
)
def test_trivially_different_spellings_get_the_same_pseudonym(
    key: bytes, kind: str, spellings: list[str]
) -> None:
    assert len({privacy.pseudonym(key, kind, s) for s in spellings}) == 1


def test_ip_addresses_are_truncated_to_their_network_before_pseudonymisation(key: bytes) -> None:
    assert privacy.truncated_ip(" 203.0.113.77 ") == "203.0.113.0"
    assert privacy.truncated_ip("2001:db8:abcd:12:1:2:3:4") == "2001:db8:abcd::"
    assert privacy.truncated_ip("::ffff:198.51.100.9") == "198.51.100.0"  # IPv4 in IPv6
    assert privacy.truncated_ip("Not-An-IP") == "not-an-ip"
    same = {privacy.pseudonym(key, "ip", ip) for ip in ("203.0.113.77", "203.0.113.1")}
    assert len(same) == 1  # one network, one pseudonym: the machine is not recorded
    assert privacy.pseudonym(key, "ip", "203.0.114.77") not in same


def test_different_values_get_different_pseudonyms(key: bytes) -> None:
    assert privacy.pseudonym(key, "email", "a@b.com") != privacy.pseudonym(key, "email", "b@b.com")
    # only the local part's case is normalised, not its characters
    assert privacy.pseudonym(key, "email", "a.b@c.com") != privacy.pseudonym(
        key, "email", "ab@c.com"
    )


def test_series_pseudonyms_keep_missing_values_and_the_index(key: bytes) -> None:
    values = pd.Series(["a@b.com", None, "A@B.com ", pd.NA], index=[10, 11, 12, 13])
    out = privacy.pseudonymise_series(key, "email", values)
    assert list(out.index) == [10, 11, 12, 13]
    assert out.isna().tolist() == [False, True, False, True]
    assert out[10] == out[12] == privacy.pseudonym(key, "email", "a@b.com")


def test_series_pseudonyms_of_an_all_missing_column_are_all_missing(key: bytes) -> None:
    out = privacy.pseudonymise_series(key, "ip", pd.Series([None, None], dtype="string"))
    assert out.isna().all() and len(out) == 2


def test_looks_like_email_tells_addresses_from_ids() -> None:
    assert privacy.looks_like_email(pd.Series(["a@b.com", "c@d.org", "x"]))
    assert not privacy.looks_like_email(pd.Series(["1", "2", "a@b.com"]))
    assert not privacy.looks_like_email(pd.Series([None, None], dtype="string"))


# --- end to end: nothing raw on disk -----------------------------------------------------

PEOPLE = [
    # customer, email, phone, ip
    ("c1", "Alice.Liddell@Wonderland.example", "+44 (20) 7946-0958", "203.0.113.195"),
    ("c2", "bob.builder@example.org", "555-867-5309", "2001:db8:85a3::8a2e:370:7334"),
    ("", "carol.nocustomer@example.net", "+1 415 555 2671", "198.51.100.23"),
]


def _pii_log() -> list[dict[str, str]]:
    """Per person: a stored purchase, a quarantined one (negative amount) and one without
    personalization consent."""
    rows = []
    for n, (customer, email, phone, ip) in enumerate(PEOPLE):
        good = {
            "customer": customer,
            "mail": email,
            "tel": phone,
            "client_ip": ip,
            "sku": f"s{n}",
            "ts": f"2024-02-0{n + 1}T12:00:00Z",
            "action": "purchase",
            "amount": "9.5",
            "consent": "personalization",
        }
        rows.append(good)
        rows.append(good | {"sku": f"bad{n}", "amount": "-3"})
        rows.append(good | {"sku": f"nc{n}", "consent": "analytics"})
    return rows


def _raw_strings() -> list[str]:
    found = []
    for _, email, phone, ip in PEOPLE:
        found += [email, email.lower(), phone, privacy.normalise("phone", phone), ip]
    return found


def _every_text_in(root: Path) -> str:
    """All decoded text the lake holds: every Parquet cell as a string, every JSON file."""
    parts = []
    for path in root.rglob("*"):
        if path.suffix == ".parquet":
            for column in pq.read_table(path).to_pylist():
                parts.append(json.dumps(column, default=str))
        elif path.is_file():
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


@pytest.fixture
def pii_lake(lake: Lake, key: bytes, write_csv, shop_mapping) -> tuple[Lake, collect.IngestResult]:
    path = write_csv("pii.csv", _pii_log())
    mapping = shop_mapping(
        email="mail", phone="tel", ip="client_ip", consent="consent", default_consent=[]
    )
    result = collect.ingest(sources.interactions_file(path, mapping, "shop"), lake, key)
    return lake, result


def test_the_pii_log_exercises_storage_quarantine_and_the_consent_gate(pii_lake) -> None:
    _, result = pii_lake
    events = result.counts("events")
    assert events["stored"] == 3
    assert events["quarantined"] == {"negative_amount": 3}
    assert events["excluded_no_consent"] == 3


def test_no_raw_pii_appears_in_any_byte_of_the_lake(pii_lake) -> None:
    lake, _ = pii_lake
    root = Path(lake.url)
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    blobs = {p: p.read_bytes() for p in files}
    for raw in _raw_strings():
        for path, blob in blobs.items():
            assert raw.encode() not in blob, f"{raw!r} found in {path}"


def test_no_raw_pii_appears_in_any_decoded_value_of_the_lake(pii_lake) -> None:
    # Parquet pages may be compressed; check the decoded cells too (quarantine records
    # are JSON of the whole row).
    lake, _ = pii_lake
    text = _every_text_in(Path(lake.url))
    for raw in _raw_strings():
        assert raw not in text, raw


def test_stored_hashes_are_the_keyed_pseudonyms_of_the_raw_values(pii_lake, key: bytes) -> None:
    lake, _ = pii_lake
    rows = lake.connect().execute(
        "SELECT email_hash, phone_hash, ip_hash, user_id FROM events ORDER BY item_id"
    )
    stored = rows.fetchall()
    assert len(stored) == 3
    for (email_hash, phone_hash, ip_hash, user_id), (customer, email, phone, ip) in zip(
        stored, PEOPLE, strict=True
    ):
        assert email_hash == privacy.pseudonym(key, "email", email)
        assert phone_hash == privacy.pseudonym(key, "phone", phone)
        assert ip_hash == privacy.pseudonym(key, "ip", ip)
        # a row known only by e-mail gets the e-mail pseudonym as its user id
        assert user_id == (customer or privacy.pseudonym(key, "email", email))


def test_quarantined_rows_carry_pseudonyms_not_raw_values(pii_lake, key: bytes) -> None:
    lake, _ = pii_lake
    records = [
        json.loads(r[0]) for r in lake.connect().execute("SELECT record FROM quarantine").fetchall()
    ]
    assert len(records) == 3
    hashes = {privacy.pseudonym(key, "email", email) for _, email, _, _ in PEOPLE}
    assert {r["email_hash"] for r in records} == hashes
    for record in records:
        assert not {"email", "phone", "ip", "mail", "tel", "client_ip"} & set(record)


def test_the_same_person_gets_the_same_pseudonym_in_two_sources(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    mapping = shop_mapping(email="mail")
    for name, spelling in [("crm", "Dana@Example.com"), ("web", " dana@example.COM")]:
        path = write_csv(
            f"{name}.csv",
            [
                {
                    "customer": "",
                    "mail": spelling,
                    "sku": name,
                    "ts": "2024-01-01T00:00:00Z",
                    "action": "view",
                    "amount": "",
                }
            ],
        )
        collect.ingest(sources.interactions_file(path, mapping, name), lake, key)
    hashes = lake.connect().execute("SELECT DISTINCT email_hash FROM events").fetchall()
    assert hashes == [(privacy.pseudonym(key, "email", "dana@example.com"),)]
