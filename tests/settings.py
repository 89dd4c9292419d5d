"""Test settings: the real settings, plus what only tests need.

Every run gets its own key prefix in Redis (cache, queue, channel layer), so a test run never
touches data another run or a developer's service keeps in the same Redis database.
"""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-secret")
os.environ.setdefault("DELIVERY_ALLOW_PRIVATE_NETWORKS", "1")
# A fixed key (tests only), also inherited by the service processes the tests start.
os.environ.setdefault("ENCRYPTION_KEYS", "d1m-w734phRLp8koKl49bPKJaoJmx2peG2xtYEMVygM=")
# Test tools read the schema by introspection (schemathesis); tests/security checks it off.
os.environ.setdefault("GRAPHQL_INTROSPECTION", "1")
os.environ.setdefault("TEST_RUN_ID", f"t{os.getpid()}")
os.environ.setdefault("CACHE_KEY_PREFIX", os.environ["TEST_RUN_ID"])
os.environ.setdefault("HUEY_NAME", os.environ["TEST_RUN_ID"])
os.environ.setdefault("CHANNEL_LAYER_PREFIX", f"{os.environ['TEST_RUN_ID']}:asgi")
os.environ.setdefault("HUEY_SQLITE_PATH", f"/tmp/dp-huey-{os.environ['TEST_RUN_ID']}.sqlite3")

from project.settings import *  # noqa: F403
from project.settings import BASE_DIR, HUEY

TEST_RUN_ID = os.environ["TEST_RUN_ID"]

# Hashing passwords with PBKDF2 would dominate the suite's run time.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Unit tests run tasks inline; integration tests start real `run_huey` processes, which use
# project.settings and the shared queue.
HUEY.immediate = True

# A test database of its own per run, so concurrent runs on one server never collide.
DATABASES["default"]["TEST"] = {  # noqa: F405
    "NAME": (
        str(BASE_DIR / f"test-{TEST_RUN_ID}.sqlite3")
        if DATABASES["default"]["ENGINE"].endswith("sqlite3")  # noqa: F405
        else f"test_datapusher_{TEST_RUN_ID}"
    )
}
