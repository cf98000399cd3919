"""Anonymous to known in real time, through the real ``bentoml serve``: an identify call
(or any event carrying both ids) makes the visitor's live history the user's within the
request, the very next recommendation reflects it, a shared device is refused, and
concurrent identify calls through two workers stay consistent."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from bespoke.features.schema import person_id_of
from bespoke.serving.local import start_local_service, stop_local_service

CONSENT = ["personalization"]
WEEKDAY = {"day_of_week": "wednesday"}


def _post(url: str, path: str, body: dict, key: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"X-API-Key": key}, timeout=30)


def _browse(url: str, key: str, cookie: str, items: list[str]) -> None:
    events = [
        {"anonymous_id": cookie, "event_type": "rate", "item_id": item, "value": 5,
         "timestamp": f"2026-11-20T12:0{i}:00Z", "consent": CONSENT}
        for i, item in enumerate(items)
    ]  # fmt: skip
    assert _post(url, "/v1/events", {"events": events}, key).json()["accepted"] == len(items)


def test_identify_makes_the_anonymous_history_the_users_at_once(service) -> None:
    url, key = service
    asked = {"user_id": "returning-42", "k": 10, "context": WEEKDAY}
    before = [i["item_id"] for i in _post(url, "/v1/recommend", asked, key).json()["items"]]
    seen = before[:3]  # what the visitor watched before logging in
    _browse(url, key, "cookie-42", seen)
    answer = _post(url, "/v1/identify", {"user_id": "returning-42", "anonymous_id": "cookie-42",
                                         "traits": {"email": "Ret@Example.org"},
                                         "consent": CONSENT}, key)  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["accepted"] is True and body["person_id"] == person_id_of("user_id", "returning-42")
    assert body["merge"] == {"anonymous_id": "cookie-42", "user_id": "returning-42",
                             "status": "merged", "events_moved": 3, "reason": None}  # fmt: skip
    after = [i["item_id"] for i in _post(url, "/v1/recommend", asked, key).json()["items"]]
    assert not set(seen) & set(after)  # what they saw anonymously is filtered at once
    assert after != before
    profile = _post(url, "/v1/profiles", {"user_id": "returning-42"}, key).json()
    assert {"type": "anonymous_id", "id": "cookie-42"} in profile["identifiers"]
    assert sorted(e["item_id"] for e in profile["recent"] if e["event_type"] == "rate") == sorted(
        seen
    )
    assert "Ret@Example.org" not in answer.text + str(profile)
    # The cookie now answers as its user; its later events are the user's.
    as_cookie = _post(url, "/v1/profiles", {"user_id": "cookie-42", "anonymous": True}, key).json()
    assert as_cookie["merged_into"] == "returning-42"
    again = _post(url, "/v1/identify", {"user_id": "returning-42", "anonymous_id": "cookie-42",
                                        "consent": CONSENT}, key).json()  # fmt: skip
    assert again["merge"]["status"] == "already"


def test_a_cookie_of_another_user_is_not_moved(service) -> None:
    url, key = service
    _browse(url, key, "family-tablet", ["50"])
    first = _post(url, "/v1/identify", {"user_id": "parent", "anonymous_id": "family-tablet",
                                        "consent": CONSENT}, key).json()  # fmt: skip
    assert first["merge"]["status"] == "merged"
    second = _post(url, "/v1/events", {"events": [
        {"user_id": "child", "anonymous_id": "family-tablet", "event_type": "view",
         "item_id": "181", "consent": CONSENT}]}, key).json()  # fmt: skip
    assert second["merges"][0]["status"] == "refused"
    assert "already belongs to user parent" in second["merges"][0]["reason"]
    child = _post(url, "/v1/profiles", {"user_id": "child"}, key).json()
    assert [e["item_id"] for e in child["recent"]] == ["181"]  # not the parent's history


def test_bad_identify_calls_name_the_field(service) -> None:
    url, key = service
    missing = _post(url, "/v1/identify", {"anonymous_id": "c"}, key)
    assert missing.status_code == 422 and "user_id" in missing.text
    extra = _post(url, "/v1/identify", {"user_id": "u", "traits": {"age": 3}}, key)
    assert extra.status_code == 422 and "age" in extra.text
    blank = _post(url, "/v1/identify", {"user_id": " u"}, key)
    assert blank.status_code == 422
    unconsented = _post(url, "/v1/identify", {"user_id": "u9", "anonymous_id": "c9"}, key).json()
    assert unconsented["accepted"] is False and unconsented["merge"] is None
    assert unconsented["errors"][0]["field"] == "consent"


def test_concurrent_identify_calls_through_two_workers_stay_consistent(service_home) -> None:
    home, key = service_home
    url, process = start_local_service(home, env={"BESPOKE_SERVING_WORKERS": "2"})
    try:
        for n in range(10):
            _browse(url, key, f"race-{n}", [str(100 + n), str(200 + n)])
        # Each cookie is claimed by two users at once, twenty calls over two workers.
        calls = [(f"race-{n}", f"user-{n}-{side}") for n in range(10) for side in "ab"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(
                lambda c: _post(url, "/v1/identify", {"user_id": c[1], "anonymous_id": c[0],
                                                      "consent": CONSENT}, key).json(),
                calls,
            ))  # fmt: skip
        for n in range(10):
            mine = [
                a for a, (cookie, _) in zip(answers, calls, strict=True) if cookie == f"race-{n}"
            ]
            statuses = sorted(a["merge"]["status"] for a in mine)
            assert statuses == ["merged", "refused"], mine
            winner = next(a["user_id"] for a in mine if a["merge"]["status"] == "merged")
            loser = next(a["user_id"] for a in mine if a["merge"]["status"] == "refused")
            won = _post(url, "/v1/profiles", {"user_id": winner}, key).json()
            assert sorted(e["item_id"] for e in won["recent"] if e["event_type"] == "rate") == [
                str(100 + n), str(200 + n)]  # fmt: skip
            lost = _post(url, "/v1/profiles", {"user_id": loser}, key).json()
            assert [e for e in lost["recent"] if e["event_type"] == "rate"] == []
    finally:
        stop_local_service(process)
