"""TLS settings of an edge site config fail at load, naming the file, the key and what was
expected; files are taken relative to the config file and loaded, as the outputs will."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from tls_helpers import KEY_PASSWORD, Pki

from edge.config import AgentConfig, ConfigError, load_config

# one inline-profile meter: the smallest config that loads
SITE = """
site = "s1"
gateway = "gw1"
signing_key = "k.pem"
[spool]
path = "spool.db"
[[modbus]]
meter = "M1"
host = "127.0.0.1"
[modbus.profile]
family = "custom"
points = [{ channel = "energy", address = 10, type = "uint32", kind = "counter" }]
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"'


def _write(tmp_path: Path, kafka: dict[str, Any] | None = None,
           mqtt: dict[str, Any] | None = None) -> Path:
    text = SITE
    for name, table in (("kafka", kafka), ("mqtt", mqtt)):
        if table is not None:
            text += f"[outputs.{name}]\n" + "".join(f"{k} = {_toml(v)}\n"
                                                      for k, v in table.items())
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def _load(tmp_path: Path, **tables: dict[str, Any]) -> AgentConfig:
    return load_config(_write(tmp_path, **tables))


def _refused(tmp_path: Path, **tables: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, **tables)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'site.toml'}: ")
    return message


KAFKA = {"bootstrap_servers": ["broker:9093"], "security_protocol": "SSL"}
MQTTS = {"url": "mqtts://broker:8883"}


def test_relative_files_are_taken_from_the_config_folder_and_loaded(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pki.ca.parent)  # not the config's folder: a cwd lookup would miss
    cfg = _load(tmp_path, kafka={
        **KAFKA, "ssl_cafile": "pki/ca.pem", "ssl_certfile": "pki/client.crt",
        "ssl_keyfile": "pki/client-enc.key", "ssl_password": KEY_PASSWORD,
    }, mqtt={**MQTTS, "ca_file": "pki/ca.pem", "cert_file": "pki/client.crt",
             "key_file": "pki/client-enc.key", "key_password": KEY_PASSWORD,
             "tls_insecure": True})
    kafka, mqtt = cfg.outputs.kafka, cfg.outputs.mqtt
    assert kafka is not None and mqtt is not None
    assert (kafka.ssl_cafile, kafka.ssl_keyfile) == (pki.ca, pki.client_key_encrypted)
    assert (mqtt.cert_file, mqtt.key_file) == (pki.client_cert, pki.client_key_encrypted)
    producer = kafka.producer_config()
    ctx = producer["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert "ssl_password" not in producer  # revealed only to the context
    insecure = mqtt.ssl_context()
    assert not insecure.check_hostname and insecure.verify_mode == ssl.CERT_REQUIRED
    assert repr(mqtt.key_password) == "SecretStr('**********')"


def test_empty_strings_mean_not_set_as_in_the_sample(tmp_path: Path) -> None:
    cfg = _load(tmp_path, kafka={"bootstrap_servers": ["broker:9092"], "ssl_cafile": "",
                                 "ssl_password": "", "sasl_mechanism": ""},
                mqtt={"url": "mqtt://broker", "ca_file": "", "key_password": "",
                      "username": "", "password": ""})
    assert cfg.outputs.kafka is not None and cfg.outputs.mqtt is not None
    assert "ssl_context" not in cfg.outputs.kafka.producer_config()
    assert cfg.outputs.mqtt.ca_file is None and cfg.outputs.mqtt.username is None


def test_tls_files_without_tls_would_send_in_clear_text_and_are_refused(
    pki: Pki, tmp_path: Path
) -> None:
    message = _refused(tmp_path, kafka={"bootstrap_servers": ["broker:9092"],
                                        "ssl_cafile": "pki/ca.pem",
                                        "ssl_certfile": "pki/client.crt"})
    assert "outputs.kafka: Value error, ssl_cafile, ssl_certfile set but security_protocol " \
        "PLAINTEXT does not use TLS: remove them, or enable it" in message
    message = _refused(tmp_path, kafka={
        "bootstrap_servers": ["broker:9092"], "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "gw", "sasl_password": "pw",
        "ssl_password": "x"})
    assert "ssl_password set but security_protocol SASL_PLAINTEXT does not use TLS" in message
    message = _refused(tmp_path, mqtt={"url": "mqtt://broker:1883", "ca_file": "pki/ca.pem",
                                       "tls_insecure": True})
    assert "outputs.mqtt: Value error, ca_file, tls_insecure set but url mqtt://broker:1883 " \
        "does not use TLS (mqtts://)" in message


def test_credentials_in_clear_text_are_refused_unless_explicitly_allowed(tmp_path: Path) -> None:
    sasl = {"bootstrap_servers": ["broker:9092"], "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN", "sasl_username": "gw", "sasl_password": "pw-secret"}
    message = _refused(tmp_path, kafka=sasl)
    assert "outputs.kafka: Value error, sasl_mechanism PLAIN over SASL_PLAINTEXT sends the " \
        "password in clear text: use SASL_SSL (or SCRAM), or set allow_cleartext_password" \
        in message and "pw-secret" not in message
    login = {"url": "mqtt://broker:1883", "username": "gw", "password": "pw-secret"}
    message = _refused(tmp_path, mqtt=login)
    assert "outputs.mqtt: Value error, a password over mqtt://broker:1883 travels in clear " \
        "text: use mqtts://, or set allow_cleartext_password = true" in message
    assert "pw-secret" not in message
    cfg = _load(tmp_path, kafka={**sasl, "allow_cleartext_password": True},
                mqtt={**login, "allow_cleartext_password": True})
    assert cfg.outputs.mqtt is not None and cfg.outputs.mqtt.username == "gw"


def test_a_missing_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    message = _refused(tmp_path, kafka={**KAFKA, "ssl_cafile": "tls/ca.pem"})
    assert "outputs.kafka.ssl_cafile: Value error, expected a PEM file; " \
        f"{tmp_path / 'tls/ca.pem'} does not exist or is not a file" in message
    message = _refused(tmp_path, mqtt={**MQTTS, "key_file": "tls/gw.key"})
    assert f"outputs.mqtt.key_file: Value error, expected a PEM file; {tmp_path / 'tls/gw.key'}" \
        in message


def test_a_foreign_key_or_a_wrong_password_fails_at_load(pki: Pki, tmp_path: Path) -> None:
    message = _refused(tmp_path, mqtt={**MQTTS, "cert_file": "pki/client.crt",
                                       "key_file": "pki/server.key"})
    assert f"outputs.mqtt: Value error, cert_file {pki.client_cert} / key_file " \
        f"{pki.server_key}: expected a client certificate and its private key" in message
    assert "KEY_VALUES_MISMATCH" in message and "a key of another certificate" in message
    message = _refused(tmp_path, kafka={**KAFKA, "ssl_certfile": "pki/client.crt",
                                        "ssl_keyfile": "pki/client-enc.key",
                                        "ssl_password": "not-the-password"})
    assert f"ssl_certfile {pki.client_cert} / ssl_keyfile {pki.client_key_encrypted}: " \
        "expected a client certificate and its private key" in message
    assert "wrong or missing ssl_password" in message
    message = _refused(tmp_path, mqtt={**MQTTS, "cert_file": "pki/client.crt",
                                       "key_file": "pki/client-enc.key"})
    assert "wrong or missing key_password" in message
    message = _refused(tmp_path, mqtt={**MQTTS, "ca_file": "pki/client.key"})
    assert f"ca_file {pki.client_key}: expected PEM CA certificates" in message
    message = _refused(tmp_path, mqtt={**MQTTS, "key_file": "pki/client.key"})
    assert "key_file needs cert_file (the certificate it belongs to)" in message
