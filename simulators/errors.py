"""The simulator's exception family."""

from __future__ import annotations


class SimulatorError(Exception):
    """Base of every error the simulator raises on purpose."""


class ScenarioError(SimulatorError):
    """A scenario file is missing, unreadable or does not validate.

    The message names the file, the key and what was expected.
    """


class GroundTruthError(SimulatorError):
    """A ground-truth file cannot be read back."""
