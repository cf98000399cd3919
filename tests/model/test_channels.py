"""Publishable keys on the real served service: what a web page's key may do (events,
identify, consent, personalize about the browser's own anonymous id, from its origins,
within its rates) and what it can never do (read a profile, force a variant, reach
another route, act from another origin); the SDK and the demo storefront it serves."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bespoke.serving.keys import ApiKeys
from bespoke.serving.local import local_settings, start_local_service, stop_local_service
from bespoke.serving.store import open_store

SHOP = "https://shop.example"
SHOP_SECRET = "shop-webhook-secret"


@pytest.fixture(scope="module")
def served(
    prepared_service_home: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """A server of this module's own, with publishable keys for its own origin (the demo
    page) and for the shop, one of them limited to 3 requests a minute per client."""
    import shutil

    prepared, secret = prepared_service_home
    home = tmp_path_factory.mktemp("channels") / "home"
    shutil.copytree(prepared, home, ignore=shutil.ignore_patterns("service.log"))
    sources = home / "inbound.json"
    sources.write_text(json.dumps({"shop": {
        "signature": {"header": "X-Shop-Hmac-Sha256", "encoding": "base64", "secret": SHOP_SECRET},
        "mapping": {"order_id": "id", "timestamp": "created_at", "user_id": "customer.id",
                    "email": "email", "line_items": "line_items", "item_id": "product_id",
                    "quantity": "quantity", "value": "price",
                    "default_consent": ["personalization"]}}}))  # fmt: skip
    url, process = start_local_service(home, env={"BESPOKE_INBOUND_WEBHOOKS_PATH": str(sources)})
    keys = ApiKeys(local_settings(home).online_store_url or "")
    page = keys.create("demo-page", publishable=True, origins=[url, SHOP])
    tight = keys.create("tight", publishable=True, origins=[SHOP], client_rate=3)
    try:
        yield {"url": url, "home": home, "secret": secret, "page": page, "tight": tight}
    finally:
        stop_local_service(process)


def _post(served: dict, path: str, body: object, key: str, origin: str | None = SHOP,
          **options) -> httpx.Response:  # fmt: skip
    headers = {"X-API-Key": key}
    if origin:
        headers["Origin"] = origin
    return httpx.post(f"{served['url']}{path}", json=body, headers=headers, timeout=30, **options)


def _event(anonymous: str | None, item: str = "50", kind: str = "click") -> dict:
    event = {"event_type": kind, "item_id": item, "consent": ["personalization"],
             "channel": "web", "timestamp": "2026-12-01T10:00:00Z"}  # fmt: skip
    if anonymous:
        event["anonymous_id"] = anonymous
    return event


def _profile(served: dict, anonymous: str) -> object:
    return open_store(local_settings(served["home"])).profile(anonymous, "ml-100k", anonymous=True)


def test_a_page_key_records_its_browsers_events_and_personalizes_for_them(served) -> None:
    answer = _post(served, "/v1/events", {"events": [_event("tab-1")]}, served["page"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == SHOP
    assert _profile(served, "tab-1").known
    page = _post(served, "/v1/personalize",
                 {"anonymous_id": "tab-1", "slots": [{"id": "top", "k": 3}]}, served["page"])  # fmt: skip
    assert page.status_code == 200 and len(page.json()["slots"][0]["items"]) == 3
    assert page.json()["slots"][0]["items"][0]["title"]  # a page can render it as it is
    # a stranger's page (no consent yet: no id) gets the non-personal answer
    stranger = _post(served, "/v1/personalize", {"slots": [{"id": "top", "k": 3}]}, served["page"])
    assert stranger.status_code == 200 and stranger.json()["personalized"] is False
    consent = _post(served, "/v1/consent", {"anonymous_id": "tab-1",
                    "purposes": {"marketing": False}, "source": "cmp"}, served["page"])  # fmt: skip
    assert consent.status_code == 200, consent.text
    identify = _post(served, "/v1/identify", {"user_id": "tab-1-user", "anonymous_id": "tab-1"},
                     served["page"])  # fmt: skip
    assert identify.status_code == 200, identify.text


def test_a_page_key_can_never_read_a_profile_force_a_variant_or_act_for_a_user(served) -> None:
    key = served["page"]
    refused = {
        "profile": _post(served, "/v1/profiles", {"user_id": "1"}, key),
        "profile by path": httpx.get(
            f"{served['url']}/v1/profiles/1", headers={"X-API-Key": key, "Origin": SHOP}
        ),
        "recommend": _post(served, "/v1/recommend", {"user_id": "1"}, key),
        "deletion": _post(served, "/v1/privacy/deletions", {"user_id": "1"}, key),
    }
    for what, answer in refused.items():
        assert answer.status_code == 403, what
        assert "publishable key cannot call" in answer.json()["error"], what
    slots = [{"id": "top", "k": 3}]
    forced = _post(served, "/v1/personalize",
                   {"anonymous_id": "tab-2", "slots": slots, "force": {"ranker-on": "treatment"}},
                   key)  # fmt: skip
    assert forced.status_code == 403 and forced.json()["field"] == "force"
    as_user = _post(served, "/v1/personalize", {"user_id": "1", "slots": slots}, key)
    assert as_user.status_code == 403 and as_user.json()["field"] == "user_id"
    consent = _post(served, "/v1/consent", {"user_id": "1", "purposes": {"marketing": True}}, key)
    assert consent.status_code == 403 and consent.json()["field"] == "user_id"
    nameless = _post(served, "/v1/events", {"events": [_event("tab-2"), _event(None)]}, key)
    assert nameless.status_code == 422 and nameless.json()["field"] == "events[1].anonymous_id"
    assert not _profile(served, "tab-2").known  # nothing of a refused batch was stored
    # the same requests with the secret key are the server's to make
    assert _post(served, "/v1/profiles", {"user_id": "1"}, served["secret"]).status_code == 200


def test_origins_are_checked_and_preflights_answered_only_for_allowed_ones(served) -> None:
    key = served["page"]
    body = {"events": [_event("tab-3")]}
    other = _post(served, "/v1/events", body, key, origin="https://evil.example")
    assert other.status_code == 403 and "not allowed" in other.json()["error"]
    assert "access-control-allow-origin" not in other.headers
    assert _post(served, "/v1/events", body, key, origin=None).status_code == 403
    assert not _profile(served, "tab-3").known
    asking = {"Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "content-type, x-api-key"}  # fmt: skip
    ok = httpx.options(f"{served['url']}/v1/events", headers={**asking, "Origin": SHOP})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == SHOP
    assert "x-api-key" in ok.headers["access-control-allow-headers"]
    no = httpx.options(f"{served['url']}/v1/events",
                       headers={**asking, "Origin": "https://evil.example"})  # fmt: skip
    assert no.status_code == 403 and "access-control-allow-origin" not in no.headers


def test_a_beacon_is_accepted_as_text_with_the_key_in_the_url_but_a_secret_key_never(
    served,
) -> None:
    body = json.dumps({"events": [_event("tab-4", kind="add_to_cart")]})
    beacon = httpx.post(f"{served['url']}/v1/events?key={served['page']}", content=body,
                        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": SHOP})  # fmt: skip
    assert beacon.status_code == 200, beacon.text
    assert _profile(served, "tab-4").known
    secret = httpx.post(f"{served['url']}/v1/events?key={served['secret']}", content=body,
                        headers={"Content-Type": "application/json", "Origin": SHOP})  # fmt: skip
    assert secret.status_code == 401  # a secret key is never read from a URL


def test_the_rate_is_counted_per_client_and_a_second_client_has_its_own(served) -> None:
    body = {"events": [_event("tab-5")]}
    for _ in range(3):
        assert _post(served, "/v1/events", body, served["tight"]).status_code == 200
    over = _post(served, "/v1/events", body, served["tight"])
    assert over.status_code == 429 and 1 <= int(over.headers["retry-after"]) <= 60
    assert over.headers["access-control-allow-origin"] == SHOP  # the page can read why
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with other:
        answer = other.post(f"{served['url']}/v1/events", json=body,
                            headers={"X-API-Key": served["tight"], "Origin": SHOP})  # fmt: skip
    assert answer.status_code == 200


def test_the_sdk_is_served_minified_and_gzipped_within_8_kb_and_the_demo_store_lists_the_catalog(
    served,
) -> None:
    packed = httpx.get(f"{served['url']}/sdk/v1/bespoke.js",
                       headers={"Accept-Encoding": "gzip"}).raise_for_status()  # fmt: skip
    assert packed.headers["content-encoding"] == "gzip"
    raw = packed.content  # httpx decodes it: the bytes on the wire are the gzip
    assert len(gzip.compress(raw, compresslevel=9)) <= 8 * 1024
    assert raw.startswith(b"/*! bespoke.js") and b"\n  " not in raw  # minified
    assert packed.headers["content-type"].startswith("application/javascript")
    demo = httpx.get(f"{served['url']}/demo/", follow_redirects=True)
    assert demo.status_code == 200 and "Toy Story" in demo.text
    assert 'data-bespoke-slot="for-you"' in demo.text and "/sdk/v1/bespoke.js" in demo.text


def _order(user: str, items: list[tuple[str, int, str]], order_id: int = 1001) -> bytes:
    """An order as a commerce platform sends it (Shopify's shape)."""
    return json.dumps({
        "id": order_id, "created_at": "2026-12-01T10:30:00Z", "email": "Buyer@Example.org",
        "customer": {"id": int(user)}, "currency": "EUR",
        "line_items": [{"product_id": int(i), "quantity": q, "price": p} for i, q, p in items],
    }).encode()  # fmt: skip


def _signed(body: bytes, secret: str = SHOP_SECRET) -> dict[str, str]:
    import base64
    import hashlib
    import hmac

    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {"X-Shop-Hmac-Sha256": base64.b64encode(digest).decode(),
            "Content-Type": "application/json"}  # fmt: skip


def _purchases(served: dict, user: str) -> list[tuple[str, float]]:
    from bespoke.serving.db import Database, sqlite_path

    database = Database(sqlite_path(local_settings(served["home"]).online_store_url or ""))
    with database.read() as con:
        rows = con.execute(
            "SELECT item_id, value FROM inbox WHERE user_id = ? AND event_type = 'purchase' "
            "ORDER BY seq", (user,)).fetchall()  # fmt: skip
    database.close()
    return rows


def test_a_signed_order_becomes_purchase_events_once(served) -> None:
    url = f"{served['url']}/v1/webhooks/shop"
    body = _order("7", [("50", 1, "9.99"), ("181", 2, "14.50")])
    taken = httpx.post(url, content=body, headers=_signed(body))  # no API key: the signature
    assert taken.status_code == 200, taken.text
    assert taken.json()["accepted"] == 2
    assert _purchases(served, "7")[-2:] == [("50", 9.99), ("181", 14.5)]
    again = httpx.post(url, content=body, headers=_signed(body))  # the platform redelivers
    assert again.json()["duplicates"] == 2 and len(_purchases(served, "7")) == 2
    # the e-mail is kept only as its pseudonym
    from bespoke.serving.db import Database, sqlite_path

    database = Database(sqlite_path(local_settings(served["home"]).online_store_url or ""))
    with database.read() as con:
        (stored,) = con.execute("SELECT DISTINCT email_hash FROM inbox WHERE user_id = '7' "
                                "AND event_type = 'purchase'").fetchone()  # fmt: skip
    assert stored and "@" not in stored and len(stored) == 64


def test_a_bad_signature_an_unknown_source_or_a_broken_order_stores_nothing(served) -> None:
    url = f"{served['url']}/v1/webhooks/shop"
    body = _order("8", [("50", 1, "9.99")], order_id=2002)
    forged = httpx.post(url, content=body, headers=_signed(body, "guessed"))
    assert forged.status_code == 401 and "does not match" in forged.json()["error"]
    unsigned = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401 and "X-Shop-Hmac-Sha256" in unsigned.json()["error"]
    tampered = body.replace(b"9.99", b"0.01")
    assert httpx.post(url, content=tampered, headers=_signed(body)).status_code == 401
    other = httpx.post(f"{served['url']}/v1/webhooks/elsewhere", content=body,
                       headers=_signed(body))  # fmt: skip
    assert other.status_code == 404 and "elsewhere" in other.json()["error"]
    broken = json.dumps({"id": 3003, "customer": {"id": 8},
                         "line_items": [{"quantity": 1, "price": "1"}]}).encode()  # fmt: skip
    refused = httpx.post(url, content=broken, headers=_signed(broken))
    assert refused.status_code == 422 and refused.json()["field"] == "line_items[0].product_id"
    assert _purchases(served, "8") == []
