"""The service probed as an operator would: bounds on every input (422 naming the field,
never 500), a body size limit (413 naming it), one key precedence, exact open routes, an
access log that is written and holds no user ids, no raw PII in any log or store, and
workers that die with their server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bespoke.serving.local import LOG_FILE, start_local_service, stop_local_service

EVENT = {"user_id": "hardy", "event_type": "view", "item_id": "50",
         "timestamp": "2026-11-20T12:00:00Z", "consent": ["personalization"]}  # fmt: skip


def _post(url: str, path: str, body: object, key: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"X-API-Key": key, **headers}, timeout=60)


def _fields(answer: httpx.Response) -> list[list]:
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert isinstance(body, dict) and body["error"]
    return [error["loc"] for error in body["detail"]]


# --- bounds ----------------------------------------------------------------------------------


def test_a_quantity_beyond_the_stored_integer_is_422_naming_it(service) -> None:
    url, key = service
    for quantity in (2**63, -(2**63) - 1):
        answer = _post(url, "/v1/events", {"events": [{**EVENT, "quantity": quantity}]}, key)
        assert _fields(answer) == [["events", 0, "quantity"]]
    biggest = _post(url, "/v1/events", {"events": [{**EVENT, "quantity": 2**63 - 1}]}, key)
    assert biggest.status_code == 200 and biggest.json()["accepted"] == 1


def test_nan_and_infinity_are_refused_everywhere(service) -> None:
    url, key = service
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    for token in ("NaN", "Infinity", "-Infinity"):
        bodies = {
            "/v1/recommend": f'{{"user_id": "1", "context": {{"score": {token}}}}}',
            "/v1/personalize": f'{{"slots": [{{"id": "a"}}], "context": {{"x": [{token}]}}}}',
            "/v1/events": f'{{"events": [{{"user_id": "1", "event_type": "view", "value": {token}}}]}}',
        }
        for route, body in bodies.items():
            answer = httpx.post(f"{url}{route}", content=body, headers=headers, timeout=30)
            (where,) = _fields(answer)
            assert where[0] in ("context", "events"), (route, where)


def test_ids_are_at_most_200_characters_on_every_route(service) -> None:
    url, key = service
    long = "x" * 201
    assert _fields(_post(url, "/v1/recommend", {"user_id": long}, key)) == [["user_id"]]
    assert _fields(_post(url, "/v1/recommend", {"anonymous_id": long}, key)) == [["anonymous_id"]]
    assert _fields(
        _post(url, "/v1/personalize", {"user_id": long, "slots": [{"id": "a"}]}, key)
    ) == [["user_id"]]
    assert _fields(_post(url, "/v1/events", {"events": [{**EVENT, "item_id": long}]}, key)) == [
        ["events", 0, "item_id"]
    ]
    assert _fields(_post(url, "/v1/profiles", {"user_id": long}, key)) == [["user_id"]]
    got = httpx.get(f"{url}/v1/profiles/{long}", headers={"X-API-Key": key}, timeout=30)
    assert _fields(got) == [["path", "id"]]
    assert _post(url, "/v1/recommend", {"user_id": "x" * 200, "k": 1}, key).status_code == 200


def test_post_profiles_answers_as_get_does(service) -> None:
    url, key = service
    headers = {"X-API-Key": key}
    assert _fields(_post(url, "/v1/profiles", {"user_id": "1", "extra": True}, key)) == [["extra"]]
    for person in ("1", "nobody-at-all"):
        posted = _post(url, "/v1/profiles", {"user_id": person}, key)
        fetched = httpx.get(f"{url}/v1/profiles/{person}", headers=headers, timeout=30)
        assert posted.status_code == fetched.status_code
        assert posted.json() == fetched.json()
    assert posted.status_code == 404 and "nobody" not in posted.text  # the id is not echoed


def test_a_body_over_the_limit_is_413_naming_it_and_nothing_is_stored(service) -> None:
    url, key = service
    limit = 2 * 1024 * 1024  # the default BESPOKE_SERVING_MAX_BODY_BYTES
    huge = {"events": [{**EVENT, "user_id": "huge", "context": {"page": "p" * (limit + 1)}}]}
    for route in ("/v1/events", "/v1/recommend", "/v1/personalize", "/v1/profiles"):
        answer = _post(url, route, huge, key)
        assert answer.status_code == 413, route
        assert answer.json() == {"error": f"the request body is larger than {limit} bytes",
                                 "limit": limit}  # fmt: skip

    def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"events": [{"user_id": "huge", "event_type": "view", "context": {"page": "'
        for _ in range(3):
            yield b"p" * (1024 * 1024)
        yield b'"}}]}'

    chunked = httpx.post(f"{url}/v1/events", content=chunks(), timeout=60,
                         headers={"X-API-Key": key, "Content-Type": "application/json"})  # fmt: skip
    assert chunked.status_code == 413
    # a field within the body limit but past its own bound is a 422
    long_page = {"events": [{**EVENT, "user_id": "huge", "context": {"page": "p" * 5000}}]}
    assert _fields(_post(url, "/v1/events", long_page, key)) == [["events", 0, "context", "page"]]
    profile = httpx.get(f"{url}/v1/profiles/huge", headers={"X-API-Key": key}, timeout=30)
    assert profile.status_code == 404  # nothing of any of it was stored


# --- auth and routing ------------------------------------------------------------------------


def test_one_key_precedence_bearer_first_blank_headers_absent(service) -> None:
    url, key = service
    body = {"user_id": "1", "k": 1}

    def status(**headers: str) -> int:
        return httpx.post(f"{url}/v1/recommend", json=body, headers=headers, timeout=30).status_code

    assert status(**{"X-API-Key": "", "Authorization": f"Bearer {key}"}) == 200
    assert status(**{"X-API-Key": "bsk_wrong", "Authorization": f"Bearer {key}"}) == 200
    assert status(**{"X-API-Key": key, "Authorization": "Bearer bsk_wrong"}) == 403
    assert status(**{"X-API-Key": key, "Authorization": "Bearer"}) == 200
    assert status(**{"X-API-Key": key, "Authorization": "Basic dXNlcjpwYXNz"}) == 200
    assert status(**{"X-API-Key": "", "Authorization": ""}) == 401


def test_only_json_bodies_and_only_exact_open_routes(service) -> None:
    url, key = service
    for media in ("application/jsonfoo", "application/json-patch+json", "text/plain"):
        answer = httpx.post(f"{url}/v1/recommend", content=b"{}", timeout=30,
                            headers={"X-API-Key": key, "Content-Type": media})  # fmt: skip
        assert answer.status_code == 415, media
    fine = httpx.post(f"{url}/v1/recommend", content=b'{"k": 1}', timeout=30,
                      headers={"X-API-Key": key, "Content-Type": "Application/JSON; charset=utf-8"})  # fmt: skip
    assert fine.status_code == 200
    for path in ("/metricsfoo", "/healthz/", "/docs.jsonx", "/readyz/../v1/recommend"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 401, path
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200


# --- logs and stores -------------------------------------------------------------------------

PII = ["pii.person@example.com", "+1 555 013 2671", "198.51.100.77"]


def _everything_under(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())


def test_no_raw_pii_in_any_log_or_store_and_one_access_line_per_request(service_home) -> None:
    home, key = service_home
    url, process = start_local_service(home)
    email, phone, ip = PII
    person = {**EVENT, "user_id": "pii-person", "email": email, "phone": phone,
              "context": {"ip": ip, "page": "/home"}}  # fmt: skip
    sent = []
    try:
        requests = [
            ("/v1/events", {"events": [person]}, 200),  # stored, as pseudonyms
            ("/v1/events", {"events": [{**person, "quantity": "three"}]}, 422),
            ("/v1/events", {"events": [{**person, "value": "NaN-ish"}]}, 422),
            ("/v1/events", {"events": [{**person, "bogus": email}]}, 422),
            ("/v1/events", {"events": [{**person, "user_id": email}]}, 200),  # refused per item
            ("/v1/events", {"events": [{**person, "email": email * 20}]}, 422),  # too long
            ("/v1/recommend", {"user_id": "pii-person", "context": {"email": email}}, 200),
            ("/v1/recommend", {"user_id": "pii-person", "k": 0, "context": {"phone": phone}}, 422),
        ]
        for n, (route, body, expected) in enumerate(requests):
            answer = _post(url, route, body, key, **{"X-Request-ID": f"pii-{n}"})
            assert answer.status_code == expected, (route, answer.text)
            for value in PII:
                assert value not in answer.text, (route, value)  # no answer echoes them
            sent.append(f"pii-{n}")
        secret = httpx.get(f"{url}/v1/profiles/secret-person-id", timeout=30,
                           headers={"X-API-Key": key, "X-Request-ID": "pii-profile"})  # fmt: skip
        assert secret.status_code == 404
        sent.append("pii-profile")
        flush = subprocess.run(
            [str(Path(sys.executable).with_name("bespoke")), "events", "flush"],
            env={**os.environ, **_environment(home)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert flush.returncode == 0 and "1 flushed → 1 stored" in flush.stdout, flush.stdout
    finally:
        stop_local_service(process)
    log = (home / LOG_FILE).read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"request_id"')]
    by_id = {line["request_id"]: line for line in lines}
    assert set(sent) <= set(by_id), "one access-log line per request"
    assert by_id["pii-1"]["status"] == 422 and by_id["pii-1"]["route"] == "/v1/events"
    assert by_id["pii-profile"]["route"] == "/v1/profiles/{id}"
    assert "secret-person-id" not in log and "pii-person" not in log  # no user ids
    assert "validation error" in log  # the failures are logged ... without their values
    stored = _everything_under(home)
    for value in PII:
        assert value.encode() not in stored, value  # lake, inbox, WAL, logs, keys
    assert b"lake" in b"".join(p.name.encode() for p in home.iterdir())  # the flush wrote


def _environment(home: Path) -> dict[str, str]:
    from bespoke.serving.local import local_settings

    return local_settings(home).as_environment()


# --- workers die with their server -----------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _stat(pid: int) -> list[str] | None:
    """A process's /proc stat fields after its name (state first), or None once gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text.rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid
    ]


def _running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def test_a_kill_9_of_the_server_leaves_no_worker_on_the_port(service_home) -> None:
    home, key = service_home
    url, process = start_local_service(home, env={"BESPOKE_SERVING_WORKERS": "2"})
    port = int(url.rsplit(":", 1)[1])
    workers = _children(process.pid)
    assert len(workers) == 2
    # each worker has a session of its own, so a signal to the server's group misses it
    assert all(os.getsid(worker) == worker != process.pid for worker in workers)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(worker) for worker in workers):
        time.sleep(0.2)
    assert [worker for worker in workers if _running(worker)] == [], "orphaned workers"
    assert _port_free(port)
    again, restarted = start_local_service(home, port=port)
    try:
        assert _post(again, "/v1/recommend", {"user_id": "1", "k": 2}, key).status_code == 200
    finally:
        stop_local_service(restarted)
