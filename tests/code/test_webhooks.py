"""Outgoing webhooks against a real HTTP receiver: signed, retried with backoff,
dead-lettered after the last attempt, queued again by hand, claimed once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.serving.store import SQLiteStore
from bespoke.serving.webhooks import (
    SIGNATURE_HEADER,
    deliver_due,
    enqueue_webhook,
    outbox,
    retry,
    sign,
    verify,
)
from bespoke.settings import SQLITE_PREFIX, Settings

NOW = 1_800_000_000_000_000  # µs


class _Answers(BaseHTTPRequestHandler):
    statuses: list[int] = []  # noqa: RUF012 - set per test
    seen: list[tuple[str, bytes]] = []  # noqa: RUF012

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.headers[SIGNATURE_HEADER], body))
        self.send_response(self.statuses.pop(0) if self.statuses else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Answers.statuses, _Answers.seen = [], []
    server = HTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def _setup(
    tmp_path: Path, url: str, attempts: int = 3, at: int = NOW
) -> tuple[SQLiteStore, Settings]:
    settings = Settings(home=tmp_path, webhook_url=url, webhook_secret="s3cret",
                        webhook_max_attempts=attempts, webhook_backoff_s=10)  # fmt: skip
    store = SQLiteStore(f"{SQLITE_PREFIX}{tmp_path / 'online.db'}", bytes(32))
    with store.database().write() as con:
        enqueue_webhook(con, "cdnow", "segment_changed", {"user_id": "7", "to": "Active"}, at)
    return store, settings


def test_a_failed_delivery_is_retried_with_backoff_then_delivered(
    tmp_path: Path, receiver: str
) -> None:
    store, settings = _setup(tmp_path, receiver)
    _Answers.statuses = [500]
    first = deliver_due(store.database(), settings, now_us=NOW)
    assert (first.delivered, first.retried) == (0, 1)
    # Not due again before the backoff has passed.
    assert deliver_due(store.database(), settings, now_us=NOW + 9_000_000).retried == 0
    again = deliver_due(store.database(), settings, now_us=NOW + 10_000_001)
    assert again.delivered == 1
    (row,) = outbox(store.database())
    assert (row["status"], row["attempts"]) == ("delivered", 2)
    header, body = _Answers.seen[-1]
    assert verify(b"s3cret", header, body) and not verify(b"other", header, body)
    assert not verify(b"s3cret", header, body + b" ")
    assert not verify(b"s3cret", sign(b"s3cret", 1_000, body), body)  # too old: a replay


def test_the_last_failure_dead_letters_it_until_retried(tmp_path: Path, receiver: str) -> None:
    store, settings = _setup(tmp_path, receiver, attempts=2)
    _Answers.statuses = [500, 503]
    deliver_due(store.database(), settings, now_us=NOW)
    assert deliver_due(store.database(), settings, now_us=NOW + 60_000_000).dead == 1
    (row,) = outbox(store.database(), "dead")
    assert row["last_error"] == "HTTP 503" and row["attempts"] == 2
    assert deliver_due(store.database(), settings, now_us=NOW + 10**12).delivered == 0
    with pytest.raises(ValueError, match="no webhook"):
        retry(store.database(), row["id"] + 1)
    retry(store.database(), row["id"])
    assert deliver_due(store.database(), settings, now_us=NOW + 10**13).delivered == 1


def test_an_unreachable_receiver_is_retried(tmp_path: Path) -> None:
    store, settings = _setup(tmp_path, "http://127.0.0.1:9/nothing-listens")
    report = deliver_due(store.database(), settings, now_us=NOW)
    assert report.retried == 1
    (row,) = outbox(store.database(), "pending")
    assert "Error" in row["last_error"] or "refused" in row["last_error"].lower()


def test_the_cli_lists_and_retries(tmp_path: Path, receiver: str, monkeypatch) -> None:
    _setup(tmp_path / "home", receiver, attempts=1, at=time.time_ns() // 1000)
    monkeypatch.setenv("BESPOKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BESPOKE_WEBHOOK_URL", receiver)
    monkeypatch.setenv("BESPOKE_WEBHOOK_MAX_ATTEMPTS", "1")
    _Answers.statuses = [500]
    runner = CliRunner()
    done = runner.invoke(app, ["webhooks", "deliver"])
    assert done.exit_code == 0 and "1 dead-lettered" in done.output, done.output
    listed = runner.invoke(app, ["webhooks", "list", "--status", "dead"])
    text = "".join(listed.output.split())  # the table wraps its cells
    assert listed.exit_code == 0 and "dead" in text and "HTTP" in text and "segment" in text
    assert runner.invoke(app, ["webhooks", "retry", "99"]).exit_code == 1
    assert runner.invoke(app, ["webhooks", "retry", "1"]).exit_code == 0
    assert "1 delivered" in runner.invoke(app, ["webhooks", "deliver"]).output
    bad = runner.invoke(app, ["webhooks", "list", "--status", "lost"])
    assert bad.exit_code != 0 and "--status" in bad.output


def test_a_delivered_webhook_is_replayed_with_its_id(
    tmp_path: Path, receiver: str, monkeypatch
) -> None:
    _setup(tmp_path / "home", receiver, at=time.time_ns() // 1000)
    monkeypatch.setenv("BESPOKE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BESPOKE_WEBHOOK_URL", receiver)
    runner = CliRunner()
    assert "1 delivered" in runner.invoke(app, ["webhooks", "deliver"]).output
    pending = runner.invoke(app, ["webhooks", "replay"])
    assert pending.exit_code == 1 and "--topic" in pending.output  # says how to choose
    assert runner.invoke(app, ["webhooks", "replay", "7"]).exit_code == 1  # no such webhook
    assert runner.invoke(app, ["webhooks", "replay", "--since", "yesterday"]).exit_code == 1
    again = runner.invoke(app, ["webhooks", "replay", "--topic", "segment_changed"])
    assert again.exit_code == 0 and "1 webhooks queued again: 1" in again.output
    assert runner.invoke(app, ["webhooks", "replay", "1"]).exit_code == 1  # pending already
    assert "1 delivered" in runner.invoke(app, ["webhooks", "deliver"]).output
    assert len(_Answers.seen) == 2
    assert _Answers.seen[0][1] == _Answers.seen[1][1]  # the same webhook (same id and body)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_an_abandoned_cart_is_announced_once_and_a_bought_one_never(
    tmp_path: Path, receiver: str, backend: str, request: pytest.FixtureRequest
) -> None:
    from datetime import UTC, datetime, timedelta
    from functools import partial

    from bespoke.features.schema import ConsentPurpose, EventIn
    from bespoke.privacy.consent import ConsentLedger, ConsentSource
    from bespoke.serving.redis_store import RedisStore
    from bespoke.serving.webhooks import queue_abandoned_carts

    store, settings = _setup(tmp_path, receiver)
    with store.database().write() as con:
        con.execute("DELETE FROM outbox")
    if backend == "redis":  # the profiles in Redis, the outbox in the same control database
        store = RedisStore(request.getfixturevalue("empty_redis"), bytes(32),
                           control=store.database())  # fmt: skip
        queue_abandoned_carts = partial(queue_abandoned_carts, carts=store.abandoned_carts)
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def event(kind: str, item: str, minutes_ago: float, **ids: str) -> EventIn:
        return EventIn.model_validate({**ids, "event_type": kind, "item_id": item, "value": 9.5,
            "consent": ["personalization"], "timestamp": (now - timedelta(minutes=minutes_ago)).isoformat()})  # fmt: skip

    store.accept_events([
        event("add_to_cart", "50", 45, anonymous_id="browser-a"),
        event("add_to_cart", "172", 40, anonymous_id="browser-a"),   # abandoned
        event("add_to_cart", "1", 50, user_id="buyer"),
        event("purchase", "1", 35, user_id="buyer"),                 # bought
        event("add_to_cart", "7", 5, user_id="browsing"),            # not yet
        event("add_to_cart", "9", 45, user_id="no-marketing"),       # withdrew marketing
        event("add_to_cart", "3", 60 * 24 * 30, user_id="long-ago"),  # old history
    ], "ml-100k")  # fmt: skip
    ConsentLedger(store.database()).record(
        "ml-100k", {ConsentPurpose.MARKETING: False}, source=ConsentSource.API,
        user_id="no-marketing")  # fmt: skip
    at = int(now.timestamp() * 1_000_000)
    assert queue_abandoned_carts(store.database(), 30, now_us=at) == 1
    assert queue_abandoned_carts(store.database(), 30, now_us=at + 60_000_000) == 0  # once
    (hook,) = outbox(store.database())
    assert hook["topic"] == "cart_abandoned"
    assert hook["data"]["anonymous_id"] == "browser-a"
    assert [i["item_id"] for i in hook["data"]["items"]] == ["50", "172"]
    assert deliver_due(store.database(), settings, now_us=at).delivered == 1
    header, body = _Answers.seen[-1]
    assert verify(b"s3cret", header, body)
    # a later add-to-cart renews the cart (what was never bought stays in it): announced
    # again once abandoned (as is, by
    # then, the one added 5 minutes before `now`)
    store.accept_events([event("add_to_cart", "181", -10, anonymous_id="browser-a")], "ml-100k")
    assert queue_abandoned_carts(store.database(), 30, now_us=at + 50 * 60_000_000) == 2
    carts = {h["data"].get("anonymous_id") or h["data"]["user_id"]: h["data"]["items"]
             for h in outbox(store.database()) if h["id"] > hook["id"]}  # fmt: skip
    assert carts == {"browser-a": [{"item_id": i, "value": 9.5} for i in ("50", "172", "181")],
                     "browsing": [{"item_id": "7", "value": 9.5}]}  # fmt: skip
