"""The service's answer cache and request counts: in each worker's memory, or shared by
every replica through Redis.

With the embedded SQLite online store each worker keeps its own (as before); with a Redis
online store (``BESPOKE_ONLINE_STORE_URL=redis://…``) the same Redis holds them, so N
replicas share cached answers (their keys already carry the person's profile version and
the models' version: a new event or new models never hit an old answer) and a
publishable key's rate limits are counted once across replicas, not once per worker.

An erasure empties every cache (``bespoke.privacy.stores.AnswerCaches`` moves the mark
each worker checks; the shared one is also emptied by the deletion itself, and its
entries are searched for the person when the deletion is verified).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

import redis
from cachetools import TTLCache

from bespoke.settings import REDIS_SCHEMES, Settings

#: How long an answer is served from the cache (a new event changes its key anyway).
ANSWER_TTL_S = 60
#: Answers one worker keeps in memory at most.
MEMORY_ANSWERS = 50_000
ANSWERS_PREFIX = "bespoke:answers:"
COUNTS_PREFIX = "bespoke:rate:"

# Count one request against every key unless one is at its limit: all or nothing, in one
# step, so that replicas counting at once never let a request through twice over a limit.
_TAKE = """
for i, key in ipairs(KEYS) do
    local seen = tonumber(redis.call('GET', key) or '0')
    if seen >= tonumber(ARGV[i]) then return 0 end
end
for _, key in ipairs(KEYS) do
    redis.call('INCR', key)
    redis.call('PEXPIRE', key, ARGV[#ARGV])
end
return 1
"""


class AnswerCache(Protocol):
    """Answers (response bodies) by cache key, each kept :data:`ANSWER_TTL_S` seconds."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> None: ...

    def clear(self) -> None: ...


class RequestCounts(Protocol):
    """Requests counted per key in fixed windows."""

    def take(
        self, limits: Mapping[str, int], window_s: int, now: float | None = None
    ) -> float | None:
        """Count one request against every key of ``limits`` (key → most requests per
        window) in the current ``window_s``-second window; when one is at its limit,
        count nothing and return the seconds until the window ends."""
        ...


class MemoryAnswerCache:
    """This worker's answers, in its memory."""

    def __init__(self, ttl_s: float = ANSWER_TTL_S, maxsize: int = MEMORY_ANSWERS) -> None:
        self.entries: TTLCache = TTLCache(maxsize=maxsize, ttl=ttl_s)

    def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    def set(self, key: str, value: bytes) -> None:
        self.entries[key] = value

    def clear(self) -> None:
        self.entries.clear()


class RedisAnswerCache:
    """Answers shared by every replica, in the Redis at ``url`` (connected on first use)."""

    def __init__(self, url: str, ttl_s: float = ANSWER_TTL_S) -> None:
        self.url = url
        self.ttl_ms = int(ttl_s * 1000)
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.url)
        return self._client

    def get(self, key: str) -> bytes | None:
        return self.client.get(ANSWERS_PREFIX + key)

    def set(self, key: str, value: bytes) -> None:
        self.client.set(ANSWERS_PREFIX + key, value, px=self.ttl_ms)

    def clear(self) -> None:
        """Drop every cached answer (of every replica)."""
        for part in _batches(self.client.scan_iter(match=ANSWERS_PREFIX + "*", count=1000)):
            self.client.unlink(*part)

    def naming(self, ids: Iterable[str]) -> int:
        """How many cached answers name any of ``ids`` (a JSON string in the body): what
        a deletion's verification looks for."""
        needles = [f'"{i}"'.encode() for i in ids]
        found = 0
        for name in self.client.scan_iter(match=ANSWERS_PREFIX + "*", count=1000):
            body = self.client.get(name) or b""
            found += any(n in body for n in needles)
        return found


class MemoryRequestCounts:
    """Requests counted in this worker's memory (each worker counts its own share)."""

    def __init__(self, maxsize: int = 200_000, ttl_s: float = 120) -> None:
        self.counts: TTLCache = TTLCache(maxsize=maxsize, ttl=ttl_s)

    def take(
        self, limits: Mapping[str, int], window_s: int, now: float | None = None
    ) -> float | None:
        now = time.time() if now is None else now
        window = int(now // window_s)
        if any(self.counts.get((key, window), 0) >= limit for key, limit in limits.items()):
            return window_s - now % window_s
        for key in limits:
            self.counts[(key, window)] = self.counts.get((key, window), 0) + 1
        return None


class RedisRequestCounts:
    """Requests counted once across every replica, in the Redis at ``url``. The keys are
    hashed: a client's address never reaches Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.Redis | None = None
        self._script: redis.commands.core.Script | None = None

    def take(
        self, limits: Mapping[str, int], window_s: int, now: float | None = None
    ) -> float | None:
        if self._script is None:
            self._client = redis.Redis.from_url(self.url)
            self._script = self._client.register_script(_TAKE)
        now = time.time() if now is None else now
        window = int(now // window_s)
        keys = [f"{COUNTS_PREFIX}{_digest(key)}:{window}" for key in limits]
        # kept one window longer than the window itself: a late request still finds it
        taken = self._script(keys=keys, args=[*limits.values(), int(2 * window_s * 1000)])
        return None if taken else window_s - now % window_s


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _batches(names: Iterable[bytes], size: int = 1000) -> Iterable[list[bytes]]:
    batch: list[bytes] = []
    for name in names:
        batch.append(name)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def shared_redis_url(settings: Settings) -> str | None:
    """The Redis the answer cache and request counts are shared in: the online store's,
    when it is Redis."""
    url = settings.online_store_url or ""
    return url if url.startswith(REDIS_SCHEMES) else None


def answer_cache(settings: Settings) -> AnswerCache:
    url = shared_redis_url(settings)
    return RedisAnswerCache(url) if url else MemoryAnswerCache()


def request_counts(settings: Settings) -> RequestCounts:
    url = shared_redis_url(settings)
    return RedisRequestCounts(url) if url else MemoryRequestCounts()
