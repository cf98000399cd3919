"""A durable event stream with consumer groups, on Redis Streams.

When ``Settings.event_stream_url`` (``redis://…``) is set, the service's ``/v1/events``
checks each event as before and appends the good ones to the stream (one ``XADD`` per event
in one pipeline, fsynced by Redis's append-only file as configured) instead of applying
them itself; each event gets a ``source_event_id`` when it has none, so that everything
downstream can apply it once. ``bespoke stream consume`` workers share the work in a
consumer group:

1. a worker first takes back what it read and never acknowledged in a previous life (it
   died mid-batch), then, as it goes, what another worker left pending for longer than
   ``claim_idle_ms`` (that worker died), and new entries;
2. it applies each batch to the online store in one transaction (profiles, scores,
   webhooks; the consent gate and suppression list apply here), where an event id already
   held is accepted again but applied once: profiles are current within a batch;
3. every ``flush_every_s`` seconds (and when the stream runs dry) it writes what it applied
   to the lake (the inbox's idempotent flush: a micro-batch; the lake's write costs far
   more than the store's, so it is not done per batch);
4. only then it acknowledges those entries.

So delivery is at least once and the writes are idempotent: a worker killed at any point
loses nothing and duplicates nothing (``tests/data/test_event_stream.py`` kills one with
``kill -9`` mid-batch). A Kafka client could replace Redis behind :class:`RedisEventStream`'s
methods.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bespoke.features.schema import EventIn

STREAM = "bespoke:events"
GROUP = "bespoke"


@dataclass(frozen=True)
class Entry:
    id: str
    dataset: str
    event: EventIn


@dataclass
class ConsumeReport:
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    reclaimed: int = 0
    flushed: int = 0
    acknowledged: int = 0
    errors: list[str] = field(default_factory=list)


class RedisEventStream:
    """The stream ``name`` in the Redis at ``url``; opening it connects to nothing."""

    def __init__(self, url: str, name: str = STREAM) -> None:
        self.url = url
        self.name = name
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, decode_responses=True)
        return self._client

    def append(self, dataset: str, events: Sequence[EventIn]) -> list[str]:
        """Append ``events`` (one entry each, in one round trip); each gets an event id
        when it has none. Returns the entries' ids."""
        pipe = self.client.pipeline(transaction=True)
        for event in events:
            if event.source_event_id is None:
                event = event.model_copy(update={"source_event_id": f"s-{uuid.uuid4().hex}"})
            pipe.xadd(self.name, {"dataset": dataset, "event": event.model_dump_json()})
        return list(pipe.execute())

    def length(self) -> int:
        return int(self.client.xlen(self.name))

    def ensure_group(self, group: str = GROUP) -> None:
        import redis

        try:
            self.client.xgroup_create(self.name, group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _entries(self, raw: Any) -> list[Entry]:
        out = []
        for entry_id, fields in raw or []:
            if not fields:  # deleted meanwhile
                continue
            out.append(Entry(entry_id, fields["dataset"],
                             EventIn.model_validate_json(fields["event"])))  # fmt: skip
        return out

    def own_pending(self, group: str, consumer: str, count: int, after: str = "0") -> list[Entry]:
        """What ``consumer`` read and never acknowledged (it died), after id ``after``."""
        own = self.client.xreadgroup(group, consumer, {self.name: after}, count=count)
        return self._entries(own[0][1] if own else [])

    def next_batch(
        self, group: str, consumer: str, count: int, *, block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
    ) -> tuple[list[Entry], int]:  # fmt: skip
        """(the next batch for ``consumer``, how many of it were taken back): other
        workers' entries idle for ``claim_idle_ms`` (they died) first, then new ones."""
        _, claimed, *_ = self.client.xautoclaim(self.name, group, consumer, claim_idle_ms,
                                                start_id="0-0", count=count)  # fmt: skip
        taken = self._entries(claimed)
        if taken:
            return taken, len(taken)
        new = self.client.xreadgroup(group, consumer, {self.name: ">"}, count=count,
                                     block=block_ms or None)  # fmt: skip
        return self._entries(new[0][1] if new else []), 0

    def ack(self, group: str, ids: Sequence[str]) -> int:
        return int(self.client.xack(self.name, group, *ids)) if ids else 0

    def pending(self, group: str = GROUP) -> int:
        return int(self.client.xpending(self.name, group)["pending"])


def consume(
    stream: RedisEventStream,
    store: Any,
    lake: Any,
    *,
    group: str = GROUP,
    consumer: str = "worker-1",
    batch: int = 500,
    scorer: Any = None,
    until_empty: bool = False,
    stop: Callable[[], bool] = lambda: False,
    claim_idle_ms: int = 30_000,
    flush_every_s: float = 5.0,
    on_batch: Callable[[ConsumeReport], None] | None = None,
) -> ConsumeReport:
    """Apply the stream to the online store and the lake until ``stop()`` (or, with
    ``until_empty``, until nothing is left for this consumer); see the module."""
    if flush_every_s * 1000 >= claim_idle_ms:
        raise ValueError("entries are acknowledged every flush_every_s: it must be shorter than "
                         "claim_idle_ms, after which other workers take them")  # fmt: skip
    stream.ensure_group(group)
    report = ConsumeReport()
    applied: list[str] = []  # in the store, not yet in the lake: not acknowledged
    touched: set[str] = set()
    last_flush = time.monotonic()

    def apply(entries: list[Entry]) -> None:
        by_dataset: dict[str, list[EventIn]] = defaultdict(list)
        for entry in entries:
            by_dataset[entry.dataset].append(entry.event)
        for dataset, events in by_dataset.items():
            result = store.accept_events(events, dataset, scorer=scorer)
            report.applied += result.accepted - result.duplicates
            report.duplicates += result.duplicates
            report.rejected += result.rejected
            report.errors += [f"{dataset}: {e.field}: {e.message}" for e in result.errors][:10]
            touched.add(dataset)
        applied.extend(e.id for e in entries)
        report.batches += 1

    def flush() -> None:
        nonlocal last_flush
        for dataset in sorted(touched):
            report.flushed += store.flush(lake, dataset=dataset).flushed
        touched.clear()
        report.acknowledged += stream.ack(group, applied)
        applied.clear()
        last_flush = time.monotonic()
        if on_batch is not None:
            on_batch(report)

    # first what this worker read in a previous life and never acknowledged
    after = "0"
    while entries := stream.own_pending(group, consumer, batch, after):
        report.reclaimed += len(entries)
        apply(entries)
        after = entries[-1].id
    while not stop():
        entries, reclaimed = stream.next_batch(group, consumer, batch,
                                               block_ms=200 if until_empty else 1000,
                                               claim_idle_ms=claim_idle_ms)  # fmt: skip
        report.reclaimed += reclaimed
        if entries:
            apply(entries)
        if applied and (not entries or time.monotonic() - last_flush >= flush_every_s):
            flush()
        if not entries and until_empty:
            break
    if applied:
        flush()
    return report


def start_redis(folder: Path, timeout: float = 20.0) -> tuple[subprocess.Popen, str]:
    """A private ``redis-server`` on a free loopback port, its append-only file in
    ``folder`` (fsynced every second), for a local run, a test or a benchmark: (process,
    URL) once it answers. Stop it with ``process.kill()``."""
    folder.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while True:
        try:
            RedisEventStream(url).client.ping()
            return server, url
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)
