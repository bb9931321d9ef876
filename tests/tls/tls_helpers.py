"""Real TLS for the tests: a throw-away PKI made with ``cryptography`` and a TLS proxy.

The PKI is a test CA, a server certificate for 127.0.0.1 / localhost (SAN IP and
DNS), a client certificate for mutual TLS (its key also written encrypted, to
prove ``ssl_password``), and a second, unrelated CA that a misconfigured client
trusts instead. EC P-256 keys: generating them takes microseconds.

tansu has no TLS listener (its ``--cert`` option is parsed and ignored), so
``TlsProxy`` terminates TLS in front of it: an asyncio server on its own thread
that does the handshake itself (``StreamWriter.start_tls``), so that it can
record why a handshake was refused, and then pipes bytes to the broker's plain
listener. The broker advertises the proxy's port, so every connection a Kafka
client makes after bootstrap goes through TLS too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.procs import free_port
from deploy.tansu import TansuBroker
from edge import wire
from edge.spool import Spool
from tests.ingest.ingest_helpers import read_topic

KEY_PASSWORD = "client-key-passphrase"
T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def spool_frames(spool: Spool, key: Ed25519PrivateKey, site: str, frames: int) -> list[bytes]:
    """``frames`` signed readings frames (meters m0..m2, value = seq, one per second)
    and a batch start every 10 frames; the bytes of all of them, as spooled."""
    for seq in range(frames):
        def encode(s: int) -> bytes:
            readings = [wire.Reading(f"m{i}", "energy_import_wh", T0_NS + s * 10**9, s, "Wh",
                                     "good") for i in range(3)]
            return wire.encode(wire.Frame.from_readings(site, spool.gateway, s,
                                                        T0_NS + s * 10**9, readings), key)

        assert spool.append("readings", encode) == seq
        if seq % 10 == 0:
            def encode_batch(s: int, seq: int = seq) -> bytes:
                event = wire.BatchEvent("line1", f"B{s}", "cement", "start", T0_NS + seq * 10**9)
                return wire.encode(wire.BatchFrame(site, spool.gateway, s, T0_NS + seq * 10**9,
                                                   (event,)), key)

            spool.append("batches", encode_batch)
    return [m.data for m in spool.peek(10 * frames)]


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plantprint tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
             ) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(issuer).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _make_ca(common_name: str) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _Issuer(cert, key)


def _make_leaf(ca: _Issuer, common_name: str, usage: x509.ObjectIdentifier,
               san: list[x509.GeneralName] | None = None) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(common_name, ca.cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return _Issuer(builder.sign(ca.key, hashes.SHA256()), key)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password
        else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Pki:
    """PEM files of one test PKI (all under one temporary folder)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path  # same key, encrypted with KEY_PASSWORD
    wrong_ca: Path  # an unrelated CA: trusting it must fail verification

    def server_context(self, require_client_cert: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx


def make_pki(folder: Path) -> Pki:
    """A fresh CA, server and client certificates written under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _make_ca("plantprint test CA")
    server = _make_leaf(ca, "localhost", ExtendedKeyUsageOID.SERVER_AUTH, [
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ])
    client = _make_leaf(ca, "gw-tls-01", ExtendedKeyUsageOID.CLIENT_AUTH)
    wrong = _make_ca("some other CA")
    return Pki(
        ca=_write_cert(folder / "ca.pem", ca.cert),
        server_cert=_write_cert(folder / "server.crt", server.cert),
        server_key=_write_key(folder / "server.key", server.key),
        client_cert=_write_cert(folder / "client.crt", client.cert),
        client_key=_write_key(folder / "client.key", client.key),
        client_key_encrypted=_write_key(folder / "client-enc.key", client.key, KEY_PASSWORD),
        wrong_ca=_write_cert(folder / "wrong-ca.pem", wrong.cert),
    )


@dataclass(frozen=True)
class MisnamedServer:
    """A server certificate that names only ``host`` (not 127.0.0.1), under its own CA:
    a client dialling 127.0.0.1 verifies the chain but fails the host name check."""

    ca: Path
    cert: Path
    key: Path
    host: str


def make_misnamed_server(folder: Path, host: str = "broker.plant.example") -> MisnamedServer:
    """A fresh CA and a server certificate for ``host`` only, written under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _make_ca("plantprint test CA for another host")
    server = _make_leaf(ca, host, ExtendedKeyUsageOID.SERVER_AUTH, [x509.DNSName(host)])
    return MisnamedServer(
        ca=_write_cert(folder / "misnamed-ca.pem", ca.cert),
        cert=_write_cert(folder / "misnamed.crt", server.cert),
        key=_write_key(folder / "misnamed.key", server.key),
        host=host,
    )


# ------------------------------------------------------------------ the proxy


class _Pipe(asyncio.Protocol):
    """One direction's receiving end: what arrives is written to ``peer`` (buffered until
    the peer is connected); when either side goes, both are closed."""

    def __init__(self, peer: asyncio.Transport | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connect_to(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        for data in self._early:
            peer.write(data)
        self._early.clear()
        if self.closed:
            peer.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.close()


class _Accepted(asyncio.Protocol):
    """A new TCP connection: reading stops at once, so the ClientHello stays in the
    socket for the TLS layer (``loop.start_tls``) instead of a stream buffer."""

    def __init__(self, proxy: TlsProxy) -> None:
        self._proxy = proxy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._proxy._spawn(transport)


class TlsProxy:
    """TLS on 127.0.0.1:``port`` in front of a plain TCP service on ``upstream_port``.

    ``refusals`` lists, per refused handshake, the server side's reason (e.g.
    ``PEER_DID_NOT_RETURN_A_CERTIFICATE``, ``TLSV1_ALERT_UNKNOWN_CA``).
    ``sessions`` counts handshakes that succeeded.
    """

    def __init__(self, upstream_port: int, context: ssl.SSLContext,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.upstream_port = upstream_port
        self._context = context
        self.refusals: list[str] = []
        self.sessions = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: list[asyncio.BaseTransport] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),),
                                        name=f"tls-proxy-{self.port}")
        self._thread.start()
        self._ready.wait(10)
        if self._failed is not None:
            self.close()
            raise RuntimeError(f"TLS proxy on {self.port}: {self._failed}") from self._failed

    async def _serve(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await loop.create_server(lambda: _Accepted(self), "127.0.0.1", self.port)
        except OSError as exc:
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for transport in self._transports:
                transport.abort()  # type: ignore[attr-defined]

    def _spawn(self, raw: asyncio.Transport) -> None:
        task = asyncio.get_running_loop().create_task(self._session(raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        downstream = _Pipe()
        try:
            tls = await loop.start_tls(raw, downstream, self._context, server_side=True,
                                       ssl_handshake_timeout=10)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.refusals.append(getattr(exc, "reason", None) or repr(exc))
            raw.abort()
            return
        assert tls is not None
        self.sessions += 1
        downstream.connection_made(tls)  # start_tls does not call it
        self._transports.append(tls)
        try:
            up, _ = await loop.create_connection(lambda: _Pipe(tls), "127.0.0.1",
                                                 self.upstream_port)
        except OSError:
            tls.abort()
            return
        self._transports.append(up)
        downstream.connect_to(up)

    def close(self) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already gone
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)


# --------------------------------------------------------- Kafka behind TLS


@dataclass
class TlsKafka:
    """A private tansu broker reachable only through a TLS proxy (``bootstrap``)."""

    broker: TansuBroker
    proxy: TlsProxy

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"


@contextlib.contextmanager
def tls_kafka(name: str, pki: Pki, require_client_cert: bool) -> Iterator[TlsKafka]:
    """tansu on a plain loopback port, advertising the TLS proxy's port; both stopped after."""
    proxy_port = free_port()
    broker = TansuBroker(name, advertised_port=proxy_port)
    broker.start()
    proxy = TlsProxy(broker.port, pki.server_context(require_client_cert), port=proxy_port)
    try:
        proxy.start()
        yield TlsKafka(broker, proxy)
    finally:
        proxy.close()
        broker.stop()


def read_records(client_config: dict[str, Any], topic: str, expect: int,
                 timeout_s: float = 20.0) -> list[Any]:
    """Every record of ``topic`` from its start, once ``expect`` arrived (or at the timeout),
    read with ``client_config`` (servers and security, e.g. ``KafkaConfig.client_config()``)."""
    return read_topic("", topic, expect, timeout_s, client=client_config)
