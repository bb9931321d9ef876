"""Transport security of every Kafka and MQTT client: the config models, contexts, why TLS failed.

Shared by the edge's outputs and ingest's Kafka and MQTT clients (and next compute's):
ingest and compute may import it (it needs only the standard library, pydantic and
``edge.settings``); the edge imports nothing of theirs.

``client_context`` builds the one ``ssl.SSLContext`` both kafka-python (its
``ssl_context`` option) and paho (``tls_set_context``) are given, so the probe
verifies exactly what the outputs verify. kafka-python reports a refused
handshake only as ``KafkaTimeoutError("Unable to bootstrap ...")``; after such
a failure ``first_tls_problem`` repeats the handshake and returns a sentence an
operator can act on, or None when TLS is fine and the failure lies elsewhere.

``existing_file`` and ``check_loadable`` make the output configs load their
files when the site config is loaded, so a wrong path, a key of another
certificate or a wrong password fails then, naming its key, not at the first
connection. One security model per transport, the same keys and checks in
every layer: ``KafkaSecurity`` for the edge's ``[outputs.kafka]`` and ingest's
``[kafka]``, ``MqttSecurity`` (the broker URL, TLS and login) for the edge's
``[outputs.mqtt]`` and ingest's ``[bridge]``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Protocol, Self
from urllib.parse import urlparse

from pydantic import SecretStr, ValidationInfo, field_validator, model_validator

from edge.settings import Frozen

# after a completed TLS 1.3 handshake the server may still refuse our certificate:
# its alert comes with the first read. Kafka and MQTT servers wait for the client
# to speak first, so a quiet socket for this long (seconds) means the session was accepted.
_ALERT_WAIT_S = 0.5


def blank_is_none(value: Any) -> Any:
    """TOML has no null: ``""`` means "not set", so a sample can document every key."""
    return None if value == "" else value


def existing_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """A relative path is taken from the config file's folder (validation context ``base``)."""
    if value is None:
        return None
    base = (info.context or {}).get("base")
    path = value if value.is_absolute() or base is None else Path(base) / value
    if not path.is_file():
        raise ValueError(f"expected a PEM file; {path} does not exist or is not a file")
    return path


def unused(names: list[str], why: str) -> None:
    """Refuse settings that would be silently ignored (TLS files without TLS: clear text)."""
    if names:
        raise ValueError(f"{', '.join(names)} set but {why}: remove them, or enable it")


def check_loadable(keys: tuple[str, str, str, str], cafile: Path | None,
                   certfile: Path | None, keyfile: Path | None, password: str | None) -> None:
    """Load the files the way the outputs will, so a bad one fails now, naming its key.

    ``keys``: the config's names of the CA file, certificate, key and key password.
    """
    if keyfile is not None and certfile is None:
        raise ValueError(f"{keys[2]} needs {keys[1]} (the certificate it belongs to)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is not None:
        try:
            ctx.load_verify_locations(cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{keys[0]} {cafile}: expected PEM CA certificates: {exc}") from exc
    if certfile is None:
        return
    try:
        ctx.load_cert_chain(certfile, keyfile, password or "")
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"{keys[1]} {certfile} / {keys[2]} {keyfile}: expected a client certificate "
            f"and its private key ({exc}); a key of another certificate, or a wrong or "
            f"missing {keys[3]}?") from exc


def client_context(
    cafile: Path | None, certfile: Path | None, keyfile: Path | None,
    password: str | None, check_hostname: bool,
) -> ssl.SSLContext:
    """TLS ≥ 1.2, the server verified against ``cafile`` (None: the system's trust store).

    ``check_hostname=False`` still verifies the chain; only the name is not compared.
    Raises ``ssl.SSLError`` or ``OSError`` when a file cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host name checked
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    if cafile is not None:
        ctx.load_verify_locations(cafile)
    else:
        ctx.load_default_certs()
    if certfile is not None:
        # never None: OpenSSL would prompt on the terminal for an encrypted key's password
        ctx.load_cert_chain(certfile, keyfile, password or "")
    return ctx


def describe(exc: BaseException) -> str:
    """A TLS failure in words: what failed and the usual cause."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        if "hostname" in detail.lower() or "ip address mismatch" in detail.lower():
            return (f"certificate verification failed ({detail}): the server's certificate "
                    "does not name this host")
        return (f"certificate verification failed ({detail}): the CA file does not "
                "vouch for the server's certificate")
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    if not isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({reason})"
    text = reason.replace("_", " ").lower()
    if "certificate required" in text:
        return (f"the server refused the TLS session ({text}): it requires a client "
                "certificate it trusts")
    if "handshake failure" in text:  # TLS 1.2 servers also say this for a missing certificate
        return (f"the server refused the TLS session ({text}): it requires a client "
                "certificate it trusts, or shares no TLS version or cipher with us")
    if "unknown ca" in text or "bad certificate" in text:
        return f"the server refused our client certificate ({text})"
    if "wrong version number" in text or "record layer failure" in text:
        return f"TLS handshake failed ({text}): is this port a TLS listener?"
    return f"TLS handshake failed ({text})"


def tls_problem(host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> str | None:
    """Why a TLS session with ``host:port`` fails under ``ctx``, or None if it does not.

    None too when the TCP connection itself fails: that is not a TLS problem.
    """
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return None
    with contextlib.closing(raw):
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(_ALERT_WAIT_S)
                try:
                    if tls.recv(1) == b"":  # closed without an alert after the handshake
                        return (f"TLS with {host}:{port} failed: the server closed the "
                                "session right after the handshake: most likely it "
                                "requires a client certificate it trusts")
                except TimeoutError:
                    return None  # waiting for us to speak: accepted
        except (ssl.SSLError, ConnectionError) as exc:
            return f"TLS with {host}:{port} failed: {describe(exc)}"
        except OSError:
            return None
    return None


def first_tls_problem(
    servers: Iterable[tuple[str, int]], ctx: ssl.SSLContext, timeout_s: float
) -> str | None:
    """The first server's TLS problem, for a list of bootstrap servers."""
    for host, port in servers:
        problem = tls_problem(host, port, ctx, timeout_s)
        if problem is not None:
            return problem
    return None


class KafkaSecurity(Frozen):
    """The security keys of a Kafka client config, checked when the config loads.

    Base of the edge's ``[outputs.kafka]`` and ingest's ``[kafka]``: the same names,
    meaning and checks in both layers. TLS files given without a TLS protocol, or
    SASL keys without SASL, are refused: a forgotten ``security_protocol`` would
    otherwise connect silently in clear text.
    """

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # PEM files, relative to the config file's folder; "" or absent: not set
    ssl_cafile: Path | None = None  # None: the system's trust store
    ssl_certfile: Path | None = None  # client certificate, for brokers that require one
    ssl_keyfile: Path | None = None  # its key (or both in ssl_certfile)
    ssl_password: SecretStr | None = None  # of an encrypted ssl_keyfile
    ssl_check_hostname: bool = True  # False: the chain is still verified, not the name
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # SASL PLAIN sends the password itself: over SASL_PLAINTEXT anyone on the path reads
    # it. Refused unless set true (a network the operator vouches for, e.g. loopback)
    allow_cleartext_password: bool = False

    _blank = field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password",
                             "sasl_mechanism", "sasl_username", "sasl_password",
                             mode="before")(blank_is_none)
    _files = field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")(existing_file)

    @model_validator(mode="after")
    def _security_consistent(self) -> Self:
        protocol = self.security_protocol
        if protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError(f"security_protocol {protocol} needs sasl_mechanism, "
                                 "sasl_username and sasl_password")
            if (protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN"
                    and not self.allow_cleartext_password):
                raise ValueError("sasl_mechanism PLAIN over SASL_PLAINTEXT sends the password "
                                 "in clear text: use SASL_SSL (or SCRAM), or set "
                                 "allow_cleartext_password = true on a network you trust")
        else:
            unused([n for n in ("sasl_mechanism", "sasl_username", "sasl_password")
                    if getattr(self, n) is not None],
                   f"security_protocol {protocol} does not use SASL")
        if not self.tls:
            unused([n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
                    if getattr(self, n) is not None]
                   + ([] if self.ssl_check_hostname else ["ssl_check_hostname"]),
                   f"security_protocol {protocol} does not use TLS")
            return self
        check_loadable(("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"),
                       self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self._key_password())
        return self

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def _key_password(self) -> str | None:
        return self.ssl_password.get_secret_value() if self.ssl_password else None

    def ssl_context(self) -> ssl.SSLContext:
        """A new context each time: files renewed on disk are read again."""
        return client_context(self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile,
                              self._key_password(), self.ssl_check_hostname)

    def security_kwargs(self) -> dict[str, Any]:
        """kafka-python keyword arguments for security (secrets revealed only here)."""
        cfg: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:  # the context the TLS probe uses too (key password revealed only to it)
            cfg["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism is not None:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return cfg


# where a refused MQTT TLS session is usually fixed; callers prefix their table
MQTT_TLS_KEYS = "ca_file, cert_file, key_file, tls_insecure"
# the password part of a URL's user info: mqtt://user:<this>@host
_URL_PASSWORD = re.compile(r"(://[^/@:]*):[^/@]*@")


class MqttClient(Protocol):
    """The two calls of a paho ``Client`` that apply security (paho is not imported here)."""

    def username_pw_set(self, username: str | None, password: str | None = None) -> None: ...

    def tls_set_context(self, context: ssl.SSLContext | None = None) -> None: ...


class MqttSecurity(Frozen):
    """The broker address and security keys of an MQTT client config, checked at load.

    Base of the edge's ``[outputs.mqtt]`` and ingest's ``[bridge]``. ``url`` is
    ``mqtt://host[:1883]`` or ``mqtts://host[:8883]``: the scheme is the TLS switch,
    as ``security_protocol`` is Kafka's. TLS files or ``tls_insecure`` with ``mqtt://``
    are refused (they would be ignored and the client would talk in clear text), as
    is a ``password`` without ``username`` and a login written into the URL.
    """

    url: str  # mqtt://host:1883 or mqtts://host:8883
    username: str | None = None
    password: SecretStr | None = None
    # TLS (mqtts:// only): PEM files, relative to the config file's folder; "": not set
    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # client certificate, for brokers that require one
    key_file: Path | None = None  # its key (or both in cert_file)
    key_password: SecretStr | None = None  # of an encrypted key_file
    tls_insecure: bool = False  # skip the host name check (the chain is still verified)
    # a password over mqtt:// travels in clear text: refused unless set true
    allow_cleartext_password: bool = False

    _blank = field_validator("username", "password", "ca_file", "cert_file", "key_file",
                             "key_password", mode="before")(blank_is_none)
    _files = field_validator("ca_file", "cert_file", "key_file")(existing_file)

    @model_validator(mode="before")
    @classmethod
    def _hide_url_password(cls, data: Any) -> Any:
        """A password written into the URL (refused below) is never quoted back in logs."""
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            return {**data, "url": _URL_PASSWORD.sub(r"\1:***@", data["url"])}
        return data

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port], got {value!r}")
        try:
            port = parsed.port  # raises on a port that is not a number or out of range
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        if port == 0:
            raise ValueError(f"{value!r}: port 0 is no broker's port")
        if parsed.username is not None or parsed.password is not None:
            raise ValueError("the URL carries a login: put it in username and password")
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port] with nothing "
                             f"after the port, got {value!r}")
        return value

    @model_validator(mode="after")
    def _security_consistent(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if self.password is not None and not self.tls and not self.allow_cleartext_password:
            raise ValueError(f"a password over {self.url} travels in clear text: use mqtts://, "
                             "or set allow_cleartext_password = true on a network you trust")
        if not self.tls:
            unused([n for n in ("ca_file", "cert_file", "key_file", "key_password")
                    if getattr(self, n) is not None]
                   + (["tls_insecure"] if self.tls_insecure else []),
                   f"url {self.url} does not use TLS (mqtts://)")
            return self
        check_loadable(("ca_file", "cert_file", "key_file", "key_password"), self.ca_file,
                       self.cert_file, self.key_file, self._key_password())
        return self

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlparse(self.url).port or (8883 if self.tls else 1883)

    def _key_password(self) -> str | None:
        return self.key_password.get_secret_value() if self.key_password else None

    def ssl_context(self) -> ssl.SSLContext:
        """A new context each time: files renewed on disk are read again."""
        return client_context(self.ca_file, self.cert_file, self.key_file,
                              self._key_password(), not self.tls_insecure)

    def secure(self, client: MqttClient) -> None:
        """Give a paho client the login and TLS context (secrets revealed only here).

        paho takes the context's ``check_hostname`` as its ``tls_insecure``.
        """
        if self.username is not None:
            password = self.password.get_secret_value() if self.password else None
            client.username_pw_set(self.username, password)
        if self.tls:
            client.tls_set_context(self.ssl_context())
