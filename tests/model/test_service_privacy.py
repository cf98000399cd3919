"""Consent and erasure through the real ``bentoml serve`` with two workers: a withdrawal
makes the next answer a stranger's and refuses the person's events; a deletion erases the
person from every store, reports each store's verification, empties every worker's answer
cache, and answers 404/409/422 for an unknown person, a busy store and a malformed call,
changing nothing; profile reads, consent changes and deletions are in the audit log with
the caller's key name and pseudonyms only."""

from __future__ import annotations

import fcntl
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bespoke.privacy.audit import AuditLog
from bespoke.serving.local import LOG_FILE, start_local_service, stop_local_service

CONSENT = ["personalization"]


def _post(url: str, path: str, body: dict, key: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"X-API-Key": key}, timeout=120)


def _get(url: str, path: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}{path}", headers={"X-API-Key": key}, timeout=30)


def _recommend(url: str, key: str, user: str | None) -> dict:
    body = {"k": 10} | ({"user_id": user} if user else {})
    answer = _post(url, "/v1/recommend", body, key)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_consent_and_erasure_through_the_service(service_home) -> None:
    home, key = service_home
    url, process = start_local_service(home, env={"BESPOKE_SERVING_WORKERS": "2"})
    try:
        stranger = [i["item_id"] for i in _recommend(url, key, None)["items"]]
        mine = _recommend(url, key, "1")
        assert mine["personalized"] and [i["item_id"] for i in mine["items"]] != stranger

        # --- consent ---------------------------------------------------------------------
        bad = _post(url, "/v1/consent", {"user_id": "1", "purposes": {"profiling": False}}, key)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-3:] == [
            "purposes", "profiling", "[key]"]  # fmt: skip
        naive = {"user_id": "1", "purposes": {"personalization": False},
                 "decided_at": "2026-12-01T10:00:00"}  # fmt: skip
        assert _post(url, "/v1/consent", naive, key).status_code == 422
        nobody = _post(url, "/v1/consent", {"purposes": {"marketing": True}}, key)
        assert nobody.status_code == 422 and "exactly one" in nobody.text
        assert _recommend(url, key, "1")["personalized"]  # none of those was recorded

        withdrawn = _post(url, "/v1/consent", {"user_id": "1", "source": "cmp",
                                               "purposes": {"personalization": False}}, key)  # fmt: skip
        assert withdrawn.status_code == 200, withdrawn.text
        assert withdrawn.json()["consent"]["personalization"]["granted"] is False
        # both workers answer as for a stranger at once (the cached answer is not reused)
        for _ in range(4):
            answer = _recommend(url, key, "1")
            assert not answer["personalized"] and answer["experiments"] == []
            assert [i["item_id"] for i in answer["items"]] == stranger
        event = {"user_id": "1", "event_type": "click", "item_id": "50", "consent": CONSENT}
        refused = _post(url, "/v1/events", {"events": [event]}, key).json()
        assert refused["rejected"] == 1 and refused["errors"][0]["field"] == "consent"
        _post(url, "/v1/consent", {"user_id": "1", "purposes": {"personalization": True}}, key)
        assert _recommend(url, key, "1")["personalized"]

        # --- deletion --------------------------------------------------------------------
        with ThreadPoolExecutor(4) as pool:  # both workers cache user 2's answer
            assert all(a["personalized"] for a in pool.map(lambda _: _recommend(url, key, "2"),
                                                           range(8)))  # fmt: skip
        assert _get(url, "/v1/profiles/2", key).status_code == 200
        for body, status in (({}, 422), ({"user_id": "2", "email": "a@b.example"}, 422),
                             ({"email": "not-an-address"}, 422),
                             ({"user_id": "no-such-person-93"}, 404)):  # fmt: skip
            answer = _post(url, "/v1/privacy/deletions", body, key)
            assert answer.status_code == status, (body, answer.text)
        lock = home / "online.db.privacy.lock"
        with lock.open("w") as held:  # another deletion is running
            fcntl.flock(held, fcntl.LOCK_EX)
            busy = _post(url, "/v1/privacy/deletions", {"user_id": "2"}, key)
        assert busy.status_code == 409 and "another deletion" in busy.json()["error"]
        assert _get(url, "/v1/profiles/2", key).status_code == 200  # nothing changed

        done = _post(url, "/v1/privacy/deletions", {"user_id": "2"}, key)
        assert done.status_code == 200, done.text
        request = done.json()
        assert request["status"] == "done", request
        assert {"online", "lake", "answer_caches"} <= set(request["results"])
        assert all(r["verified"] for r in request["results"].values())
        assert request["results"]["lake"]["removed"]["events"] == 62  # user 2's ratings
        assert _get(url, f"/v1/privacy/deletions/{request['id']}", key).json() == request
        assert _get(url, "/v1/privacy/deletions/" + "0" * 32, key).status_code == 404
        assert _get(url, "/v1/privacy/deletions/not-an-id", key).status_code == 422
        assert _get(url, "/v1/profiles/2", key).status_code == 404
        for _ in range(4):  # no worker serves what it had cached about them
            answer = _recommend(url, key, "2")
            assert (
                not answer["personalized"] and [i["item_id"] for i in answer["items"]] == stranger
            )
        again = _post(url, "/v1/privacy/deletions", {"user_id": "2"}, key)
        assert again.status_code == 404  # nothing is held about them any more
        # each worker that answered since loaded its models again from the re-exported
        # files (its copy in memory still held them)
        log = home / LOG_FILE
        deadline = time.monotonic() + 60
        while log.read_text().count("models reloaded after an erasure") < 1:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            _recommend(url, key, None)
            time.sleep(0.5)
    finally:
        stop_local_service(process)

    log = AuditLog(home / "audit" / "audit.jsonl")
    assert log.verify().ok
    entries = log.entries()
    actions = [e["action"] for e in entries]
    assert actions.count("consent.changed") == 2 and "deletion.done" in actions
    reads = [e for e in entries if e["action"] == "profile.read"]
    assert len(reads) == 2 and all(e["actor"] == "tests" and len(e["person"]) == 64 for e in reads)
    text = (home / "audit" / "audit.jsonl").read_text()
    assert '"user_id:2"' not in text and "no-such-person-93" not in text
