"""Server config (``server.toml``) for the consumer, the bridge and migrations.

Loaded with tomllib into frozen pydantic models; a bad file fails at load with
the file, the key and what was expected. Sample: ``deploy/server/server.toml``.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from edge.wire import DEFAULT_MAX_BYTES, public_key_from_b64
from ingest.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Frozen):
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    group: str = "plantprint-ingest"
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    max_poll_records: int = Field(default=500, ge=1)
    # a poll may carry a message far above max_frame_bytes: it must reach us to be DLQ'd
    fetch_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # DLQ values above this are truncated (header ``truncated`` = original size)
    dlq_max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024)
    # a broker not there at startup: each attempt waits this long, then capped backoff
    connect_timeout_s: float = Field(default=5.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


class DatabaseConfig(_Frozen):
    dsn: SecretStr = SecretStr("postgresql://127.0.0.1:5432/plantprint")
    timescaledb: Literal["auto", "require", "off"] = "auto"
    # "insert" for servers without COPY FROM STDIN (the WASM TimescaleDB test peer)
    landing: Literal["copy", "insert"] = "copy"
    connect_timeout_s: float = Field(default=5.0, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)


class StorageConfig(_Frozen):
    """TimescaleDB settings applied by ``migrate --config`` (ignored on plain PostgreSQL)."""

    # readings per second the site produces; sets the chunk interval when chunk_interval = "auto"
    expected_readings_per_second: float = Field(default=500.0, gt=0)
    chunk_interval: str = "auto"
    compress_after: str | None = "7 days"
    retain_for: str | None = None  # e.g. "5 years"; None keeps raw readings forever
    aggregate_refresh_every: str = "5 minutes"


class Limits(_Frozen):
    max_frame_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024)
    future_skew_s: float = Field(default=300.0, ge=0)


class GatewayConfig(_Frozen):
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, v: str) -> str:
        public_key_from_b64(v)
        return v


class MeterConfig(_Frozen):
    commissioned: datetime

    @field_validator("commissioned")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2024-01-01T00:00:00Z")
        return v


class BridgeConfig(_Frozen):
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    client_id: str = "plantprint-bridge"
    topic_root: str = "plantprint"
    state_file: Path = Path("bridge-state.sqlite")
    readback_idle_s: float = Field(default=2.0, gt=0)
    # the bridge's own Prometheus endpoint (it runs as its own process); 0: none
    metrics_port: int = Field(default=9109, ge=0, le=65535)


class MetricsConfig(_Frozen):
    port: int = Field(default=9108, ge=0, le=65535)  # 0: no metrics endpoint
    # bind address of the consumer's and the bridge's endpoints; loopback by default,
    # "0.0.0.0" (or the host's plant-network address) for a Prometheus on another host
    addr: str = "127.0.0.1"


class ServerConfig(_Frozen):
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    limits: Limits = Field(default_factory=Limits)
    gateways: dict[str, GatewayConfig] = {}
    meters: dict[str, MeterConfig] = {}
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {gw: public_key_from_b64(g.public_key) for gw, g in self.gateways.items()}

    def commissioning_ns(self) -> dict[str, int]:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return {
            m: (c.commissioned - epoch) // timedelta(microseconds=1) * 1000
            for m, c in self.meters.items()
        }


def load_config(path: Path) -> ServerConfig:
    """Read and validate a server TOML file; errors name the file, key and expectation."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return ServerConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
