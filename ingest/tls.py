"""Client TLS for ingest's Kafka and MQTT connections, and a probe that says why TLS failed.

``client_context`` builds the one ``ssl.SSLContext`` both kafka-python (its
``ssl_context`` option) and paho (``tls_set_context``) are given, so the probe
below verifies exactly what the clients verify.

Neither library tells its caller why a TLS connection failed: kafka-python's
bootstrap ends in ``KafkaTimeoutError("Unable to bootstrap ...")`` and paho's
reconnect loop swallows the exception. After a failed attempt, ``tls_problem``
repeats the handshake itself and returns a sentence an operator can act on
(``certificate verification failed (self-signed certificate in certificate
chain)``), or None when the handshake is fine and the failure lies elsewhere.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path

# after a completed TLS 1.3 handshake the server may still refuse our certificate:
# its alert comes with the first read. Kafka and MQTT servers wait for the client
# to speak first, so a quiet socket for this long means the session was accepted.
_ALERT_WAIT_S = 0.5


def client_context(
    cafile: Path | None, certfile: Path | None, keyfile: Path | None,
    password: str | None, check_hostname: bool,
) -> ssl.SSLContext:
    """TLS ≥ 1.2, the server verified against ``cafile`` (None: the system's trust store).

    ``certfile`` (with ``keyfile``, or a PEM holding both) is our client
    certificate for brokers that require one. Raises ``ssl.SSLError`` or
    ``OSError`` when a file cannot be loaded (wrong password, key not matching).
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
    if isinstance(exc, ssl.SSLError):
        text = reason.replace("_", " ").lower()
        if "certificate required" in text:
            return (f"the server refused the TLS session ({text}): it requires a client "
                    "certificate it trusts")
        if "handshake failure" in text:  # TLS 1.2 servers also say this for a missing cert
            return (f"the server refused the TLS session ({text}): it requires a client "
                    "certificate it trusts, or shares no TLS version or cipher with us")
        if "unknown ca" in text or "bad certificate" in text:
            return f"the server refused our client certificate ({text})"
        if "wrong version number" in text or "record layer failure" in text:
            return f"TLS handshake failed ({text}): is this port a TLS listener?"
        return f"TLS handshake failed ({text})"
    return f"TLS handshake failed ({reason})"


def tls_problem(host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> str | None:
    """Why a TLS session with ``host:port`` fails under ``ctx``, or None if it does not.

    None too when the TCP connection itself fails: that is not a TLS problem.
    """
    problem = _handshake(host, port, ctx, timeout_s)
    return None if problem is None else f"TLS with {host}:{port} failed: {problem}"


def _handshake(host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> str | None:
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
                        return ("the server closed the session right after the handshake: "
                                "most likely it requires a client certificate it trusts")
                except TimeoutError:
                    return None  # waiting for us to speak: accepted
        except (ssl.SSLError, ConnectionError) as exc:
            return describe(exc)
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
