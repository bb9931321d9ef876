"""TLS settings of server.toml fail at load, naming the file, the key and what was expected."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from tls_helpers import KEY_PASSWORD, Pki

from ingest.config import load_config
from ingest.errors import ConfigError
from tests.ingest.ingest_helpers import write_toml

MQTTS = "mqtts://broker.plant.example:8883"  # TLS is the url's scheme, as in [outputs.mqtt]


def _load(tmp_path: Path, **tables: dict[str, Any]) -> Any:
    return load_config(write_toml(tmp_path / "server.toml", tables))


def _refused(tmp_path: Path, **tables: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, **tables)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'server.toml'}: ")
    return message


def test_relative_files_are_taken_from_the_config_folder_and_loaded(
    pki: Pki, tmp_path: Path
) -> None:
    cfg = _load(tmp_path, kafka={
        "security_protocol": "SSL", "ssl_cafile": "pki/ca.pem",
        "ssl_certfile": "pki/client.crt", "ssl_keyfile": "pki/client-enc.key",
        "ssl_password": KEY_PASSWORD,
    }, bridge={"url": MQTTS, "ca_file": "pki/ca.pem", "cert_file": "pki/client.crt",
               "key_file": "pki/client-enc.key", "key_password": KEY_PASSWORD,
               "username": "bridge", "password": "pw"})
    assert cfg.kafka.ssl_cafile == pki.ca
    assert cfg.bridge.key_file == pki.client_key_encrypted
    assert (cfg.bridge.tls, cfg.bridge.host, cfg.bridge.port) == (
        True, "broker.plant.example", 8883)
    assert isinstance(cfg.bridge.ssl_context(), ssl.SSLContext)  # the encrypted key opens
    client = cfg.kafka.client_config()
    assert client["security_protocol"] == "SSL"
    ctx = client["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert "ssl_password" not in client  # revealed only to the context
    assert repr(cfg.bridge.password) == "SecretStr('**********')"


def test_empty_strings_mean_not_set_as_in_the_sample(tmp_path: Path) -> None:
    cfg = _load(tmp_path, kafka={"ssl_cafile": "", "ssl_password": "", "sasl_mechanism": ""},
                bridge={"ca_file": "", "username": "", "password": ""})
    assert cfg.kafka.client_config() == {"bootstrap_servers": ["127.0.0.1:9092"],
                                         "security_protocol": "PLAINTEXT"}
    assert cfg.bridge.ca_file is None and cfg.bridge.username is None
    assert (cfg.bridge.tls, cfg.bridge.host, cfg.bridge.port) == (False, "127.0.0.1", 1883)


def test_a_missing_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    message = _refused(tmp_path, kafka={"security_protocol": "SSL",
                                        "ssl_cafile": "tls/ca.pem"})
    assert "kafka.ssl_cafile" in message
    assert f"expected a PEM file; {tmp_path / 'tls/ca.pem'} does not exist" in message
    message = _refused(tmp_path, bridge={"url": MQTTS, "cert_file": "gw.crt"})
    assert "bridge.cert_file" in message and "does not exist" in message


def test_a_wrong_key_password_or_a_foreign_key_fails_at_load(pki: Pki, tmp_path: Path) -> None:
    message = _refused(tmp_path, kafka={
        "security_protocol": "SSL", "ssl_certfile": "pki/client.crt",
        "ssl_keyfile": "pki/client-enc.key", "ssl_password": "not-the-password"})
    assert "ssl_certfile" in message and "a wrong or missing ssl_password?" in message
    message = _refused(tmp_path, bridge={
        "url": MQTTS, "cert_file": "pki/client.crt", "key_file": "pki/client-enc.key",
        "key_password": "not-the-password"})
    assert "cert_file" in message and "a wrong or missing key_password?" in message
    message = _refused(tmp_path, bridge={"url": MQTTS, "cert_file": "pki/client.crt",
                                         "key_file": "pki/server.key"})
    assert "cert_file" in message and "KEY_VALUES_MISMATCH" in message
    message = _refused(tmp_path, bridge={"url": MQTTS, "ca_file": "pki/client.key"})
    assert "ca_file" in message and "expected PEM CA certificates" in message


def test_tls_settings_without_tls_would_connect_in_clear_text_and_are_refused(
    pki: Pki, tmp_path: Path
) -> None:
    message = _refused(tmp_path, kafka={"ssl_cafile": "pki/ca.pem"})
    assert "ssl_cafile set but security_protocol PLAINTEXT does not use TLS" in message
    # the same checks as the edge's [outputs.kafka] (one model, edge.tls.KafkaSecurity)
    message = _refused(tmp_path, kafka={"ssl_check_hostname": False})
    assert "ssl_check_hostname set but security_protocol PLAINTEXT does not use TLS" in message
    message = _refused(tmp_path, bridge={"ca_file": "pki/ca.pem", "tls_insecure": True})
    assert ("ca_file, tls_insecure set but url mqtt://127.0.0.1:1883 does not use TLS "
            "(mqtts://)") in message
    message = _refused(tmp_path, kafka={"security_protocol": "SASL_SSL",
                                        "sasl_mechanism": "PLAIN"})
    assert "needs sasl_mechanism, sasl_username and sasl_password" in message
    message = _refused(tmp_path, bridge={"password": "pw"})
    assert "password needs username" in message
