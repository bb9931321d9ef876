"""The site config of one edge agent: TOML → frozen pydantic models.

One file per gateway::

    site = "plant-a"
    gateway = "gw-01"
    signing_key = "keys/gw-01.pem"      # relative paths: relative to this file
    profile_dirs = ["profiles"]

    [[modbus]]                          # one table per meter
    meter = "M-INC"
    host = "10.0.0.21"
    unit_id = 1
    profile = "pm5000"                  # profiles/pm5000.toml, or an inline table

    [[opcua]] ...                       # edge.opcua_config.OpcUaServer (meters, batches)
    [[modbus_batches]] ...              # edge.modbus_batches: a PLC's batch registers
    [mes_http] ...                      # edge.mes_http: the MES posts batch events
    [mes_folder] ...                    # edge.dropfolder: the MES drops event files
    [outputs.kafka] ...                 # edge.publish_kafka.KafkaOutput
    [outputs.mqtt] ...                  # edge.publish_mqtt.MqttOutput
    [spool] ...                         # edge.spool.SpoolConfig
    [metrics]
    [clock] ...                         # edge.clock.ClockConfig (simulator drills only)

Every model derives from :class:`edge.settings.Frozen` and the file is read by
:func:`edge.settings.load_model`, the config base ingest and compute share. A bad
file fails at load with :class:`ConfigError` (``edge.settings.ConfigError``) naming
the file, the key and what was expected; the outputs' TLS files must exist and
load (key matching certificate, right password) then, not at the first connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from edge.clock import ClockConfig
from edge.dropfolder import MesFolderConfig
from edge.mes_http import MesHttpConfig
from edge.modbus_batches_config import PlcBatches
from edge.opcua_config import OpcUaServer
from edge.profiles import PointSpec, Profile, find_profile, load_profile, resolve_extends
from edge.publish_kafka import KafkaOutput
from edge.publish_mqtt import MqttOutput
from edge.requests import MAX_REGISTERS
from edge.settings import ConfigError, Frozen, load_model, read_toml
from edge.spool import SpoolConfig

__all__ = ["AgentConfig", "ConfigError", "ModbusDevice", "load_config"]

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class Workarounds(Frozen):
    """Vendor quirks, off by default (Telegraf's ``workarounds`` table)."""

    # some gateways drop the first request after connect
    pause_after_connect_s: Annotated[float, Field(ge=0, le=10)] = 0.0
    # manuals counting from 1 (40001-style) when the profile was copied verbatim
    address_offset: Annotated[int, Field(ge=-1, le=1)] = 0
    # close and reopen the connection after every cycle (devices that hang idle sockets)
    close_after_poll: bool = False


class ModbusDevice(Frozen):
    """One Modbus TCP meter (one unit id on one host:port)."""

    meter: Name
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    profile: str | Profile
    channels: tuple[str, ...] = ()  # subset of the profile's channels; empty: all
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    busy_retries: Annotated[int, Field(ge=0, le=20)] = 3
    busy_retry_delay_s: Annotated[float, Field(ge=0, le=10)] = 0.05
    reconnect_delay_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconnect_delay_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_gap: Annotated[int, Field(ge=0, le=MAX_REGISTERS)] | None = None  # None: profile's
    max_registers: Annotated[int, Field(ge=1, le=MAX_REGISTERS)] | None = None
    clock: Literal["device", "gateway"] = "device"  # whose time stamps the readings
    workarounds: Workarounds = Workarounds()

    @model_validator(mode="after")
    def _check_backoff(self) -> ModbusDevice:
        if self.reconnect_delay_max_s < self.reconnect_delay_s:
            raise ValueError("reconnect_delay_max_s must be >= reconnect_delay_s")
        return self

    @property
    def register_map(self) -> Profile:
        """The resolved profile (``load_config`` replaces names by profiles)."""
        if not isinstance(self.profile, Profile):
            raise ConfigError(f"meter {self.meter}: profile {self.profile!r} is not resolved")
        return self.profile

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return self.register_map.points

    @property
    def gap(self) -> int:
        return self.register_map.max_gap if self.max_gap is None else self.max_gap

    @property
    def request_limit(self) -> int:
        limit = self.max_registers
        return self.register_map.max_registers if limit is None else limit


class Outputs(Frozen):
    kafka: KafkaOutput | None = None
    mqtt: MqttOutput | None = None


class MetricsConfig(Frozen):
    """``[metrics]``: the Prometheus endpoint; ``port = 0`` turns it off."""

    # 0 (or None from Python): no HTTP exposition; TOML has no null, so 0 is the off switch
    port: Annotated[int, Field(ge=0, le=65535)] | None = 9108
    addr: str = "127.0.0.1"


class AgentConfig(Frozen):
    """Everything one gateway's agent needs."""

    site: Name
    gateway: Name
    signing_key: Path
    profile_dirs: tuple[Path, ...] = (Path("profiles"),)
    modbus: tuple[ModbusDevice, ...] = ()
    opcua: tuple[OpcUaServer, ...] = ()
    modbus_batches: tuple[PlcBatches, ...] = ()
    mes_http: MesHttpConfig | None = None
    mes_folder: MesFolderConfig | None = None
    outputs: Outputs = Outputs()
    spool: SpoolConfig
    metrics: MetricsConfig = MetricsConfig()
    # gateway time stamps; "scaled" only against a simulator running faster than real time
    clock: ClockConfig = ClockConfig()
    # poll cycles waiting for the spool writer; past it the oldest is dropped (counted)
    queue_frames: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        meters = [d.meter for d in self.modbus]
        dupes = sorted({m for m in meters if meters.count(m) > 1})
        if dupes:
            raise ValueError(f"meter names must be unique, repeated: {', '.join(dupes)}")
        if not (self.modbus or self.opcua or self.modbus_batches or self.mes_http
                or self.mes_folder):
            raise ValueError("configure at least one [[modbus]] device, [[opcua]] server, "
                             "[[modbus_batches]], [mes_http] or [mes_folder]")
        return self

    @property
    def metrics_port(self) -> int | None:
        """The port to serve /metrics on, None when switched off (port 0)."""
        return self.metrics.port or None

    @property
    def has_output(self) -> bool:
        return self.outputs.kafka is not None or self.outputs.mqtt is not None


# ----------------------------------------------------------------------- loading


def _rebase(value: Any, base: Path) -> Any:
    """Relative paths anywhere in a model tree, made relative to ``base``."""
    if isinstance(value, Path):
        return value if value.is_absolute() else base / value
    if isinstance(value, tuple):
        return tuple(_rebase(v, base) for v in value)
    if isinstance(value, BaseModel) and not isinstance(value, Profile):
        update = {
            name: _rebase(getattr(value, name), base) for name in type(value).model_fields
        }
        return value.model_copy(update=update)
    return value


def _shift(profile: Profile, offset: int) -> Profile:
    data = profile.model_dump()
    for point in data["points"]:
        point["address"] += offset
    return Profile.model_validate(data)


def _resolve_profiles(config: AgentConfig, source: Path) -> AgentConfig:
    devices = []
    for i, dev in enumerate(config.modbus):
        where = f"{source}: modbus[{i}] (meter {dev.meter})"
        profile = dev.profile
        try:
            if isinstance(profile, str):
                path = find_profile(profile, config.profile_dirs, source.parent)
                profile = resolve_extends(load_profile(path), config.profile_dirs, path.parent)
            else:  # inline: a base named in it is looked up from the config's folder
                profile = resolve_extends(profile, config.profile_dirs, source.parent)
        except (FileNotFoundError, ConfigError) as exc:
            raise ConfigError(f"{where}.profile: {exc}") from exc
        try:
            profile = profile.select(dev.channels)
        except ValueError as exc:
            raise ConfigError(f"{where}.channels: {exc}") from exc
        if dev.workarounds.address_offset:
            try:
                profile = _shift(profile, dev.workarounds.address_offset)
            except ValidationError as exc:
                raise ConfigError(f"{where}.workarounds.address_offset: {exc}") from exc
        devices.append(dev.model_copy(update={"profile": profile}))
    return config.model_copy(update={"modbus": tuple(devices)})


def config_from_dict(data: dict[str, Any], source: Path) -> AgentConfig:
    """Validate parsed TOML; relative paths are taken relative to ``source``'s folder."""
    # the outputs' TLS files are checked and loaded now, so they resolve their own
    # relative names (context ``base``); _rebase leaves those absolute paths alone
    config = _rebase(load_model(AgentConfig, source, data), source.parent)
    return _resolve_profiles(config, source)


def load_config(path: str | Path) -> AgentConfig:
    """Load and validate a site config; errors name the file, the key and the expectation."""
    path = Path(path)
    return config_from_dict(read_toml(path), path)
