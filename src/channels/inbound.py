"""Webhooks in: commerce platforms POST their orders to ``/v1/webhooks/<source>``.

Each source is declared in the JSON file ``Settings.inbound_webhooks_path``::

    {"shop": {
        "dataset": "ml-100k",
        "signature": {"header": "X-Shop-Hmac-Sha256", "encoding": "base64",
                      "secret_env": "SHOP_WEBHOOK_SECRET"},
        "mapping": {"order_id": "id", "timestamp": "created_at", "user_id": "customer.id",
                    "email": "email", "line_items": "line_items", "item_id": "product_id",
                    "quantity": "quantity", "value": "price",
                    "default_consent": ["personalization"]}}}

The signature is ``HMAC-SHA256(secret, raw body)`` in the header, hex or base64 (how
Shopify and WooCommerce sign; a ``prefix`` such as ``sha256=`` is allowed), compared in
constant time: a request without a valid one is refused (401) and nothing is stored. The
mapping works like ``bespoke ingest csv``'s, with dotted paths into the order: every line
item becomes one ``purchase`` event (``source_event_id`` ``<source>:<order id>:<line>``, so
a redelivered order is applied once). An e-mail is pseudonymised on the way in, as
everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from bespoke.features.schema import ConsentPurpose, EventIn


class InboundError(ValueError):
    """A webhook that cannot be taken: ``status`` (401, 404, 422) and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: str = Field(min_length=1, description="The header carrying the signature.")
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = Field(default="", description="Before the digest, e.g. 'sha256='.")
    secret: SecretStr | None = None
    secret_env: str | None = Field(default=None, description="An environment variable holding it.")

    @model_validator(mode="after")
    def _one_secret(self) -> Signature:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret, secret_env")
        return self

    def key(self) -> bytes:
        if self.secret is not None:
            return self.secret.get_secret_value().encode()
        value = os.environ.get(self.secret_env or "")
        if not value:
            raise InboundError(401, f"the secret of this source is not set ({self.secret_env})")
        return value.encode()


class OrderMapping(BaseModel):
    """Dotted paths into an order (and into each of its line items)."""

    model_config = ConfigDict(extra="forbid")

    order_id: str = "id"
    timestamp: str | None = "created_at"
    user_id: str | None = None
    anonymous_id: str | None = None
    email: str | None = None
    line_items: str = "line_items"
    item_id: str = "product_id"
    quantity: str | None = "quantity"
    value: str | None = "price"
    default_consent: list[ConsentPurpose] = Field(default_factory=list)


class InboundSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str | None = None
    signature: Signature
    mapping: OrderMapping = Field(default_factory=OrderMapping)


def load_sources(path: str | Path | None) -> dict[str, InboundSource]:
    """The declared sources (none when no file is set); a clear ValueError for a bad file."""
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no inbound webhooks file at {path}") from None
    except ValueError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: an object of source name → declaration")
    sources = {}
    for name, declared in raw.items():
        try:
            sources[name] = InboundSource.model_validate(declared)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in (name, *first["loc"]))
            raise ValueError(f"{path}: {where}: {first['msg']}") from None
    return sources


def check_signature(source: InboundSource, headers: Mapping[str, str], body: bytes) -> None:
    """Refuse (401) a body whose signature is missing or wrong."""
    sign = source.signature
    given = headers.get(sign.header.lower(), "")
    if not given:
        raise InboundError(401, f"the {sign.header} header (the body's signature) is missing")
    digest = hmac.new(sign.key(), body, hashlib.sha256).digest()
    expected = sign.prefix + (
        digest.hex() if sign.encoding == "hex" else base64.b64encode(digest).decode()
    )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise InboundError(401, f"the {sign.header} signature does not match the body")


def _at(document: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


def order_events(name: str, source: InboundSource, order: Any) -> list[EventIn]:
    """The order's line items as purchase events; InboundError (422) naming the field at
    fault otherwise."""
    mapping = source.mapping
    if not isinstance(order, dict):
        raise InboundError(422, "the body is not a JSON object", "body")
    order_id = _at(order, mapping.order_id)
    if order_id is None or order_id == "":
        raise InboundError(422, f"the order has no {mapping.order_id}", mapping.order_id)
    lines = _at(order, mapping.line_items)
    if not isinstance(lines, list) or not lines:
        raise InboundError(422, f"{mapping.line_items} is not a list of line items",
                           mapping.line_items)  # fmt: skip
    common: dict[str, Any] = {"event_type": "purchase", "channel": "api",
                              "consent": [c.value for c in mapping.default_consent]}  # fmt: skip
    for target in ("user_id", "anonymous_id", "email", "timestamp"):
        path = getattr(mapping, target)
        if path is not None and (value := _at(order, path)) not in (None, ""):
            common[target] = value if target == "timestamp" else str(value)
    events = []
    for index, line in enumerate(lines):
        where = f"{mapping.line_items}[{index}]"
        item = _at(line, mapping.item_id)
        if item in (None, ""):
            raise InboundError(
                422, f"{where} has no {mapping.item_id}", f"{where}.{mapping.item_id}"
            )
        fields = dict(common, item_id=str(item), source_event_id=f"{name}:{order_id}:{index}")
        for target in ("quantity", "value"):
            path = getattr(mapping, target)
            if path is not None and (raw := _at(line, path)) is not None:
                try:
                    fields[target] = int(raw) if target == "quantity" else float(raw)
                except (TypeError, ValueError):
                    raise InboundError(422, f"{where}.{path} is not a number",
                                       f"{where}.{path}") from None  # fmt: skip
        try:
            events.append(EventIn.model_validate(fields))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InboundError(
                422, f"{where}: {field}: {first['msg']}", f"{where}.{field}"
            ) from None
    return events
