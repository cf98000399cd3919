"""The declarations of inbound webhook sources: a bad file is refused naming the field, and
an order maps onto purchase events the way the declaration says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bespoke.channels.inbound import InboundError, load_sources, order_events


def test_a_bad_declaration_names_its_field(tmp_path: Path) -> None:
    path = tmp_path / "inbound.json"
    path.write_text(json.dumps({"shop": {"signature": {"header": "X-Sig"}}}))
    with pytest.raises(ValueError, match=r"shop\.signature: .*exactly one of secret, secret_env"):
        load_sources(path)
    path.write_text(json.dumps({"shop": {"signature": {"header": "X-Sig", "secret": "s"},
                                         "mapping": {"sku": "x"}}}))  # fmt: skip
    with pytest.raises(ValueError, match=r"shop\.mapping\.sku"):
        load_sources(path)
    with pytest.raises(ValueError, match="no inbound webhooks file"):
        load_sources(tmp_path / "missing.json")
    assert load_sources(None) == {}


def test_an_order_maps_to_one_purchase_per_line(tmp_path: Path) -> None:
    path = tmp_path / "inbound.json"
    path.write_text(json.dumps({"shop": {"signature": {"header": "X-Sig", "secret": "s"},
                                         "mapping": {"user_id": "customer.id",
                                                     "default_consent": ["personalization"]}}}))  # fmt: skip
    (source,) = load_sources(path).values()
    order = {"id": 9, "created_at": "2026-12-01T10:00:00Z", "customer": {"id": 42},
             "line_items": [{"product_id": 50, "quantity": 2, "price": "3.5"}]}  # fmt: skip
    (event,) = order_events("shop", source, order)
    assert (event.user_id, event.item_id, event.quantity, event.value) == ("42", "50", 2, 3.5)
    assert event.event_type == "purchase" and event.source_event_id == "shop:9:0"
    assert event.consent == ["personalization"]
    with pytest.raises(InboundError) as refused:
        order_events(
            "shop", source, {**order, "line_items": [{"product_id": 1, "quantity": "two"}]}
        )
    assert refused.value.status == 422 and refused.value.field == "line_items[0].quantity"
