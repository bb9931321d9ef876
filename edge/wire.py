"""The wire contract between gateways and the server: frames, batch events, signatures.

One Kafka (or MQTT) message is one *envelope*::

    b"PPW1" | Ed25519 signature (64 bytes) | body (canonical JSON, UTF-8)

The signature covers the body bytes exactly as sent. The encoder makes them
canonical (orjson, sorted keys, no whitespace), so the same frame always gives
the same bytes; a relay that re-serialises the JSON breaks the signature on
purpose. The body carries an explicit format version ``v``.

Two streams, each with its own per-gateway sequence number (the spool assigns
them; ingest deduplicates by (gateway, stream, seq) and records gaps):

* ``readings``: one frame per poll cycle. Readings travel *columnar*
  (``meter``, ``channel``, ``ts``, ``value``, ``unit``, ``quality`` lists of
  equal length) because decode cost is on the hot path (budget about 1 µs per
  reading) and the consumers want columns anyway (COPY, numpy).
* ``batches``: MES batch lifecycle events (start, end, quantity).

Every timestamp is UTC epoch nanoseconds (int). A device's own timestamp is the
reading's ``ts``; ``sent_ns`` is the gateway clock when the frame was formed and spooled.

This module is the only place that knows the envelope's layout. ``decode`` is
the one full validator; relays and ledgers that must not pay for (or cannot do)
a signature check use ``signed_body`` (the bytes the signature covers) and
``peek_header`` / ``peek_gateway`` (best-effort, unverified identity).
"""

from __future__ import annotations

import base64
import math
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, NamedTuple

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

WIRE_VERSION: Final = 1
MAGIC: Final = b"PPW1"
SIGNATURE_BYTES: Final = 64
HEADER_BYTES: Final = len(MAGIC) + SIGNATURE_BYTES
# A poll cycle of a large gateway is ~10k readings (~1 MB); anything far beyond
# that is a fault or an attack, and is refused before parsing.
DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024

Quality = Literal["good", "uncertain", "bad"]
QUALITIES: Final = frozenset(("good", "uncertain", "bad"))
Stream = Literal["readings", "batches"]
BatchEventKind = Literal["start", "end", "quantity"]
BATCH_EVENT_KINDS: Final = frozenset(("start", "end", "quantity"))
READING_COLUMNS: Final = ("meter", "channel", "ts", "value", "unit", "quality")

WireReason = Literal[
    "too_large",
    "bad_envelope",
    "malformed_json",
    "unknown_version",
    "missing_field",
    "wrong_type",
    "non_finite",
    "bad_value",
    "unknown_gateway",
    "bad_signature",
    "revoked_key",
    "key_not_valid",
    "not_canonical",
    "bad_name",
]

# Names of sites, gateways, meters and channels: what the edge's config accepts, and
# what ingest accepts on the wire (a name with "/" or spaces would collide in topics,
# file names and queries; one pattern everywhere).
NAME_PATTERN: Final = r"^[A-Za-z0-9_.:\-]+$"
NAME_MAX: Final = 200
_NAME: Final = re.compile(NAME_PATTERN)


class WireError(ValueError):
    """Anything wrong with a message on the wire.

    ``reason`` is a short machine-readable code (it becomes the DLQ reason);
    the message names the field or gateway that is wrong.
    """

    def __init__(self, reason: WireReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: WireReason = reason


class Reading(NamedTuple):
    """One point of one meter at one instant (row view of a frame's columns)."""

    meter: str
    channel: str
    ts_ns: int
    value: float | int
    unit: str
    quality: Quality


@dataclass(frozen=True, slots=True)
class Frame:
    """One gateway poll cycle: the readings, columnar."""

    site: str
    gateway: str
    seq: int
    sent_ns: int
    meter: Sequence[str]
    channel: Sequence[str]
    ts_ns: Sequence[int]
    value: Sequence[float | int]
    unit: Sequence[str]
    quality: Sequence[Quality]
    version: int = WIRE_VERSION

    stream: ClassVar[Stream] = "readings"

    def __len__(self) -> int:
        return len(self.ts_ns)

    def readings(self) -> Iterator[Reading]:
        return map(
            Reading, self.meter, self.channel, self.ts_ns, self.value, self.unit, self.quality
        )

    @classmethod
    def from_readings(
        cls, site: str, gateway: str, seq: int, sent_ns: int, readings: Sequence[Reading]
    ) -> Frame:
        cols = list(zip(*readings, strict=True)) if readings else [()] * 6
        return cls(site, gateway, seq, sent_ns, *(list(c) for c in cols))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """An MES batch lifecycle event on one asset (line, kiln, furnace, cell)."""

    asset: str
    batch_id: str
    product: str
    kind: BatchEventKind
    ts_ns: int
    quantity: float | None = None  # produced quantity, with ``unit`` (t, pcs, m2, kWh...)
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class BatchFrame:
    """A gateway's batch events since its last batch frame."""

    site: str
    gateway: str
    seq: int
    sent_ns: int
    events: tuple[BatchEvent, ...]
    version: int = WIRE_VERSION

    stream: ClassVar[Stream] = "batches"


Message = Frame | BatchFrame


# --------------------------------------------------------------------------- keys


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Create ``path`` (never overwrite) readable by its owner only; folders it creates
    are 0700 (an existing folder keeps its mode)."""
    missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_key_pem(key))


def check_private_key_mode(path: Path) -> None:
    """Refuse a key file that the group or others may read or write (as ssh does)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(
            f"signing key {path}: mode {mode:04o} lets group or others read it; "
            f"only its owner may (chmod 600 {path})")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a gateway's PKCS8 PEM Ed25519 signing key; errors name the file.

    A file readable by group or others is refused (ValueError): whoever reads it can
    sign frames as this gateway.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"signing key {path}: cannot load an Ed25519 PEM key: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"signing key {path}: cannot load an Ed25519 PEM key: {exc}") from exc
    check_private_key_mode(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {path}: expected Ed25519, got {type(key).__name__}")
    return key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64: how server configs list gateway keys."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as exc:
        raise ValueError(f"not a base64 raw Ed25519 public key: {text!r}") from exc


# ------------------------------------------------------------------------ encode


def _check_finite(values: Sequence[float | int], where: str) -> None:
    # orjson would silently write NaN/inf as null; refuse them at the source.
    if not all(map(math.isfinite, values)):
        bad = next(v for v in values if not math.isfinite(v))
        raise WireError("non_finite", f"{where}: value {bad!r} is not finite")


def frame_body(frame: Frame) -> dict[str, Any]:
    n = len(frame.ts_ns)
    cols = (frame.meter, frame.channel, frame.ts_ns, frame.value, frame.unit, frame.quality)
    if any(len(c) != n for c in cols):
        raise WireError("bad_value", f"frame {frame.gateway}#{frame.seq}: columns differ in length")
    _check_finite(frame.value, f"frame {frame.gateway}#{frame.seq}")
    return {
        "v": frame.version,
        "stream": "readings",
        "site": frame.site,
        "gateway": frame.gateway,
        "seq": frame.seq,
        "sent_ns": frame.sent_ns,
        "readings": dict(zip(READING_COLUMNS, (list(c) for c in cols), strict=True)),
    }


def batch_body(frame: BatchFrame) -> dict[str, Any]:
    for ev in frame.events:
        if ev.quantity is not None:
            _check_finite([ev.quantity], f"batch {ev.batch_id}")
    return {
        "v": frame.version,
        "stream": "batches",
        "site": frame.site,
        "gateway": frame.gateway,
        "seq": frame.seq,
        "sent_ns": frame.sent_ns,
        "events": [
            {
                "asset": e.asset,
                "batch_id": e.batch_id,
                "product": e.product,
                "kind": e.kind,
                "ts": e.ts_ns,
                "quantity": e.quantity,
                "unit": e.unit,
            }
            for e in frame.events
        ],
    }


def canonical_bytes(message: Message) -> bytes:
    """The exact bytes a gateway signs: sorted keys, no whitespace."""
    body = frame_body(message) if isinstance(message, Frame) else batch_body(message)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def encode(message: Message, key: Ed25519PrivateKey) -> bytes:
    """Envelope a frame or batch frame, signed with the gateway's key."""
    body = canonical_bytes(message)
    return MAGIC + key.sign(body) + body


# ------------------------------------------------------------------------ decode


def _field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    try:
        value = body[name]
    except KeyError:
        raise WireError("missing_field", f"{where}: field '{name}' is missing") from None
    # bool is an int subclass; a true/false where a number belongs is a wrong type
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise WireError(
            "wrong_type", f"{where}: field '{name}' is {type(value).__name__}, expected {kind}"
        )
    return value


def _column(cols: Mapping[str, Any], name: str, types: frozenset[type], where: str) -> list[Any]:
    col: list[Any] = _field(cols, name, list, where)
    found = set(map(type, col))
    if not found <= types:
        odd = sorted(t.__name__ for t in found - types)
        raise WireError(
            "wrong_type", f"{where}: readings.{name} holds {', '.join(odd)} values"
        )
    return col


# a bare NaN or Infinity literal where a number belongs (only searched on the error path)
_NON_FINITE_TOKEN: Final = re.compile(rb"[:,\[]\s*-?(?:NaN|Infinity)\s*[,\]}]")

_STR: Final = frozenset((str,))
_INT: Final = frozenset((int,))
_NUM: Final = frozenset((int, float))


def _decode_readings(body: Mapping[str, Any], where: str) -> Frame:
    cols = _field(body, "readings", dict, where)
    meter = _column(cols, "meter", _STR, where)
    channel = _column(cols, "channel", _STR, where)
    ts = _column(cols, "ts", _INT, where)
    value = _column(cols, "value", _NUM, where)
    unit = _column(cols, "unit", _STR, where)
    quality = _column(cols, "quality", _STR, where)
    n = len(ts)
    if not (len(meter) == len(channel) == len(value) == len(unit) == len(quality) == n):
        raise WireError("bad_value", f"{where}: readings columns differ in length")
    if not set(quality) <= QUALITIES:
        raise WireError("bad_value", f"{where}: quality {sorted(set(quality) - QUALITIES)}")
    return Frame(
        site=body["site"], gateway=body["gateway"], seq=body["seq"], sent_ns=body["sent_ns"],
        meter=meter, channel=channel, ts_ns=ts, value=value, unit=unit, quality=quality,
    )


def _decode_event(raw: Any, where: str) -> BatchEvent:
    if not isinstance(raw, dict):
        raise WireError("wrong_type", f"{where}: a batch event is {type(raw).__name__}")
    batch_id = _field(raw, "batch_id", str, where)
    where = f"{where} batch {batch_id}"
    kind = _field(raw, "kind", str, where)
    if kind not in BATCH_EVENT_KINDS:
        raise WireError("bad_value", f"{where}: kind {kind!r} is not start, end or quantity")
    quantity = raw.get("quantity")
    if quantity is not None:
        quantity = _field(raw, "quantity", (int, float), where)
    unit = raw.get("unit")
    if unit is not None:
        unit = _field(raw, "unit", str, where)
    if kind == "quantity" and (quantity is None or unit is None):
        raise WireError("missing_field", f"{where}: a quantity event needs quantity and unit")
    return BatchEvent(
        asset=_field(raw, "asset", str, where),
        batch_id=batch_id,
        product=_field(raw, "product", str, where),
        kind=kind,  # checked against BATCH_EVENT_KINDS above
        ts_ns=_field(raw, "ts", int, where),
        quantity=None if quantity is None else float(quantity),
        unit=unit,
    )


def _decode_body(body_bytes: bytes) -> tuple[dict[str, Any], str]:
    try:
        body = orjson.loads(body_bytes)
    except orjson.JSONDecodeError as exc:
        # NaN and infinity are not JSON, so orjson refuses them; name them for the DLQ
        non_finite = "infinity" in str(exc) or _NON_FINITE_TOKEN.search(body_bytes) is not None
        reason: WireReason = "non_finite" if non_finite else "malformed_json"
        raise WireError(reason, f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise WireError("wrong_type", f"body is {type(body).__name__}, expected an object")
    version = body.get("v")
    if version != WIRE_VERSION:
        raise WireError("unknown_version", f"format version {version!r}, expected {WIRE_VERSION}")
    gateway = _field(body, "gateway", str, "message")
    where = f"gateway {gateway}"
    _field(body, "site", str, where)
    seq = _field(body, "seq", int, where)
    if seq < 0:
        raise WireError("bad_value", f"{where}: seq {seq} is negative")
    _field(body, "sent_ns", int, where)
    return body, f"{where} seq {seq}"


def _is_envelope(data: bytes | memoryview) -> bool:
    return len(data) > HEADER_BYTES and data[: len(MAGIC)] == MAGIC


def split_envelope(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, bytes]:
    """(signature, body) of an envelope, checked for size and magic."""
    if len(data) > max_bytes:
        raise WireError("too_large", f"message of {len(data)} bytes exceeds {max_bytes}")
    if not _is_envelope(data):
        raise WireError("bad_envelope", f"not a plantprint envelope ({len(data)} bytes)")
    return data[len(MAGIC) : HEADER_BYTES], data[HEADER_BYTES:]


def signed_body(data: bytes) -> memoryview:
    """The bytes an envelope's signature covers (the body), as a view: nothing is copied.

    What a ledger should fingerprint: the same frame re-signed under a new key has
    the same body. Raises ``WireError("bad_envelope")`` when ``data`` is not an envelope.
    """
    view = memoryview(data)
    if not _is_envelope(view):
        raise WireError("bad_envelope", f"not a plantprint envelope ({len(data)} bytes)")
    return view[HEADER_BYTES:]


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """One of a gateway's public keys and when it may sign.

    A frame verifies under it when its ``sent_ns`` (signed, so not forgeable without
    the key) lies in [valid_from_ns, valid_until_ns); None is open. Several keys
    with overlapping periods rotate a gateway's key without downtime. A revoked key
    verifies nothing, whatever the time: its holder may write any ``sent_ns``.
    """

    public: Ed25519PublicKey
    valid_from_ns: int | None = None
    valid_until_ns: int | None = None
    revoked: bool = False
    name: str = ""  # how messages name it (the base64 public key)

    def valid_at(self, sent_ns: int) -> bool:
        return not self.revoked and (
            (self.valid_from_ns is None or sent_ns >= self.valid_from_ns)
            and (self.valid_until_ns is None or sent_ns < self.valid_until_ns))


# a gateway's keys: one key valid forever, or its rotation list
KeyRing = Ed25519PublicKey | Sequence[GatewayKey]


def _verifies(key: Ed25519PublicKey, signature: bytes, body: bytes) -> bool:
    try:
        key.verify(signature, body)
    except InvalidSignature:
        return False
    return True


def _verify(ring: KeyRing, signature: bytes, body: bytes, sent_ns: int, where: str) -> None:
    """The signature verifies under a key valid at ``sent_ns``, or WireError says why not."""
    if isinstance(ring, Ed25519PublicKey):
        if not _verifies(ring, signature, body):
            raise WireError("bad_signature", f"{where}: signature does not verify")
        return
    if any(k.valid_at(sent_ns) and _verifies(k.public, signature, body) for k in ring):
        return
    # the error path only: name the key that did sign, when it is one of the gateway's
    for k in ring:
        if k.valid_at(sent_ns) or not _verifies(k.public, signature, body):
            continue
        if k.revoked:
            raise WireError("revoked_key", f"{where}: signed by revoked key {k.name}")
        raise WireError("key_not_valid", f"{where}: signed by key {k.name}, not valid at "
                                         f"sent_ns {sent_ns}")
    raise WireError("bad_signature", f"{where}: signature does not verify")


def _non_nfc(value: Any) -> str | None:
    """The first string in a decoded body that is not in Unicode NFC, or None."""
    if isinstance(value, str):
        return None if unicodedata.is_normalized("NFC", value) else value
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for k, v in items:
        bad = _non_nfc(k) if isinstance(k, str) else None
        bad = bad if bad is not None else _non_nfc(v)
        if bad is not None:
            return bad
    return None


def _check_canonical(body: dict[str, Any], body_bytes: bytes, where: str) -> None:
    """The signed bytes are the one encoding of what they say: re-encoding gives them back.

    So a duplicate key (the decoder keeps one of them), whitespace, escapes where
    UTF-8 belongs or an unsorted key are refused, and so is a string that is not NFC
    (two spellings of one name would otherwise be two meters).
    """
    if orjson.dumps(body, option=orjson.OPT_SORT_KEYS) != body_bytes:
        raise WireError("not_canonical", f"{where}: body is not canonical JSON (sorted keys, "
                                         "no whitespace, no duplicate keys, UTF-8 unescaped)")
    if not body_bytes.isascii():
        bad = _non_nfc(body)
        if bad is not None:
            raise WireError("not_canonical", f"{where}: string {bad!r} is not Unicode NFC")


@lru_cache(maxsize=1 << 16)
def valid_name(name: str) -> bool:
    """Whether ``name`` follows the name pattern (sites, gateways, meters, channels)."""
    return len(name) <= NAME_MAX and _NAME.fullmatch(name) is not None


def _check_names(msg: Message, where: str) -> None:
    names: list[tuple[str, Iterable[str]]] = [("site", (msg.site,)), ("gateway", (msg.gateway,))]
    if isinstance(msg, Frame):
        names += [("meter", set(msg.meter)), ("channel", set(msg.channel))]
    for field_name, values in names:
        bad = next((v for v in values if not valid_name(v)), None)
        if bad is not None:
            raise WireError("bad_name", f"{where}: {field_name} {bad[:60]!r} does not match "
                                        f"{NAME_PATTERN} (at most {NAME_MAX} characters)")


def decode(
    data: bytes,
    keys: Mapping[str, KeyRing],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Message:
    """Check and decode one envelope; ``keys`` maps gateway id to its key(s).

    Raises WireError naming what is wrong: size, envelope, JSON, version, a
    missing or mistyped field, a non-finite number, an unknown gateway, a
    signature that does not verify under a valid key, a body that is not in
    canonical form, or a name outside the name pattern.
    """
    signature, body_bytes = split_envelope(bytes(data), max_bytes)
    body, where = _decode_body(body_bytes)
    gateway = body["gateway"]
    ring = keys.get(gateway)
    if ring is None or (not isinstance(ring, Ed25519PublicKey) and not ring):
        raise WireError("unknown_gateway", f"gateway {gateway!r} has no registered key")
    _verify(ring, signature, body_bytes, body["sent_ns"], where)
    _check_canonical(body, body_bytes, where)
    msg = _decode_stream(body, where)
    _check_names(msg, where)
    return msg


def _decode_stream(body: dict[str, Any], where: str) -> Message:
    stream = body.get("stream")
    if stream == "readings":
        return _decode_readings(body, where)
    if stream == "batches":
        raw_events = _field(body, "events", list, where)
        events = tuple(_decode_event(e, where) for e in raw_events)
        return BatchFrame(body["site"], body["gateway"], body["seq"], body["sent_ns"], events)
    raise WireError("bad_value", f"{where}: stream {stream!r} is not readings or batches")


class EnvelopeKey(NamedTuple):
    """Who sent an envelope and where it sits in that gateway's stream: the dedup key."""

    gateway: str
    stream: Stream
    seq: int


def _peek_body(data: bytes) -> dict[str, Any] | None:
    """The body after the header as a JSON object, or None; nothing is verified."""
    try:
        body = orjson.loads(memoryview(data)[HEADER_BYTES:])
    except (orjson.JSONDecodeError, TypeError):
        return None
    return body if isinstance(body, dict) else None


def peek_header(data: bytes) -> EnvelopeKey | None:
    """(gateway, stream, seq) of an envelope, unverified; None when they cannot be read.

    For relays that deduplicate without the gateways' keys (the MQTT bridge): the
    signature is not checked, so the key only says what the message claims to be;
    ``decode`` decides whether it is. Needs the magic, a known stream and a seq ≥ 0.
    """
    if not _is_envelope(data):
        return None
    body = _peek_body(data)
    if body is None:
        return None
    gateway, stream, seq = body.get("gateway"), body.get("stream"), body.get("seq")
    if not isinstance(gateway, str) or stream not in ("readings", "batches"):
        return None
    if type(seq) is not int or seq < 0:  # bool is an int subclass: not a sequence number
        return None
    return EnvelopeKey(gateway, stream, seq)


def peek_gateway(data: bytes) -> str | None:
    """Best-effort gateway id of a message, for DLQ records of messages that fail.

    The magic is not required: a foreign or damaged header still names its sender.
    """
    body = _peek_body(data)
    gateway = None if body is None else body.get("gateway")
    return gateway if isinstance(gateway, str) else None
