"""The engine stage: its internal surface for the stages above it."""

from resilient_db.engine._capacity import PoolLimits, pool_limits
from resilient_db.engine._doctor import DoctorReport, Finding, Severity, doctor
from resilient_db.engine._factory import EngineSettings, create_async_engine, engine_settings
from resilient_db.engine._health import EndpointKey, endpoint_key, engine_health_check
from resilient_db.engine._pool_policy import (
    WROTE_KEY,
    install_pool_policy,
    server_in_hot_standby,
    timeline_supported,
)
from resilient_db.engine._urls import safe_url

__all__ = [
    "WROTE_KEY",
    "DoctorReport",
    "EndpointKey",
    "EngineSettings",
    "Finding",
    "PoolLimits",
    "Severity",
    "create_async_engine",
    "doctor",
    "endpoint_key",
    "engine_health_check",
    "engine_settings",
    "install_pool_policy",
    "pool_limits",
    "safe_url",
    "server_in_hot_standby",
    "timeline_supported",
]
