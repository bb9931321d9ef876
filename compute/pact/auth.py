"""OAuth2 client credentials for the PACT API: hashed client secrets, bearer tokens.

Client secrets are never stored in clear: ``[pact.clients.<id>] secret_hash``
holds an scrypt hash (``python -m compute pact-secret`` prints one). Access
tokens are random, opaque and held in memory by the one API process; they
expire after ``[pact] token_ttl_s`` and an expired token is told apart from an
unknown one (PACT answers the first with TokenExpired).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Grant", "TokenStore", "hash_secret", "verify_secret"]

# scrypt cost: 2**14 × 8 × 128 B = 16 MiB and ~50 ms per check (OWASP's minimum)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2**20)


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$hash`` for ``[pact.clients.<id>] secret_hash``."""
    if len(secret) < 16:
        raise ValueError("a client secret needs at least 16 characters")
    salt = secrets.token_bytes(16)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches the stored hash (constant-time comparison)."""
    try:
        _, n, r, p, salt, digest = stored.split("$")
        want = base64.b64decode(digest)
        got = _scrypt(secret, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Grant:
    client_id: str
    scopes: frozenset[str]
    expires: float  # clock seconds


class TokenStore:
    """Bearer tokens issued to authenticated clients; ``clock`` is seconds (monotonic)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()

    def issue(self, client_id: str, scopes: frozenset[str]) -> tuple[str, Grant]:
        token = secrets.token_urlsafe(32)
        grant = Grant(client_id, scopes, self._clock() + self._ttl)
        with self._lock:
            now = self._clock()  # forget tokens long expired (kept a while: TokenExpired)
            self._grants = {t: g for t, g in self._grants.items() if g.expires > now - self._ttl}
            self._grants[token] = grant
        return token, grant

    def check(self, token: str) -> Grant | None:
        """The grant of ``token``: None when unknown; an expired grant is returned as
        it is (the caller tells the client its token expired)."""
        with self._lock:
            return self._grants.get(token)

    def expired(self, grant: Grant) -> bool:
        return grant.expires <= self._clock()

    @property
    def ttl_s(self) -> float:
        return self._ttl


def authenticate(clients: Mapping[str, tuple[str, frozenset[str]]], client_id: str,
                 secret: str) -> frozenset[str] | None:
    """The scopes of a client whose secret matches; None otherwise (unknown or wrong)."""
    entry = clients.get(client_id)
    if entry is None:
        verify_secret(secret, _DUMMY)  # same work for unknown ids: no timing oracle
        return None
    return entry[1] if verify_secret(secret, entry[0]) else None


_DUMMY = hash_secret("plantprint-no-such-client")
