"""Where the shared development servers are (``make postgres redis kafka``), for every test
module: the library's own defaults (brokercore.config) unless a BROKERCORE_* variable
overrides them, so that no test writes a port of its own."""

from __future__ import annotations

import uuid

import redis

from brokercore.config import DEV_JWT_SECRET, KafkaSettings, ServiceSettings

_SERVICES = ServiceSettings.from_env()

DATABASE_URL = _SERVICES.database_url  # BROKERCORE_DATABASE_URL
REDIS_URL = _SERVICES.redis_url  # BROKERCORE_REDIS_URL
KAFKA_BOOTSTRAP = KafkaSettings.from_env().bootstrap  # BROKERCORE_KAFKA_BOOTSTRAP


def service_settings(database: str, redis_prefix: str, **overrides) -> ServiceSettings:
    """A service's settings for a test: its ``database``, the shared Redis under
    ``redis_prefix``, the dev-mode JWT secret; ``overrides`` win."""
    return ServiceSettings(
        **{
            "database_url": database,
            "redis_url": REDIS_URL,
            "redis_prefix": redis_prefix,
            "jwt_hs256_secret": DEV_JWT_SECRET,
        }
        | overrides
    )


def powerless_redis_user(admin: redis.Redis, role: str) -> tuple[str, str]:
    """A new Redis user (name, password) that may run no command: every call it makes
    fails as it would with Redis away, until ``admin`` grants it ``+@all``."""
    user, password = f"{role}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        categories=["-@all"],
    )
    return user, password
