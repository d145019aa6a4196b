"""The only settings module: reads and validates the environment, lists every problem at once."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import dj_database_url
from dotenv import dotenv_values

from flowsite.env import Env
from flowsite.logconfig import build_logging
from flowsite.redisconf import RedisConfig, parse_redis_url, redact, write_pem

BASE_DIR = Path(__file__).resolve().parent.parent

# A .env file at the repository root is read for local work; real environment variables win.
_dotenv = {k: v for k, v in dotenv_values(BASE_DIR / ".env").items() if v is not None}
env = Env(source={**_dotenv, **os.environ})

# --- Process and data folder -------------------------------------------------------------------
MODE = env.choice("MODE", ("main", "queue"), "main")
PORT = env.int("PORT", 3000, min_value=1, max_value=65535)
FLOWSITE_HOME = Path(env.str("FLOWSITE_HOME", str(Path.home() / ".flowsite"))).expanduser()
DEBUG = env.bool("DEBUG", False)


def _secret_key() -> str:
    """Return SECRET_KEY, or one generated once and kept in the data folder for every process."""
    if env.is_set("SECRET_KEY"):
        key = env.str("SECRET_KEY")
        if len(key) < 32:
            env.problem("SECRET_KEY", "at least 32 characters", "<50 random chars>", None, True)
        return key
    path = FLOWSITE_HOME / "secret_key"
    try:
        FLOWSITE_HOME.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(50))
        return path.read_text().strip()
    except FileExistsError:
        return path.read_text().strip()
    except OSError as exc:
        env.problem(
            "FLOWSITE_HOME",
            f"a writable folder for the generated secret key ({exc})",
            "/var/lib/flowsite",
            str(FLOWSITE_HOME),
        )
        return "unusable-" + secrets.token_urlsafe(40)


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])

# --- Database ----------------------------------------------------------------------------------
_default_db = f"sqlite:///{FLOWSITE_HOME / 'flowsite.sqlite3'}"
DATABASE_URL = env.url(
    "DATABASE_URL",
    _default_db,
    schemes=("sqlite", "postgres", "postgresql"),
    example="postgres://flowsite:secret@db:5432/flowsite",
    secret=True,
)
try:
    # A connection broken by a database restart is noticed and replaced at the next request.
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)
except ValueError as exc:
    env.problem(
        "DATABASE_URL",
        f"a database URL ({exc})",
        "sqlite:////data/flowsite.sqlite3",
        redact(DATABASE_URL),
    )
    _db = dj_database_url.parse(_default_db)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    if _db["NAME"] and _db["NAME"] != ":memory:":
        Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    _db["OPTIONS"] = {
        # WAL lets readers and one writer work at once across web and worker processes;
        # IMMEDIATE takes the write lock up front so busy_timeout applies instead of a deadlock.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].setdefault("connect_timeout", 5)
    # A pool per process (psycopg_pool): under ASGI every request runs its queries in a thread
    # of its own, which would otherwise open (and PostgreSQL fork) a new connection each time,
    # without any cap on how many are open at once.
    _pool_size = env.int("DATABASE_POOL_SIZE", 20, min_value=0, example="20")
    if _pool_size:
        _db["ENGINE"] = "flowsite.postgresql"  # Django's backend with a pool that fails fast
        _db["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": _pool_size,
            # How long a request waits for a free connection, or for an unreachable database,
            # before it is refused with 503 database_unavailable.
            "timeout": env.float("DATABASE_POOL_TIMEOUT", 10.0, min_value=0.1, example="10"),
            "max_idle": 300,
        }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# --- Redis (queue mode) ------------------------------------------------------------------------
def _redis_config() -> RedisConfig:
    parts: dict = {
        "host": env.str("REDIS_HOST", "localhost"),
        "port": env.int("REDIS_PORT", 6379, min_value=1, max_value=65535),
        "db": 0,
        "username": env.str("REDIS_USERNAME") or None,
        "password": env.str("REDIS_PASSWORD", secret=True) or None,
        "tls": env.bool("REDIS_TLS", False),
    }
    url = env.url(
        "REDIS_URL",
        "",
        schemes=("redis", "rediss"),
        example="redis://:secret@redis:6379/0",
        secret=True,
    )
    if url:
        try:
            from_url = parse_redis_url(url)
        except ValueError:
            env.problem(
                "REDIS_URL",
                "redis://[user:password@]host:port/db",
                "redis://redis:6379/0",
                redact(url),
            )
        else:
            parts.update(from_url)
            parts["tls"] = from_url["tls"] or parts["tls"]
    files: dict = {}
    for var, name, key in (
        ("REDIS_CA", "ca.pem", "ca_file"),
        ("REDIS_CERT", "cert.pem", "cert_file"),
        ("REDIS_KEY", "key.pem", "key_file"),
    ):
        if env.is_set(var):
            try:
                files[key] = write_pem(FLOWSITE_HOME, name, env.str(var, secret=True))
            except (ValueError, OSError) as exc:
                env.problem(
                    var, f"a base64-encoded PEM ({exc})", "$(base64 -w0 ca.pem)", None, True
                )
    keep_alive = env.int("REDIS_KEEP_ALIVE", 0, min_value=0, example="60000")
    return RedisConfig(
        **parts,
        **files,
        verify=env.bool("REDIS_TLS_VERIFY", True),
        keep_alive_ms=keep_alive or None,
        connect_timeout=env.float("REDIS_CONNECT_TIMEOUT", 5.0, example="5"),
        max_connections=env.int("REDIS_MAX_CONNECTIONS", 100, min_value=1, example="100"),
    )


REDIS = _redis_config()

# --- Queue mode --------------------------------------------------------------------------------
QUEUE_NAME = env.str("QUEUE_NAME", "flowsite-queue")
if not all(c.isalnum() or c in "-_." for c in QUEUE_NAME):
    env.problem("QUEUE_NAME", "letters, digits, '-', '_' or '.'", "flowsite-queue", QUEUE_NAME)
# 100: a prediction mostly waits on the model, so one process holds many; see README "Queue mode".
WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", 100, min_value=1, max_value=10000)
WORKER_PORT = env.int("WORKER_PORT", 5566, min_value=0, max_value=65535)
# Threads a worker runs its predictions' database calls on, each holding a pooled connection:
# at most DATABASE_POOL_SIZE - 2 are used (one on SQLite); see predictions/dbthreads.py.
WORKER_DATABASE_THREADS = env.int(
    "WORKER_DATABASE_THREADS", 8, min_value=1, max_value=64, example="8"
)
QUEUE_REDIS_EVENT_STREAM_MAX_LEN = env.int(
    "QUEUE_REDIS_EVENT_STREAM_MAX_LEN", 10000, min_value=10, example="10000"
)
EVENT_STREAM_TTL = env.int("EVENT_STREAM_TTL", 3600, min_value=10, example="3600")
REMOVE_ON_AGE = env.int("REMOVE_ON_AGE", 86400, min_value=1, example="86400")
REMOVE_ON_COUNT = env.int("REMOVE_ON_COUNT", 10000, min_value=1, example="10000")
ENABLE_QUEUE_DASHBOARD = env.bool("ENABLE_BULLMQ_DASHBOARD", False) or env.bool(
    "ENABLE_QUEUE_DASHBOARD", False
)
# Prometheus text at /metrics on web (and on each worker's WORKER_PORT); optional bearer token.
METRICS_ENABLED = env.bool("METRICS_ENABLED", False)
METRICS_TOKEN = env.str("METRICS_TOKEN", secret=True)
# A folder shared by the processes of one host: prometheus-client's multiprocess mode.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR:
    # prometheus-client reads the variable itself: pass on a value that came from .env.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", PROMETHEUS_MULTIPROC_DIR)
PREDICTION_TIMEOUT = env.int("PREDICTION_TIMEOUT", 300, min_value=1, example="300")
# The web side waits this much longer than the worker's own limit before answering 504.
PREDICTION_TIMEOUT_MARGIN = env.int("PREDICTION_TIMEOUT_MARGIN", 10, min_value=1)
# Queue mode: a run writes its tokens to Redis (and pushes them to readers) at most once per this
# many ms, the tokens in between together; the first token of a run is never held.
TOKEN_COALESCE_MS = env.float("TOKEN_COALESCE_MS", 20.0, min_value=0, example="20")
# How long a web process reuses a chatflow it read for predictions; saves made by another
# process apply after at most this long (0 = read it for every prediction).
CHATFLOW_CACHE_SECONDS = env.float("CHATFLOW_CACHE_SECONDS", 1.0, min_value=0, example="1")
WORKER_HEARTBEAT_SECONDS = env.int("WORKER_HEARTBEAT_SECONDS", 10, min_value=1)
WORKER_ABANDONED_JOBS_HANDLER = "predictions.services.predictions_mark_lost"
# 1 = at most once: a prediction whose worker died fails with worker_lost. More = retried.
JOB_MAX_ATTEMPTS = env.int("JOB_MAX_ATTEMPTS", 1, min_value=1, max_value=10, example="1")
# Waiting jobs beyond this make the API answer 503 + Retry-After (0 = unbounded).
MAX_QUEUE_LENGTH = env.int("MAX_QUEUE_LENGTH", 0, min_value=0, example="10000")
# Stop a streaming prediction when the client that asked for it disconnects.
PREDICTION_STOP_ON_DISCONNECT = env.bool("PREDICTION_STOP_ON_DISCONNECT", False)
WORKER_SHUTDOWN_TIMEOUT = env.int("WORKER_SHUTDOWN_TIMEOUT", 30, min_value=0, example="30")

RQ_QUEUES = {
    QUEUE_NAME: REDIS.rq_queue(default_timeout=PREDICTION_TIMEOUT + 60, result_ttl=REMOVE_ON_AGE),
}
RQ = {
    "WORKER_CLASS": "predictions.worker.ConcurrentWorker",
    "COMMIT_MODE": "on_db_commit",
    "DEFAULT_RESULT_TTL": REMOVE_ON_AGE,
}
RQ_SHOW_ADMIN_LINK = False

if MODE == "queue":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS.channel_host()], "prefix": "flowsite.ch"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Predictions and models --------------------------------------------------------------------
MAX_QUESTION_LENGTH = env.int("MAX_QUESTION_LENGTH", 32_000, min_value=1, example="32000")
MAX_REQUEST_BODY_BYTES = env.int("MAX_REQUEST_BODY_BYTES", 1_048_576, min_value=1024)
MAX_HISTORY_MESSAGES = env.int("MAX_HISTORY_MESSAGES", 100, min_value=0)
SSE_HEARTBEAT_SECONDS = env.float("SSE_HEARTBEAT_SECONDS", 30.0, min_value=0.05, example="30")
FLOW_LLM_PROVIDER = env.choice("FLOW_LLM_PROVIDER", ("openai", "offline"), "openai")
OPENAI_API_KEY = env.str("OPENAI_API_KEY", secret=True)
OPENAI_BASE_URL = env.url(
    "OPENAI_BASE_URL",
    "https://api.openai.com/v1",
    schemes=("http", "https"),
    example="http://localhost:11434/v1",
)
LLM_CONNECT_TIMEOUT = env.float("LLM_CONNECT_TIMEOUT", 10.0, min_value=0.01, example="10")
LLM_READ_TIMEOUT = env.float("LLM_READ_TIMEOUT", 60.0, min_value=0.01, example="60")
OFFLINE_MODEL_TOKEN_DELAY_MS = env.int("OFFLINE_MODEL_TOKEN_DELAY_MS", 30, min_value=0)
CORS_ORIGINS = env.list("CORS_ORIGINS", ["*"])
# Limits on what a request may carry (each refused with a 4xx naming the variable).
MAX_OVERRIDE_DEPTH = env.int("MAX_OVERRIDE_DEPTH", 5, min_value=1, max_value=100)
MAX_OVERRIDE_KEYS = env.int("MAX_OVERRIDE_KEYS", 100, min_value=1, example="100")
# chatId / sessionId: the database column holds 255 characters.
MAX_CHAT_ID_LENGTH = env.int("MAX_CHAT_ID_LENGTH", 255, min_value=8, max_value=255)
MAX_UPLOADS = env.int("MAX_UPLOADS", 10, min_value=0, max_value=1000)
MAX_UPLOAD_BYTES = env.int("MAX_UPLOAD_BYTES", MAX_REQUEST_BODY_BYTES, min_value=1)

# --- Security ----------------------------------------------------------------------------------
# Old secret keys: still accepted for sessions and for reading secrets encrypted with them.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", [])
# Behind a reverse proxy: take the client address from X-Forwarded-For (NUMBER_OF_PROXIES
# hops from the right) and the scheme from X-Forwarded-Proto. Off: both headers are ignored.
TRUST_PROXY = env.bool("TRUST_PROXY", False)
NUMBER_OF_PROXIES = env.int("NUMBER_OF_PROXIES", 1, min_value=1, max_value=10)
if TRUST_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", False)
# Health checks and scrapes come over plain HTTP from inside the deployment.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", 0, min_value=0, example="31536000")
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", False)

# --- Local install -----------------------------------------------------------------------------
ADMIN_USERNAME = env.str("ADMIN_USERNAME", "admin")
ADMIN_PASSWORD = env.str("ADMIN_PASSWORD", secret=True)
ADMIN_EMAIL = env.str("ADMIN_EMAIL", "admin@localhost")

LOG_LEVEL = env.choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info").upper()
LOG_FORMAT = env.choice("LOG_FORMAT", ("text", "json"), "text")
LOGGING = build_logging(level=LOG_LEVEL, fmt=LOG_FORMAT)

env.raise_if_problems()

# --- Django ------------------------------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    # Before django_rq: predictions' rqworker command (defaulting to QUEUE_NAME) wins.
    "predictions",
    "queueadmin",
    "django_rq",
]

# Django's middleware, subclassed to run on the event loop under ASGI (flowsite/middleware.py).
MIDDLEWARE = [
    "flowsite.middleware.CorsMiddleware",
    "flowsite.middleware.SecurityMiddleware",
    "flowsite.middleware.SessionMiddleware",
    "flowsite.middleware.CommonMiddleware",
    "flowsite.middleware.CsrfViewMiddleware",
    "flowsite.middleware.AuthenticationMiddleware",
    "flowsite.middleware.MessageMiddleware",
    "flowsite.middleware.XFrameOptionsMiddleware",
]
# Django's checks for those three by dotted path; flowsite.W004-W006 check for the classes.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "flowsite.urls"
ASGI_APPLICATION = "flowsite.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = FLOWSITE_HOME / "static"
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
DATA_UPLOAD_MAX_NUMBER_FILES = max(MAX_UPLOADS, 1)

REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "predictions.exceptions.api_exception_handler",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "predictions.auth.ManagementKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["predictions.auth.IsStaffOrManagementKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # The management API takes JSON only (as Flowise's), within MAX_REQUEST_BODY_BYTES.
    "DEFAULT_PARSER_CLASSES": ["predictions.api.limits.LimitedJSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# OpenAPI 3 at /api/v1/schema, Swagger UI at /api/v1/docs (assets from drf-spectacular-sidecar,
# no CDN). Public: it describes the public contract and holds no data.
SPECTACULAR_SETTINGS = {
    "TITLE": "Flowsite API",
    "DESCRIPTION": (
        "Flowise-compatible REST API of Flowsite. Errors have Flowise's shape plus a stable "
        "`code`; management routes need a staff session or a management API key."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "predictions.api.schema.add_plain_views",
    ],
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

TESTING = "pytest" in sys.modules
