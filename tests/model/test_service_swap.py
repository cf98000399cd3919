"""A running service follows the registry: when ``@champion`` moves, it loads the new
model off the request path and swaps it in, with no restart and no failed request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from bespoke.serving.local import local_settings, start_local_service, stop_local_service
from bespoke.training.registry import Registry
from bespoke.training.train import train_recommender

DATASET = "ml-100k"


def test_a_new_champion_is_swapped_in_while_requests_flow(service_home: tuple[Path, str]) -> None:
    home, key = service_home
    url, process = start_local_service(home, env={"BESPOKE_MODEL_POLL_S": "0.5"})
    stop = threading.Event()
    seen: list[list[tuple[int, str | None]]] = [[], []]  # per client: (status, version)

    def client(answers: list[tuple[int, str | None]], offset: int) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as http:
            i = offset
            while not stop.is_set():
                reply = http.post("/v1/recommend", json={"user_id": str(1 + i % 900), "k": 5})
                ok = reply.status_code == 200
                answers.append((reply.status_code, reply.json()["model_version"] if ok else None))
                i += 1

    clients = [threading.Thread(target=client, args=(seen[n], 450 * n)) for n in range(2)]
    try:
        for thread in clients:
            thread.start()
        settings = local_settings(home)
        trained = train_recommender(settings, DATASET, "popularity")  # version 2
        assert trained.version == "2"
        Registry.of(settings).promote(
            "recommender", DATASET, "2"
        )  # by hand: popularity would not pass the gate
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            v and v.startswith("recommender-v2") for answers in seen for _, v in answers[-5:]
        ):
            time.sleep(0.2)
        time.sleep(1.0)  # a little more traffic on the new model
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
        stop_local_service(process)
    for answers in seen:
        statuses = {status for status, _ in answers}
        assert statuses == {200}, statuses
        versions = [version for _, version in answers]
        assert versions[0].startswith("recommender-v1")
        assert versions[-1].startswith("recommender-v2"), versions[-5:]
        # Each client sees one switch, never the old model again after the new one.
        switched = [i for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
        assert len(switched) == 1, switched
