"""DataGate settings: embedded defaults, PostgreSQL and Redis when the environment names them.

No variable set: SQLite in WAL mode under ./var and the in-memory channel layer.
`DATABASE_URL` switches to PostgreSQL, `REDIS_URL` to channels-redis. The sync server's own
knobs live in `DATAGATE` (see `datagate_site/knobs.py`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from datagate_site.database import default_database
from datagate_site.knobs import knobs_from_environment, origins_list

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATAGATE_DATA_DIR", BASE_DIR / "var"))


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None else raw.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _env_bool("DJANGO_DEBUG", False)


def _secret_key() -> str:
    """The secret key from the environment, or one generated once and kept in DATA_DIR."""
    from_env = os.environ.get("DJANGO_SECRET_KEY")
    if from_env:
        return from_env
    key_file = DATA_DIR / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h]
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]
# Behind a load balancer that ends TLS (docs/deploy.md): trust its X-Forwarded-Proto, and send
# the session and CSRF cookies over HTTPS only.
if os.environ.get("DJANGO_BEHIND_TLS_PROXY", "").lower() in ("1", "true", "yes", "on"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "oauth2_provider",
    "guardian",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "replication",
    "topics",
    "console",
    "search",
    "api",
    "couchdb",
    "graphqlapi",
    # Only for its static files: GraphiQL's scripts and styles, served offline (/graphql/).
    "graphene_django_graphiql_static",
]

MIDDLEWARE = [
    "datagate_site.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "datagate_site.bad_values.BadValueMiddleware",
]

ROOT_URLCONF = "datagate_site.urls"
ASGI_APPLICATION = "datagate_site.asgi.application"

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

# --- Database: SQLite (WAL) by default, PostgreSQL (or another SQLite file) with DATABASE_URL
DATABASES = {"default": default_database(os.environ, DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer: in-memory by default, Redis with REDIS_URL -------------------------------
if os.environ.get("REDIS_URL"):
    # Redis pub/sub, not channels_redis's list-based RedisChannelLayer: the layer only rings
    # doorbells (docs/decisions/0002), one per commit, to one listener per process
    # (core/hub.py). With pub/sub a group is a subscription held by a live connection,
    # so a killed process leaves no dead members behind (RedisChannelLayer keeps them for
    # `group_expiry` and keeps delivering to them), and a group send is one PUBLISH whatever
    # the number of processes. Pub/sub is at most once, like every channel layer: a bell lost
    # while a connection is down only delays a feed until the next database poll.
    # redis<8 is pinned (channels_redis #422); the timeouts are explicit so that a dead Redis
    # is noticed and reconnected rather than waited on forever.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": os.environ["REDIS_URL"],
                        "socket_connect_timeout": 5,
                        "socket_keepalive": True,
                        "health_check_interval": 30,
                        "retry_on_timeout": True,
                    }
                ],
                # Pub/sub channels are global to a Redis server (not per database number):
                # the prefix keeps deployments (and test runs) sharing one Redis apart.
                "prefix": os.environ.get("DATAGATE_REDIS_PREFIX", "datagate"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
LOGIN_URL = "/admin/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"  # collectstatic target; whitenoise also serves from finders
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve static files straight from the apps' folders, so daphne alone serves the console
# in production mode too, without a collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

DATAGATE = knobs_from_environment()

OAUTH2_PROVIDER = {
    "ACCESS_TOKEN_EXPIRE_SECONDS": DATAGATE["ACCESS_TOKEN_TTL"],
    "SCOPES": {
        "read": "Read and pull documents",
        "write": "Push document changes",
        "topics": "Publish and subscribe to topics",
        "metrics": "Scrape the Prometheus metrics at /metrics",
    },
    "DEFAULT_SCOPES": ["read"],
    "PKCE_REQUIRED": True,
    "REFRESH_TOKEN_EXPIRE_SECONDS": DATAGATE["REFRESH_TOKEN_TTL"],
    "ROTATE_REFRESH_TOKEN": True,
    # Tokens are kept as checksums only (RFC 9700 section 4.14): a database dump holds no
    # usable token. accounts/tokens.py looks them up by checksum.
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
}

# --- HTTP API (api/): DRF, the OpenAPI schema, CORS ------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.TokenHasScope"],
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.TokenRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["api.parsers.SafeJSONParser"],
    "EXCEPTION_HANDLER": "api.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "DataGate HTTP API",
    "DESCRIPTION": (
        "Documents, changes, search and topics over HTTP, with the same data, permissions and "
        "DG-NNNN error codes as the websocket protocol. Authenticate with an OAuth2 bearer token."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.schema.add_error_responses",
    ],
}
CORS_ALLOWED_ORIGINS = origins_list(DATAGATE["CORS_ALLOWED_ORIGINS"])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = ["accept", "authorization", "content-type", "if-match"]
CORS_EXPOSE_HEADERS = ["etag", "retry-after"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DATAGATE_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # oauthlib logs issued tokens at DEBUG; never let them reach a log
        # (tests/accounts/test_oauth.py drives every flow at DEBUG and checks).
        "oauthlib": {"level": "INFO"},
    },
}
