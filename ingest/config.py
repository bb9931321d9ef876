"""Server config (``server.toml``) for the consumer, the bridge and migrations.

Loaded with tomllib into frozen pydantic models; a bad file fails at load with
the file, the key and what was expected. Sample: ``deploy/server/server.toml``.

TLS and credential files (``[kafka] ssl_*``, ``[bridge] ca_file``, ...) are
taken relative to the config file's folder, as in the edge's config, and must
exist and load (key matching certificate, right password) when the file is
loaded, not at the first connection. An empty string means "not set" (TOML has
no null, and the sample documents every key).
"""

from __future__ import annotations

import ssl
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from kafka.cluster import collect_hosts
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.tls import (
    KafkaSecurity,
    blank_is_none,
    check_loadable,
    client_context,
    existing_file,
    unused,
)
from edge.wire import DEFAULT_MAX_BYTES, public_key_from_b64
from ingest.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Frozen, KafkaSecurity):
    """``[kafka]``: the brokers, topics and group; the security keys (the base) are the
    edge's ``[outputs.kafka]`` ones, and every ingest client uses them."""

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

    def bootstrap_addresses(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, _family in collect_hosts(self.bootstrap, False)]

    def client_config(self) -> dict[str, Any]:
        """kafka-python keyword arguments of every ingest client: servers and security.

        The consumer, the DLQ producer, the bridge's producer and its read-back
        consumer all start from these (secrets are revealed only here).
        """
        return {"bootstrap_servers": self.bootstrap, **self.security_kwargs()}


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
    # MQTT over TLS (usually port 8883); names as in the edge's [outputs.mqtt]
    tls: bool = False
    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # client certificate, for brokers that require one
    key_file: Path | None = None
    key_password: SecretStr | None = None  # of an encrypted key_file
    tls_insecure: bool = False  # skip the host name check (the chain is still verified)
    username: str | None = None
    password: SecretStr | None = None

    _blank = field_validator("ca_file", "cert_file", "key_file", "key_password", "username",
                             "password", mode="before")(blank_is_none)
    _files = field_validator("ca_file", "cert_file", "key_file")(existing_file)

    @model_validator(mode="after")
    def _tls_consistent(self) -> BridgeConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if not self.tls:  # files without tls = true would silently connect in clear text
            unused([n for n in ("ca_file", "cert_file", "key_file", "key_password")
                    if getattr(self, n)] + (["tls_insecure"] if self.tls_insecure else []),
                   "tls is false")
            return self
        check_loadable(("ca_file", "cert_file", "key_file", "key_password"), self.ca_file,
                       self.cert_file, self.key_file, self._key_password())
        return self

    def _key_password(self) -> str | None:
        return self.key_password.get_secret_value() if self.key_password else None

    def ssl_context(self) -> ssl.SSLContext:
        return client_context(self.ca_file, self.cert_file, self.key_file,
                              self._key_password(), not self.tls_insecure)


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
        # relative TLS file names are taken from the config file's folder
        return ServerConfig.model_validate(raw, context={"base": path.absolute().parent})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
