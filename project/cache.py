"""Django's Redis cache, with one client object per connection pool instead of one per call.

Django's RedisCacheClient builds a new `redis.Redis` around the shared pool for every cache
operation; on the delivery and ingest hot paths (several cache calls per delivery) that was a
measurable share of the CPU. A `redis.Redis` is thread-safe around its pool, so one per pool is
enough (redis-py's pool itself starts over in a forked child)."""

from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient as DjangoRedisCacheClient


class RedisCacheClient(DjangoRedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        django: Any = self  # Django's private attributes, which its stubs do not declare
        index = django._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            if index not in django._pools:  # as Django's _get_connection_pool, for this index
                django._pools[index] = django._pool_class.from_url(
                    django._servers[index], **django._pool_options
                )
            client = self._clients[index] = django._client(connection_pool=django._pools[index])
        return client


class RedisCache(DjangoRedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient


def redis_client(cache: Any) -> Any | None:
    """The redis-py client behind a project RedisCache (one per process and pool, for scripts
    the cache API has no call for); None for other caches (local memory: embedded mode)."""
    client_of = getattr(getattr(cache, "_cache", None), "get_client", None)
    return None if client_of is None else client_of(write=True)
