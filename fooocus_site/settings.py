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


def env_bool(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable (1/true/yes/on, case-insensitive)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


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
FOOOCUS_QUEUE_SIZE = env_int("FOOOCUS_QUEUE_SIZE", 100)
# Webhook used when a request gives none.
FOOOCUS_WEBHOOK_URL = os.environ.get("FOOOCUS_WEBHOOK_URL", "").strip()
FOOOCUS_WEBHOOK_TIMEOUT = float(os.environ.get("FOOOCUS_WEBHOOK_TIMEOUT", "10"))
FOOOCUS_WEBHOOK_RETRIES = env_int("FOOOCUS_WEBHOOK_RETRIES", 4)
FOOOCUS_WEBHOOK_BACKOFF = float(os.environ.get("FOOOCUS_WEBHOOK_BACKOFF", "1.0"))
# Engine device: auto (CUDA when present), cpu, cuda:N.
FOOOCUS_DEVICE = os.environ.get("FOOOCUS_DEVICE", "auto").strip() or "auto"
# CPU threads for torch in the engine worker (0 = torch's default).
FOOOCUS_TORCH_THREADS = env_int("FOOOCUS_TORCH_THREADS", 0)
# Model files named by presets are downloaded on first use unless this is off.
FOOOCUS_ALLOW_DOWNLOADS = env_bool("FOOOCUS_ALLOW_DOWNLOADS", True)
# Image inputs given as URLs: fetch limits, and whether private/loopback targets are allowed.
FOOOCUS_ALLOW_PRIVATE_URLS = env_bool("FOOOCUS_ALLOW_PRIVATE_URLS")
FOOOCUS_URL_FETCH_TIMEOUT = float(os.environ.get("FOOOCUS_URL_FETCH_TIMEOUT", "20"))
FOOOCUS_MAX_IMAGE_BYTES = env_int("FOOOCUS_MAX_IMAGE_BYTES", 50 * 1024 * 1024)
# The worker re-checks the queue this often even without a wake-up message (seconds).
FOOOCUS_WORKER_POLL_SECONDS = float(os.environ.get("FOOOCUS_WORKER_POLL_SECONDS", "2"))
# Waiting sync/binary/stream requests re-read the task from the database this often (seconds).
FOOOCUS_WAIT_RECHECK_SECONDS = float(os.environ.get("FOOOCUS_WAIT_RECHECK_SECONDS", "2"))
# Channel name of the engine workers (python manage.py runworker fooocus-engine).
FOOOCUS_WORKER_CHANNEL = "fooocus-engine"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "history",
    "generation",
    "channels",
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
    """Parse ``postgres://user:pass@host:port/name`` (the only server database we support)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ValueError(f"DATABASE_URL must be a postgres:// URL, got scheme {parts.scheme!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": 0,
    }


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
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000, "expiry": 60},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    }
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
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("FOOOCUS_MAX_BODY_BYTES", 200 * 1024 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "generation.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "generation": {"handlers": ["console"], "level": "INFO"},
        "history": {"handlers": ["console"], "level": "INFO"},
        "engine": {"handlers": ["console"], "level": "INFO"},
    },
}
