"""The error a user's input causes; every layer of `search` raises it, the CLI exits 2 on it."""

from __future__ import annotations


class ExperimentError(ValueError):
    """An experiment file, override or option is invalid; the message says what to change."""
