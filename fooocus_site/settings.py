"""Settings, read from the environment in this one place.

Defaults give the embedded mode (one process, SQLite at ``outputs/db.sqlite3``, in-memory channel
layer, local-memory cache). ``DATABASE_URL`` and ``REDIS_URL`` switch to the scaled mode.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent


# What could not be read from the environment: ``(check id, variable, message)``. Nothing here
# raises, so a bad value cannot crash an import with a bare traceback; the system checks in
# ``generation/checks.py`` report these and stop ``manage.py`` commands and daphne at start.
FOOOCUS_SETTINGS_PROBLEMS: list[tuple[str, str, str]] = []

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def _problem(check_id: str, name: str, message: str) -> None:
    FOOOCUS_SETTINGS_PROBLEMS.append((check_id, name, message))


def env_bool(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable (1/true/yes/on or 0/false/no/off, any case)."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in TRUE_WORDS | FALSE_WORDS:
        _problem("fooocus.E001", name, f"is {value!r}; use one of 1/true/yes/on or 0/false/no/off")
        return default
    return value in TRUE_WORDS


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """Read a whole number; ``minimum`` is the smallest value that makes sense."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        _problem("fooocus.E001", name, f"is {value!r}, not a whole number")
        return default
    if minimum is not None and number < minimum:
        _problem("fooocus.E002", name, f"is {number}; it must be at least {minimum}")
        return default
    return number


def env_float(name: str, default: float, minimum: float = 0.0, exclusive: bool = False) -> float:
    """Read a number of seconds (or another non-negative quantity); ``exclusive`` refuses 0."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        _problem("fooocus.E001", name, f"is {value!r}, not a number")
        return default
    if number != number or number in (float("inf"), float("-inf")):
        _problem("fooocus.E001", name, f"is {value!r}, not a finite number")
        return default
    if number < minimum or (exclusive and number == minimum):
        bound = f"more than {minimum:g}" if exclusive else f"at least {minimum:g}"
        _problem("fooocus.E002", name, f"is {number:g}; it must be {bound}")
        return default
    return number


def env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name, "")
    return Path(value).expanduser().resolve() if value.strip() else default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# Runtime folders. outputs/ also holds the SQLite database, as in FooocusAPI.
FOOOCUS_OUTPUTS_DIR = env_path("FOOOCUS_OUTPUTS_DIR", BASE_DIR / "outputs")
FOOOCUS_INPUTS_DIR = env_path("FOOOCUS_INPUTS_DIR", BASE_DIR / "inputs")
FOOOCUS_MODELS_DIR = env_path("FOOOCUS_MODELS_DIR", BASE_DIR / "models")
FOOOCUS_PRESETS_DIR = env_path("FOOOCUS_PRESETS_DIR", BASE_DIR / "presets")
FOOOCUS_STYLES_DIR = env_path("FOOOCUS_STYLES_DIR", BASE_DIR / "styles")
FOOOCUS_WILDCARDS_DIR = env_path("FOOOCUS_WILDCARDS_DIR", BASE_DIR / "wildcards")
FOOOCUS_OUTPUTS_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """An explicit key wins; otherwise one is made once and kept beside the database.

    There is no built-in default: a key committed to a repository is a key everybody knows.
    """
    explicit = os.environ.get("DJANGO_SECRET_KEY", "").strip()
    if explicit:
        return explicit
    key_file = FOOOCUS_OUTPUTS_DIR / ".secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["*"])

# The preset used when a request names none (or names "initial").
FOOOCUS_PRESET = os.environ.get("FOOOCUS_PRESET", "default").strip() or "default"
# Base of absolute result URLs; empty = built from each request's host.
FOOOCUS_PUBLIC_URL = os.environ.get("FOOOCUS_PUBLIC_URL", "").strip().rstrip("/")
# Waiting tasks beyond this number are refused with 503 + Retry-After.
FOOOCUS_QUEUE_SIZE = env_int("FOOOCUS_QUEUE_SIZE", 100, minimum=1)
# Webhook used when a request gives none.
FOOOCUS_WEBHOOK_URL = os.environ.get("FOOOCUS_WEBHOOK_URL", "").strip()
FOOOCUS_WEBHOOK_TIMEOUT = env_float("FOOOCUS_WEBHOOK_TIMEOUT", 10.0, exclusive=True)
FOOOCUS_WEBHOOK_RETRIES = env_int("FOOOCUS_WEBHOOK_RETRIES", 4, minimum=1)
FOOOCUS_WEBHOOK_BACKOFF = env_float("FOOOCUS_WEBHOOK_BACKOFF", 1.0)
# Engine device: auto (CUDA when present), cpu, cuda, cuda:N, mps (checked at start).
FOOOCUS_DEVICE = os.environ.get("FOOOCUS_DEVICE", "auto").strip() or "auto"
# The engine worker's memory level, UNet compilation and task batching (engine/memory.py,
# README "Performance"); checked at start like every other setting.
FOOOCUS_VRAM = os.environ.get("FOOOCUS_VRAM", "auto").strip().lower() or "auto"
if FOOOCUS_VRAM not in ("auto", "high", "normal", "low", "none"):
    _problem(
        "fooocus.E001", "FOOOCUS_VRAM", f"is {FOOOCUS_VRAM!r}; use auto, high, normal, low or none"
    )
FOOOCUS_COMPILE = env_bool("FOOOCUS_COMPILE", False)
# Up to this many queued tasks that share model, LoRAs, size, steps, sampler and scheduler run
# as one engine batch in a worker (generation/batching.py); 1 = one task at a time.
FOOOCUS_BATCH_TASKS = env_int("FOOOCUS_BATCH_TASKS", 1, minimum=1)
# CPU threads for torch in the engine worker (0 = torch's default).
FOOOCUS_TORCH_THREADS = env_int("FOOOCUS_TORCH_THREADS", 0, minimum=0)
# Model files named by presets are downloaded on first use unless this is off.
FOOOCUS_ALLOW_DOWNLOADS = env_bool("FOOOCUS_ALLOW_DOWNLOADS", True)
# Image inputs given as URLs: fetch limits, and whether private/loopback targets are allowed.
FOOOCUS_ALLOW_PRIVATE_URLS = env_bool("FOOOCUS_ALLOW_PRIVATE_URLS")
# Hosts trusted even on private addresses (an internal image store); each redirect is checked.
FOOOCUS_TRUSTED_URL_HOSTS = [h.lower() for h in env_list("FOOOCUS_TRUSTED_URL_HOSTS", [])]
FOOOCUS_URL_FETCH_TIMEOUT = env_float("FOOOCUS_URL_FETCH_TIMEOUT", 20.0, exclusive=True)
FOOOCUS_MAX_IMAGE_BYTES = env_int("FOOOCUS_MAX_IMAGE_BYTES", 50 * 1024 * 1024, minimum=1)
# The worker re-checks the queue this often even without a wake-up message (seconds).
FOOOCUS_WORKER_POLL_SECONDS = env_float("FOOOCUS_WORKER_POLL_SECONDS", 2.0, exclusive=True)
# Waiting sync/binary/stream requests re-read the task from the database this often (seconds).
FOOOCUS_WAIT_RECHECK_SECONDS = env_float("FOOOCUS_WAIT_RECHECK_SECONDS", 2.0, exclusive=True)
# Access control (see generation/access.py). Comma-separated admin keys from the environment;
# more keys (named, scoped, revocable) in the database via the admin or `manage.py apikey`.
FOOOCUS_API_KEYS = os.environ.get("FOOOCUS_API_KEYS", "").strip()
FOOOCUS_RATE_LIMIT_PER_MINUTE = env_int("FOOOCUS_RATE_LIMIT_PER_MINUTE", 0, minimum=0)
FOOOCUS_MAX_QUEUED_PER_KEY = env_int("FOOOCUS_MAX_QUEUED_PER_KEY", 0, minimum=0)
# Serve /outputs and /inputs only through expiring signed URLs (default: public, as FooocusAPI).
FOOOCUS_SIGNED_FILE_URLS = env_bool("FOOOCUS_SIGNED_FILE_URLS")
FOOOCUS_SIGNED_URL_TTL = env_int("FOOOCUS_SIGNED_URL_TTL", 3600, minimum=1)
# Request limits.
FOOOCUS_MAX_BODY_BYTES = env_int("FOOOCUS_MAX_BODY_BYTES", 64 * 1024 * 1024, minimum=1)
FOOOCUS_MAX_PROMPT_CHARS = env_int("FOOOCUS_MAX_PROMPT_CHARS", 10_000, minimum=1)
FOOOCUS_MAX_IMAGE_PIXELS = env_int("FOOOCUS_MAX_IMAGE_PIXELS", 4096 * 4096, minimum=1)
# What one request may ask the GPU for: images, sampling steps, and output size (W*H).
FOOOCUS_MAX_IMAGE_NUMBER = env_int("FOOOCUS_MAX_IMAGE_NUMBER", 32, minimum=1)
FOOOCUS_MAX_STEPS = env_int("FOOOCUS_MAX_STEPS", 200, minimum=1)
FOOOCUS_MAX_OUTPUT_PIXELS = env_int("FOOOCUS_MAX_OUTPUT_PIXELS", 4096 * 4096, minimum=1)
# Webhooks: signing secret (Standard Webhooks headers) and private targets.
FOOOCUS_WEBHOOK_SECRET = os.environ.get("FOOOCUS_WEBHOOK_SECRET", "").strip()
FOOOCUS_ALLOW_PRIVATE_WEBHOOKS = env_bool("FOOOCUS_ALLOW_PRIVATE_WEBHOOKS")
FOOOCUS_WEBHOOK_PROGRESS_INTERVAL = env_float("FOOOCUS_WEBHOOK_PROGRESS_INTERVAL", 5.0)
# Browsers allowed to call the API from other origins (none by default; "*" for any).
FOOOCUS_CORS_ORIGINS = env_list("FOOOCUS_CORS_ORIGINS", [])
# Channel name of the engine workers (python manage.py runworker fooocus-engine).
FOOOCUS_WORKER_CHANNEL = "fooocus-engine"
# Workers record a heartbeat this often; a worker silent for the lease is taken for dead and
# its task goes back to the queue, up to FOOOCUS_TASK_MAX_ATTEMPTS runs, then fails (seconds).
FOOOCUS_WORKER_HEARTBEAT_SECONDS = env_float(
    "FOOOCUS_WORKER_HEARTBEAT_SECONDS", 5.0, exclusive=True
)
FOOOCUS_WORKER_LEASE_SECONDS = env_float("FOOOCUS_WORKER_LEASE_SECONDS", 30.0, exclusive=True)
FOOOCUS_TASK_MAX_ATTEMPTS = env_int("FOOOCUS_TASK_MAX_ATTEMPTS", 3, minimum=1)
# Prefix of every Redis key (channel layer and cache), so deployments can share one Redis.
FOOOCUS_REDIS_PREFIX = os.environ.get("FOOOCUS_REDIS_PREFIX", "").strip()

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "history",
    "generation",
    "channels",
    "drf_spectacular",
    "drf_spectacular_sidecar",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "generation.middleware.ApiHeadersMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fooocus_site.urls"
ASGI_APPLICATION = "fooocus_site.asgi.application"

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


def _database_from_url(url: str) -> dict[str, object]:
    """Parse ``postgres://user:pass@host:port/name`` (the only server database we support).

    A URL that cannot be right is recorded as a problem (the checks stop the process) and the
    database is Django's dummy backend, so nothing quietly falls back to SQLite."""
    dummy: dict[str, object] = {"ENGINE": "django.db.backends.dummy"}
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        _problem("fooocus.E004", "DATABASE_URL", f"must be a postgres:// URL, not {parts.scheme!r}")
        return dummy
    try:
        port = parts.port
    except ValueError as exc:
        _problem("fooocus.E004", "DATABASE_URL", f"has a bad port: {exc}")
        return dummy
    name = unquote(parts.path.lstrip("/"))
    if not name or "/" in name:
        _problem("fooocus.E004", "DATABASE_URL", "must name one database: postgres://host/NAME")
        return dummy
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(port or ""),
        "CONN_MAX_AGE": 0,
    }


def _redis_url_valid(url: str) -> bool:
    """Whether ``url`` is a Redis URL (redis://, rediss:// or unix://); recorded if not."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        _problem("fooocus.E005", "REDIS_URL", f"must be a redis:// URL, not {parts.scheme!r}")
        return False
    try:
        parts.port  # noqa: B018 (reading it validates it)
    except ValueError as exc:
        _problem("fooocus.E005", "REDIS_URL", f"has a bad port: {exc}")
        return False
    if parts.scheme != "unix" and not parts.hostname:
        _problem("fooocus.E005", "REDIS_URL", "names no host: redis://HOST:6379/0")
        return False
    if parts.scheme == "unix" and not parts.path:
        _problem("fooocus.E005", "REDIS_URL", "names no socket: unix:///path/to/redis.sock")
        return False
    return True


DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
if DATABASE_URL:
    DATABASES = {"default": _database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_path("FOOOCUS_DB_PATH", FOOOCUS_OUTPUTS_DIR / "db.sqlite3"),
            # WAL lets the web side read while the worker writes; IMMEDIATE transactions take
            # the write lock up front, so concurrent writers wait instead of failing mid-way.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    }

REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL and _redis_url_valid(REDIS_URL):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "capacity": 1000,
                "expiry": 60,
                "prefix": f"{FOOOCUS_REDIS_PREFIX}:asgi" if FOOOCUS_REDIS_PREFIX else "asgi",
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": FOOOCUS_REDIS_PREFIX,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                # Live progress and stop/skip requests live here; while Redis restarts a task
                # must go on (the database holds everything that matters), so errors are logged
                # and read as a miss instead of failing the task.
                "IGNORE_EXCEPTIONS": True,
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 5,
            },
        }
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("FOOOCUS_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Generate bodies carry base64 images; the per-field size limits are checked in the serializer.
DATA_UPLOAD_MAX_MEMORY_SIZE = FOOOCUS_MAX_BODY_BYTES

# Security headers on every response; cookies only over HTTPS when served behind TLS.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
FOOOCUS_HTTPS = env_bool("FOOOCUS_HTTPS") or FOOOCUS_PUBLIC_URL.startswith("https://")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = FOOOCUS_HTTPS
SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = [FOOOCUS_PUBLIC_URL] if FOOOCUS_PUBLIC_URL else []
if FOOOCUS_HTTPS:
    SECURE_HSTS_SECONDS = 31_536_000
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["generation.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["generation.auth.HasScope"],
    "DEFAULT_THROTTLE_CLASSES": ["generation.auth.KeyRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "generation.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Fooocus API server",
    "DESCRIPTION": "FooocusAPI-compatible image generation: one generate endpoint with async, "
    "streaming (server-sent events), binary and JSON results; task history; engine information.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Choice sets used by more than one field (generate, enhance, the tool routes): one name each.
    "ENUM_NAME_OVERRIDES": {
        "UovMethodEnum": "engine.options.UOV_METHODS",
        "InpaintEngineEnum": "engine.options.INPAINT_ENGINES",
        "MaskModelEnum": "engine.tools.types.MASK_MODELS",
        "ClothCategoryEnum": "engine.tools.types.CLOTH_CATEGORIES",
        "SamModelEnum": "engine.tools.types.SAM_MODELS",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        # Not propagated: the root logger may have a handler too (each line would print twice).
        "generation": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "history": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "engine": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
