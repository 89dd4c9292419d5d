"""bench.settings with Django's PostgreSQL connection pool (psycopg-pool, installed into
bench/.tools): the fix measured for daphne, where DATABASE_CONN_MAX_AGE cannot keep a
connection (each ASGI request runs its sync code in a thread of its own)."""

from bench.settings import *  # noqa: F403
from bench.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0  # pooling replaces persistent connections
DATABASES["default"]["OPTIONS"] = {
    **DATABASES["default"].get("OPTIONS", {}),
    "pool": {"min_size": 4, "max_size": 40, "timeout": 10},
}
