"""The service on this machine, for tests, notebooks and a quick look: a home prepared
with MovieLens 100K and ``@champion`` models, and the real ``bentoml serve`` on a free
loopback port.

Everything lives under one folder (``home``): the event lake, the online store and API
keys, the MLflow store and artifacts, and the server's log (``<home>/service.log``)::

    from bespoke.serving.local import prepare_local_home, start_local_service, stop_local_service

    key = prepare_local_home(home, datasets_dir / "ml-100k")
    url, process = start_local_service(home)
    try:
        httpx.post(f"{url}/v1/recommend", json={"user_id": "1"}, headers={"X-API-Key": key})
    finally:
        stop_local_service(process)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bespoke.settings import SQLITE_PREFIX, Settings

#: What ``bentoml serve`` is given by default: the service class, imported from the package.
SERVICE = "bespoke.serving.service:Personalization"
#: The server's stdout and stderr, under the home.
LOG_FILE = "service.log"
#: What BentoML logs when a worker could not build the service.
STARTUP_FAILED = "Application startup failed"


def local_settings(home: str | Path) -> Settings:
    """Settings that keep every piece of state under ``home`` (MLflow included)."""
    home = Path(home).expanduser().resolve()
    return Settings(
        home=home,
        lake_url=str(home / "lake"),
        online_store_url=f"{SQLITE_PREFIX}{home / 'online.db'}",
        mlflow_tracking_uri=f"{SQLITE_PREFIX}{home / 'mlflow.db'}",
        mlflow_artifacts_dir=home / "artifacts",
        reports_dir=home / "reports",
    )


def service_environment(home: str | Path) -> dict[str, str]:
    """This process's environment, pointed at ``home`` as :func:`local_settings` is, with
    OpenTelemetry off unless the caller's environment says otherwise."""
    return {
        **os.environ,
        **local_settings(home).as_environment(),
        "OTEL_SDK_DISABLED": os.environ.get("OTEL_SDK_DISABLED", "true"),
    }


def prepare_local_home(
    home: str | Path,
    movielens_100k_dir: str | Path,
    *,
    ranker: bool = True,
    key_name: str = "local",
) -> str:
    """Ingest MovieLens 100K into ``home``, train and register an EASE ``@champion``
    recommender (and, with ``ranker``, a logistic-regression ``@champion`` ranker), seed the
    online store with the lake's people, create an API key named ``key_name`` and return
    its plaintext."""
    from bespoke.features.collect import ingest
    from bespoke.features.lake import Lake
    from bespoke.features.sources import movielens_100k
    from bespoke.serving.keys import ApiKeys
    from bespoke.training.train import train_recommender

    settings = local_settings(home)
    ingest(movielens_100k(Path(movielens_100k_dir)), Lake(str(settings.lake_url)),
           settings.pseudonym_key())  # fmt: skip
    train_recommender(settings, "ml-100k", "ease")
    if ranker:
        from bespoke.training.ranking import train_ranker

        # Logistic regression: quick, and on ML-100K it beats retrieval alone (the gate's
        # floor), where an untuned LightGBM does not and would be refused.
        train_ranker(settings, "ml-100k", objective="logistic")
    seed_online_store(settings, "ml-100k")
    return ApiKeys(settings.control_store_url or "").create(key_name)


def seed_online_store(settings: Settings, dataset: str, as_of: str | None = None) -> dict[str, int]:
    """Give the online store what the lake knows of the dataset's people: their latest
    attributes and their events (up to ``as_of``), their counters, and their segment,
    churn probability and expected value (from the trained models, as of ``as_of`` or
    the latest event), so that a service started on it knows them from the first request. Safe to run again: it replaces attributes and re-seeds
    histories without doubling live events."""
    from bespoke.features.lake import Lake
    from bespoke.segments.live import LiveScorer
    from bespoke.serving.store import open_store

    lake = Lake(str(settings.lake_url))
    (events,) = (
        lake.connect()
        .execute("SELECT count(*) FROM events WHERE dataset = ?", [dataset])
        .fetchone()
    )
    if not events:  # before anything is replaced: a typo must not empty the store
        raise ValueError(f"the lake at {settings.lake_url} holds no events of {dataset!r}")
    store = open_store(settings)
    people = store.load_attributes(lake, dataset)
    scorer = LiveScorer.load(settings, dataset)
    events = store.seed_history(lake, dataset, as_of=as_of, scorer=scorer)
    return {"people": people, "events": events}


@dataclass
class RoundTrip:
    """What :func:`round_trip` saw: the person's page before and after their events."""

    url: str
    person: str
    before: dict[str, Any]  # the /v1/personalize answer
    events: list[dict[str, Any]]  # what was posted to /v1/events
    accepted: int
    after: dict[str, Any]


def round_trip(
    settings: Settings, dataset: str = "ml-100k", person: str = "1", events: int = 2
) -> RoundTrip:
    """The whole loop once, on the real service: start ``bentoml serve`` over
    ``settings`` (their lake, registry and online store) on a free loopback port, ask
    ``/v1/personalize`` for ``person``, post ``events`` ratings of 5 for the first items it
    recommended, ask again, stop the service. A key is created for it and revoked after."""
    import uuid

    import httpx

    from bespoke.serving.keys import ApiKeys

    keys = ApiKeys(settings.control_store_url or "")
    name = f"round-trip-{uuid.uuid4().hex[:8]}"
    headers = {"X-API-Key": keys.create(name)}
    assert settings.home is not None
    env = {**settings.as_environment(), "BESPOKE_SERVING_DATASET": dataset}
    url, process = start_local_service(settings.home, env=env)
    page = {"user_id": person, "slots": [{"id": "for-you", "k": 5}]}
    try:
        before = httpx.post(f"{url}/v1/personalize", json=page, headers=headers, timeout=60)
        before.raise_for_status()
        items = [item["item_id"] for item in before.json()["slots"][0]["items"][:events]]
        posted = [
            {"user_id": person, "event_type": "rate", "item_id": item, "value": 5,
             "consent": ["personalization"]}
            for item in items
        ]  # fmt: skip
        answer = httpx.post(f"{url}/v1/events", json={"events": posted}, headers=headers,
                            timeout=60)  # fmt: skip
        answer.raise_for_status()
        after = httpx.post(f"{url}/v1/personalize", json=page, headers=headers, timeout=60)
        after.raise_for_status()
    finally:
        stop_local_service(process)
        keys.revoke(name)
    return RoundTrip(url, person, before.json(), posted, answer.json()["accepted"], after.json())


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_local_service(
    home: str | Path,
    port: int | None = None,
    *,
    target: str = SERVICE,
    env: Mapping[str, str] | None = None,
    timeout: float = 180.0,
) -> tuple[str, subprocess.Popen]:
    """Start ``bentoml serve target`` over ``home`` on ``127.0.0.1:port`` (a free port when
    ``None``) and return ``(url, process)`` once ``/readyz`` answers 200.

    ``target`` is the service (default :data:`SERVICE`) or a built Bento's tag; ``env``
    adds to or overrides the server's environment (:func:`service_environment`). The
    server runs in its own process group, in ``home``, with its output in
    ``<home>/service.log``; stop it with :func:`stop_local_service` (this process stops it
    on exit otherwise). Raises ``RuntimeError`` with the log's tail when the server exits
    before it is ready and ``TimeoutError`` when it is not ready within ``timeout`` seconds.
    """
    import httpx

    home = Path(home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml) if bentoml.exists() else "bentoml", "serve", target,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log_path = home / LOG_FILE
    logged_before = log_path.stat().st_size if log_path.exists() else 0  # an earlier run's
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env={**service_environment(home), **(env or {})},
            cwd=home,  # no .env of a checkout is read, nothing is written beside it
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers are stopped with it
        )
    # A notebook cell or a test that fails before stop_local_service still stops it.
    atexit.register(stop_local_service, process)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{tail}")
            # BentoML's arbiter outlives a worker whose startup failed: say so at once
            # rather than waiting for the timeout.
            with log_path.open("rb") as handle:
                handle.seek(logged_before)
                log = handle.read().decode(errors="replace")
            if STARTUP_FAILED in log:
                raise RuntimeError(f"the service failed to start ({log_path}):\n{log[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return url, process
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise TimeoutError(f"bentoml serve was not ready in {timeout:g} s ({log_path}):\n{tail}")
    except BaseException:
        stop_local_service(process)
        raise


def stop_local_service(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stop a server from :func:`start_local_service` and its workers (SIGTERM to its
    process group, SIGKILL after ``timeout`` seconds); returns its exit status."""
    if process.returncode is None:  # not reaped yet, so its group id is still its own
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode
