"""The configuration base every plantprint package builds on (edge, ingest, compute).

One frozen pydantic base (:class:`Frozen`), one TOML reader (:func:`read_toml`),
one loader (:func:`load_model`), one validation-message formatter
(:func:`describe_validation`) and one error root (:class:`ConfigError`). The
edge is installed in every role, so this module is the shared home of config
code; a package's own config errors subclass :class:`ConfigError`.

Every message names the file, the key and what was expected; values of
secret-named keys (password, secret, token) are masked, because config errors
end up in logs and support tickets.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.wire import NAME_MAX, NAME_PATTERN

__all__ = ["ConfigError", "Frozen", "Name", "describe_validation", "load_model", "read_toml"]

# a site, gateway, meter, channel or asset name: the pattern ingest applies on the wire too
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names file, key and expectation."""


class Frozen(BaseModel):
    """Base of every config model: immutable after load, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=BaseModel)

_SECRET_WORDS = ("password", "secret", "token")


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and any(w in key.lower() for w in _SECRET_WORDS)


def _masked(value: Any) -> Any:
    """``value`` with every secret-named key's value replaced, at any depth."""
    if isinstance(value, dict):
        return {k: "***" if _is_secret(k) else _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(v) for v in value)
    return value


def describe_validation(exc: ValidationError, prefix: str = "") -> str:
    """'key.path: expectation (got value)' for the first few errors; secrets masked."""
    parts = []
    for err in exc.errors()[:5]:
        loc = prefix
        for item in err["loc"]:
            if isinstance(item, int):
                loc += f"[{item}]"
            else:
                loc += f".{item}" if loc else str(item)
        secret = bool(err["loc"]) and _is_secret(err["loc"][-1])
        got = "***" if secret else repr(_masked(err.get("input")))[:60]
        parts.append(f"{loc or '(root)'}: {err['msg']} (got {got})")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def read_toml(path: Path, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The parsed file; unreadable or invalid TOML is ``error`` naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc


def load_model(
    model: type[M],
    path: Path,
    data: dict[str, Any] | None = None,
    error: type[ConfigError] = ConfigError,
) -> M:
    """Validate ``data`` (read from ``path`` when None) into ``model``.

    Relative file names inside the models resolve against the file's folder
    (validation context ``base``). Errors are ``error`` (a package's subclass of
    :class:`ConfigError`) naming the file and every offending key.
    """
    raw = read_toml(path, error) if data is None else data
    try:
        return model.model_validate(raw, context={"base": path.absolute().parent})
    except ValidationError as exc:
        raise error(f"{path}: {describe_validation(exc)}") from exc
