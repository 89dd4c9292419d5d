"""Settings, read from the environment (see the configuration table in README.md).

Embedded default (no variables set): SQLite, Huey on SQLite, local-memory cache and the
in-memory channel layer, all served by `manage.py serve` in one process. Setting `DATABASE_URL`
and `REDIS_URL` switches every shared piece to PostgreSQL and Redis so that any number of ASGI
and worker processes can run side by side.
"""

import base64
import hashlib
import sys
from pathlib import Path
from typing import Any

import dj_database_url
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from huey import SqliteHuey
from limits import parse_many

from project.env import env_bool, env_float, env_int, env_list, env_str
from project.queue import Queue

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

# --- Encryption at rest (destination signing secrets and headers; README: Encryption at rest)
# Fernet keys, comma-separated, newest first: the first encrypts, every one decrypts.
ENCRYPTION_KEYS = env_list("ENCRYPTION_KEYS", [])
if not ENCRYPTION_KEYS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "ENCRYPTION_KEYS is required when DEBUG is off (comma-separated Fernet keys, newest "
            "first; see README: Encryption at rest)"
        )
    # Development only: a key derived from SECRET_KEY (changing SECRET_KEY loses the data).
    ENCRYPTION_KEYS = [
        base64.urlsafe_b64encode(
            hashlib.sha256(f"datapusher encryption at rest:{SECRET_KEY}".encode()).digest()
        ).decode()
    ]
for _position, _key in enumerate(ENCRYPTION_KEYS, 1):
    try:
        Fernet(_key)
    except ValueError:
        raise ImproperlyConfigured(
            f"ENCRYPTION_KEYS: key {_position} is not a Fernet key (32 url-safe base64-encoded "
            "bytes)"
        ) from None

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
    # Last: sees a view's exception first; JSON errors on incoming_data and /graphql/.
    "project.middleware.JsonErrorsMiddleware",
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


# The management command this process runs (manage.py, django-admin, python -m django).
_COMMAND = sys.argv[1] if len(sys.argv) > 1 else ""
# Django's ASGI path: an ASGI server imports project.asgi, which loads these settings while its
# own import is under way; `manage.py serve` and `runserver` (daphne) load them first.
SERVES_ASGI = "project.asgi" in sys.modules or _COMMAND in {"serve", "runserver"}
# Where connections are reused safely: a WSGI server (project.wsgi) or a queue worker, whose
# threads live as long as the process. Other commands and tests open and close them.
_PERSISTENT_BY_DEFAULT = "project.wsgi" in sys.modules or _COMMAND == "run_huey"

# Django's ASGI path runs each request's sync code in a thread of its own, so a persistent
# connection per thread is never reused and piles up until PostgreSQL refuses clients (STACK.md
# trap 13). There DATABASE_CONN_MAX_AGE is ignored: connections are closed after each request,
# and on PostgreSQL they come from a per-process pool of DATABASE_POOL_MAX_SIZE.
DATABASE_CONN_MAX_AGE = (
    0 if SERVES_ASGI else env_int("DATABASE_CONN_MAX_AGE", 60 if _PERSISTENT_BY_DEFAULT else 0)
)
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 10, minimum=1)
# The hot paths' statements (accept, fan-out) are prepared once per PostgreSQL
# connection (project/db.py); off behind PgBouncer older than 1.21 in transaction mode.
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
_database: dict[str, Any] = dict(
    dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=DATABASE_CONN_MAX_AGE,
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
elif SERVES_ASGI and _database["ENGINE"] == "django.db.backends.postgresql":
    # A request waits up to 10 s for a free connection (then fails as unavailable).
    _database.setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(2, DATABASE_POOL_MAX_SIZE),
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": 10,
    }
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, queue, channel layer -------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "project.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "dp"),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            # Pushed to each server process: one Redis subscription per account group per
            # process (delivery/live.py: _Hub), no Redis command per message received.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # socket_timeout 10 s, as for channels_redis' other layer (STACK.md trap 1).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
                "prefix": env_str("CHANNEL_LAYER_PREFIX", "asgi"),
            },
        }
    }
    HUEY = Queue(env_str("HUEY_NAME", "datapusher"), url=REDIS_URL, results=False, utc=True)
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
    }
    HUEY = SqliteHuey(
        env_str("HUEY_NAME", "datapusher"),
        filename=env_str("HUEY_SQLITE_PATH", str(BASE_DIR / "huey.sqlite3")),
        results=False,
        utc=True,
    )

# Huey consumer threads started inside `manage.py serve` (embedded mode).
SERVE_WORKERS = env_int("SERVE_WORKERS", 8, minimum=1)

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
# Lanes (delivery/engine.py): concurrent requests per destination (a destination's
# `max_in_flight` overrides it), logs claimed per batch, how long one lane run may go on before
# it yields its worker thread, the send time above which a destination counts as slow (one log
# at a time from then on), and how many lanes of slow destinations one worker process runs.
DELIVERY_MAX_IN_FLIGHT = env_int("DELIVERY_MAX_IN_FLIGHT", 1, minimum=1)
# At most 1,000: a batch's results are one statement of 8 parameters per log and 9 per
# attempt, and PostgreSQL takes at most 65,535 parameters per statement.
# Requests per second to one destination, shared by every worker (a destination's
# `rate_limit` overrides it); 0: no limit.
DELIVERY_RATE_LIMIT = env_int("DELIVERY_RATE_LIMIT", 0)
DELIVERY_BATCH_SIZE = env_int("DELIVERY_BATCH_SIZE", 50, minimum=1, maximum=1000)
DELIVERY_LANE_SLICE_SECONDS = env_float("DELIVERY_LANE_SLICE_SECONDS", 1.0)
DELIVERY_SLOW_SECONDS = env_float("DELIVERY_SLOW_SECONDS", 1.0)
DELIVERY_SLOW_LANES = env_int("DELIVERY_SLOW_LANES", 4, minimum=1)
# Batches of quick destinations (answers in under 10 ms) one worker process sends at once (0: no
# limit): more threads busy with CPU only contend for the interpreter lock (delivery/engine.py).
DELIVERY_QUICK_LANES = env_int("DELIVERY_QUICK_LANES", 2)
for _name in ("DELIVERY_LANE_SLICE_SECONDS", "DELIVERY_SLOW_SECONDS"):
    if not globals()[_name] > 0:
        raise ImproperlyConfigured(f"{_name} must be > 0; got {globals()[_name]}")
# PostgreSQL: an accepted event wakes the workers by NOTIFY from its own statement (no Redis
# round trip in the server process); the workers LISTEN on a direct connection. Off by
# default: it costs the server less but adds latency (README: The delivery engine).
DELIVERY_WAKE_NOTIFY = env_bool("DELIVERY_WAKE_NOTIFY", False)
DELIVERY_LOG_RETENTION_DAYS = env_int("DELIVERY_LOG_RETENTION_DAYS", 30, minimum=1)
# Destination health (delivery/health.py): the circuit breaker opens when at least
# DESTINATION_BREAKER_FAILURE_PERCENT of a destination's tries in the last
# DESTINATION_BREAKER_WINDOW_MINUTES failed transiently, with at least
# DESTINATION_BREAKER_MIN_TRIES tries; after a cool-down (doubling at each failed probe, up to
# the maximum) DESTINATION_BREAKER_PROBES deliveries probe it. DESTINATION_BREAKER=0 turns it off.
DESTINATION_BREAKER = env_bool("DESTINATION_BREAKER", True)
# DESTINATION_HEALTH=0 keeps no health record at all: no breaker, figures, 429 hold or
# automatic disabling (what the benchmark compares against).
DESTINATION_HEALTH = env_bool("DESTINATION_HEALTH", True)
DESTINATION_BREAKER_FAILURE_PERCENT = env_int(
    "DESTINATION_BREAKER_FAILURE_PERCENT", 70, minimum=1, maximum=100
)
DESTINATION_BREAKER_MIN_TRIES = env_int("DESTINATION_BREAKER_MIN_TRIES", 10, minimum=1)
DESTINATION_BREAKER_WINDOW_MINUTES = env_int(
    "DESTINATION_BREAKER_WINDOW_MINUTES", 5, minimum=1, maximum=60
)
DESTINATION_BREAKER_COOLDOWN_SECONDS = env_int(
    "DESTINATION_BREAKER_COOLDOWN_SECONDS", 30, minimum=1
)
DESTINATION_BREAKER_MAX_COOLDOWN_SECONDS = env_int(
    "DESTINATION_BREAKER_MAX_COOLDOWN_SECONDS", 300, minimum=1
)
DESTINATION_BREAKER_PROBES = env_int("DESTINATION_BREAKER_PROBES", 1, minimum=1)
# A destination whose tries have all failed for this long (seconds; 5 days, as Svix; 0: never)
# or whose breaker opened this many times in a row without closing (0: no such limit) is
# disabled automatically; one that answers 410 Gone at once.
DESTINATION_DISABLE_AFTER = env_int("DESTINATION_DISABLE_AFTER", 5 * 24 * 3600)
DESTINATION_DISABLE_AFTER_TRIPS = env_int("DESTINATION_DISABLE_AFTER_TRIPS", 0)
if DESTINATION_BREAKER_MAX_COOLDOWN_SECONDS < DESTINATION_BREAKER_COOLDOWN_SECONDS:
    raise ImproperlyConfigured(
        "DESTINATION_BREAKER_MAX_COOLDOWN_SECONDS must be >= DESTINATION_BREAKER_COOLDOWN_SECONDS"
    )
# How long app-secret and destination lookups stay cached (services invalidate on change).
HOT_PATH_CACHE_SECONDS = 300
# How long one process keeps its own copy of an app-secret lookup: a rotated or deleted
# secret stops working in other processes within this time (at once in the one that rotated).
APP_SECRET_LOCAL_SECONDS = env_float("APP_SECRET_LOCAL_SECONDS", 1.0)

# --- Live status ----------------------------------------------------------------------------
# Browser origins (besides the server's own) allowed to open the GraphQL WebSocket.
WS_ALLOWED_ORIGINS = env_list("WS_ALLOWED_ORIGINS", [])
# Longest time an open WebSocket acts on stale authorization: a revoked or expired token, a
# deactivated user, a lost membership or role is seen within this many seconds, idle or not.
LIVE_RECHECK_SECONDS = env_float("LIVE_RECHECK_SECONDS", 1.0)
if not LIVE_RECHECK_SECONDS > 0:
    raise ImproperlyConfigured(f"LIVE_RECHECK_SECONDS must be > 0; got {LIVE_RECHECK_SECONDS}")
# Open WebSockets per user, counted across processes through the cache (Redis) when shared.
WS_MAX_CONNECTIONS_PER_USER = env_int("WS_MAX_CONNECTIONS_PER_USER", 20, minimum=1)

# --- Identity -------------------------------------------------------------------------------
AUTH_USER_MODEL = "identity.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTH_TOKEN_TTL_DAYS = env_int("AUTH_TOKEN_TTL_DAYS", 14, minimum=1)


def _env_limit(name: str, default: str) -> str:
    """A rate in the `limits` library's notation, e.g. "5/15minute"; malformed stops start-up."""
    raw = env_str(name) or default
    try:
        items = parse_many(raw)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        raise ImproperlyConfigured(f"{name} must be one limit like {default!r}; got {raw!r}")
    return raw


# Failed password checks (login, admin login, userUpdate currentPassword) allowed in a moving
# window: per email from one client address (stops a guesser, not the owner elsewhere), per
# address over all emails, and per email over all addresses (a cap on distributed guessing).
LOGIN_FAILURES_PER_EMAIL_ADDRESS = _env_limit("LOGIN_FAILURES_PER_EMAIL_ADDRESS", "5/15minute")
LOGIN_FAILURES_PER_ADDRESS = _env_limit("LOGIN_FAILURES_PER_ADDRESS", "30/15minute")
LOGIN_FAILURES_PER_EMAIL = _env_limit("LOGIN_FAILURES_PER_EMAIL", "100/hour")
# The admin site's login goes through the same throttle.
AUTHENTICATION_BACKENDS = ["identity.backends.ThrottledModelBackend"]
# Reverse proxies in front of the API that append to X-Forwarded-For (0: trust none).
NUM_PROXIES = env_int("NUM_PROXIES", 0)
# Where people reach the service (or its frontend): the base of the links in mails.
PUBLIC_URL = env_str("PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
if not PUBLIC_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"PUBLIC_URL must be an http(s) URL; got {PUBLIC_URL!r}")
# How long an invitation's secret, and an email verification token, can be used.
INVITATION_TTL_HOURS = env_int("INVITATION_TTL_HOURS", 72, minimum=1)
EMAIL_VERIFICATION_TTL_HOURS = env_int("EMAIL_VERIFICATION_TTL_HOURS", 48, minimum=1)
# Mail (invitations, email verification) goes through Django's email backend.
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10  # seconds; mail is sent in the request, after its transaction commits
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Data Pusher <datapusher@localhost>")

# --- GraphQL --------------------------------------------------------------------------------
GRAPHQL_MAX_DEPTH = 10
GRAPHQL_MAX_ALIASES = 15
GRAPHQL_MAX_TOKENS = 2000
# Schema introspection (`__schema`, `__type`); off in production unless turned on.
# GraphiQL at /graphql/ (assets served by the app: project/static/vendor); it needs introspection.
GRAPHIQL = env_bool("GRAPHIQL", DEBUG)
GRAPHQL_INTROSPECTION = env_bool("GRAPHQL_INTROSPECTION", GRAPHIQL)
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
# The ASGI app answers /static/ itself (from the apps' static folders); `manage.py serve` always
# does. In the production topology nginx serves STATIC_ROOT (`collectstatic`) instead.
SERVE_STATIC = env_bool("SERVE_STATIC", DEBUG)
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    "loggers": {
        # Huey logs every task at INFO on "huey" (two lines per task: noise, and a measurable
        # share of a worker's CPU); run_huey sets that logger to INFO unless it has a handler
        # already, so it gets one here. The consumer's start, stop and schedule stay at INFO.
        "huey": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "huey.consumer": {"level": "INFO"},
        "django.channels.server": {"level": "WARNING"},
    },
}
