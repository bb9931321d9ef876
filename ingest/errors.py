"""The ingest exception family: every error ingest raises is an IngestError."""

from __future__ import annotations

from edge import settings


class IngestError(Exception):
    """Base of everything ingest raises on purpose."""


class ConfigError(IngestError, settings.ConfigError):
    """A server config that cannot be used; the message names file, key and expectation.

    Also an ``edge.settings.ConfigError``: one root for config errors in every package.
    """


class MigrationError(IngestError):
    """A migration that cannot be applied, or an applied one that changed."""


class StoreError(IngestError):
    """The database refused or lost a landing transaction."""


class StoreUnavailable(StoreError):
    """The database stayed unreachable until ingest was told to stop; nothing was lost."""


class SchemaMismatch(IngestError):
    """The database's applied migrations are missing, behind or ahead of this code's."""
