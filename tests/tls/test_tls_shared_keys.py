"""One security model per transport: a table means the same in the edge and in ingest.

The edge's ``[outputs.mqtt]`` and ingest's ``[bridge]`` are ``edge.tls.MqttSecurity``;
the edge's ``[outputs.kafka]`` and ingest's ``[kafka]`` are ``edge.tls.KafkaSecurity``
and name their servers ``bootstrap_servers``, a list, in both. An operator who copies
a table from a gateway's site config into server.toml gets the same connection, or
the same refusal in the same words, naming each file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w
from tls_helpers import KEY_PASSWORD, Pki

from edge import settings
from edge.config import AgentConfig
from edge.config import load_config as load_site
from edge.tls import KafkaSecurity, MqttSecurity
from ingest.config import ServerConfig
from ingest.config import load_config as load_server
from ingest.errors import ConfigError as IngestConfigError
from ingest.errors import IngestError

# the smallest site config that loads: one meter with an inline profile
SITE: dict[str, Any] = {
    "site": "s1", "gateway": "gw1", "signing_key": "k.pem", "spool": {"path": "spool.db"},
    "modbus": [{"meter": "M1", "host": "127.0.0.1", "profile": {
        "family": "custom",
        "points": [{"channel": "energy", "address": 10, "type": "uint32", "kind": "counter"}],
    }}],
}


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def _site(tmp_path: Path, **outputs: dict[str, Any]) -> AgentConfig:
    return load_site(_write(tmp_path / "site.toml", {**SITE, "outputs": outputs}))


def _server(tmp_path: Path, **tables: dict[str, Any]) -> ServerConfig:
    return load_server(_write(tmp_path / "server.toml", tables))


def _same_fields(a: object, b: object, model: type) -> None:
    for name in model.model_fields:
        assert getattr(a, name) == getattr(b, name), name


def test_an_mqtt_table_means_the_same_to_the_edge_and_the_bridge(
    pki: Pki, tmp_path: Path
) -> None:
    table = {"url": "mqtts://127.0.0.1:8884", "ca_file": "pki/ca.pem",
             "cert_file": "pki/client.crt", "key_file": "pki/client-enc.key",
             "key_password": KEY_PASSWORD, "tls_insecure": True,
             "username": "gw1", "password": "s3cret"}
    edge = _site(tmp_path, mqtt=table).outputs.mqtt
    bridge = _server(tmp_path, bridge=table).bridge
    assert edge is not None
    _same_fields(edge, bridge, MqttSecurity)
    for side in (edge, bridge):
        assert (side.tls, side.host, side.port) == (True, "127.0.0.1", 8884)
        assert side.key_file == pki.client_key_encrypted  # taken from the config's folder
        assert not side.ssl_context().check_hostname  # tls_insecure: the chain is still checked


def test_a_kafka_table_means_the_same_to_the_edge_and_ingest(pki: Pki, tmp_path: Path) -> None:
    table = {"bootstrap_servers": ["kafka-1:9093", "kafka-2:9093"], "security_protocol": "SSL",
             "ssl_cafile": "pki/ca.pem", "ssl_certfile": "pki/client.crt",
             "ssl_keyfile": "pki/client.key"}
    edge = _site(tmp_path, kafka=table).outputs.kafka
    ingest = _server(tmp_path, kafka=table).kafka
    assert edge is not None
    _same_fields(edge, ingest, KafkaSecurity)
    assert edge.bootstrap_servers == ingest.bootstrap_servers == table["bootstrap_servers"]
    assert edge.bootstrap_addresses() == ingest.bootstrap_addresses() == [
        ("kafka-1", 9093), ("kafka-2", 9093)]
    assert edge.producer_config()["bootstrap_servers"] == \
        ingest.client_config()["bootstrap_servers"]


@pytest.mark.parametrize(("table", "reason"), [
    ({"url": "mqtt://broker:1883", "ca_file": "pki/ca.pem"},
     "ca_file set but url mqtt://broker:1883 does not use TLS (mqtts://)"),
    ({"url": "mqtt://broker", "tls_insecure": True},
     "tls_insecure set but url mqtt://broker does not use TLS (mqtts://)"),
    ({"url": "mqtt://broker", "password": "s3cret"}, "password needs username"),
    ({"url": "mqtt://gw1:s3cret@broker"},
     "the URL carries a login: put it in username and password"),
    ({"url": "tcp://broker:1883"}, "expected mqtt://host[:port] or mqtts://host[:port]"),
    ({"url": "mqtt://broker:99999"}, "Port out of range"),
    ({"url": "mqtt://broker:1883/plantprint"}, "with nothing after the port"),
    ({"url": "mqtts://broker", "cert_file": "pki/client.crt", "key_file": "pki/server.key"},
     "KEY_VALUES_MISMATCH"),
    ({"url": "mqtts://broker", "key_file": "pki/client.key"},
     "key_file needs cert_file (the certificate it belongs to)"),
], ids=["files-without-tls", "insecure-without-tls", "password-alone", "login-in-url",
        "not-mqtt", "bad-port", "path", "foreign-key", "key-alone"])
def test_an_mqtt_contradiction_is_refused_alike_by_the_edge_and_the_bridge(
    pki: Pki, tmp_path: Path, table: dict[str, Any], reason: str
) -> None:
    with pytest.raises(settings.ConfigError) as edge:
        _site(tmp_path, mqtt=table)
    with pytest.raises(IngestConfigError) as bridge:
        _server(tmp_path, bridge=table)
    assert str(edge.value).startswith(f"{tmp_path / 'site.toml'}: outputs.mqtt")
    assert str(bridge.value).startswith(f"{tmp_path / 'server.toml'}: bridge")
    assert reason in str(edge.value) and reason in str(bridge.value)
    assert "s3cret" not in str(edge.value) + str(bridge.value)  # logs never show it


@pytest.mark.parametrize(("tables", "key", "expectation"), [
    ({"kafka": {"bootstrap": "127.0.0.1:9092"}}, "kafka.bootstrap", "Extra inputs"),
    ({"kafka": {"bootstrap_servers": "127.0.0.1:9092"}}, "kafka.bootstrap_servers",
     "valid list"),
    ({"kafka": {"bootstrap_servers": []}}, "kafka.bootstrap_servers", "at least 1 item"),
    ({"kafka": {"session_timeout_ms": 6000}}, "kafka.session_timeout_ms", "Extra inputs"),
    ({"kafka": {"session_timeout_s": 0.5}}, "kafka.session_timeout_s",
     "greater than or equal to 1"),
    ({"bridge": {"mqtt_host": "127.0.0.1"}}, "bridge.mqtt_host", "Extra inputs"),
    ({"bridge": {"tls": True}}, "bridge.tls", "Extra inputs"),
], ids=["bootstrap", "servers-as-text", "no-servers", "ms", "too-short", "mqtt_host", "tls"])
def test_old_and_wrong_server_keys_name_the_file_and_key(
    tmp_path: Path, tables: dict[str, Any], key: str, expectation: str
) -> None:
    with pytest.raises(IngestConfigError) as refused:
        _server(tmp_path, **tables)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'server.toml'}: {key}: ")
    assert expectation in message


@pytest.mark.parametrize("text", ["[kafka\n", None], ids=["bad-toml", "missing"])
def test_one_config_error_root_for_every_package(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "server.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(settings.ConfigError) as refused:
        load_server(path)
    assert isinstance(refused.value, IngestError)  # still in ingest's family: the CLI's exit
    assert str(refused.value).startswith(f"{path}: ")
