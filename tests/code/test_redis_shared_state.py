"""What replicas share through Redis beside a Redis online store (a real private
redis-server): cached answers, publishable-key rate limits counted once across
replicas, and what the service builds at startup with ``BESPOKE_ONLINE_STORE_URL=redis://``."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from bespoke.experiments.ledger import ExperimentLedger
from bespoke.privacy.stores import AnswerCaches, SharedAnswerCache
from bespoke.privacy.subjects import Subject
from bespoke.serving.keys import ApiKeys
from bespoke.serving.middleware import Gateway, RateLimits
from bespoke.serving.redis_store import RedisStore
from bespoke.serving.shared_state import (
    MemoryAnswerCache,
    MemoryRequestCounts,
    RedisAnswerCache,
    RedisRequestCounts,
    answer_cache,
    request_counts,
)
from bespoke.serving.store import open_store
from bespoke.settings import get_settings


def test_a_rate_limit_is_counted_once_across_replicas(empty_redis: str) -> None:
    first = RateLimits(RedisRequestCounts(empty_redis))
    second = RateLimits(RedisRequestCounts(empty_redis))  # another replica
    now = 1_200_020.0  # 20 s into a minute
    taken = [limits.take("web", "198.51.100.7", 3, 100, now) for limits in (first, second) * 2]
    assert taken == [None, None, None, 40.0]  # the client's 4th request, on either replica
    assert second.take("web", "203.0.113.9", 3, 100, now) is None  # another client
    assert first.take("web", "198.51.100.7", 3, 100, now + 60) is None  # the next minute
    # the whole key's limit counts every client, and a refused request is not counted
    assert (
        first.take("shop", "a", 5, 2, now) is None and second.take("shop", "b", 5, 2, now) is None
    )
    assert first.take("shop", "c", 5, 2, now) == 40.0
    keys = list(redis.Redis.from_url(empty_redis).scan_iter())
    assert keys and not any(b"198.51.100.7" in k for k in keys)  # no client address stored


def test_the_answer_cache_is_shared_and_an_erasure_empties_it(empty_redis: str) -> None:
    one, other = RedisAnswerCache(empty_redis, ttl_s=30), RedisAnswerCache(empty_redis, ttl_s=30)
    one.set("k1", b'{"user_id": "person-0042", "items": []}')
    one.set("k2", b'{"user_id": "person-0077", "items": []}')
    assert other.get("k1") == b'{"user_id": "person-0042", "items": []}'
    assert other.get("missing") is None
    handler = SharedAnswerCache(other)
    subject = Subject("shop", user_ids=frozenset({"person-0042"}))
    assert handler.verify(subject) == {"entries": 1}
    assert handler.delete(subject) == {"entries": 1}
    assert one.get("k1") is None and one.get("k2") is None  # every replica's view
    assert handler.verify(subject) == {"entries": 0}


def test_the_service_starts_on_a_redis_online_store(
    isolated_settings: Path, empty_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``Personalization.__init__`` and the gateway build from the settings (the
    models aside): the store, its gate, the control plane's ledgers, the shared cache and
    counts, the erasure mark, the API keys."""
    monkeypatch.setenv("BESPOKE_ONLINE_STORE_URL", empty_redis)
    get_settings.cache_clear()
    settings = get_settings()
    store = open_store(settings)
    assert isinstance(store, RedisStore)
    assert store.control.path == isolated_settings / "online.db"
    assert store.gate().personalizes("ml-100k", "u1", None)
    ExperimentLedger(store.database()).states()
    assert AnswerCaches(store.database()).mark() == 0
    assert isinstance(answer_cache(settings), RedisAnswerCache)
    assert isinstance(request_counts(settings), RedisRequestCounts)
    key = ApiKeys(settings.control_store_url or "").create("app")
    gateway = Gateway(lambda *_: None, settings)
    assert gateway._key_info(key) is not None and gateway._key_info("nope") is None
    assert isinstance(gateway.limits.counts, RedisRequestCounts)
    # beside the SQLite store every worker keeps its own, as before
    monkeypatch.delenv("BESPOKE_ONLINE_STORE_URL")
    get_settings.cache_clear()
    assert isinstance(answer_cache(get_settings()), MemoryAnswerCache)
    assert isinstance(request_counts(get_settings()), MemoryRequestCounts)
