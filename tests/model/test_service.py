"""The real ``bentoml serve`` on a free loopback port, over a real lake, MLflow store,
online store and API key: every route, auth failures, and "an event changes the very
next recommendation"."""

from __future__ import annotations

import httpx


def _post(url: str, path: str, body: dict, key: str | None) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30)


def test_health_and_metrics_need_no_key(service) -> None:
    url, _ = service
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert "bentoml" in httpx.get(f"{url}/metrics").text.lower()


def test_every_other_route_needs_a_valid_key(service) -> None:
    url, key = service
    body = {"user_id": "1", "k": 3}
    assert _post(url, "/v1/recommend", body, None).status_code == 401
    assert _post(url, "/v1/recommend", body, "bsk_not-a-key").status_code == 403
    assert _post(url, "/v1/profiles", {"user_id": "1"}, None).status_code == 401
    bearer = httpx.post(f"{url}/v1/recommend", json=body,
                        headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    assert bearer.status_code == 200


#: The shipped rules boost comedies at the weekend (``context.day_of_week``, from the
#: clock unless the request says): the reasons checked here are the models' own, any day.
WEEKDAY = {"day_of_week": "wednesday"}


def test_a_stranger_gets_the_popularity_fallback(service) -> None:
    url, key = service
    body = {"user_id": "nobody-yet", "k": 5, "context": WEEKDAY}
    answer = _post(url, "/v1/recommend", body, key).json()
    assert len(answer["items"]) == 5
    assert {item["reason"] for item in answer["items"]} == {"fallback:popularity"}
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    assert answer["model_version"] == "recommender-v1+ranker-v1"


def test_an_event_changes_the_very_next_recommendation(service) -> None:
    url, key = service
    asked = {"user_id": "fresh", "k": 5, "context": WEEKDAY}
    before = _post(url, "/v1/recommend", asked, key).json()
    first = before["items"][0]["item_id"]
    event = {"user_id": "fresh", "event_type": "rate", "item_id": first, "value": 5,
             "timestamp": "2026-11-20T12:00:00Z", "consent": ["personalization"]}  # fmt: skip
    unconsented = {**event, "item_id": "172", "consent": ["analytics"]}
    stored = _post(url, "/v1/events", {"events": [event, unconsented]}, key).json()
    assert (stored["accepted"], stored["rejected"]) == (1, 1)
    assert stored["errors"][0]["index"] == 1
    after = _post(url, "/v1/recommend", asked, key).json()
    assert first not in [item["item_id"] for item in after["items"]]
    (reason,) = {item["reason"] for item in after["items"]}
    assert reason.startswith("model:") and reason != "model:ranker"  # the recommender's own
    ranked = _post(url, "/v1/recommend", {**asked, "rank": True}, key).json()
    assert first not in [item["item_id"] for item in ranked["items"]]
    assert {item["reason"] for item in ranked["items"]} == {"model:ranker"}
    assert all(0 <= item["score"] <= 1 for item in ranked["items"])  # click probabilities
    profile = _post(url, "/v1/profiles", {"user_id": "fresh"}, key).json()
    assert [e["item_id"] for e in profile["recent"]] == [first]  # the unconsented one is not kept
    fetched = httpx.get(f"{url}/v1/profiles/fresh", headers={"X-API-Key": key}, timeout=30)
    assert fetched.status_code == 200 and fetched.json() == profile


def test_get_profile_shows_a_seeded_person_and_refuses_the_rest(service) -> None:
    url, key = service
    headers = {"X-API-Key": key}
    one = httpx.get(f"{url}/v1/profiles/1", headers=headers, timeout=30)
    assert one.status_code == 200, one.text
    assert one.json()["attributes"]["age"] == 24 and one.json()["known"]
    rated = {event["item_id"] for event in one.json()["recent"]}
    assert len(rated) == len(one.json()["recent"]) > 100  # the lake's ratings, seeded
    answer = _post(url, "/v1/recommend", {"user_id": "1", "k": 20}, key).json()
    assert not rated & {item["item_id"] for item in answer["items"]}  # seen ones filtered
    assert httpx.get(f"{url}/v1/profiles/nobody-at-all", headers=headers).status_code == 404
    assert httpx.get(f"{url}/v1/profiles/1").status_code == 401
    assert httpx.get(f"{url}/v1/profiles/1", headers={"X-API-Key": "bsk_no"}).status_code == 403
    bad = httpx.get(f"{url}/v1/profiles/1?anonymous=maybe", headers=headers)
    assert bad.status_code == 422 and "anonymous" in bad.text
    assert httpx.get(f"{url}/v1/profiles/{'x' * 201}", headers=headers).status_code == 422


def test_exclude_and_categories_are_respected(service) -> None:
    url, key = service
    answer = _post(url, "/v1/recommend",
                   {"user_id": "x", "k": 10, "exclude": ["50"], "categories": ["Horror"]},
                   key).json()  # fmt: skip
    assert answer["items"] and "50" not in [item["item_id"] for item in answer["items"]]


def test_bad_requests_are_refused_with_the_field_named(service) -> None:
    url, key = service
    unknown = _post(url, "/v1/recommend", {"user_id": "1", "bogus": 1}, key)
    assert unknown.status_code == 422
    assert "bogus" in unknown.text
    too_many = _post(url, "/v1/recommend", {"user_id": "1", "k": 1000}, key)
    assert too_many.status_code == 422 and "k" in too_many.text
    bad_event = _post(
        url, "/v1/events", {"events": [{"user_id": "1", "event_type": "teleport"}]}, key
    )
    assert bad_event.status_code == 422 and "event_type" in bad_event.text


def test_an_oversized_batch_is_413_and_applies_nothing(service) -> None:
    url, key = service
    event = {"user_id": "bulk", "event_type": "rate", "item_id": "1", "value": 4,
             "timestamp": "2026-11-20T12:00:00Z", "consent": ["personalization"]}  # fmt: skip
    answer = _post(url, "/v1/events", {"events": [event] * 1001}, key)
    assert answer.status_code == 413
    assert answer.json() == {"error": "at most 1000 events per request, got 1001", "limit": 1000}
    assert _post(url, "/v1/profiles", {"user_id": "bulk"}, key).status_code == 404  # unknown


def test_personalize_fills_every_slot_without_repeating_items(service) -> None:
    url, key = service
    body = {
        "user_id": "fresh-page",
        "slots": [
            {"id": "hero", "kind": "content"},
            {"id": "top", "k": 4},
            {"id": "more", "k": 4},
        ],
        "context": {"channel": "web"},
    }
    answer = _post(url, "/v1/personalize", body, key)
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert [slot["id"] for slot in page["slots"]] == ["hero", "top", "more"]
    assert page["variant"] is None  # no experiment runs yet: the hook answers the control
    top, more = ([item["item_id"] for item in page["slots"][i]["items"]] for i in (1, 2))
    assert len(top) == len(more) == 4
    assert not set(top) & set(more)
    assert page["slots"][0]["items"] == []
    bad = _post(url, "/v1/personalize", {**body, "slots": [{"id": "x", "kind": "banner"}]}, key)
    assert bad.status_code == 422 and "kind" in bad.text


def test_every_answer_carries_a_request_id(service) -> None:
    url, key = service
    mine = httpx.post(f"{url}/v1/recommend", json={"user_id": "1", "k": 2},
                      headers={"X-API-Key": key, "X-Request-ID": "req-42"}, timeout=30)  # fmt: skip
    assert mine.headers["x-request-id"] == "req-42"
    fresh = _post(url, "/v1/recommend", {"user_id": "1", "k": 2}, None)
    assert fresh.status_code == 401 and len(fresh.headers["x-request-id"]) == 32


def test_the_round_trip_shows_a_page_change_after_two_events(service_home) -> None:
    """What `make demo` ends with: the real service over a home's settings, a page, two
    ratings, the page again; its key is revoked afterwards."""
    from bespoke.serving.keys import ApiKeys
    from bespoke.serving.local import local_settings, round_trip

    home, _ = service_home
    settings = local_settings(home)
    trip = round_trip(settings, "ml-100k", person="1")
    before = [item["item_id"] for item in trip.before["slots"][0]["items"]]
    after = [item["item_id"] for item in trip.after["slots"][0]["items"]]
    rated = [event["item_id"] for event in trip.events]
    assert trip.accepted == 2 and rated == before[:2]
    assert len(after) == 5 and not set(rated) & set(after)
    keys = ApiKeys(settings.online_store_url or "").list()
    assert [k.active for k in keys if k.name.startswith("round-trip-")] == [False]


def test_answers_carry_the_catalog_fields_a_page_renders_and_distinct_ranked_scores(
    service,
) -> None:
    url, key = service
    body = {"user_id": "1", "slots": [{"id": "top", "k": 8}], "context": WEEKDAY}
    page = _post(url, "/v1/personalize", body, key).json()
    items = page["slots"][0]["items"]
    assert len(items) == 8
    stranger = _post(url, "/v1/recommend", {"user_id": "nobody", "k": 50}, key).json()["items"]
    assert all(item["title"] and item["categories"] and item["url"] for item in items)
    assert all(isinstance(item["release_year"], int) for item in items)
    # ML-100K's catalog: item 50 is Star Wars (1977), a popular fallback for a stranger
    star_wars = [item for item in stranger if item["item_id"] == "50"]
    assert star_wars and star_wars[0]["title"].startswith("Star Wars")
    assert "Sci-Fi" in star_wars[0]["categories"] and star_wars[0]["release_year"] == 1977
    # ranked: the calibrated probabilities are as distinct as the order
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    # only the fields asked for; none at all
    only = _post(url, "/v1/recommend", {"user_id": "1", "k": 3, "fields": ["title"]}, key).json()
    assert all(set(item) == {"item_id", "score", "reason", "title"} for item in only["items"])
    bare = _post(url, "/v1/recommend", {"user_id": "1", "k": 3, "fields": []}, key).json()
    assert all(set(item) == {"item_id", "score", "reason"} for item in bare["items"])
    bad = _post(url, "/v1/recommend", {"user_id": "1", "fields": ["price"]}, key)
    assert bad.status_code == 422 and "fields" in bad.text
