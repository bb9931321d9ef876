"""Server config (``server.toml``) for the consumer, the bridge and migrations.

Built on the edge's config base (``edge.settings``: the frozen model, the TOML
loader, the messages): a bad file fails at load with :class:`ConfigError`
naming the file, the key and what was expected. Sample: ``deploy/server/server.toml``.

The security keys are the edge's own models (``edge.tls``): ``[kafka]`` is a
``KafkaSecurity`` like the edge's ``[outputs.kafka]``, ``[bridge]`` an
``MqttSecurity`` (``url``, TLS, login) like the edge's ``[outputs.mqtt]``; the
Kafka servers are ``bootstrap_servers``, a list, in both. TLS and credential
files are taken relative to the config file's folder and must exist and load
(key matching certificate, right password) when the file is loaded, not at the
first connection. An empty string means "not set" (TOML has no null, and the
sample documents every key). Durations are seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from kafka.cluster import collect_hosts
from pydantic import Field, SecretStr, ValidationInfo, field_validator

from edge.settings import Frozen, load_model
from edge.tls import KafkaSecurity, MqttSecurity
from edge.wire import DEFAULT_MAX_BYTES, public_key_from_b64
from ingest.errors import ConfigError


class KafkaConfig(KafkaSecurity):
    """``[kafka]``: the brokers, topics and group; the security keys (the base) are the
    edge's ``[outputs.kafka]`` ones, and every ingest client uses them."""

    # "host:port" each, as the edge's [outputs.kafka] bootstrap_servers
    bootstrap_servers: list[str] = Field(default=["127.0.0.1:9092"], min_length=1)
    topic_prefix: str = ""
    group: str = "plantprint-ingest"
    # seconds; a member silent this long is dropped from the group (heartbeats every third)
    session_timeout_s: float = Field(default=10.0, ge=1.0)
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

    @property
    def servers(self) -> str:
        """The bootstrap servers in one line, for messages."""
        return ",".join(self.bootstrap_servers)

    def bootstrap_addresses(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, _family
                in collect_hosts(self.bootstrap_servers, False)]

    def client_config(self) -> dict[str, Any]:
        """kafka-python keyword arguments of every ingest client: servers and security.

        The consumer, the DLQ producer, the bridge's producer and its read-back
        consumer all start from these (secrets are revealed only here).
        """
        return {"bootstrap_servers": self.bootstrap_servers, **self.security_kwargs()}


class DatabaseConfig(Frozen):
    dsn: SecretStr = SecretStr("postgresql://127.0.0.1:5432/plantprint")
    timescaledb: Literal["auto", "require", "off"] = "auto"
    # "insert" for servers without COPY FROM STDIN (the WASM TimescaleDB test peer)
    landing: Literal["copy", "insert"] = "copy"
    connect_timeout_s: float = Field(default=5.0, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)


class StorageConfig(Frozen):
    """TimescaleDB settings applied by ``migrate --config`` (ignored on plain PostgreSQL)."""

    # readings per second the site produces; sets the chunk interval when chunk_interval = "auto"
    expected_readings_per_second: float = Field(default=500.0, gt=0)
    chunk_interval: str = "auto"
    compress_after: str | None = "7 days"
    retain_for: str | None = None  # e.g. "5 years"; None keeps raw readings forever
    aggregate_refresh_every: str = "5 minutes"


class Limits(Frozen):
    max_frame_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024)
    future_skew_s: float = Field(default=300.0, ge=0)


class GatewayConfig(Frozen):
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, v: str) -> str:
        public_key_from_b64(v)
        return v


class MeterConfig(Frozen):
    commissioned: datetime

    @field_validator("commissioned")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2024-01-01T00:00:00Z")
        return v


class BridgeConfig(MqttSecurity):
    """``[bridge]``: the site broker (url, TLS and login: the base, as the edge's
    ``[outputs.mqtt]``) and the bridge's own settings."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "plantprint-bridge"
    topic_root: str = "plantprint"
    state_file: Path = Path("bridge-state.sqlite")
    readback_idle_s: float = Field(default=2.0, gt=0)
    # the bridge's own Prometheus endpoint (it runs as its own process); 0: none
    metrics_port: int = Field(default=9109, ge=0, le=65535)


class MetricsConfig(Frozen):
    port: int = Field(default=9108, ge=0, le=65535)  # 0: no metrics endpoint
    # bind address of the consumer's and the bridge's endpoints; loopback by default,
    # "0.0.0.0" (or the host's plant-network address) for a Prometheus on another host
    addr: str = "127.0.0.1"


class ComputeConfig(Frozen):
    """``[compute]``: the allocation worker (``python -m compute``)."""

    group: str = "plantprint-compute"
    # site -> its site model file (compute/site.py), relative to this file
    sites: dict[str, Path] = Field(default_factory=dict)
    # a micro-batch is evaluated at least this often (seconds of wall time)
    micro_batch_s: float = Field(default=1.0, gt=0, le=60)
    # an interval between two counter readings longer than this is a gap (seconds)
    gap_s: float = Field(default=300.0, gt=0)
    # Prometheus endpoint of the worker; 0: none
    metrics_port: int = Field(default=9110, ge=0, le=65535)

    @field_validator("sites")
    @classmethod
    def _rebase(cls, v: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
        base = (info.context or {}).get("base")
        if base is None:
            return v
        return {site: p if p.is_absolute() else Path(base) / p for site, p in v.items()}


class ServerConfig(Frozen):
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    limits: Limits = Field(default_factory=Limits)
    gateways: dict[str, GatewayConfig] = Field(default_factory=dict)
    meters: dict[str, MeterConfig] = Field(default_factory=dict)
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {gw: public_key_from_b64(g.public_key) for gw, g in self.gateways.items()}

    def commissioning_ns(self) -> dict[str, int]:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return {
            m: (c.commissioned - epoch) // timedelta(microseconds=1) * 1000
            for m, c in self.meters.items()
        }


def load_config(path: Path) -> ServerConfig:
    """Read and validate a server TOML file; errors name the file, key and expectation.

    Relative TLS file names are taken from the config file's folder.
    """
    return load_model(ServerConfig, path, error=ConfigError)
