"""Outgoing webhooks: a transactional outbox in the online store, signed deliveries,
retries with exponential backoff, and a dead-letter state.

A webhook is queued in the same transaction as the change it reports (a person's
``segment_changed``), so that what was committed is announced and nothing announced was
rolled back. :func:`deliver_due` POSTs what is due to ``Settings.webhook_url``:

- body: ``{"id", "topic", "created_at", "data"}`` as JSON;
- ``Bespoke-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with the
  webhook key (``Settings.webhook_key``), the scheme Stripe and Svix use, so that a
  receiver can check the sender and refuse replays;
- ``Bespoke-Webhook-Id``: the same on every retry, for receivers to de-duplicate.

A 2xx answer delivers it; anything else (another status, a timeout, a refused connection)
schedules a retry after ``webhook_backoff_s`` × 2^(attempts − 1); after
``webhook_max_attempts`` it is dead-lettered (kept with its last error, never deleted) until
``bespoke webhooks retry`` queues it again; ``bespoke webhooks replay`` sends delivered or
dead ones again (a receiver that lost them), with the same id.

Topics: ``segment_changed`` and ``churn_crossed`` (the live churn probability crossed
``Settings.churn_alert_threshold``), queued with the event that caused them;
``cart_abandoned`` (an add-to-cart with no purchase for ``Settings.cart_abandon_minutes``),
found by :func:`queue_abandoned_carts`, which the service runs before each delivery round.
None is queued for a person who withdrew the marketing purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bespoke.features.schema import ConsentPurpose
from bespoke.privacy.consent import ConsentLedger
from bespoke.serving.db import Database, table_exists
from bespoke.settings import Settings

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Bespoke-Signature"
ID_HEADER = "Bespoke-Webhook-Id"
#: Deliveries per call of :func:`deliver_due`, so that one call stays short.
BATCH = 100


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def enqueue_webhook(
    con: sqlite3.Connection, dataset: str, topic: str, data: dict[str, Any], now_us: int
) -> None:
    """Queue one webhook inside the caller's transaction."""
    con.execute(
        "INSERT INTO outbox (dataset, topic, payload, created_at, next_at) VALUES (?, ?, ?, ?, ?)",
        (dataset, topic, json.dumps(data, default=str), now_us, now_us),
    )


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """The ``Bespoke-Signature`` header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(key: bytes, header: str, body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a receiver does: the signature matches and is no older than ``tolerance_s``."""
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), header)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@dataclass
class DeliveryReport:
    delivered: int = 0
    retried: int = 0
    dead: int = 0


def deliver_due(
    db: Database,
    settings: Settings,
    *,
    now_us: int | None = None,
    post: Callable[[str, bytes, dict[str, str], float], int] = _post,
) -> DeliveryReport:
    """POST every webhook that is due; returns what became of them. Without a
    ``webhook_url`` nothing is sent (and nothing was queued)."""
    report = DeliveryReport()
    if not settings.webhook_url:
        return report
    key = settings.webhook_key()
    moment = now_us if now_us is not None else _now_us()
    with db.read() as con:
        due = con.execute(
            "SELECT id, topic, payload, created_at, attempts FROM outbox "
            "WHERE status = 'pending' AND next_at <= ? ORDER BY id LIMIT ?",
            (moment, BATCH),
        ).fetchall()
    for ident, topic, payload, created, attempts in due:
        # Claimed for a while first: every worker of the service delivers, none twice.
        lease = moment + int((settings.webhook_timeout_s * 2 + 1) * 1_000_000)
        with db.write() as con:
            claimed = con.execute(
                "UPDATE outbox SET next_at = ? WHERE id = ? AND status = 'pending' "
                "AND next_at <= ?",
                (lease, ident, moment),
            ).rowcount
        if not claimed:
            continue
        body = json.dumps({
            "id": ident, "topic": topic,
            "created_at": datetime.fromtimestamp(created / 1e6, UTC).isoformat(),
            "data": json.loads(payload),
        }).encode()  # fmt: skip
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(key, int(time.time()), body),
            ID_HEADER: str(ident),
        }
        try:
            status = post(settings.webhook_url, body, headers, settings.webhook_timeout_s)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except (OSError, ValueError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        tries = attempts + 1
        with db.write() as con:
            if error is None:
                con.execute(
                    "UPDATE outbox SET status = 'delivered', attempts = ?, delivered_at = ?, "
                    "last_error = NULL WHERE id = ?",
                    (tries, _now_us(), ident),
                )
                report.delivered += 1
            elif tries >= settings.webhook_max_attempts:
                con.execute(
                    "UPDATE outbox SET status = 'dead', attempts = ?, last_error = ? WHERE id = ?",
                    (tries, error, ident),
                )
                report.dead += 1
            else:
                wait = settings.webhook_backoff_s * 2 ** (tries - 1)
                con.execute(
                    "UPDATE outbox SET attempts = ?, last_error = ?, next_at = ? WHERE id = ?",
                    (tries, error, moment + int(wait * 1_000_000), ident),
                )
                report.retried += 1
    return report


def outbox(db: Database, status: str | None = None) -> list[dict[str, Any]]:
    """The queued webhooks (``status``: pending, delivered or dead; None: all), oldest first."""
    with db.read() as con:
        rows = con.execute(
            "SELECT id, dataset, topic, payload, status, attempts, last_error, created_at "
            "FROM outbox WHERE ? IS NULL OR status = ? ORDER BY id",
            (status, status),
        ).fetchall()
    return [
        {"id": r[0], "dataset": r[1], "topic": r[2], "data": json.loads(r[3]), "status": r[4],
         "attempts": r[5], "last_error": r[6],
         "created_at": datetime.fromtimestamp(r[7] / 1e6, UTC).isoformat()}
        for r in rows
    ]  # fmt: skip


def retry(db: Database, ident: int) -> None:
    """Queue a dead-lettered webhook again (its attempts start over)."""
    with db.write() as con:
        found = con.execute("SELECT status FROM outbox WHERE id = ?", (ident,)).fetchone()
        if found is None:
            raise ValueError(f"no webhook {ident} in the outbox")
        if found[0] != "dead":
            raise ValueError(f"webhook {ident} is {found[0]}, not dead: nothing to retry")
        con.execute(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_at = ? WHERE id = ?",
            (_now_us(), ident),
        )


def replay(
    db: Database,
    ids: list[int] | None = None,
    *,
    topic: str | None = None,
    since_us: int | None = None,
    status: str | None = None,
) -> list[int]:
    """Send webhooks again: those of ``ids``, or every delivered or dead one matching
    ``topic``, ``since_us`` (created at or after) and ``status``. Their attempts start over
    and their id stays (a receiver de-duplicates by it). Returns the ids queued; an id
    that is not in the outbox, or still pending, is an error and nothing is queued."""
    with db.write() as con:
        if ids:
            marks = ",".join("?" * len(ids))
            found = dict(con.execute(
                f"SELECT id, status FROM outbox WHERE id IN ({marks})", ids).fetchall())  # fmt: skip
            missing = sorted(set(ids) - set(found))
            if missing:
                raise ValueError(f"no webhook {', '.join(map(str, missing))} in the outbox")
            waiting = sorted(i for i, state in found.items() if state == "pending")
            if waiting:
                raise ValueError(f"webhook {', '.join(map(str, waiting))} is still pending")
            chosen = sorted(found)
        else:
            chosen = [r[0] for r in con.execute(
                "SELECT id FROM outbox WHERE status IN ('delivered', 'dead') "
                "AND (? IS NULL OR topic = ?) AND (? IS NULL OR created_at >= ?) "
                "AND (? IS NULL OR status = ?) ORDER BY id",
                (topic, topic, since_us, since_us, status, status)).fetchall()]  # fmt: skip
        con.executemany(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_at = ?, last_error = NULL "
            "WHERE id = ?",
            [(_now_us(), ident) for ident in chosen],
        )
    return chosen


_CART_SCHEMA = """
CREATE TABLE IF NOT EXISTS cart_alerts (
    dataset TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    added_at INTEGER NOT NULL,   -- the cart's last add-to-cart (event time, microseconds)
    alerted_at INTEGER NOT NULL,
    PRIMARY KEY (dataset, kind, subject, added_at)
) WITHOUT ROWID
"""
#: Seconds between two looks for abandoned carts in the service's delivery thread.
CART_SWEEP_S = 60.0
#: How far back an add-to-cart is looked for: older carts were someone else's business.
CART_LOOKBACK_US = 24 * 3600 * 1_000_000


@dataclass(frozen=True)
class Cart:
    """A person's cart: when they last added to it, when they last bought (None: never),
    and what they added since (item id, value), oldest first."""

    dataset: str
    kind: str  # "u": a user, "a": an anonymous visitor
    subject: str
    added: int
    bought: int | None
    items: list[tuple[str | None, float | None]]


#: (oldest, now, cutoff) → the carts last added to between ``oldest`` and ``now`` whose
#: last add-to-cart is at or before ``cutoff`` (microseconds): the online store's finder.
CartFinder = Callable[[int, int, int], list[Cart]]


def sql_carts(db: Database) -> CartFinder:
    """The carts of the SQLite online store's profiles (``profile_events``)."""

    def find(oldest: int, now: int, cutoff: int) -> list[Cart]:
        with db.read() as con:
            if not table_exists(con, "profile_events"):
                return []
            found = con.execute(
                "SELECT dataset, kind, subject, max(timestamp) FROM profile_events "
                "WHERE event_type = 'add_to_cart' AND timestamp BETWEEN ? AND ? "
                "GROUP BY dataset, kind, subject HAVING max(timestamp) <= ?",
                (oldest, now, cutoff),
            ).fetchall()
            carts = []
            for dataset, kind, subject, added in found:
                bought = con.execute(
                    "SELECT max(timestamp) FROM profile_events WHERE dataset = ? AND kind = ? "
                    "AND subject = ? AND event_type = 'purchase'", (dataset, kind, subject),
                ).fetchone()[0]  # fmt: skip
                items = con.execute(
                    "SELECT item_id, value FROM profile_events WHERE dataset = ? AND kind = ? "
                    "AND subject = ? AND event_type = 'add_to_cart' AND timestamp > ? "
                    "ORDER BY timestamp", (dataset, kind, subject, bought or -(2**62)),
                ).fetchall()  # fmt: skip
                carts.append(Cart(dataset, kind, subject, added, bought, items))
            return carts

    return find


def queue_abandoned_carts(
    db: Database, minutes: float, *, now_us: int | None = None, carts: CartFinder | None = None
) -> int:
    """Queue ``cart_abandoned`` for each person (user or anonymous visitor) whose last
    add-to-cart is more than ``minutes`` old (and less than a day, or twice ``minutes``),
    with no purchase since; once per cart. ``carts`` finds them in the online store (the
    Redis store's :meth:`~bespoke.serving.redis_store.RedisStore.abandoned_carts`;
    default: the SQLite store's profiles in ``db``). Returns how many were queued."""
    db.ensure("cart-alerts", _CART_SCHEMA)
    now = now_us if now_us is not None else _now_us()
    cutoff = now - int(minutes * 60e6)
    oldest = now - max(CART_LOOKBACK_US, 2 * int(minutes * 60e6))
    found = (carts or sql_carts(db))(oldest, now, cutoff)
    queued = 0
    with db.write() as con:
        for cart in found:
            dataset, kind, subject, added = cart.dataset, cart.kind, cart.subject, cart.added
            told = con.execute(
                "SELECT 1 FROM cart_alerts WHERE dataset = ? AND kind = ? AND subject = ? "
                "AND added_at = ?", (dataset, kind, subject, added),
            ).fetchone()  # fmt: skip
            if told or (cart.bought is not None and cart.bought >= added):
                continue
            ids = {"user_id": subject} if kind == "u" else {"anonymous_id": subject}
            con.execute("INSERT INTO cart_alerts VALUES (?, ?, ?, ?, ?)",
                        (dataset, kind, subject, added, now))  # fmt: skip
            marketing = ConsentPurpose.MARKETING
            if ConsentLedger.allows_in(con, dataset, marketing, **ids) is False:
                continue
            enqueue_webhook(con, dataset, "cart_abandoned", {
                "dataset": dataset, **ids,
                "items": [{"item_id": i, "value": v} for i, v in cart.items],
                "added_at": datetime.fromtimestamp(added / 1e6, UTC).isoformat(),
                "minutes": minutes,
            }, now)  # fmt: skip
            queued += 1
    return queued


def deliver_every(
    db: Database,
    settings: Settings,
    seconds: float,
    *,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    carts: CartFinder | None = None,
) -> None:
    """Deliver what is due every ``seconds`` until ``stop()`` (the service's thread); look
    for abandoned carts every :data:`CART_SWEEP_S` (carts are abandoned in minutes, and
    the look reads the profiles' recent add-to-carts)."""
    swept = float("-inf")
    while not stop():
        try:
            if time.monotonic() - swept >= CART_SWEEP_S:
                queue_abandoned_carts(db, settings.cart_abandon_minutes, carts=carts)
                swept = time.monotonic()
            deliver_due(db, settings)
        except sqlite3.Error as error:  # busy or closing: the next round tries again
            logger.warning("webhook delivery failed this round: %s", error)
        sleep(seconds)
