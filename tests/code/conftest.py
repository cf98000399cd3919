"""A private ``redis-server`` shared by the tests of this folder (the Redis online store,
the shared answer cache and rate limits), emptied before each test that uses it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import redis

from bespoke.stream.events import start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a redis-server started once per test process; skipped, saying why,
    where Debian's redis-server is not installed."""
    if shutil.which("redis-server") is None:
        pytest.skip(
            "redis-server is not installed: scripts/test-system-packages installs Debian's "
            "redis-server (`make test` runs it where it runs as root with apt-get)"
        )
    server, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def empty_redis(redis_server: str) -> str:
    """The shared redis-server's URL, every key removed first (FLUSHALL)."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server
