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

from kafka.cluster import collect_hosts
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from edge.settings import Frozen, Name, load_model
from edge.tls import KafkaSecurity, MqttSecurity
from edge.wire import DEFAULT_MAX_BYTES, GatewayKey, KeyRing, public_key_from_b64
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
    # a frame sealed (sent_ns) longer ago than this is refused (too_old); 0: no limit.
    # Keep it above the longest outage a gateway's spool rides out
    max_frame_age_s: float = Field(default=0.0, ge=0)
    # a compressed Kafka record batch may expand to at most this (bytes); beyond, it is
    # dead-lettered unread and skipped: the memory bound of one fetch's decompression
    max_expanded_bytes: int = Field(default=2 * DEFAULT_MAX_BYTES, ge=1024)


def _utc_ns(when: datetime | None) -> int | None:
    if when is None:
        return None
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def _aware_or_none(v: datetime | None) -> datetime | None:
    if v is not None and v.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2026-01-01T00:00:00Z")
    return v


class KeyConfig(Frozen):
    """One of a gateway's keys with its validity (a frame's sent_ns in [from, until))."""

    public_key: str
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, v: str) -> str:
        public_key_from_b64(v)
        return v

    _aware = field_validator("valid_from", "valid_until")(_aware_or_none)


class GatewayConfig(Frozen):
    """``[gateways.<id>]``: the gateway's key(s) and its binding: the one site, the meters
    (glob patterns) and the assets (batch events, machine states) it may report."""

    public_key: str = ""  # one key valid forever; or `keys` with validity periods
    keys: list[KeyConfig] = Field(default_factory=list)
    site: Name
    meters: list[str]
    assets: list[str]

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, v: str) -> str:
        if v:
            public_key_from_b64(v)
        return v

    @model_validator(mode="after")
    def _some_key(self) -> GatewayConfig:
        if not self.public_key and not self.keys:
            raise ValueError("needs public_key or keys (python -m edge --init-key prints it)")
        return self

    def key_ring(self, revoked: frozenset[str]) -> list[GatewayKey]:
        entries = ([KeyConfig(public_key=self.public_key)] if self.public_key else []) + self.keys
        return [GatewayKey(public_key_from_b64(k.public_key), _utc_ns(k.valid_from),
                           _utc_ns(k.valid_until), k.public_key in revoked, k.public_key)
                for k in entries]


class RevokedConfig(Frozen):
    """``[revoked]``: keys that verify nothing any more, whatever a frame's time."""

    keys: list[str] = Field(default_factory=list)

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, v: list[str]) -> list[str]:
        for k in v:
            public_key_from_b64(k)
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


class ArchiveConfig(Frozen):
    """``[archive]``: every landed frame's signed envelope, appended to files that outlive
    Kafka's retention (``ingest.archive``); ``dir`` relative to the working directory."""

    dir: Path | None = None  # None or "": no archive

    @field_validator("dir", mode="before")
    @classmethod
    def _blank(cls, v: Any) -> Any:
        return None if v == "" else v


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


class PactClient(Frozen):
    """``[pact.clients.<client_id>]``: a data recipient allowed on the PACT API."""

    # "scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>": `python -m compute pact-secret` prints it
    secret_hash: SecretStr
    scopes: list[Literal["footprint:list", "footprint:read", "events"]] = Field(
        default=["footprint:list", "footprint:read", "events"], min_length=1)

    @field_validator("secret_hash")
    @classmethod
    def _scrypt(cls, v: SecretStr) -> SecretStr:
        parts = v.get_secret_value().split("$")
        if len(parts) != 6 or parts[0] != "scrypt" or not all(p.isdigit() for p in parts[1:4]):
            raise ValueError("expected scrypt$<n>$<r>$<p>$<salt>$<hash> "
                             "(python -m compute pact-secret prints one), not a clear secret")
        return v


class PactConfig(Frozen):
    """``[pact]``: PACT exports and API (``python -m compute export pact|serve``).

    The data owner's identity is not in the site models (one company may run
    several sites): PACT requires it on every footprint, so it is set here and an
    export refuses to run without it.
    """

    company_name: str = ""  # PACT companyName (required to export)
    company_ids: list[str] = Field(default_factory=list)  # URNs (required to export)
    # which stored kgCO2e a PACT pCF carries: GHG Protocol market-based (contractual
    # factors, else the residual mix) or location-based (grid average)
    electricity_basis: Literal["market", "location"] = "market"
    # IPCC reports whose GWPs are in the CO2e factor rows used (CO2-only rows: GWP 1)
    ipcc_characterization_factors: list[str] = Field(default=["AR6"], min_length=1)
    # the API's database login: a member of plantprint_pact (migration 0013); "" = [database] dsn
    dsn: SecretStr = SecretStr("")
    addr: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    # TLS for the API (PACT requires https); both or neither, relative to this file
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_ttl_s: float = Field(default=3600.0, gt=0)  # bearer tokens expire after this
    clients: dict[str, PactClient] = Field(default_factory=dict)

    @field_validator("company_ids")
    @classmethod
    def _urns(cls, v: list[str]) -> list[str]:
        bad = [u for u in v if not u.lower().startswith("urn:")]
        if bad:
            raise ValueError(f"company ids must be URNs (urn:…), not {bad}")
        return v

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _rebase_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None or not str(v):
            return None
        base = (info.context or {}).get("base")
        return v if v.is_absolute() or base is None else Path(base) / v


class ServerConfig(Frozen):
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    limits: Limits = Field(default_factory=Limits)
    gateways: dict[str, GatewayConfig] = Field(default_factory=dict)
    revoked: RevokedConfig = Field(default_factory=RevokedConfig)
    meters: dict[str, MeterConfig] = Field(default_factory=dict)
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    pact: PactConfig = Field(default_factory=PactConfig)

    def public_keys(self) -> dict[str, KeyRing]:
        """Each gateway's keys with their validity; revoked keys marked (edge.wire.decode)."""
        revoked = frozenset(self.revoked.keys)
        return {gw: g.key_ring(revoked) for gw, g in self.gateways.items()}

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
