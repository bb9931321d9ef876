"""A small in-process asyncua server for the subscriber tests, and certificates.

It mimics the simulator's address space (docs/simulators.md) for two meters
and one asset with one batch slot, can restart on the same port, and can run
with Basic256Sha256 SignAndEncrypt using self-signed certificates made with
cryptography.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.procs import free_port
from simulators.opcua_server import close_client_sessions

NS_URI = "urn:plantprint:test"
UTC = dt.UTC


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def make_certificate(folder: Path, name: str, app_uri: str) -> CertPair:
    """A self-signed RSA-2048 application instance certificate (DER) and PEM key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(app_uri),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=True,
            data_encipherment=True, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = CertPair(folder / f"{name}.der", folder / f"{name}.key.pem")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    pair.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    return pair


class PlantServer:
    """Meters M1/M2 (Energy, Power), asset OVEN with State code and slot Batch0."""

    VARIABLES: ClassVar[dict[str, Any]] = {
        "M1.Energy": 0.0, "M1.Power": 0.0, "M2.Energy": 0.0,
        "OVEN.StateCode": 1,
        "OVEN.Batch0.BatchId": "", "OVEN.Batch0.Product": "",
        "OVEN.Batch0.Running": False,
        "OVEN.Batch0.StartTime": dt.datetime(1601, 1, 1, tzinfo=UTC),
        "OVEN.Batch0.EndTime": dt.datetime(1601, 1, 1, tzinfo=UTC),
        "OVEN.Batch0.Quantity": 0.0, "OVEN.Batch0.Unit": "",
    }

    def __init__(self, security: CertPair | None = None, extra_namespaces: int = 0,
                 users: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.users = users
        self.security = security
        self.extra_namespaces = extra_namespaces
        self.server: Server | None = None
        self.idx = 0
        self.values: dict[str, ua.DataValue] = {}

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/test"

    async def start(self) -> None:
        server = Server(user_manager=_Users(self.users) if self.users else None)
        await server.init()
        server.set_endpoint(self.url)
        if self.users:
            server.set_security_IDs(["Username"])
        if self.security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await server.set_application_uri("urn:plantprint:test-server")
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(str(self.security.cert))
            await server.load_private_key(str(self.security.key))
        for i in range(self.extra_namespaces):  # moves our namespace index on restart
            await server.register_namespace(f"urn:plantprint:padding{i}")
        self.idx = await server.register_namespace(NS_URI)
        objects: dict[str, Any] = {"": server.nodes.objects}
        for path, initial in self.VARIABLES.items():
            parent = ""
            for part in path.split(".")[:-1]:
                node = f"{parent}.{part}" if parent else part
                if node not in objects:
                    objects[node] = await objects[parent].add_object(
                        ua.NodeId(node, self.idx), ua.QualifiedName(part, self.idx))
                parent = node
            await objects[parent].add_variable(
                ua.NodeId(path, self.idx), ua.QualifiedName(path.split(".")[-1], self.idx),
                ua.Variant(initial, _variant_type(initial)))
        await server.start()
        self.server = server
        for path, dv in self.values.items():
            await server.write_attribute_value(ua.NodeId(path, self.idx), dv)

    async def write(self, path: str, value: Any, ts: dt.datetime,
                    status: int = ua.StatusCodes.Good) -> None:
        dv = ua.DataValue(ua.Variant(value, _variant_type(self.VARIABLES[path])),
                          StatusCode=ua.StatusCode(status), SourceTimestamp=ts,
                          ServerTimestamp=dt.datetime.now(UTC))
        self.values[path] = dv  # while stopped: shown when it starts again
        if self.server is not None:
            await self.server.write_attribute_value(ua.NodeId(path, self.idx), dv)

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await close_client_sessions(server)  # or their tasks outlive the test
            await server.stop()


class _Users:
    """Username/password check: a wrong password gets no session."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def _variant_type(initial: Any) -> ua.VariantType:
    if isinstance(initial, bool):
        return ua.VariantType.Boolean
    if isinstance(initial, int):
        return ua.VariantType.Int32
    if isinstance(initial, float):
        return ua.VariantType.Double
    if isinstance(initial, dt.datetime):
        return ua.VariantType.DateTime
    return ua.VariantType.String
