"""The compute exception family: every error compute raises on purpose is a ComputeError."""

from __future__ import annotations

from edge.settings import ConfigError


class ComputeError(Exception):
    """Base of everything compute raises on purpose."""


class SiteModelError(ComputeError, ConfigError):
    """A site file that cannot be used; the message names the file, the key and the problem."""


class FactorError(ComputeError):
    """An emission factor that cannot be stored or used (bad unit, period, kind …)."""
