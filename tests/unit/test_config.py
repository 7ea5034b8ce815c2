"""Settings from BROKERCORE_* variables (brokercore.config): every variable, its default,
and a clear error naming the variable for a bad value."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from brokercore.config import DEV_JWT_SECRET, KafkaSettings, ServiceSettings

SERVICE_ENV = {
    "BROKERCORE_DATABASE_URL": "postgresql://u@db:5432/b",
    "BROKERCORE_REDIS_URL": "redis://r/1",
    "BROKERCORE_REDIS_PREFIX": "",
    "BROKERCORE_INSTRUMENTS": "/etc/instruments.toml",
    "BROKERCORE_CALENDAR": "always-open",
    "BROKERCORE_JWT_ISSUER": "issuer",
    "BROKERCORE_JWT_AUDIENCE": "audience",
    "BROKERCORE_JWT_HS256_SECRET": "secret",
    "BROKERCORE_RATE_LIMIT_BURST": "3",
    "BROKERCORE_RATE_LIMIT_PER_SECOND": "1.5",
    "BROKERCORE_READ_RATE_LIMIT_BURST": "4",
    "BROKERCORE_READ_RATE_LIMIT_PER_SECOND": "2.5",
    "BROKERCORE_DB_POOL_TIMEOUT": "0.5",
    "BROKERCORE_MAX_BODY_BYTES": "100",
    "BROKERCORE_FEE_BPS": "2.5",
    "BROKERCORE_FEE_FIXED_PAISE": "7",
    "BROKERCORE_MAX_ORDER_MODIFICATIONS": "3",
    "BROKERCORE_MARKET_PROTECTION_PERCENT": "2.5",
    "BROKERCORE_CACHE_TTL": "9",
    "BROKERCORE_GTT_EXPIRY_DAYS": "30",
    "BROKERCORE_PUSH_URL": "http://push",
    "BROKERCORE_PUSH_RETRY_BASE": "0.1",
    "BROKERCORE_PUSH_RETRY_CAP": "2",
    "BROKERCORE_PUSH_ATTEMPTS": "2",
    "BROKERCORE_POSTBACK_TIMEOUT": "1.5",
    "BROKERCORE_POSTBACK_PER_URL": "2",
    "BROKERCORE_POSTBACK_CA_FILE": "/etc/ca.pem",
    "BROKERCORE_POSTBACK_PRIVATE_HOSTS": "1",
    "BROKERCORE_POSTBACK_BREAKER_FAILURES": "3",
    "BROKERCORE_POSTBACK_BREAKER_PAUSE": "60",
    "BROKERCORE_DEAD_LETTER_RETRY_INTERVAL": "5",
    "BROKERCORE_WS_QUEUE_SIZE": "10",
    "BROKERCORE_WS_HEARTBEAT": "1",
    "BROKERCORE_REPLICA_URL": "postgresql://u@replica:5432/b",
    "BROKERCORE_REPLICA_MAX_LAG": "0.5",
    "BROKERCORE_DAY": "compressed",
    "BROKERCORE_DAY_SECONDS": "30,10,60,20",
    "BROKERCORE_SCHEDULER_SECRET": "uncross",
    "BROKERCORE_PAYMENT_PROVIDER_URL": "http://provider",
    "BROKERCORE_PAYMENT_WEBHOOK_SECRET": "hook",
    "BROKERCORE_PAYOUT_RETRY_BASE": "0.2",
    "BROKERCORE_PAYOUT_RETRY_CAP": "3",
    "BROKERCORE_JWKS_URL": "http://accounts/api/v1/auth/jwks",
    "BROKERCORE_JWKS_REFRESH": "30",
}


def test_no_variables_are_the_defaults():
    assert ServiceSettings.from_env({}) == ServiceSettings()
    assert KafkaSettings.from_env({}) == KafkaSettings()


def test_every_service_variable_sets_its_field():
    settings = ServiceSettings.from_env(SERVICE_ENV)
    assert settings == ServiceSettings(
        database_url="postgresql://u@db:5432/b",
        redis_url="redis://r/1",
        redis_prefix="",
        instruments="/etc/instruments.toml",
        calendar="always-open",
        jwt_issuer="issuer",
        jwt_audience="audience",
        jwt_hs256_secret="secret",
        rate_limit_burst=3,
        rate_limit_per_second=1.5,
        read_rate_limit_burst=4,
        read_rate_limit_per_second=2.5,
        db_pool_timeout=0.5,
        max_body_bytes=100,
        fee_bps=Decimal("2.5"),
        fee_fixed_paise=7,
        max_order_modifications=3,
        market_protection_percent=Decimal("2.5"),
        cache_ttl=9.0,
        gtt_expiry_days=30,
        push_url="http://push",
        push_retry_base=0.1,
        push_retry_cap=2.0,
        push_attempts=2,
        postback_timeout=1.5,
        postback_per_url=2,
        postback_ca_file="/etc/ca.pem",
        postback_private_hosts=True,
        postback_breaker_failures=3,
        postback_breaker_pause=60.0,
        payment_provider_url="http://provider",
        payment_webhook_secret="hook",
        payout_retry_base=0.2,
        payout_retry_cap=3.0,
        jwks_url="http://accounts/api/v1/auth/jwks",
        jwks_refresh=30.0,
        dead_letter_retry_interval=5.0,
        ws_queue_size=10,
        ws_heartbeat=1.0,
        replica_url="postgresql://u@replica:5432/b",
        replica_max_lag=0.5,
        day="compressed",
        day_seconds=(30.0, 10.0, 60.0, 20.0),
        scheduler_secret="uncross",
    )
    # every field but the two worked out from other variables is set by the table above
    unset = [
        f.name
        for f in dataclasses.fields(ServiceSettings)
        if getattr(settings, f.name) == f.default
    ]
    assert unset == ["jwt_rs256_public_key", "dev_mode"]


def test_kafka_variables():
    assert KafkaSettings.from_env(
        {
            "BROKERCORE_KAFKA_BOOTSTRAP": "k:9092",
            "BROKERCORE_TOPIC_PREFIX": "t.",
            "BROKERCORE_SHARDS": "2",
        }
    ) == KafkaSettings("k:9092", "t.", 2)


def test_dev_mode_only_for_1_and_then_the_public_secret(tmp_path):
    assert ServiceSettings.from_env({"BROKERCORE_DEV_MODE": "1"}).jwt_hs256_secret == DEV_JWT_SECRET
    for value in ("0", "true", "yes", ""):
        settings = ServiceSettings.from_env({"BROKERCORE_DEV_MODE": value})
        assert not settings.dev_mode and settings.jwt_hs256_secret is None
    settings = ServiceSettings.from_env(
        {"BROKERCORE_DEV_MODE": "1", "BROKERCORE_JWT_HS256_SECRET": "mine"}
    )
    assert settings.dev_mode and settings.jwt_hs256_secret == "mine"
    key = tmp_path / "public.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\n")
    settings = ServiceSettings.from_env(
        {
            "BROKERCORE_JWT_RS256_PUBLIC_KEY_FILE": str(key),
            "BROKERCORE_PUSH_URL": "",
            "BROKERCORE_REPLICA_URL": "",
            "BROKERCORE_JWKS_URL": "",
        }
    )
    assert settings.jwt_rs256_public_key == "-----BEGIN PUBLIC KEY-----\n"
    assert settings.push_url is None and settings.replica_url is None
    assert settings.jwks_url is None


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"BROKERCORE_CALENDAR": "nyse"},
            "BROKERCORE_CALENDAR must be one of exchange, always-open, not 'nyse'",
        ),
        (
            {"BROKERCORE_RATE_LIMIT_BURST": "many"},
            "BROKERCORE_RATE_LIMIT_BURST must be an integer, not 'many'",
        ),
        ({"BROKERCORE_CACHE_TTL": "soon"}, "BROKERCORE_CACHE_TTL must be a number, not 'soon'"),
        (
            {"BROKERCORE_MARKET_PROTECTION_PERCENT": "abc"},
            "BROKERCORE_MARKET_PROTECTION_PERCENT must be a decimal number, not 'abc'",
        ),
        (
            {"BROKERCORE_FEE_BPS": "2,5"},
            "BROKERCORE_FEE_BPS must be a decimal number, not '2,5'",
        ),
    ],
)
def test_a_bad_value_names_its_variable(env, message):
    with pytest.raises(ValueError, match=f"^invalid BROKERCORE_\\* setting: {message}$"):
        ServiceSettings.from_env(env)


def test_bad_kafka_values():
    with pytest.raises(ValueError, match="BROKERCORE_SHARDS must be an integer, not 'x'"):
        KafkaSettings.from_env({"BROKERCORE_SHARDS": "x"})
    with pytest.raises(ValueError, match="shards must be at least 1"):
        KafkaSettings.from_env({"BROKERCORE_SHARDS": "0"})
