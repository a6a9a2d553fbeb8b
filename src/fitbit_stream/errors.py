"""One error hierarchy: every failure the library raises on purpose is a FitbitStreamError."""

from __future__ import annotations


class FitbitStreamError(Exception):
    """Base class of every error fitbit_stream raises deliberately."""


class InvalidConfigError(FitbitStreamError):
    """The configuration (YAML file or --set override) is not valid; the message names key and value."""


class PlatformError(FitbitStreamError):
    """The local platform (Kafka broker, PostgreSQL, JVM artifacts) is missing or misbehaves."""


class SourceError(FitbitStreamError):
    """A source (Kafka, SQL database, landing files) cannot be read as configured."""


class PreflightError(SourceError):
    """A source failed the check made before any query starts (:mod:`fitbit_stream.io.preflight`).

    The message is one line: the setting and its value, what is wrong, and how to fix it.
    """


class PipelineError(FitbitStreamError):
    """A streaming query failed or the pipeline cannot start safely."""
