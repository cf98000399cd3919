"""Segments, churn and value kept current through the real ``bentoml serve`` on CDNOW: a
lapsed customer's purchase re-scores them within the request, the next profile read and
the next page show it, and the change reaches a webhook receiver signed, after a retry."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.segments.train import champion_segmenter, train_churn, train_segments
from bespoke.serving.keys import ApiKeys
from bespoke.serving.local import (
    local_settings,
    seed_online_store,
    start_local_service,
    stop_local_service,
)
from bespoke.serving.webhooks import ID_HEADER, SIGNATURE_HEADER, verify

AS_OF = "1998-06-30"
#: The churn alert threshold: the lapsed customer starts above it (asserted below).
THRESHOLD = 0.8


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver that fails the first delivery (HTTP 503) and takes the rest."""

    received: ClassVar[list[tuple[dict[str, str], bytes, int]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 503 if not self.received else 200
        self.received.append((dict(self.headers), body, status))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _post(url: str, path: str, body: dict, key: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"X-API-Key": key}, timeout=30)


@pytest.fixture
def cdnow_home(tmp_path: Path, datasets_dir: Path) -> tuple[Path, str, str]:
    """A home serving CDNOW: segments and churn trained as of the end of the data, a rule
    keyed on the lapsed segment, the store seeded; (home, lapsed segment, API key)."""
    home = tmp_path / "home"
    settings = local_settings(home)
    collect.ingest(sources.cdnow(datasets_dir / "cdnow"), Lake(str(settings.lake_url)),
                   settings.pseudonym_key())  # fmt: skip
    train_segments(settings, "cdnow", AS_OF)
    train_churn(settings, "cdnow", AS_OF, trials=0)
    names = champion_segmenter(settings, "cdnow").names_
    lapsed = next(name for name in names if name.lower().startswith("lapsed"))
    rules = home / "rules"
    rules.mkdir()
    (rules / "win_back.json").write_text(json.dumps({"version": 1, "rules": [{
        "id": "win-back", "description": "Lapsed customers see the win-back offer.",
        "when": {"profile.segment": lapsed},
        "then": [{"type": "show_content", "block_id": "win-back", "payload": {"title": "We miss you"}}],
    }]}))  # fmt: skip
    seed_online_store(settings, "cdnow")
    key = ApiKeys(settings.online_store_url or "").create("tests")
    return home, lapsed, key


def test_a_lapsed_customer_who_buys_again(cdnow_home: tuple[Path, str, str]) -> None:
    home, lapsed, key = cdnow_home
    with sqlite3.connect(home / "online.db") as con:
        (person, churn_before), (quiet, _) = con.execute(
            "SELECT user_id, churn_probability FROM person_scores WHERE dataset = 'cdnow' "
            "AND segment = ? ORDER BY churn_probability DESC, user_id LIMIT 2",
            (lapsed,),
        ).fetchall()
    assert churn_before > 0.8
    _Receiver.received = []
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url, process = start_local_service(home, env={
        "BESPOKE_SERVING_DATASET": "cdnow", "BESPOKE_RULES_PATH": str(home / "rules"),
        "BESPOKE_WEBHOOK_URL": f"http://127.0.0.1:{receiver.server_port}/hooks",
        "BESPOKE_WEBHOOK_BACKOFF_S": "0.2", "BESPOKE_CHURN_ALERT_THRESHOLD": str(THRESHOLD),
    })  # fmt: skip
    try:
        page = {"user_id": person, "slots": [{"id": "hero", "kind": "content"},
                                             {"id": "picks", "k": 5}]}  # fmt: skip
        profile = _post(url, "/v1/profiles", {"user_id": person}, key).json()
        assert profile["segment"] == lapsed
        assert profile["churn_probability"] == pytest.approx(churn_before)
        before = _post(url, "/v1/personalize", page, key).json()
        assert [b["block_id"] for b in before["slots"][0]["content"]] == ["win-back"]
        # CDNOW has no catalog: recommendation slots are empty, rules and content are served.
        assert before["slots"][1]["items"] == [] and before["model_version"] == "no-recommender"

        purchase = {"user_id": person, "event_type": "purchase", "value": 45.0, "quantity": 3,
                    "timestamp": "1998-07-01T15:00:00Z", "consent": ["personalization"]}  # fmt: skip
        # another lapsed customer withdrew marketing: their change is scored, not sent out
        withdrawn = {"user_id": quiet, "purposes": {"marketing": False}}
        assert _post(url, "/v1/consent", withdrawn, key).status_code == 200
        theirs = _post(url, "/v1/events", {"events": [{**purchase, "user_id": quiet}]}, key)
        assert theirs.json()["segment_changes"][0]["user_id"] == quiet
        answer = _post(url, "/v1/events", {"events": [purchase]}, key)
        assert answer.status_code == 200, answer.text
        changes = answer.json()["segment_changes"]
        assert len(changes) == 1 and changes[0]["user_id"] == person
        assert changes[0]["from"] == lapsed and changes[0]["to"] != lapsed

        after = _post(url, "/v1/profiles", {"user_id": person}, key).json()
        assert after["segment"] == changes[0]["to"]
        assert after["churn_probability"] < churn_before
        assert after["expected_value"] > profile["expected_value"]
        page_after = _post(url, "/v1/personalize", page, key).json()
        assert page_after["slots"][0]["content"] == []  # no longer lapsed: no win-back

        # the churn probability crossing the alert threshold is a webhook of its own
        crossed = after["churn_probability"] < THRESHOLD
        wanted = 3 if crossed else 2  # segment_changed (failed once, then sent), churn_crossed
        deadline = time.monotonic() + 30
        while len(_Receiver.received) < wanted and time.monotonic() < deadline:
            time.sleep(0.1)
        hooks = [(h, body, status, json.loads(body)) for h, body, status in _Receiver.received]
        segment = [x for x in hooks if x[3]["topic"] == "segment_changed"]
        (first_headers, first, failed, _), (headers, body, status, hook) = segment[:2]
        assert (failed, status) == (503, 200)
        assert (
            first == body and first_headers[ID_HEADER] == headers[ID_HEADER]
        )  # one webhook, retried
        secret = local_settings(home).webhook_key()
        assert verify(secret, headers[SIGNATURE_HEADER], body)
        assert not verify(b"another key", headers[SIGNATURE_HEADER], body)
        assert hook["data"]["user_id"] == person and hook["data"]["from"] == lapsed
        assert hook["data"]["to"] == changes[0]["to"]  # and not the quiet one's
        churn = [x[3]["data"] for x in hooks if x[3]["topic"] == "churn_crossed"]
        if crossed:
            assert churn == [{
                "dataset": "cdnow", "user_id": person, "threshold": THRESHOLD,
                "from": pytest.approx(churn_before), "to": pytest.approx(after["churn_probability"]),
                "direction": "down", "at": "1998-07-01T15:00:00+00:00", "segment": changes[0]["to"],
            }]  # fmt: skip
        else:
            assert churn == []
    finally:
        stop_local_service(process)
        receiver.shutdown()
