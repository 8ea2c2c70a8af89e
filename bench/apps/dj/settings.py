"""Settings: the tutorial's shape (sessions, auth, channels), no database queries on the hot path."""

import os

SECRET_KEY = "bench-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "apps.dj",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "apps.dj.urls"
ASGI_APPLICATION = "apps.dj.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "WARNING"},
}

_LAYER = os.environ.get("DJ_LAYER", "memory")
_REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
if _LAYER == "redis":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # socket_timeout=None: with redis-py 8 the default (5 s) equals brpop_timeout
            # and idle receivers raise TimeoutError (channels_redis#422).
            "CONFIG": {
                "hosts": [{"address": _REDIS, "socket_timeout": None}],
                "prefix": "benchdj",
            },
        }
    }
elif _LAYER == "redis-pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [_REDIS], "prefix": "benchdj"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
