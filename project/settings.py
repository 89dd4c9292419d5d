"""Settings, read from the environment (see the configuration table in README.md).

Embedded default (no variables set): SQLite, Huey on SQLite, local-memory cache and the
in-memory channel layer, all served by `manage.py serve` in one process. Setting `DATABASE_URL`
and `REDIS_URL` switches every shared piece to PostgreSQL and Redis so that any number of ASGI
and worker processes can run side by side.
"""

from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from huey import PriorityRedisHuey, SqliteHuey

from project.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # first, so that runserver speaks ASGI (STACK.md trap 12)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "strawberry_django",
    "huey.contrib.djhuey",
    "project",
    "identity",
    "delivery",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
_database: dict[str, Any] = dict(
    dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
)
if _database["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the writer; IMMEDIATE takes the write lock at BEGIN so two
    # writers queue on the busy timeout instead of failing with "database is locked".
    _database["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, queue, channel layer -------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "dp"),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # socket_timeout above the layer's 5 s blocking read (STACK.md trap 1).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
                "prefix": env_str("CHANNEL_LAYER_PREFIX", "asgi"),
            },
        }
    }
    HUEY = PriorityRedisHuey(
        env_str("HUEY_NAME", "datapusher"), url=REDIS_URL, results=False, utc=True
    )
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    HUEY = SqliteHuey(
        env_str("HUEY_NAME", "datapusher"),
        filename=env_str("HUEY_SQLITE_PATH", str(BASE_DIR / "huey.sqlite3")),
        results=False,
        utc=True,
    )

# Huey consumer threads started inside `manage.py serve` (embedded mode).
SERVE_WORKERS = env_int("SERVE_WORKERS", 4, minimum=1)

# --- Delivery -------------------------------------------------------------------------------
INCOMING_MAX_BODY_BYTES = env_int("INCOMING_MAX_BODY_BYTES", 1024 * 1024, minimum=1)
# Accepted requests per second per account on incoming_data; 0 turns the limit off.
INCOMING_RATE_LIMIT = env_int("INCOMING_RATE_LIMIT", 5)
# Deliveries to private, loopback and link-local addresses are refused unless this is on.
DELIVERY_ALLOW_PRIVATE_NETWORKS = env_bool("DELIVERY_ALLOW_PRIVATE_NETWORKS", False)
DELIVERY_CONNECT_TIMEOUT = env_float("DELIVERY_CONNECT_TIMEOUT", 5.0)
DELIVERY_READ_TIMEOUT = env_float("DELIVERY_READ_TIMEOUT", 15.0)
# Seconds before each retry; a delivery gets 1 + len(schedule) attempts.
DELIVERY_RETRY_SCHEDULE = [
    float(s)
    for s in env_list(
        "DELIVERY_RETRY_SCHEDULE", ["5", "30", "120", "600", "1800", "3600", "10800", "21600"]
    )
]
DELIVERY_RETRY_JITTER = 0.1  # add-only: up to +10 % of each delay, never earlier
DELIVERY_RETRY_AFTER_CAP = 3600.0  # longest Retry-After (429/503) we honour, in seconds
DELIVERY_RESPONSE_BODY_LIMIT = 4096  # bytes of each response body kept on the attempt
# A queued/retrying log this overdue, or a sending one past its lease, is re-enqueued.
DELIVERY_SWEEP_GRACE_SECONDS = env_int("DELIVERY_SWEEP_GRACE_SECONDS", 60)
DELIVERY_LOG_RETENTION_DAYS = env_int("DELIVERY_LOG_RETENTION_DAYS", 30, minimum=1)
# How long app-secret and destination lookups stay cached (services invalidate on change).
HOT_PATH_CACHE_SECONDS = 300

# --- Live status ----------------------------------------------------------------------------
# Browser origins (besides the server's own) allowed to open the GraphQL WebSocket.
WS_ALLOWED_ORIGINS = env_list("WS_ALLOWED_ORIGINS", [])
# How often a live subscription re-checks its token and memberships, in seconds.
LIVE_RECHECK_SECONDS = 1.0

# --- Identity -------------------------------------------------------------------------------
AUTH_USER_MODEL = "identity.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTH_TOKEN_TTL_DAYS = env_int("AUTH_TOKEN_TTL_DAYS", 14, minimum=1)
# Failed logins allowed per window, per email and per client address.
LOGIN_FAILURES_PER_EMAIL = 5
LOGIN_FAILURES_PER_ADDRESS = 30
LOGIN_THROTTLE_WINDOW_SECONDS = 300
# Reverse proxies in front of the API that append to X-Forwarded-For (0: trust none).
NUM_PROXIES = env_int("NUM_PROXIES", 0)

# --- GraphQL --------------------------------------------------------------------------------
GRAPHQL_MAX_DEPTH = 10
GRAPHQL_MAX_ALIASES = 15
GRAPHQL_MAX_TOKENS = 2000
STRAWBERRY_DJANGO = {
    "MUTATIONS_DEFAULT_HANDLE_ERRORS": True,
    "FIELD_DESCRIPTION_FROM_HELP_TEXT": True,
    "TYPE_DESCRIPTION_FROM_MODEL_DOCSTRING": True,
}

# --- Misc -----------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    "loggers": {
        # Huey logs every task at INFO; that is noise at our volumes.
        "huey": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
    },
}
